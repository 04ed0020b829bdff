"""The zoo's canonical .safetensors: PyTorch names and layout, with the model and spec in its metadata.

A PyTorch user can load it straight into the zoo's torch model
(`model.load_state_dict(safetensors.torch.load_file(path))`); no framework is
needed to read or write it. Safetensors from elsewhere (a timm checkpoint, say) read too; their
BatchNorm `num_batches_tracked` counters are dropped, with a note (see zoo/io/io_torch.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from zoo.io.checkpoint import (
    DIGEST_KEY,
    FORMAT_VERSION,
    Checkpoint,
    ConversionError,
    check_digest,
    check_version,
    counters_note,
    digest,
    digest_note,
    is_counter,
    one_line,
)
from zoo.spec import ModelSpec, SpecError

FORMAT_TAG = "multizoo.canonical"
_DTYPES = ("F32", "F16", "BF16", "F64")
_COUNTER_DTYPES = ("I64", "I32")


def read(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            counters = []
            for k in f.keys():  # before reading any values
                dtype = f.get_slice(k).get_dtype()
                if is_counter(k):
                    shape = f.get_slice(k).get_shape()
                    if dtype not in _COUNTER_DTYPES or shape not in ([], [1]):
                        raise ConversionError(f"{path}: tensor {k} is {dtype} of shape {shape}; a BatchNorm "
                                              f"counter is one integer")
                    counters.append(k)
                elif dtype not in _DTYPES:
                    raise ConversionError(f"{path}: tensor {k} is {dtype}; weights must be float32, float16, "
                                          f"bfloat16 or float64 ({', '.join(_DTYPES)})")
            weights = {k: f.get_tensor(k) for k in f.keys() if k not in counters}
    except ConversionError:
        raise
    except Exception as e:  # SafetensorError, OSError, ValueError, TypeError for a dtype numpy lacks, ...
        raise ConversionError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                              f"{one_line(e)}") from None
    ckpt = Checkpoint(weights, "safetensors")
    if counters:
        ckpt.notes.append(counters_note(len(counters)))
    if meta.get("format") == FORMAT_TAG:
        ckpt.spec = spec_from_metadata(path, meta)
        version = meta["format_version"]
        check_digest(path, weights, meta.get(DIGEST_KEY), meta["spec"], version)
        ckpt.notes.append("zoo canonical file, " + (digest_note(version) if DIGEST_KEY in meta else
                                                      f"format version {version}"))
    return ckpt


def spec_from_metadata(path: Path, meta: dict[str, str]) -> ModelSpec:
    """The spec in the zoo's metadata (of a .safetensors or a .onnx), after its format version."""
    check_version(path, meta.get("format_version"))
    try:
        return ModelSpec.from_json(meta["spec"])
    except (KeyError, SpecError) as e:
        raise ConversionError(f"{path}: its zoo metadata holds no valid spec ({e})") from None


def metadata(spec: ModelSpec, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "model": spec.name,
            "spec": spec.to_json(), **(extra or {})}


def write(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path),
              metadata=metadata(spec, {DIGEST_KEY: digest(weights, spec.to_json())}))
