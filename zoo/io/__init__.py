"""Reading weight files of every format into canonical weights, below both `zoo.api` and `conversion`.

`zoo.load(weights=file)` reads through here, and so does `conversion` (which adds converting,
verifying and inspecting); neither imports the other's package, so there is no import loop.
Each format has one reader and one writer (zoo/io/io_*.py) to canonical weights.
"""

from __future__ import annotations

import stat
import warnings
from pathlib import Path

import numpy as np

from zoo._checks import check_weights
from zoo.io import io_hf, keymaps
from zoo.io.checkpoint import Checkpoint, ConversionError, check_finite, check_variances
from zoo.io.formats import detect, function
from zoo.io.infer import resolve_spec
from zoo.spec import ModelSpec

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def read(path, format: str | None = None, *, model: str | None = None, spec: ModelSpec | None = None,
         state_dict_key: str | None = None) -> Checkpoint:
    """Read a weight file into canonical names and layout (dtype as stored); foreign key maps applied.

    A foreign file's keys lose the wrappers' prefixes they all share (`module.`, `model.`, `_orig_mod.`);
    a .pt training checkpoint gives its state_dict (`state_dict_key` names the entry, where it holds several).

    >>> ckpt = zoo.io.read('model.pt')
    >>> ckpt.weights['blocks.0.conv0.weight'].shape
    (96, 1, 11, 11)
    """
    path = source(path)
    fmt = detect(path, format)
    if state_dict_key is not None and fmt.name != "torch":
        raise ConversionError(f"state_dict_key / --state-dict-key picks an entry of a PyTorch .pt checkpoint; "
                              f"{path} is a {fmt.name} file")
    _check_input_path(path, fmt)
    extra = {"state_dict_key": state_dict_key} if state_dict_key is not None else {}  # only the torch reader's
    ckpt = function(fmt, "reader")(path, spec, model, **extra)
    if ckpt.spec is None:  # a file of the zoo's own names its tensors canonically
        ckpt.weights, stripped = keymaps.strip_prefixes(ckpt.weights)
        if stripped:
            ckpt.notes.append(keymaps.prefixes_note(stripped))
    if ckpt.spec is None and spec is None:
        reshaped = []
        try:
            ckpt.weights, keymap, dropped = keymaps.to_canonical(ckpt.weights, model, reshaped)
        except keymaps.LayoutError as e:
            raise ConversionError(f"{path}: {e}") from None
        if keymap is not None:
            ckpt.notes += keymaps.applied_notes(keymap, dropped, reshaped)
    return ckpt


def load(path, model: str | None = None, overrides: dict | None = None, *, format: str | None = None,
         allow_nonfinite: bool = False, state_dict_key: str | None = None
         ) -> tuple[ModelSpec, dict[str, np.ndarray], Checkpoint]:
    """Read a file and fit it to a spec: (spec, float32 weights checked against it, the checkpoint as read)."""
    path = source(path)
    fmt = detect(path, format)
    ckpt = read(path, fmt.name, model=model, state_dict_key=state_dict_key)
    spec, _ = resolve_spec(ckpt, model, overrides)
    weights = check_weights(spec, ckpt.weights, dtypes=FLOAT_DTYPES)
    check_finite(weights, allow_nonfinite)
    check_variances(path, spec, weights)
    if ckpt.dtype == "float64":
        raise ConversionError(f"{path} holds float64 weights; a model holds float32 and casting loses "
                              f"precision: convert it explicitly with --dtype float32")
    if ckpt.dtype != "float32":
        warnings.warn(f"{path} holds {ckpt.dtype} weights; loading them as float32 (exact)", stacklevel=2)
        weights = {k: v.astype(np.float32) for k, v in weights.items()}
    if fmt.check_graph and ckpt.spec is None:  # a file from elsewhere that holds a graph: the model must be it, as
        function(fmt, "check_graph")(path, spec, weights)  # `zoo convert` verifies (a zoo file's reader compared)
    return spec, weights, ckpt


def source(path) -> Path:
    """A path; for `hf-hub:ORG/NAME[@REVISION]`, that repository's folder in the local Hugging Face cache."""
    return io_hf.resolve_hub(path) if io_hf.is_hub_id(path) else Path(path)


def _check_input_path(path: Path, fmt) -> None:
    """A regular file (a folder for Flax), before anything opens it: a FIFO or device would block or never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConversionError(f"{path} does not exist") from None
    except OSError as e:
        raise ConversionError(f"{path} cannot be read: {e.strerror}") from None
    if fmt.name == "hf" and stat.S_ISREG(mode):
        return  # the weights file of a Hugging Face folder (zoo.io.formats.detect): read with its config.json
    if fmt.name in ("flax", "hf", "keras_hub"):
        if not stat.S_ISDIR(mode):
            what = {"flax": "an Orbax checkpoint folder", "hf": "a folder (config.json, model.safetensors)",
                    "keras_hub": "a keras-hub preset folder"}[fmt.name]
            raise ConversionError(f"{path} is not a folder; a {fmt.name} checkpoint is {what}")
    elif not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device?)"
        raise ConversionError(f"{path} is {kind}; a{'n' if fmt.name[0] in 'aeiou' else ''} {fmt.name} checkpoint "
                              f"is a regular file")
