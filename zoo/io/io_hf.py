"""Hugging Face folders, as timm's `save_for_hf` and `push_to_hf_hub` write them: `config.json` (timm's
`architecture`, `num_classes`, `pretrained_cfg`) beside `model.safetensors` or `pytorch_model.bin` in timm's
names; and `hf-hub:ORG/NAME[@REVISION]`, which is such a folder in the local Hugging Face cache, never fetched.

Reading: config.json names the model (its `architecture`, when that is a zoo preset) and its class count, which
the weights must match; the weights file reads as its own format does (a .bin with torch.load(weights_only=True)),
and timm's names become canonical through the families' key maps. Writing (`zoo convert ... --to hf`): the key
map a family declares for timm (`KeyMap.library == "timm"`) renames, and reshapes where timm's layout differs,
so that `timm.create_model('local-dir:FOLDER', pretrained=True)` builds the model and reads the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from zoo import _registry
from zoo._frameworks import FrameworkNotInstalled
from zoo.io import io_safetensors, keymaps
from zoo.io.checkpoint import Checkpoint, ConversionError, read_json_object
from zoo.spec import ModelSpec

HUB_PREFIX = "hf-hub:"
CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order of preference
MAX_CONFIG_BYTES = 64 << 20  # label names of ImageNet-22k are a few MiB; anything far larger is not a config
LIBRARY = "timm"  # whose names and config.json the folders hold


def is_hub_id(path) -> bool:
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def resolve_hub(text: str) -> Path:
    """The local cache's snapshot folder for `hf-hub:ORG/NAME[@REVISION]`; never the network."""
    repo_id, _, revision = text[len(HUB_PREFIX):].partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ConversionError(f"{text!r} is not a hub id: write hf-hub:ORG/NAME[@REVISION], e.g. "
                              f"hf-hub:timm/resnet50.a1_in1k")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError as e:
        raise FrameworkNotInstalled(f"{text} is read from the local Hugging Face cache, which needs huggingface_hub: "
                                    f"pip install 'multizoo[hub]' (from a checkout: pip install '.[hub]')") from e
    cache = constants.HF_HUB_CACHE
    try:
        folder = snapshot_download(repo_id, revision=revision or None, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError (a malformed name), OSError
        raise ConversionError(
            f"{text} is not in the local Hugging Face cache (looked in {cache}; {type(e).__name__}). The zoo never "
            f"downloads: on a machine with network, `hf download {repo_id} config.json model.safetensors"
            f"{' --revision ' + revision if revision else ''}` fills that machine's cache (copy it here), or set "
            f"HF_HUB_CACHE to a cache that holds it") from None
    return Path(folder)


def is_folder(path: Path) -> bool:
    """A folder holding a config.json: a Hugging Face folder (an Orbax checkpoint has none)."""
    return path.is_dir() and (path / CONFIG).is_file()


def folder_of(path: Path) -> Path | None:
    """The Hugging Face folder a weights file lies in (its name one of WEIGHT_FILES, beside a timm config.json)."""
    path = Path(path)
    if path.name not in WEIGHT_FILES or not (path.parent / CONFIG).is_file() or _is_zoo_file(path):
        return None
    try:
        return path.parent if isinstance(read_config(path.parent).get("architecture"), str) else None
    except ConversionError:
        return None  # not timm's config (transformers' has "architectures"): the file reads by itself


def _is_zoo_file(path: Path) -> bool:
    """A zoo canonical .safetensors (its own metadata names its model): it reads by itself, wherever it lies."""
    if path.suffix != ".safetensors":
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return (f.metadata() or {}).get("format") == io_safetensors.FORMAT_TAG
    except Exception:  # unreadable: the folder's reader says why
        return False


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    config = read_json_object(path, MAX_CONFIG_BYTES, "a config.json",
                              f"{folder} has no {CONFIG}; a Hugging Face folder holds one beside its weights "
                              f"({' or '.join(WEIGHT_FILES)})")
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise ConversionError(f"{path} names no architecture (a string, as timm writes: \"architecture\": "
                              f"\"resnet50\"); it is not a timm folder: transformers' folders are not read")
    for key in ("num_classes",):
        if key in config and (not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 0):
            raise ConversionError(f"{path}: {key} is {config[key]!r}; it must be a whole number")
    return config


def expected(config: dict) -> dict[str, int]:
    """What config.json says the weights are: num_classes and in_channels (from pretrained_cfg's input_size)."""
    out = {}
    if isinstance(config.get("num_classes"), int) and config["num_classes"] > 0:
        out["num_classes"] = config["num_classes"]
    size = (config.get("pretrained_cfg") or {}).get("input_size") if isinstance(config.get("pretrained_cfg"),
                                                                                  dict) else None
    if isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size):
        out["in_channels"] = size[0]
    return out


