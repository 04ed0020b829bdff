"""PyTorch state_dict files (.pt, .pth): read with torch.load(weights_only=True), never full unpickling.

The zoo writes `{'state_dict': state_dict, 'zoo_spec': spec JSON}` (plain data, loadable with
weights_only=True), so that a spec no preset describes survives the round trip; a PyTorch user
loads it with `model.load_state_dict(torch.load(path, weights_only=True)['state_dict'])`.
Plain state_dicts, and the usual training-loop wrappers, from other projects read as before.

BatchNorm's `num_batches_tracked` counters are dropped on reading, with a note (they are not
canonical: the zoo's momentum is fixed, so they change no output), and never written: torch's
`load_state_dict(strict=True)` accepts a plain dict without them (it asks for them only when the
dict carries the `_metadata` of a module that had them, which a saved plain dict does not).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from zoo.io.checkpoint import Checkpoint, ConversionError, counters_note, is_counter, one_line
from zoo.io.formats import sniff
from zoo.spec import ModelSpec, SpecError

_WRAPPERS = ("state_dict", "model_state_dict", "model")  # common training-loop containers
SPEC_KEY = "zoo_spec"
_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.float64}
_COUNTER_DTYPES = {torch.int64, torch.int32}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; ml_dtypes (a jax/tensorflow dependency) has
        try:
            import ml_dtypes
        except ImportError:
            raise ConversionError("a bfloat16 tensor needs the ml_dtypes package: pip install ml_dtypes") from None
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    a = np.array(a, order="C")  # a writable copy: torch.from_numpy shares memory
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _check_zip(path: Path) -> None:
    """A zip .pt's members: stored (torch never compresses), no larger than the file, CRC32s intact.

    Bounds what torch.load may allocate by the file's own size, and catches flipped bytes.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            declared = sum(i.file_size for i in infos)
            if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or declared > size:
                raise ConversionError(f"{path}: its zip members declare {declared:,} bytes in a {size:,}-byte file "
                                      f"(or are compressed, which torch.save never does); refused as damaged")
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise ConversionError(f"{path} is a damaged zip archive (truncated?): {e}") from None
    if bad:
        raise ConversionError(f"{path}: member {bad} fails its CRC32 check: the file is corrupt; "
                              f"copy or download it again")


def _unpickling_reason(e: Exception) -> str:
    """torch's reason for refusing a pickle, without its advice to retry with weights_only=False."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    return (m.group(1) if m else " ".join(text.split()))[:300] or type(e).__name__


def read(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    path = Path(path)
    what = sniff(path)
    if what.startswith("a zip"):
        _check_zip(path)
    elif not what.startswith("a bare pickle"):
        raise ConversionError(f"{path} is not a PyTorch checkpoint: it is {what}. A .pt file is a zip archive "
                              f"written by torch.save; if this is another format, rename it or name it with --from")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=what.startswith("a zip"))
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path}: refused: it pickles Python objects other than tensors and plain containers, and unpickling "
            f"them could run code ({_unpickling_reason(e)}). Re-save a plain state_dict: "
            f"torch.save(model.state_dict(), path)") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for a damaged archive
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{one_line(e)}") from None
    file_spec = None
    if isinstance(obj, dict) and SPEC_KEY in obj and "state_dict" in obj:
        try:
            file_spec = ModelSpec.from_json(obj[SPEC_KEY])
        except SpecError as e:
            raise ConversionError(f"{path}: its zoo metadata holds no valid spec ({e})") from None
        obj = obj["state_dict"]
    while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in _WRAPPERS:
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict of named tensors; "
                              f"save one with torch.save(model.state_dict(), path)")
    counters = [k for k in obj if is_counter(k)]
    for k in counters:
        _check_counter(path, k, obj[k])
    obj = {k: v for k, v in obj.items() if not is_counter(k)}
    expected = (spec or file_spec).param_shapes() if (spec or file_spec) else None
    for k, v in obj.items():  # before any copy: a stride-0 view of one value may claim gigabytes
        _check_tensor(path, k, v, expected)
    ckpt = Checkpoint({k: to_numpy(v) for k, v in obj.items()}, "torch")
    if file_spec is not None:
        ckpt.spec = file_spec
        ckpt.notes.append("zoo .pt file with its spec")
    if counters:
        ckpt.notes.append(counters_note(len(counters)))
    return ckpt


def _check_counter(path: Path, name: str, t: torch.Tensor) -> None:
    """A BatchNorm counter is one integer; anything else under that name is not what it claims to be."""
    if t.is_nested or t.layout != torch.strided or t.dtype not in _COUNTER_DTYPES or t.numel() != 1:
        what = "a nested tensor" if t.is_nested else \
            f"a {str(t.dtype).removeprefix('torch.')} tensor of shape {tuple(t.shape)}"
        raise ConversionError(f"{path}: tensor {name} is {what}; a BatchNorm counter is one integer")


def _check_tensor(path: Path, name: str, t: torch.Tensor, expected: dict | None) -> None:
    if t.is_nested or t.is_meta or t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
        kind = "nested" if t.is_nested else "meta" if t.is_meta else str(t.layout) if t.layout != torch.strided \
            else "quantized" if t.is_quantized else t.device.type
        raise ConversionError(f"{path}: tensor {name} is a {kind} tensor, not a plain one with values; "
                              f"save the model's real weights")
    if t.dtype not in _DTYPES:
        raise ConversionError(f"{path}: tensor {name} is {str(t.dtype).removeprefix('torch.')}; weights must be "
                              f"float32, float16, bfloat16 or float64")
    if expected is not None and name in expected and tuple(t.shape) != expected[name]:
        raise ConversionError(f"{path}: tensor {name} has shape {tuple(t.shape)}, its spec says {expected[name]}")
    storage = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    if t.numel() * t.element_size() > storage:
        raise ConversionError(f"{path}: tensor {name} of shape {tuple(t.shape)} has {storage:,} bytes of data for "
                              f"{t.numel() * t.element_size():,} (an expanded or overlapping view); refused")


def write(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    torch.save({"state_dict": {k: from_numpy(v) for k, v in weights.items()}, SPEC_KEY: spec.to_json()}, path)
