"""Keras files: weights (.weights.h5, model.save_weights) and the whole-model archive (.keras, model.save)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from conversion.checkpoint import Checkpoint, ConversionError
from conversion.infer import infer_spec
from zoo.frameworks import keras_nin
from zoo.nin import NiNSpec


def _h5_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Canonical shapes from a .weights.h5, whose conv layers Keras numbers in creation order."""
    with h5py.File(path, "r") as f:
        layers = f.get("layers")
        names = [n for n in (layers or {}) if re.fullmatch(r"padded_conv2d(_\d+)?", n)]
        names.sort(key=lambda n: int(n.rpartition("_")[2]) if n[-1].isdigit() else 0)
        if not names:
            raise ConversionError(f"{path} holds no zoo NiN conv layers (padded_conv2d*); "
                                  f"was it saved from a model zoo.load built?")
        shapes = {}
        for i, n in enumerate(names):
            kernel, bias = layers[n]["vars"]["0"].shape, layers[n]["vars"]["1"].shape
            prefix = f"blocks.{i // 3}.conv{i % 3}"
            shapes[f"{prefix}.weight"] = (kernel[3], kernel[2], kernel[0], kernel[1])  # HWIO -> OIHW
            shapes[f"{prefix}.bias"] = tuple(bias)
    return shapes


def read_weights(path: Path, spec: NiNSpec | None = None, model: str | None = None) -> Checkpoint:
    try:
        inferred = spec or infer_spec(_h5_shapes(path), model)
        model = keras_nin.NiN(inferred)
        model.load_weights(path)
    except ConversionError:
        raise
    except Exception as e:  # h5py and Keras raise OSError, ValueError, KeyError, ...
        raise ConversionError(f"{path} is not a readable Keras weights file for this model (truncated, corrupt, "
                              f"or of another model?): {type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    origin = "given" if spec else "inferred from the tensor shapes (a .weights.h5 carries none)"
    return Checkpoint(keras_nin.get_weights(model), "keras", spec=inferred, spec_origin=origin)


def read_archive(path: Path, spec: NiNSpec | None = None, model: str | None = None) -> Checkpoint:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad:
            raise ConversionError(f"{path}: member {bad} is corrupt")
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"{path} is not a readable .keras archive (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    if not keras_nin.owns(model):
        raise ConversionError(f"{path} holds a Keras model of class {type(model).__name__}, not a zoo NiN")
    return Checkpoint(keras_nin.get_weights(model), "keras_archive", spec=model.spec)


def write_weights(weights: dict[str, np.ndarray], spec: NiNSpec, path: Path) -> None:
    keras_nin.build(spec, weights).save_weights(path)


def write_archive(weights: dict[str, np.ndarray], spec: NiNSpec, path: Path) -> None:
    keras_nin.build(spec, weights).save(path)
