"""The zoo's canonical .safetensors: PyTorch names and layout, with the model and spec in its metadata.

A PyTorch user can load it straight into the zoo's torch model
(`model.load_state_dict(safetensors.torch.load_file(path))`); no framework is
needed to read or write it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from conversion.checkpoint import FORMAT_VERSION, Checkpoint, ConversionError
from zoo.nin import NiNSpec, SpecError

FORMAT_TAG = "multizoo.canonical"


def read(path: Path, spec: NiNSpec | None = None, model: str | None = None) -> Checkpoint:
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConversionError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    ckpt = Checkpoint(weights, "safetensors")
    if meta.get("format") == FORMAT_TAG:
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConversionError(f"{path} has zoo format version {meta.get('format_version')!r}; "
                                  f"this zoo reads version {FORMAT_VERSION}: upgrade multizoo")
        try:
            ckpt.spec = NiNSpec.from_dict(json.loads(meta["spec"]))
        except (KeyError, json.JSONDecodeError, SpecError) as e:
            raise ConversionError(f"{path}: its zoo metadata holds no valid spec ({e})") from None
        ckpt.notes.append(f"zoo canonical file, format version {FORMAT_VERSION}")
    return ckpt


def metadata(spec: NiNSpec, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "model": spec.name,
            "spec": spec.to_json(), **(extra or {})}


def write(weights: dict[str, np.ndarray], spec: NiNSpec, path: Path) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path), metadata=metadata(spec))
