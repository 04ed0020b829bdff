"""Pretrained weights that ship inside the package (folder `weights/`), and their manifest.

    >>> zoo.load('nin', framework='keras', weights='fashion_mnist')   # hash checked on load

Each manifest entry, keyed 'model.tag', is a `PretrainedCfg`; the weights are a
canonical safetensors file whose metadata repeats the entry.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from zoo._registry import get_spec
from zoo.spec import MAX_INPUT_SIZE

MANIFEST = "manifest.json"
_PACKAGE = Path(__file__).resolve().parent  # zoo/; its parent is the project root in a checkout


class PretrainedError(ValueError):
    """Unknown tag, missing file or hash mismatch."""


@dataclass(frozen=True)
class PretrainedCfg:
    model: str  # registered model name
    tag: str  # e.g. 'fashion_mnist'
    file: str  # in weights/
    sha256: str  # of `file`, checked on every load
    input_size: int  # square side the model was trained and evaluated at
    mean: float  # of pixels in [0, 1]; input = (pixel / 255 - mean) / std
    std: float
    resize: str  # how 28x28 images reach input_size
    num_classes: int
    label_names: tuple[str, ...]
    test_accuracy: float  # on the data set's test split, at input_size
    trained_in: str  # framework
    dataset: str
    dataset_license: str
    recipe: dict = field(default_factory=dict)  # the training options
    test_logits: str = ""  # .npy in weights/: float64-reference logits of the test split (stored as float32)
    test_logits_sha256: str = ""
    fit: str = "pad"  # how `zoo predict` makes a non-square image square: 'pad' with its border colour, or 'crop'

    def __post_init__(self):
        def bad(name: str, want: str):
            raise PretrainedError(f"the pretrained entry's {name} must be {want}, got {getattr(self, name)!r}")

        for name in ("model", "tag", "file", "sha256", "resize", "trained_in", "dataset", "dataset_license",
                     "test_logits", "test_logits_sha256"):
            if not isinstance(getattr(self, name), str):
                bad(name, "a string")
        if not _is_int(self.input_size) or not 1 <= self.input_size <= MAX_INPUT_SIZE:
            bad("input_size", f"an integer in [1, {MAX_INPUT_SIZE}]")
        if not _is_number(self.mean) or not 0.0 <= self.mean <= 1.0:
            bad("mean", "a number in [0, 1] (of pixels scaled to [0, 1])")
        if not _is_number(self.std) or not 0.0 < self.std <= 1.0:
            bad("std", "a number in (0, 1]")
        if not _is_int(self.num_classes) or not 1 <= self.num_classes <= 65_536:
            bad("num_classes", "an integer in [1, 65536]")
        if not isinstance(self.label_names, tuple) or not all(isinstance(n, str) for n in self.label_names):
            bad("label_names", "a list of strings")
        if len(self.label_names) != self.num_classes:
            raise PretrainedError(f"the pretrained entry has {len(self.label_names)} label_names for "
                                  f"{self.num_classes} classes (num_classes): one name per class")
        if not _is_number(self.test_accuracy) or not 0.0 <= self.test_accuracy <= 1.0:
            bad("test_accuracy", "a number in [0, 1]")
        if not isinstance(self.recipe, dict):
            bad("recipe", "a dictionary")
        if self.fit not in ("pad", "crop"):
            bad("fit", "'pad' or 'crop'")

    @classmethod
    def from_dict(cls, entry, where: str, **fixed) -> PretrainedCfg:
        """An entry read from a file (`where` names it in errors), each field checked; `fixed` fields replace
        the entry's. Keys that are not fields are refused, except in a run's entry (`fixed` given), which
        the file's own code wrote."""
        if not isinstance(entry, dict):
            raise PretrainedError(f"{where}: the pretrained entry must be a dictionary, got {type(entry).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - names)
        if unknown and not fixed:
            raise PretrainedError(f"{where}: the pretrained entry has unknown fields {unknown}")
        entry = {k: v for k, v in entry.items() if k in names}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(entry) - set(fixed))
        if missing:
            raise PretrainedError(f"{where}: the pretrained entry lacks {', '.join(missing)}")
        labels = entry.get("label_names")
        entry = {**entry, **fixed, "label_names": tuple(labels) if isinstance(labels, list) else labels}
        try:
            return cls(**entry)
        except PretrainedError as e:
            raise PretrainedError(f"{where}: {e}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _folder() -> Path:
    return Path(str(resources.files("zoo.weights")))


def manifest() -> dict[str, PretrainedCfg]:
    path = _folder() / MANIFEST
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {k: PretrainedCfg.from_dict(v, f"{path}, entry {k!r}") for k, v in raw.items()}


def list_pretrained(model: str | None = None) -> list[str]:
    """'model.tag' names of the shipped weights."""
    return sorted(k for k, c in manifest().items() if model in (None, c.model))


def default_tag(model: str) -> str:
    """The tag `zoo.load(model, ..., pretrained=True)` loads: the model's first entry in the manifest."""
    get_spec(model)
    tags = [c.tag for c in manifest().values() if c.model == model]
    if not tags:
        raise PretrainedError(f"{model} ships no pretrained weights; models that do: "
                              f"{', '.join(list_pretrained()) or 'none'} (pass weights= a file of yours instead)")
    return tags[0]


def _did_you_mean(text: str, choices) -> str:
    close = difflib.get_close_matches(text, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def not_a_file(model: str, text: str) -> PretrainedError:
    """The error for weights named by a string that is neither a file here nor a tag of `model`."""
    tags = [c.tag for c in manifest().values() if c.model == model]
    shipped = f"{model}'s pretrained tags: {', '.join(tags)}" if tags else f"{model} ships no pretrained weights"
    return PretrainedError(f"no file or folder {text!r} exists here, and it is not a pretrained tag of {model} "
                           f"({shipped}).{_did_you_mean(text, tags)}")


def resolve(model: str, tag: str) -> tuple[Path, PretrainedCfg]:
    """The verified file and entry for `model` with `tag`."""
    get_spec(model)  # an unknown model is named as such, with the close matches, before its weights
    entries = manifest()
    key = f"{model}.{tag}"
    if key not in entries:
        known = ", ".join(entries) or "none"
        raise PretrainedError(f"no pretrained weights {key!r}; shipped: {known}.{_did_you_mean(key, entries)}")
    cfg = entries[key]
    path = _folder() / cfg.file
    if not path.is_file():
        raise PretrainedError(f"{path} is missing from the installation; reinstall multizoo")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != cfg.sha256:
        raise PretrainedError(f"{path} has SHA-256 {digest}, the manifest says {cfg.sha256}: the file is damaged "
                              f"or was replaced; reinstall multizoo")
    return path, cfg


def cfg_for(model: str, weights) -> PretrainedCfg:
    """The entry of shipped weights (a tag), or of a `zoo train` run's weights (the entry in its metadata):
    what `zoo evaluate` and `zoo predict` need to preprocess images as the weights were trained."""
    from zoo.api import _is_tag

    if isinstance(weights, str) and _is_tag(model, weights):
        return resolve(model, weights)[1]
    if isinstance(weights, str) and not os.path.lexists(weights):
        raise not_a_file(model, weights)
    path = Path(weights)
    hint = "evaluate and predict take a pretrained tag or the weights.safetensors that `zoo train` wrote"
    if path.suffix != ".safetensors" or not path.is_file():
        raise PretrainedError(f"{path} is not a .safetensors file: {hint}")
    return PretrainedCfg.from_dict(_run_entry(path, hint), str(path), model=model, tag=str(path), file=str(path),
                                   sha256=sha256(path))


def _run_entry(path: Path, hint: str = "") -> dict:
    """The raw pretrained entry in a run's weights.safetensors metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
        return json.loads(meta["pretrained"])
    except Exception as e:  # no metadata, no entry, a damaged file
        raise PretrainedError(f"{path} holds no training entry (input size, mean, std, labels: "
                              f"{type(e).__name__}: {str(e)[:200]}){': ' + hint if hint else ''}") from None


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_run(trainer, out) -> Path:
    """Write a finished run's weights as canonical safetensors, with the pretrained entry in its metadata."""
    from safetensors.numpy import save_file

    from zoo import data
    from zoo.io.checkpoint import atomic_output
    from zoo.io.io_safetensors import metadata

    out = Path(out)
    r = trainer.recipe
    entry = {"input_size": r.input_size, "mean": r.mean, "std": r.std,
             "resize": "bilinear, half-pixel centres (zoo.data.preprocess)", "fit": "pad",
             "num_classes": trainer.spec.num_classes, "label_names": list(data.LABELS),
             "test_accuracy": trainer.history[-1]["test_acc"], "trained_in": trainer.framework,
             "dataset": "Fashion-MNIST",
             "dataset_license": data.LICENSE, "recipe": dataclasses.asdict(r)}
    weights = trainer.weights()
    path = out / "weights.safetensors"
    with atomic_output(path, force=True, is_previous=lambda p: p.is_file() or p.is_symlink()) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp),
                  metadata=metadata(trainer.spec, {"pretrained": json.dumps(entry)}))
    return path


