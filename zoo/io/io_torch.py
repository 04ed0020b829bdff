"""PyTorch state_dict files (.pt, .pth): read with torch.load(weights_only=True), never full unpickling.

The zoo writes `{'state_dict': state_dict, 'zoo_spec': spec JSON}` (plain data, loadable with
weights_only=True), so that a spec no preset describes survives the round trip; a PyTorch user
loads it with `model.load_state_dict(torch.load(path, weights_only=True)['state_dict'])`.
Plain state_dicts from other projects read too, and so do training checkpoints: the state_dict is
taken from the entry training scripts put it in (`state_dict`, `model_state_dict`, `model`, ... at any
depth; `state_dict_key` names it where there are several, such as `model` and `model_ema`), and the
other entries (optimizer state, epoch, a script's argparse.Namespace) are left out, with a note. Those
entries may name classes that weights_only=True refuses: each such class is read as an inert
placeholder, never imported or called, so that no code of the file runs and the tensors still read;
a placeholder where a tensor should be is refused.

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
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return (m.group(1) if m else " ".join(text.split()))[:300] or type(e).__name__


def read(path: Path, spec: ModelSpec | None = None, model: str | None = None,
         state_dict_key: str | None = None) -> Checkpoint:
    path = Path(path)
    what = sniff(path)
    if what.startswith("a zip"):
        _check_zip(path)
    elif not what.startswith("a bare pickle"):
        raise ConversionError(f"{path} is not a PyTorch checkpoint: it is {what}. A .pt file is a zip archive "
                              f"written by torch.save; if this is another format, rename it or name it with --from")
    obj, placeholders = _load(path, zipped=what.startswith("a zip"))
    file_spec, notes = None, []
    if isinstance(obj, dict) and SPEC_KEY in obj and "state_dict" in obj:
        if state_dict_key not in (None, "state_dict"):
            raise ConversionError(f"{path} is a zoo .pt file, which holds one state_dict: drop --state-dict-key")
        try:
            file_spec = ModelSpec.from_json(obj[SPEC_KEY])
        except SpecError as e:
            raise ConversionError(f"{path}: its zoo metadata holds no valid spec ({e})") from None
        obj, state_dict_key = obj["state_dict"], None
    if not _is_state_dict(obj) or state_dict_key is not None:
        obj, notes = _unwrap(path, obj, state_dict_key, placeholders)
    counters = [k for k in obj if is_counter(k)]
    for k in counters:
        _check_counter(path, k, obj[k])
    obj = {k: v for k, v in obj.items() if not is_counter(k)}
    expected = (spec or file_spec).param_shapes() if (spec or file_spec) else None
    for k, v in obj.items():  # before any copy: a stride-0 view of one value may claim gigabytes
        _check_tensor(path, k, v, expected)
    ckpt = Checkpoint({k: to_numpy(v) for k, v in obj.items()}, "torch", notes=notes)
    if file_spec is not None:
        ckpt.spec = file_spec
        ckpt.notes.append("zoo .pt file with its spec")
    if counters:
        ckpt.notes.append(counters_note(len(counters)))
    return ckpt


# ----------------------------------------------------------------------------- training checkpoints

# Where training scripts put the state_dict beside the optimizer, the epoch, ...: Lightning and timm
# ('state_dict'), PyTorch's tutorials ('model_state_dict'), timm's and DeiT's scripts ('model'),
# DeepSpeed ('module'); and their exponential moving averages of it.
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "model_ema", "state_dict_ema", "ema_state_dict",
             "ema")


class _Placeholder:
    """Stands for an object of a class that a checkpoint names (an argparse.Namespace, a numpy scalar, a
    whole nn.Module): built from nothing, so no code of the file runs; entries holding one are left out."""

    name = "?"  # the class or function the file names, e.g. 'argparse.Namespace'

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self) -> str:
        return f"<a pickled {self.name} object>"


def _load(path: Path, zipped: bool) -> tuple[object, list[str]]:
    """torch.load(weights_only=True), each class or function that it does not allow read as a _Placeholder:
    (the object, the names placeheld). A bare (pre-zip) pickle gets no placeholders."""
    names = []
    if zipped and hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):  # torch >= 2.5; before, refused
        try:
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # a damaged archive: torch.load says how
            names = []
    placeholders = [(type("Placeholder", (_Placeholder,), {"name": n}), n) for n in names]
    try:
        with torch.serialization.safe_globals(placeholders):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(e)
        if "Placeholder" in reason:  # e.g. a dict subclass, filled as only a dict may be
            reason = (f"objects of {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}, which it builds in a "
                      f"way that only unpickling them can follow")
        raise ConversionError(
            f"{path}: refused: it pickles Python objects other than tensors and plain containers, and unpickling "
            f"them could run code ({reason}). Re-save a plain state_dict: "
            f"torch.save(model.state_dict(), path)") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for a damaged archive
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{one_line(e)}") from None
    return obj, names


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _state_dicts(obj, at: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
    """(where, state_dict) of each state_dict in `obj`: itself, or under the wrappers' keys at any depth."""
    if _is_state_dict(obj):
        return [(at, obj)]
    if not isinstance(obj, dict) or len(at) >= 4:
        return []
    return [found for k in _WRAPPERS if k in obj for found in _state_dicts(obj[k], (*at, k))]