def read(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    folder = Path(path) if Path(path).is_dir() else Path(path).parent  # the folder, or its weights file
    config = read_config(folder)
    arch = config["architecture"]
    weights_file = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights_file is None:
        have = ", ".join(sorted(p.name for p in folder.iterdir())[:8])
        raise ConversionError(f"{folder} holds no {' or '.join(WEIGHT_FILES)} beside its config.json (it holds: "
                              f"{have}); in the hub cache, fetch it: hf download ORG/NAME model.safetensors")
    if weights_file.suffix == ".safetensors":
        ckpt = io_safetensors.read(weights_file)
    else:
        try:
            from zoo.io import io_torch
        except ImportError as e:
            raise FrameworkNotInstalled(f"{weights_file} is a PyTorch pickle, read with torch.load(weights_only=True), "
                                        f"which needs torch: pip install torch") from e
        ckpt = io_torch.read(weights_file)
    if ckpt.spec is not None:  # a zoo canonical .safetensors inside: its names are not timm's
        raise ConversionError(f"{weights_file} is a zoo canonical file, not timm's weights; read it by itself "
                              f"(zoo inspect {weights_file})")
    preset = preset_of(arch)
    fmt = "safetensors" if weights_file.suffix == ".safetensors" else "torch"
    if preset is None:  # timm builds another network under this name (tf_efficientnet_b0 pads as TensorFlow does)
        known = sorted({lib for k in _registry.KEYMAPS if k.library == LIBRARY for lib in _timm_names(k)})
        raise ConversionError(
            f"{folder / CONFIG} names timm's {arch!r}, which is none of the zoo's presets (timm's that the zoo "
            f"reads: {', '.join(known)}): timm builds another network under that name, and its weights would be "
            f"read as something else. To read the tensors anyway, as their names and shapes say, name the weights "
            f"file and its format: zoo convert MODEL {weights_file} OUT --from {fmt}")
    if model and model != preset:
        raise ConversionError(f"{folder / CONFIG} names the architecture {arch!r}, not {model!r}: load it as "
                              f"{preset} (zoo.load({preset!r}, ...), zoo convert {preset} ...)")
    ckpt.format, ckpt.model, ckpt.expected = "hf", preset, expected(config)
    ckpt.notes.insert(0, f"Hugging Face folder: {CONFIG} names {LIBRARY}'s {arch!r}"
                         + (f" (the zoo's {preset})" if preset and preset != arch else "")
                         + (f" with {config['num_classes']} classes" if "num_classes" in config else "")
                         + f"; weights from {weights_file.name}")
    # timm's names become canonical here, so that a reader given the spec (verification) gets them too
    reshaped = []
    try:
        ckpt.weights, keymap, dropped = keymaps.to_canonical(ckpt.weights, model or preset or (spec and spec.name),
                                                             reshaped)
    except keymaps.LayoutError as e:
        raise ConversionError(f"{weights_file}: {e}") from None
    if keymap is not None:
        ckpt.notes += keymaps.applied_notes(keymap, dropped, reshaped)
    return ckpt


def _timm_names(keymap) -> list[str]:
    """The timm architectures a timm key map's models are."""
    return [dict(keymap.architectures).get(m, m) for m in keymap.models]


def preset_of(architecture: str) -> str | None:
    """The zoo preset of a timm architecture name: the same name, or the one a timm key map gives it."""
    named = {lib: preset for k in _registry.KEYMAPS if k.library == LIBRARY for preset, lib in k.architectures}
    return named.get(architecture) or (architecture if architecture in _registry.list_models() else None)


def architecture_of(keymap, model: str) -> str:
    """timm's name for a zoo preset, as the key map that writes its names says."""
    return dict(keymap.architectures).get(model, model)


def write_keymap(spec: ModelSpec):
    """The key map that writes `spec`'s weights in timm's names, after checking timm builds the same network."""
    maps = [k for k in _registry.KEYMAPS if k.library == LIBRARY and spec.name in k.models and k.writes]
    known = sorted({m for k in _registry.KEYMAPS if k.library == LIBRARY and k.writes for m in k.models})
    if not maps:
        raise ConversionError(f"{spec.name} has no {LIBRARY} names in the zoo, so no Hugging Face folder can be "
                              f"written for it (--to hf writes: {', '.join(known)}); write another format")
    if spec.name in _registry.list_models():
        plain = _registry.get_spec(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels)
        if plain != spec:
            raise ConversionError(f"this {spec.name} differs from the preset by more than num_classes and "
                                  f"in_channels, which is all a timm config.json can change: timm would build "
                                  f"another network. Write another format")
    return maps[0]


def write(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    keymap = write_keymap(spec)
    foreign = keymaps.to_foreign(keymap, weights, spec)
    folder = Path(path)
    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in foreign.items()}, str(folder / WEIGHT_FILES[0]),
              metadata={"format": "pt"})  # as safetensors.torch writes it
    h, w = spec.input_size
    config = {"architecture": architecture_of(keymap, spec.name), "num_classes": spec.num_classes,
              "pretrained_cfg": {"input_size": [spec.in_channels, h, w], "num_classes": spec.num_classes,
                                 "fixed_input_size": bool(spec.needs_exact_size)}}
    if spec.in_channels != 3:
        config["model_args"] = {"in_chans": spec.in_channels}
    with open(folder / CONFIG, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())

