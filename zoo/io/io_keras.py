"""Keras files: weights (.weights.h5, model.save_weights) and the whole-model archive (.keras, model.save).

Keras 3 keeps each layer's variables in a .weights.h5 under `layers/<class name, numbered in
layer order>/vars/<0, 1, ...>`, the layer's name as that group's `name` attribute, and a sublayer's
under `layers/<...>/<attribute>/vars/<0, 1, ...>` (MultiHeadAttention's query_dense, key_dense,
value_dense, output_dense). The readers find every layer by that name (`keras_model.layer_names`:
the canonical path, dots doubled), never by the numbering, each variable by its (sub)layer and place
in Keras' order (`keras_model.variables`), check every dataset (float32, its values in the file, its
shape) before reading it, and turn each layer's variables into its canonical tensors at once
(`keras_model.canonical_tensors`: attention's three kernels are one canonical in_proj_weight).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from zoo.frameworks import keras_model
from zoo.io.checkpoint import (
    DIGEST_KEY,
    FORMAT_VERSION,
    VERSION_KEY,
    Checkpoint,
    ConversionError,
    check_digest,
    check_version,
    digest,
    digest_note,
    one_line,
)
from zoo.io.formats import sniff
from zoo.io.infer import infer_spec
from zoo.spec import (
    BatchNorm,
    ClassToken,
    Conv,
    LayerNorm,
    LayerScale,
    Linear,
    ModelSpec,
    PosEmbedding,
    SelfAttention,
    SpecError,
    tensor_name,
)

MAX_CONFIG_BYTES = 1_000_000  # a .keras archive's config.json; the zoo's is a few KB
MAX_RATIO = 20  # a .keras member's declared size over its compressed size (Keras stores them uncompressed)
SPEC_ATTR = "zoo_spec"  # a .weights.h5's root attribute holding the spec, as JSON

# The classes a zoo .keras archive may hold: (class_name, module) -> registered name.
ARCHIVE_CLASSES = {
    ("ZooModel", "zoo.frameworks.keras_model"): "zoo>ZooModel",
    ("NiN", "zoo.frameworks.keras_nin"): "zoo>NiN",  # multizoo 0.1: read by layer name, without Keras
}
LEGACY_CLASS = "NiN"
LEGACY_NAME = re.compile(r"blocks_(\d+)_conv(\d)")  # multizoo 0.1's Keras NiN layers, the only ones with variables


def _h5_layers(f: h5py.File, path: Path) -> dict[str, tuple[str, dict[str, h5py.Dataset]]]:
    """Keras layer name -> (its place in the file, its variables), for every layer holding variables; each
    dataset checked to be float32 and to hold its values in the file, before anything reads it.

    A layer's variables are keyed as the file numbers them: '0', '1', ... under its `vars`, and 'sub/0', ...
    for a sublayer's (MultiHeadAttention keeps its kernels in query_dense, key_dense, value_dense, output_dense)."""
    layers = f.get("layers")
    if not isinstance(layers, h5py.Group):
        raise ConversionError(f"{path} holds no Keras layers; was it saved from a model zoo.load built?")
    out = {}
    for key, group in layers.items():
        own = group.get("vars") if isinstance(group, h5py.Group) else None
        if not isinstance(own, h5py.Group):
            continue
        variables = dict(own.items())
        for sub, child in group.items():
            inner = child.get("vars") if sub != "vars" and isinstance(child, h5py.Group) else None
            if isinstance(inner, h5py.Group):
                variables.update({f"{sub}/{i}": ds for i, ds in inner.items()})
        if not variables:
            continue  # a layer without variables (activation, pool, ...)
        where = f"layers/{key}"
        name = own.attrs.get("name")
        name = name.decode() if isinstance(name, bytes) else name
        if not isinstance(name, str):
            raise ConversionError(f"{path}: {where}/vars holds variables but no layer name (written by an older "
                                  f"Keras?); load it into the model with Keras and save it again")
        if name in out:
            raise ConversionError(f"{path}: layers {out[name][0]} and {where} are both named {name!r}")
        for v, ds in variables.items():
            _check_dataset(ds, f"{where}/{_vars_path(v)}", path)
        out[name] = (where, variables)
    if not out:
        raise ConversionError(f"{path} holds no Keras layer with variables; was it saved from a model zoo.load built?")
    return out


