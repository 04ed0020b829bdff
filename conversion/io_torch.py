"""PyTorch state_dict files (.pt, .pth): read with torch.load(weights_only=True), never full unpickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from conversion.checkpoint import Checkpoint, ConversionError
from zoo.nin import NiNSpec

_WRAPPERS = ("state_dict", "model_state_dict", "model")  # common training-loop containers


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


def read(path: Path, spec: NiNSpec | None = None, model: str | None = None) -> Checkpoint:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0]
        raise ConversionError(
            f"{path}: refused: it pickles Python objects other than tensors, and unpickling them could run code "
            f"(torch.load(weights_only=True): {first}). Re-save a plain state_dict: "
            f"torch.save(model.state_dict(), path)") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for a damaged archive
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in _WRAPPERS:
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors; "
                              f"save one with torch.save(model.state_dict(), path)")
    return Checkpoint({k: to_numpy(v) for k, v in obj.items()}, "torch")


def write(weights: dict[str, np.ndarray], spec: NiNSpec, path: Path) -> None:
    torch.save({k: from_numpy(v) for k, v in weights.items()}, path)