def test_logits(cfg: PretrainedCfg) -> np.ndarray:
    """The float64 reference's logits for the test split, as stored at release (hash checked)."""
    path = _folder() / cfg.test_logits
    if not cfg.test_logits or sha256(path) != cfg.test_logits_sha256:
        raise PretrainedError(f"{path}: missing or damaged reference logits; reinstall multizoo")
    return np.load(path, allow_pickle=False)


def checkout_folder() -> Path | None:
    """The checkout's weights/ folder (the project root is the parent of the zoo package), or None
    when zoo is installed without a checkout (a non-editable install)."""
    root = _PACKAGE.parent
    return root / "weights" if (root / "pyproject.toml").is_file() and (root / "weights").is_dir() else None


def release(run_weights: Path, model: str, tag: str, folder: Path | None = None, *,
            force: bool = False, progress: bool = True) -> PretrainedCfg:
    """Copy an exported run's weights into the checkout's weights/ folder (or `folder`), store the float64
    reference's logits for the test split beside them, and add the manifest entry.

    An existing file or manifest entry for `model`.`tag` is refused unless `force=True`. The reference
    takes about 2 minutes on 2 cores for the 10,000 images; `progress` shows a bar on stderr.
    """
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from zoo import data, reference
    from zoo._progress import bar
    from zoo.spec import ModelSpec

    if folder is None:
        folder = checkout_folder()
        if folder is None:
            raise PretrainedError(f"zoo is installed at {_PACKAGE} without a checkout: pass folder=, the weights/ "
                                  f"folder of a multizoo checkout, to release into")
    folder = Path(folder)
    if not folder.is_dir():
        raise PretrainedError(f"{folder} is not a folder; pass the weights/ folder of a multizoo checkout")
    name, logits_name, key = f"{model}-{tag}.safetensors", f"{model}-{tag}.test-logits.npy", f"{model}.{tag}"
    manifest_path = folder / MANIFEST
    raw = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    taken = [str(folder / n) for n in (name, logits_name) if (folder / n).exists()]
    taken += [f"the entry {key!r} of {manifest_path}"] if key in raw else []
    if taken and not force:
        raise PretrainedError(f"{model} {tag!r} is already released ({', '.join(taken)}): choose another tag, "
                              f"or pass force=True to replace it")
    with safe_open(str(run_weights), "np") as f:
        meta = f.metadata()
    entry = _run_entry(Path(run_weights))
    PretrainedCfg.from_dict(entry, str(run_weights), model=model, tag=tag, file=name, sha256="")  # checked first
    spec = ModelSpec.from_dict(json.loads(meta["spec"]))
    weights = load_file(str(run_weights))
    images, _ = data.load_fashion_mnist("test")
    x = data.preprocess(images, entry["input_size"], entry["mean"], entry["std"])
    parts = []
    with bar(len(x), "float64 reference, test split", progress) as b:
        for i in range(0, len(x), 500):
            parts.append(reference.forward(spec, weights, x[i:i + 500]))
            b.update(len(parts[-1]))
    logits = np.concatenate(parts)
    np.save(folder / logits_name, logits.astype(np.float32))
    data_bytes = Path(run_weights).read_bytes()
    (folder / name).write_bytes(data_bytes)
    cfg = PretrainedCfg.from_dict(entry, str(run_weights), model=model, tag=tag, file=name,
                                  sha256=hashlib.sha256(data_bytes).hexdigest(), test_logits=logits_name,
                                  test_logits_sha256=sha256(folder / logits_name))
    raw[key] = dataclasses.asdict(cfg)
    manifest_path.write_text(json.dumps(raw, indent=2) + "\n")
    return cfg