def _vars_path(key: str) -> str:
    """A variable's key ('0', 'query_dense/1') as its dataset's path under the layer's group."""
    sub, _, i = key.rpartition("/")
    return f"{sub}/vars/{i}" if sub else f"vars/{i}"


def _file_keys(op) -> dict[str, str]:
    """The op's Keras variables (keras_model.variables: key -> 'attr' or 'sub/attr') -> the keys the file
    numbers them by: each (sub)layer's variables 0, 1, ... in Keras' order."""
    out, count = {}, {}
    for key, attribute in keras_model.variables(op).items():
        sub = attribute.rpartition("/")[0]
        out[key] = f"{sub}/{count.get(sub, 0)}" if sub else str(count.get(sub, 0))
        count[sub] = count.get(sub, 0) + 1
    return out


def _check_dataset(ds, where: str, path: Path) -> None:
    if not isinstance(ds, h5py.Dataset):
        raise ConversionError(f"{path}: {where} is not a dataset")
    if ds.dtype != np.float32:
        raise ConversionError(f"{path}: {where} is {ds.dtype}; Keras weights files hold "
                              f"float32, and the zoo casts nothing silently: re-save it in float32")
    if ds.external or ds.id.get_storage_size() < ds.size * 4:
        raise ConversionError(f"{path}: {where} declares shape {ds.shape} but the file holds "
                              f"{ds.id.get_storage_size():,} bytes of it (or refers to an external file); "
                              f"refused as damaged")


def _layer_names(layers: dict, spec: ModelSpec) -> dict[str, str]:
    """Path -> the layer name the file uses: the zoo's, or multizoo 0.1's (dots as single underscores)."""
    names = keras_model.layer_names(spec)
    ops = spec.ops()
    if any(names[p] in layers for p in ops):
        return names
    legacy = {p: p.replace(".", "_") for p in ops}  # NiN's paths hold no underscores: one to one
    return legacy if all(n in layers for n in legacy.values()) else names


def _h5_datasets(layers: dict, spec: ModelSpec, path: Path) -> dict[str, dict[str, h5py.Dataset]]:
    """Layer path -> its Keras variables' datasets (by keras_model.variables' keys), for every op of `spec`
    that holds tensors; a missing, extra or misshapen one refused."""
    names, ops = _layer_names(layers, spec), spec.ops()
    extra = sorted(set(layers) - {names[p] for p in ops})
    if extra:
        raise ConversionError(f"{path}: layer(s) {', '.join(extra[:5])} hold variables that {spec.name} has no "
                              f"place for; is the file of another model?")
    out = {}
    for p, op in ops.items():
        if names[p] not in layers:
            raise ConversionError(f"{path}: no layer {names[p]!r} (the spec's {p}) in the file")
        where, variables = layers[names[p]]
        keys, shapes = _file_keys(op), keras_model.native_shapes(op)
        if set(variables) != set(keys.values()):
            what = ", ".join(k or "its tensor" for k in keys)
            raise ConversionError(f"{path}: layer {where} should hold {len(keys)} variables ({what}) as "
                                  f"{', '.join(map(_vars_path, keys.values()))}, it holds "
                                  f"{', '.join(map(_vars_path, sorted(variables)))}")
        for key, file_key in keys.items():
            ds = variables[file_key]
            if ds.shape != shapes[key]:
                raise ConversionError(f"{path}: {where}/{_vars_path(file_key)} ({p}'s {key or 'tensor'}) has shape "
                                      f"{ds.shape}, the spec makes it {shapes[key]}")
        out[p] = {key: variables[file_key] for key, file_key in keys.items()}
    return out


