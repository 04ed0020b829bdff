"""Keras files: weights (.weights.h5, model.save_weights) and the whole-model archive (.keras, model.save)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from zoo.frameworks import keras_model as keras_nin
from zoo.io.checkpoint import DIGEST_KEY, Checkpoint, ConversionError, check_digest, digest, one_line
from zoo.io.formats import sniff
from zoo.io.infer import infer_spec
from zoo.spec import ModelSpec, SpecError

MAX_CONFIG_BYTES = 1_000_000  # a .keras archive's config.json; the zoo's is about 1 KB
MAX_RATIO = 20  # a .keras member's declared size over its compressed size (Keras stores them uncompressed)
SPEC_ATTR = "zoo_spec"  # a .weights.h5's root attribute holding the spec, as JSON


def _h5_layers(f: h5py.File, path: Path) -> list[str]:
    layers = f.get("layers")
    names = [n for n in (layers or {}) if re.fullmatch(r"padded_conv2d(_\d+)?", n)]
    names.sort(key=lambda n: int(n.rpartition("_")[2]) if n[-1].isdigit() else 0)
    if not names:
        raise ConversionError(f"{path} holds no zoo NiN conv layers (padded_conv2d*); "
                              f"was it saved from a model zoo.load built?")
    return names


def _h5_check(f: h5py.File, path: Path) -> dict[str, tuple[int, ...]]:
    """Canonical shapes from a .weights.h5, whose conv layers Keras numbers in creation order; every
    dataset checked to be float32 and to hold its values in the file, before Keras reads any."""
    shapes = {}
    for i, n in enumerate(_h5_layers(f, path)):
        group = f["layers"][n].get("vars")
        if not isinstance(group, h5py.Group) or set(group) != {"0", "1"}:
            raise ConversionError(f"{path}: layer {n} should hold 2 variables (kernel, bias), "
                                  f"it holds {sorted(group) if isinstance(group, h5py.Group) else 'none'}")
        for v in ("0", "1"):
            ds = group[v]
            if not isinstance(ds, h5py.Dataset):
                raise ConversionError(f"{path}: layers/{n}/vars/{v} is not a dataset")
            if ds.dtype != np.float32:
                raise ConversionError(f"{path}: layers/{n}/vars/{v} is {ds.dtype}; Keras weights files hold "
                                      f"float32, and the zoo casts nothing silently: re-save it in float32")
            if ds.external or ds.id.get_storage_size() < ds.size * 4:
                raise ConversionError(f"{path}: layers/{n}/vars/{v} declares shape {ds.shape} but the file holds "
                                      f"{ds.id.get_storage_size():,} bytes of it (or refers to an external file); "
                                      f"refused as damaged")
        kernel, bias = group["0"].shape, group["1"].shape
        if len(kernel) != 4 or len(bias) != 1:
            raise ConversionError(f"{path}: layer {n} has a kernel of shape {kernel} and a bias of shape {bias}")
        prefix = f"blocks.{i // 3}.conv{i % 3}"
        shapes[f"{prefix}.weight"] = (kernel[3], kernel[2], kernel[0], kernel[1])  # HWIO -> OIHW
        shapes[f"{prefix}.bias"] = tuple(bias)
    return shapes


def read_weights(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    what = sniff(path)
    if not what.startswith("an HDF5"):
        raise ConversionError(f"{path} is not a Keras weights file: it is {what}")
    origin = "given"
    try:
        with h5py.File(path, "r") as f:
            shapes = _h5_check(f, path)
            text = f.attrs.get(SPEC_ATTR)
            stored = f.attrs.get(DIGEST_KEY)
        if spec is None and text is not None:
            try:
                spec = ModelSpec.from_json(text)
            except SpecError as e:
                raise ConversionError(f"{path}: its zoo metadata holds no valid spec ({e})") from None
            origin = "the file's metadata"
        if spec is None:
            spec = infer_spec(shapes, model)
            origin = "inferred from the tensor shapes (a .weights.h5 from elsewhere carries none)"
        expected = spec.param_shapes()
        if shapes != expected:
            diff = next((k for k in expected if shapes.get(k) != expected[k]), None) or next(iter(shapes))
            raise ConversionError(f"{path}: {diff} has shape {shapes.get(diff)}, the spec says {expected.get(diff)}")
        keras_model = keras_nin.NiN(spec)
        keras_model.load_weights(path)
    except ConversionError:
        raise
    except Exception as e:  # h5py and Keras raise OSError, ValueError, KeyError, ...
        raise ConversionError(f"{path} is not a readable Keras weights file for this model (truncated, corrupt, "
                              f"or of another model?): {one_line(e)}") from None
    weights = keras_nin.get_weights(keras_model)
    check_digest(path, weights, None if stored is None else str(stored))
    ckpt = Checkpoint(weights, "keras", spec=spec, spec_origin=origin)
    if stored is not None:
        ckpt.notes.append("SHA-256 of its tensors checked")
    return ckpt


def _archive_check(path: Path) -> None:
    """Before Keras opens a .keras: sizes within bounds, CRC32s intact, a zoo NiN config with a sane spec,
    and a weights member large enough for that spec's parameters."""
    what = sniff(path)
    if not what.startswith("a zip"):
        raise ConversionError(f"{path} is not a .keras archive: it is {what}")
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        for i in infos.values():
            if i.file_size > MAX_RATIO * max(i.compress_size, 1) + 2**16:
                raise ConversionError(f"{path}: member {i.filename} declares {i.file_size:,} bytes from "
                                      f"{i.compress_size:,} compressed (a zip bomb?); refused")
        if "config.json" not in infos or infos["config.json"].file_size > MAX_CONFIG_BYTES:
            raise ConversionError(f"{path}: no config.json of at most {MAX_CONFIG_BYTES:,} bytes; not a Keras archive")
        bad = z.testzip()
        if bad:
            raise ConversionError(f"{path}: member {bad} fails its CRC32 check: the file is corrupt")
        try:
            config = json.loads(z.read("config.json"))
        except (ValueError, RecursionError) as e:
            raise ConversionError(f"{path}: its config.json is not valid JSON ({one_line(e)})") from None
    if not isinstance(config, dict) or config.get("class_name") != "NiN" or \
            config.get("module") != "zoo.frameworks.keras_nin" or not isinstance(config.get("config"), dict):
        name = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise ConversionError(f"{path} holds a Keras model of class {str(name)[:80]}, not a zoo NiN")
    try:
        spec = ModelSpec.from_dict(config["config"].get("spec"))
    except SpecError as e:
        raise ConversionError(f"{path}: its config holds no valid NiN spec ({e})") from None
    weights = infos.get("model.weights.h5")
    if weights is None or weights.file_size < 4 * spec.num_params:
        have = weights.file_size if weights else 0
        raise ConversionError(f"{path}: its spec has {spec.num_params:,} parameters ({4 * spec.num_params:,} bytes) "
                              f"but its weights member holds {have:,} bytes; refused as damaged")


def read_archive(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    try:
        _archive_check(path)
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"{path} is not a readable .keras archive (truncated or corrupt?): "
                              f"{one_line(e)}") from None
    if not keras_nin.owns(model):
        raise ConversionError(f"{path} holds a Keras model of class {type(model).__name__}, not a zoo NiN")
    return Checkpoint(keras_nin.get_weights(model), "keras_archive", spec=model.spec)


def write_weights(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    keras_nin.build(spec, weights).save_weights(path)
    with h5py.File(path, "a") as f:  # the spec beside the weights: Keras ignores root attributes
        f.attrs[SPEC_ATTR] = spec.to_json()
        f.attrs[DIGEST_KEY] = digest(weights)


def write_archive(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    keras_nin.build(spec, weights).save(path)