def _kind(v) -> str:
    """What an entry holds, in words, for messages."""
    if isinstance(v, _Placeholder):
        return f"a pickled {v.name} object"
    if isinstance(v, torch.Tensor):
        return "a tensor"
    if isinstance(v, dict):
        n = sum(isinstance(x, torch.Tensor) for x in v.values())
        return f"a dict of {len(v)} entries" + (f", {n} of them tensors" if n else "")
    return f"a{'n' if type(v).__name__[0] in 'aeiou' else ''} {type(v).__name__}"


def _entries(obj: dict, limit: int = 8) -> str:
    items = [f"{k!r} ({_kind(v)})" for k, v in list(obj.items())[:limit]]
    return ", ".join(items) + (f", ... ({len(obj)} in all)" if len(obj) > limit else "")


def _where(at: tuple[str, ...]) -> str:
    """'state_dict', or ['model']['state_dict'] for a nested one."""
    return repr(at[0]) if len(at) == 1 else "".join(f"[{k!r}]" for k in at)


def _unwrap(path: Path, obj, key: str | None, placeholders: list[str]) -> tuple[dict, list[str]]:
    """The state_dict of a training checkpoint, and notes saying where it was and what was left out."""
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            where = f"its entries: {_entries(obj)}" if isinstance(obj, dict) else f"it holds {_kind(obj)}"
            raise ConversionError(f"{path} has no entry {key!r} (--state-dict-key / state_dict_key); {where}")
        found = _state_dicts(obj[key], (key,))
        if not found:
            raise ConversionError(f"{path}: entry {key!r} holds {_kind(obj[key])}, not a state_dict of named "
                                  f"tensors")
    else:
        found = _state_dicts(obj)
    if len(found) > 1:
        keys = [_where(at) for at, _ in found]
        pick = found[-1][0][0] if key is None and len({at[0] for at, _ in found}) == len(found) else None
        how = (f"pick one with --state-dict-key {pick} (zoo convert, zoo inspect) or state_dict_key={pick!r} "
               f"(zoo.load, conversion.convert)") if pick else "re-save the one you want on its own"
        raise ConversionError(f"{path} holds {len(found)} state_dicts, under {', '.join(keys)} "
                              f"(e.g. a model and its moving average): {how}")
    if not found:
        raise ConversionError(_no_state_dict(path, obj))
    at, state = found[0]
    notes = [f"took the state_dict under {_where(at)}"]
    others = [k for k in obj if k != at[0]]
    if others:
        notes.append(f"left out the checkpoint's other entries: {', '.join(map(str, others[:8]))}"
                     f"{' ...' if len(others) > 8 else ''}")
    if placeholders:
        notes.append(f"read what it builds with the classes and functions it names ({', '.join(placeholders[:4])}"
                     f"{' ...' if len(placeholders) > 4 else ''}) as inert placeholders, never unpickled: no "
                     f"tensor of the state_dict needs them")
    return state, notes


def _held_object(obj, at: tuple[str, ...] = ()) -> str:
    """Where a would-be state_dict (itself, or under the wrappers' keys) holds a pickled object beside its
    tensors, in words; else ''."""
    if not isinstance(obj, dict) or len(at) > 4:
        return ""
    if obj and all(isinstance(k, str) and isinstance(v, (torch.Tensor, _Placeholder)) for k, v in obj.items()):
        bad = next(k for k, v in obj.items() if isinstance(v, _Placeholder))
        return f"{_where((*at, bad))} is {_kind(obj[bad])}"
    return next((h for k in _WRAPPERS if k in obj for h in [_held_object(obj[k], (*at, k))] if h), "")


def _no_state_dict(path: Path, obj) -> str:
    """Why `obj` gives no state_dict, and what to do."""
    resave = "Re-save a plain state_dict: torch.save(model.state_dict(), path)"
    if isinstance(obj, _Placeholder):
        return (f"{path}: refused: it pickles a whole {obj.name} object (torch.save(model)?), not a state_dict, "
                f"and unpickling it could run code. {resave}")
    if not isinstance(obj, dict):
        return f"{path} holds {_kind(obj)}, not a state_dict of named tensors. {resave}"
    if not obj:
        return f"{path} holds an empty dict, not a state_dict of named tensors. {resave}"
    held = _held_object(obj)
    if held:
        return (f"{path}: refused: it pickles Python objects other than tensors and plain containers, and "
                f"unpickling them could run code ({held}). {resave}")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        bad = next(k for k in obj if not isinstance(k, str))
        return f"{path} holds a dict with a key that is not a tensor name ({bad!r}). {resave}"
    named = [k for k, v in obj.items() if isinstance(k, str) and _state_dicts(v, (k,))]
    if named:
        return (f"{path} holds no state_dict under the keys training scripts use ({', '.join(_WRAPPERS[:4])}, "
                f"...); its entries: {_entries(obj)}: name the one that holds the model's tensors with "
                f"--state-dict-key {named[0]} (state_dict_key={named[0]!r} in Python)")
    return (f"{path} holds no state_dict of named tensors: its entries are {_entries(obj)}, and none holds "
            f"one under the keys training scripts use ({', '.join(_WRAPPERS[:4])}, ...). {resave}")


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