def _guess_shapes(layers: dict, path: Path) -> dict[str, tuple[int, ...]]:
    """Canonical shapes from a file that carries no spec: names from the layer names, roles from the variables."""
    shapes = {}
    for name, (where, variables) in layers.items():
        m = LEGACY_NAME.fullmatch(name)
        layer = f"blocks.{m[1]}.conv{m[2]}" if m else name.replace("__", ".")
        op = _guess_op(variables, where, path)
        native = {key: variables[file_key].shape for key, file_key in _file_keys(op).items()}
        shapes.update({tensor_name(layer, key): s for key, s in keras_model.canonical_shapes(op, native).items()})
    return shapes


def _guess_op(variables: dict[str, h5py.Dataset], where: str, path: Path):
    """An op with the variables' shapes, guessed from their ranks: enough to name and shape its canonical tensors."""
    try:
        return _guess(variables, where, path)
    except SpecError as e:
        raise ConversionError(f"{path}: {where} holds variables of shapes no zoo layer has ({e})") from None


def _guess(variables: dict[str, h5py.Dataset], where: str, path: Path):
    if "query_dense/0" in variables:  # MultiHeadAttention: query kernel [D, heads, head_dim]
        d, heads, _ = variables["query_dense/0"].shape
        return SelfAttention(d, heads, bias="query_dense/1" in variables)
    if set(variables) != {str(i) for i in range(len(variables))}:
        raise ConversionError(f"{path}: {where} holds variables {sorted(variables)}, not vars/0, 1, ...")
    shapes = [variables[str(i)].shape for i in range(len(variables))]
    ranks = [len(s) for s in shapes]
    if ranks == [1, 1, 1, 1]:
        return BatchNorm(shapes[0][0])  # TorchBatchNorm
    if ranks in ([4], [4, 1]):  # a conv kernel HWIO (groups 1: only its shapes are used) and its bias
        kh, kw, i, o = shapes[0]
        return Conv(i, o, (kh, kw), bias=len(ranks) == 2)
    if ranks in ([2], [2, 1]):
        return Linear(*shapes[0], bias=len(ranks) == 2)
    if ranks == [1, 1]:
        return LayerNorm(shapes[0][0], 1e-5)  # the eps shows in no tensor
    if ranks == [1]:
        return LayerScale(shapes[0][0])
    if ranks == [3] and shapes[0][:2] == (1, 1):
        return ClassToken(shapes[0][2])
    if ranks == [3] and shapes[0][0] == 1:
        return PosEmbedding(*shapes[0][1:])
    raise ConversionError(f"{path}: {where} holds variables of ranks {ranks}, no zoo layer's")


def _read(datasets: dict[str, dict[str, h5py.Dataset]], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Canonical weights, in `spec.param_shapes()` order (layer by layer, each op's keys in order)."""
    ops, flat, out = spec.ops(), spec.flatten_inputs(), {}
    for p, variables in datasets.items():
        tensors = keras_model.canonical_tensors(ops[p], {key: ds[()] for key, ds in variables.items()}, flat.get(p))
        out.update({tensor_name(p, key): a for key, a in tensors.items()})
    return out


def read_weights(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    what = sniff(path)
    if not what.startswith("an HDF5"):
        raise ConversionError(f"{path} is not a Keras weights file: it is {what}")
    origin = "given"
    try:
        with h5py.File(path, "r") as f:
            layers = _h5_layers(f, path)
            text = f.attrs.get(SPEC_ATTR)
            stored = f.attrs.get(DIGEST_KEY)
            version = f.attrs.get(VERSION_KEY, "1")  # absent: written before version 2
            if spec is None and text is not None:
                try:
                    spec = ModelSpec.from_json(text)
                except SpecError as e:
                    raise ConversionError(f"{path}: its zoo metadata holds no valid spec ({e})") from None
                origin = "the file's metadata"
            if spec is None:
                spec = infer_spec(_guess_shapes(layers, path), model)
                origin = "inferred from the tensor shapes (a .weights.h5 from elsewhere carries none)"
            weights = _read(_h5_datasets(layers, spec, path), spec)
    except ConversionError:
        raise
    except Exception as e:  # h5py raises OSError, ValueError, KeyError, ...
        raise ConversionError(f"{path} is not a readable Keras weights file for this model (truncated, corrupt, "
                              f"or of another model?): {one_line(e)}") from None
    version = check_version(path, version.decode() if isinstance(version, bytes) else str(version))
    text = text.decode() if isinstance(text, bytes) else None if text is None else str(text)
    check_digest(path, weights, None if stored is None else str(stored), text, version)
    ckpt = Checkpoint(weights, "keras", spec=spec, spec_origin=origin)
    if stored is not None:
        ckpt.notes.append(digest_note(version))
    return ckpt


def _archive_check(path: Path) -> tuple[ModelSpec, str, bytes]:
    """Before Keras opens a .keras: sizes within bounds, CRC32s intact, a zoo model's config with a sane spec,
    and a weights member large enough for that spec's tensors. Returns (spec, class name, weights member)."""
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
        cls = (config.get("class_name"), config.get("module")) if isinstance(config, dict) else None
        registered = ARCHIVE_CLASSES.get(cls)
        if registered is None or config.get("registered_name", registered) != registered or \
                not isinstance(config.get("config"), dict):
            name = config.get("class_name") if isinstance(config, dict) else type(config).__name__
            raise ConversionError(f"{path} holds a Keras model of class {str(name)[:80]}, not a zoo model")
        try:
            spec = ModelSpec.from_dict(config["config"].get("spec"))
        except SpecError as e:
            raise ConversionError(f"{path}: its config holds no valid zoo spec ({e})") from None
        weights = infos.get("model.weights.h5")
        values = sum(int(np.prod(s)) for s in spec.param_shapes().values())
        if weights is None or weights.file_size < 4 * values:
            have = weights.file_size if weights else 0
            raise ConversionError(f"{path}: its spec has {values:,} parameters and statistics ({4 * values:,} bytes) "
                                  f"but its weights member holds {have:,} bytes; refused as damaged")
        return spec, config["class_name"], z.read("model.weights.h5")


def read_archive(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    """The weights of a zoo .keras archive, read by layer name, checked before Keras opens it; Keras then
    loads the archive (in its own layer order) and must find the same values."""
    try:
        spec, cls, member = _archive_check(path)
        with h5py.File(io.BytesIO(member), "r") as f:
            weights = _read(_h5_datasets(_h5_layers(f, path), spec, path), spec)
        del member
        ckpt = Checkpoint(weights, "keras_archive", spec=spec)
        if cls == LEGACY_CLASS:  # its class is gone: its weights, by layer name, are all there is
            ckpt.notes.append("an archive of multizoo 0.1 (class NiN), read by layer name")
            return ckpt
        loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"{path} is not a readable .keras archive (truncated or corrupt?): "
                              f"{one_line(e)}") from None
    if not keras_model.owns(loaded):
        raise ConversionError(f"{path} holds a Keras model of class {type(loaded).__name__}, not a zoo model")
    by_keras = keras_model.get_weights(loaded)
    crossed = [k for k in weights if not np.array_equal(by_keras[k], weights[k])]
    if crossed:
        raise ConversionError(f"{path}: Keras loads {', '.join(crossed[:4])} from other layers than their names say "
                              f"(its layers renumbered?); refused")
    return ckpt


def write_weights(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    keras_model.build(spec, weights).save_weights(path)
    with h5py.File(path, "a") as f:  # the spec beside the weights: Keras ignores root attributes
        f.attrs[SPEC_ATTR] = spec.to_json()
        f.attrs[VERSION_KEY] = FORMAT_VERSION
        f.attrs[DIGEST_KEY] = digest(weights, spec.to_json())


def write_archive(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    keras_model.build(spec, weights).save(path)
