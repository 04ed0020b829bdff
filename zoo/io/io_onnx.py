"""ONNX files (.onnx): the zoo's own graph (zoo/frameworks/onnx_model.py), whose initializers are the canonical
weights under their canonical names, with the model, spec and SHA-256 of the tensors in its metadata_props
(as in the zoo's safetensors). Files from elsewhere (torch.onnx.export, either exporter) of convolutional
networks read too; other projects' transformers and ConvNeXts (LayerNormalization, MatMul, Softmax, Erf, ...)
are refused, by name, with the way round (convert the PyTorch checkpoint).

Reading runs none of the file's graph and reads nothing outside the model's folder:
  * the file's size is bounded before it is parsed, and it is parsed without its external data;
  * graphs with ops outside READ_OPS, or a default-domain opset outside MIN_OPSET to the newest the
    installed onnxruntime runs, are refused, naming them;
  * external data (torch.onnx.export(dynamo=True) keeps the weights in `model.onnx.data` beside the model)
    is read only from regular files inside the model's folder, and only within their size.

A foreign file's weights are the float tensors that a Conv, Gemm or BatchNormalization takes as weights:
initializers, Constant nodes, and Identity nodes of them (torch's exporter stores equal tensors once and names
the others through Identity nodes: a fresh BatchNorm's running_mean is then an Identity of another layer's zero
bias). Shape constants, pooling corrections and other glue are not weights. zoo.io.read then applies the key
maps and infers the spec from the shapes, as for a foreign .pt.

`Graph` runs a file's own graph, so that a conversion from it is verified against what the file computes.
"""

from __future__ import annotations

import functools
import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zoo.frameworks import onnx_model
from zoo.io.checkpoint import DIGEST_KEY, Checkpoint, ConversionError, check_digest, digest, digest_note, one_line
from zoo.io.io_safetensors import FORMAT_TAG, metadata, spec_from_metadata
from zoo.spec import ModelSpec

MAX_BYTES = 2**31  # protobuf's limit on one message: larger models keep their weights as external data
# Opset 10 is the first whose pools take ceil_mode and whose Slice takes its bounds as inputs, as the zoo's
# graphs need; the newest is the installed onnxruntime's (`newest_opset`).
MIN_OPSET = 10
# The glue torch.onnx.export writes around these networks' layers (torch 2.13): the legacy exporter
# (dynamo=False) writes the zoo's own ops, with Shape, Gather, Unsqueeze, Concat, Reshape and Constant for a
# forward that flattens with x.view(x.size(0), -1), and Dropout in training mode; the dynamo exporter
# flattens through Reshape, Shape, Gather, Squeeze, Unsqueeze, Range, Mul and Add, pools adaptively with
# ReduceMean, and without its optimizer (optimize=False) builds zero biases with Constant, CastLike and Expand.
GLUE_OPS = frozenset({"Reshape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Constant", "Dropout", "Range",
                      "Expand", "CastLike"})
READ_OPS = onnx_model.WRITTEN_OPS | GLUE_OPS
# The ops of a file from elsewhere: a convolutional network's and the exporter's glue. The zoo's transformer ops
# appear in its own files only: read from another project's, their weights (LayerNorm's, MatMul's) are not found.
FOREIGN_OPS = onnx_model.CONV_OPS | GLUE_OPS
# The inputs of each op that hold weights, by position (Conv's W and B, Gemm's B and C, BatchNorm's four)
WEIGHT_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2, 3, 4)}
FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
               TensorProto.DOUBLE: "float64"}
_DEFAULT_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------- writing

def write(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    weights = {k: np.asarray(weights[k], np.float32) for k in spec.param_shapes()}
    proto = onnx_model.to_onnx(spec, weights, metadata=metadata(spec, {DIGEST_KEY: digest(weights, spec.to_json())}))
    Path(path).write_bytes(proto.SerializeToString())


# --------------------------------------------------------------------------- reading

def read(path: Path, spec: ModelSpec | None = None, model: str | None = None, *,
         check_graph: bool = True) -> Checkpoint:
    """The file's weights, and a zoo file's spec; a zoo file whose graph is not its spec's is refused (unless not
    `check_graph`: `zoo diff` runs such a file's own graph, layer by layer, to show where it parts)."""
    path = Path(path)
    proto = load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    tensors = _float_tensors(path, proto.graph)
    ckpt = Checkpoint({}, "onnx")
    # A zoo file is one with any of its marks: a damaged one must not read as a foreign file, unchecked.
    if meta.get("format") == FORMAT_TAG or DIGEST_KEY in meta:
        if meta.get("format") != FORMAT_TAG:
            raise ConversionError(f"{path}: its zoo metadata is damaged (format {_shown(meta.get('format', ''), 40)!r}"
                                  f" instead of {FORMAT_TAG!r}); copy or write it again")
        ckpt.spec = spec_from_metadata(path, meta)
        if DIGEST_KEY not in meta:  # every zoo .onnx has one: its key was damaged
            raise ConversionError(f"{path}: its zoo metadata lacks the SHA-256 of its tensors ({DIGEST_KEY}): the "
                                  f"file is damaged; copy or write it again")
        if check_graph:
            check_structure(path, proto, ckpt.spec)
        ckpt.weights = {k: _array(path, k, tensors[k]) for k in ckpt.spec.param_shapes() if k in tensors}
        version = meta["format_version"]
        check_digest(path, ckpt.weights, meta[DIGEST_KEY], meta["spec"], version)
        ckpt.notes.append(f"zoo ONNX file, {digest_note(version)}")
    else:
        _check_foreign_ops(path, proto.graph)
        names = _weight_names(proto.graph, tensors)
        if not names:
            raise ConversionError(f"{path}: no Conv, Gemm or BatchNormalization in its graph takes a float tensor "
                                  f"that the file holds: it holds no weights the zoo can read")
        _check_layers(path, proto.graph, tensors)
        ckpt.weights = {k: _array(path, k, tensors[k]) for k in names}
        ckpt.hint = _export_hint(proto.graph, names)
        aliases = [k for k in names if k not in {t.name for t in proto.graph.initializer}]
        if aliases:
            ckpt.notes.append(f"{len(aliases)} tensor(s) read through Identity or Constant nodes ({_some(aliases)}); "
                              f"torch.onnx.export stores equal tensors once")
    ckpt.notes.append(describe(proto))
    return ckpt


def load(path: Path) -> onnx.ModelProto:
    """The model, checked (size, opset, ops) and with its external data read in, bounded."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(f"{path} is empty (0 bytes), not an ONNX model")
    if size > MAX_BYTES:
        raise ConversionError(f"{path} is {size:,} bytes; an ONNX file holds at most 2 GiB (protobuf's limit), "
                              f"and larger models keep their weights as external data")
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    proto = onnx.ModelProto()
    try:  # not onnx.load, which guesses a text format from some suffixes and may follow external data
        proto.ParseFromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError, RecursionError for deep nesting, ...
        raise ConversionError(f"{path} is not a readable ONNX file (truncated or corrupt?): {one_line(e)}") from None
    if not proto.graph.node:
        raise ConversionError(f"{path} is not a readable ONNX file (truncated or corrupt?): it holds no graph")
    _check_opset(path, proto)
    _check_ops(path, proto.graph)
    if len(proto.graph.sparse_initializer):
        raise ConversionError(f"{path}: its graph holds sparse initializers; the zoo reads dense tensors only")
    _read_external(path, proto.graph)
    return proto


@functools.cache
def newest_opset() -> int:
    """The newest default-domain opset the installed onnxruntime runs (it refuses newer ones when it loads a model)."""
    def runs(version: int) -> bool:
        x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
        model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", version)])
        model.ir_version = onnx_model.IR_VERSION
        options = onnx_model.session_options()
        options.log_severity_level = 4  # its refusal of a newer opset is the answer, not an error to print
        try:
            onnx_model.session(model, options)
            return True
        except Exception:
            return False

    lo, hi = onnx_model.OPSET, 256  # the zoo writes OPSET, which runs
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if runs(mid) else (lo, mid - 1)
    return lo


def _check_opset(path: Path, proto: onnx.ModelProto) -> None:
    versions = [o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ConversionError(f"{path} declares no ONNX opset (its opset_import lacks the default domain), which "
                              f"every runtime needs: export it again")
    if len(versions) > 1:
        listed = ", ".join(map(str, versions))
        raise ConversionError(f"{path} declares the ONNX opset {len(versions)} times ({listed}); a model has one "
                              f"version of each domain: damaged, export it again")
    version, newest = versions[0], newest_opset()
    if MIN_OPSET <= version <= newest:
        return
    import onnxruntime

    runs = f"the zoo reads opsets {MIN_OPSET} to {newest}, the newest that onnxruntime {onnxruntime.__version__} runs"
    if version < MIN_OPSET:
        raise ConversionError(f"{path} uses ONNX opset {version}; {runs} ({MIN_OPSET} is the first with the pools and "
                              f"slices of the zoo's graphs): export it again with a newer opset, e.g. "
                              f"torch.onnx.export(..., opset_version={onnx_model.OPSET})")
    raise ConversionError(f"{path} uses ONNX opset {version}; {runs}: upgrade onnxruntime (pip install -U "
                          f"onnxruntime), or export it again with an older opset, e.g. "
                          f"torch.onnx.export(..., opset_version={onnx_model.OPSET})")


def _check_ops(path: Path, graph: onnx.GraphProto) -> None:
    unknown: dict[str, int] = {}
    for node in graph.node:
        if node.domain not in _DEFAULT_DOMAINS or node.op_type not in READ_OPS:
            name = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
            unknown[name] = unknown.get(name, 0) + 1
    if unknown:
        _check_foreign_ops(path, graph, unknown)  # torch's export of a transformer holds others beside these
        listed = ", ".join(f"{_shown(k, 60)} ({n})" for k, n in list(unknown.items())[:8])
        raise ConversionError(f"{path}: its graph holds ops the zoo does not read: {listed}"
                              f"{' ...' if len(unknown) > 8 else ''}. The zoo reads convolutional networks of "
                              f"{', '.join(sorted(onnx_model.CONV_OPS))} (and the glue torch.onnx.export writes "
                              f"around them); this is another kind of model")


def _check_foreign_ops(path: Path, graph: onnx.GraphProto, unknown: dict[str, int] | None = None) -> None:
    """Refuse a transformer or ConvNeXt the zoo did not write: their ops are read from its own files only (the
    weights sit in LayerNormalization and MatMul nodes, in the layout torch's exporter chose). `unknown`: ops
    outside READ_OPS too, listed after them."""
    found: dict[str, int] = {}
    for node in graph.node:
        if node.domain in _DEFAULT_DOMAINS and node.op_type in onnx_model.WRITTEN_OPS - FOREIGN_OPS:
            found[node.op_type] = found.get(node.op_type, 0) + 1
    if found:
        found.update(unknown or {})
        listed = ", ".join(f"{_shown(k, 60)} ({n})" for k, n in list(found.items())[:8])
        raise ConversionError(f"{path}: its graph holds {listed}{' ...' if len(found) > 8 else ''}: a transformer "
                              f"or ConvNeXt (LayerNorm, GELU, attention) that the zoo did not write; the zoo reads "
                              f"those from its own .onnx files, not yet from other projects' exports: convert the "
                              f"PyTorch checkpoint instead (zoo convert MODEL model.pt out.onnx)")


def _read_external(path: Path, graph: onnx.GraphProto) -> None:
    """Read the initializers kept in other files into the model, after checking where and how large they are."""
    folder = os.path.realpath(path.parent)
    sizes: dict[str, int] = {}  # of each external file read
    total = 0
    for t in graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        where = f"{path}: tensor {_shown(t.name)} keeps its data in {_shown(location, 200)!r}"
        if not location:
            raise ConversionError(f"{path}: tensor {_shown(t.name)} keeps its data in another file but names none")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location.split("/")[0]:
            raise ConversionError(f"{where}, an absolute path; refused: external data must lie in the model's folder")
        if ".." in location.replace("\\", "/").split("/"):
            raise ConversionError(f"{where}, which leaves the model's folder; refused: external data must lie in it")
        real = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([folder, real]) != folder or real == folder:
            raise ConversionError(f"{where}, which resolves to {real}, outside the model's folder (a symbolic "
                                  f"link?); refused: external data must lie in it")
        if t.data_type not in _ITEM_SIZES or any(d < 0 for d in t.dims):
            raise ConversionError(f"{where} for a {_type_name(t.data_type)} tensor of shape {list(t.dims)[:8]}; the "
                                  f"zoo reads numeric tensors only")
        nbytes = math.prod(t.dims) * _ITEM_SIZES[t.data_type]
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", nbytes))
        except ValueError:
            raise ConversionError(f"{where} at an offset or length that is not a number: damaged") from None
        if offset < 0 or length != nbytes:
            raise ConversionError(f"{where} at offset {offset:,}, {length:,} bytes long, for a "
                                  f"{_type_name(t.data_type)} tensor of shape {list(t.dims)} ({nbytes:,} bytes): "
                                  f"damaged")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would block a plain open
        except OSError as e:
            raise ConversionError(f"{where}, which cannot be read beside the model ({e.strerror}): copy it into "
                                  f"{path.parent}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # a folder opens too, and only reading it fails ("Is a directory: 6")
            os.close(fd)
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConversionError(f"{where}, which resolves to {real}, {kind}; refused: external data is a regular "
                                  f"file beside the model")
        with os.fdopen(fd, "rb") as f:
            size = info.st_size
            if offset + nbytes > size:
                raise ConversionError(f"{where} at bytes {offset:,} to {offset + nbytes:,}, past its end ({size:,} "
                                      f"bytes): truncated, or not this model's data")
            sizes[real] = size
            total += nbytes
            if total > sum(sizes.values()):  # ranges named over and over would make a small file claim gigabytes
                raise ConversionError(f"{path}: its tensors claim {total:,} bytes of external data from files of "
                                      f"{sum(sizes.values()):,} bytes (overlapping ranges); refused as damaged")
            f.seek(offset)
            t.raw_data = f.read(nbytes)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT


_ITEM_SIZES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8,
               TensorProto.INT64: 8, TensorProto.INT32: 4, TensorProto.INT16: 2, TensorProto.INT8: 1,
               TensorProto.UINT8: 1, TensorProto.BOOL: 1}


def _type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"unknown type {data_type}"


def _float_tensors(path: Path, graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """Every float tensor the graph holds, by the name nodes use: initializers, Constant nodes' values, and
    Identity nodes of those (in graph order, so chains of them resolve)."""
    found = {t.name: t for t in graph.initializer if t.data_type in FLOAT_TYPES}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                         None)
            if value is not None and value.data_type in FLOAT_TYPES:
                if value.data_location == TensorProto.EXTERNAL:
                    raise ConversionError(f"{path}: Constant node {_shown(node.output[0])} keeps its value in another "
                                          f"file; the zoo reads external data of initializers only")
                found[node.output[0]] = value
        elif node.op_type == "Identity" and len(node.input) == 1 and len(node.output) == 1 and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return found


def check_structure(path: Path, proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """Refuse a zoo file whose graph is not, node for node, the one the zoo writes for its spec.

    The zoo reads a file of its own as its spec and weights, and runs the spec: that is right only when the
    file's graph is the spec's. Ops, their order, inputs, outputs and attributes, the graph's inputs and
    outputs, every initializer's name, type and shape (the values of those that are not weights: the digest
    covers the weights), the opsets and the IR version are compared with the graph `write` makes (at the
    file's input size); intermediate tensors may be named otherwise. Nothing runs.
    """
    dims = _dims(proto.graph.input[0]) if len(proto.graph.input) == 1 else None
    size = tuple(dims[2:]) if dims and len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]) else None
    zeros = {k: np.zeros(s, np.float32) for k, s in spec.param_shapes().items()}
    expected = onnx_model.to_onnx(spec, zeros, size)
    weights = set(zeros)
    file, want = _outline(path, proto, weights), _outline(path, expected, weights)
    for part in want:
        got, wanted = file[part], want[part]
        if got == wanted:
            continue
        i = next((i for i, (a, b) in enumerate(zip(got, wanted)) if a != b), min(len(got), len(wanted)))
        shown = (f"{part} {i + 1} is {_shown(str(got[i]), 160) if i < len(got) else 'missing'} where the zoo writes "
                 f"{_shown(str(wanted[i]), 160) if i < len(wanted) else 'nothing'}")
        if len(got) != len(wanted):
            shown += f" ({len(got)} {part}s, the zoo writes {len(wanted)})"
        raise ConversionError(f"{path}: its graph is not the one the zoo writes for its spec ({spec.name}): {shown}. "
                              f"It was edited after it was written, and would not compute what its spec and weights "
                              f"do; refused. Write it again from the original (zoo convert)")


def _outline(path: Path, proto: onnx.ModelProto, weights: set[str]) -> dict[str, list]:
    """What a zoo graph computes, part by part, with its intermediate tensors named by the order they are made."""
    names = {t.name: t.name for t in proto.graph.initializer} | {v.name: v.name for v in proto.graph.input}
    names[""] = ""  # an optional input left out
    outputs = {o.name for o in proto.graph.output}
    nodes, made = [], 0
    for node in proto.graph.node:
        inputs = [names.get(n, f"undefined {n!r}") for n in node.input]  # a cycle, too, uses what is not made yet
        for n in node.output:
            names[n] = n if n in outputs else f"t{made}"
            made += 1
        attrs = {a.name: _attribute(a) for a in sorted(node.attribute, key=lambda a: a.name)}
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        nodes.append(f"{domain + '.' if domain else ''}{node.op_type}({', '.join(inputs)}) -> "
                     f"{', '.join(names[n] for n in node.output)} {attrs}")

    def value(v: onnx.ValueInfoProto) -> str:
        return f"{v.name}: {_type_name(v.type.tensor_type.elem_type)} {_dims(v)}"

    def initializer(t: TensorProto) -> str:
        text = f"{t.name}: {_type_name(t.data_type)} {list(t.dims)}"
        return text if t.name in weights else f"{text} = {_array(path, t.name, t).tolist()}"

    return {"IR version": [str(proto.ir_version)],
            "opset": [f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import],
            "local function": [f.name for f in proto.functions],
            "training graph": [str(len(proto.training_info))] if len(proto.training_info) else [],
            "input": [value(v) for v in proto.graph.input],
            "output": [value(v) for v in proto.graph.output],
            "initializer": [initializer(t) for t in proto.graph.initializer],
            "node": nodes}


def _attribute(a: onnx.AttributeProto):
    if a.type == onnx.AttributeProto.TENSOR:
        return f"tensor {_type_name(a.t.data_type)} {list(a.t.dims)}"  # a Constant: the nodes differ already
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or a.ref_attr_name:
        return f"{onnx.AttributeProto.AttributeType.Name(a.type).lower()} {a.ref_attr_name}"
    value = helper.get_attribute_value(a)
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _weight_names(graph: onnx.GraphProto, tensors: dict[str, TensorProto]) -> list[str]:
    """The float tensors that Conv, Gemm and BatchNormalization nodes take as weights, in graph order."""
    names: dict[str, None] = {}
    for node in graph.node:
        for i in WEIGHT_INPUTS.get(node.op_type, ()):  # of the default domain: load() refused others
            if i < len(node.input) and node.input[i] in tensors:
                names[node.input[i]] = None
    return list(names)


# Attributes of the layers that hold weights whose values the zoo's layers have, and PyTorch's exporter writes:
# otherwise the weights are in another layout (Gemm's transB=0 holds [in, out]) or mean something the spec cannot
# say (dilated or grouped convolutions).
LAYER_ATTRIBUTES = {"Gemm": {"transA": 0, "transB": 1, "alpha": 1.0, "beta": 1.0},
                    "Conv": {"group": 1, "dilations": None}}  # None: every value 1


def _check_layers(path: Path, graph: onnx.GraphProto, tensors: dict[str, TensorProto]) -> None:
    for node in graph.node:
        if node.op_type not in LAYER_ATTRIBUTES or not any(i in tensors for i in node.input[1:]):
            continue
        wanted = LAYER_ATTRIBUTES[node.op_type]
        for a in node.attribute:
            if a.name not in wanted:
                continue
            value, want = helper.get_attribute_value(a), wanted[a.name]
            if (any(v != 1 for v in value) if want is None else value != want):
                if node.op_type == "Conv":  # the zoo has grouped and dilated convs; its foreign reader not yet
                    raise ConversionError(
                        f"{path}: Conv node {_shown(node.name or node.output[0], 60)} has {a.name}="
                        f"{_shown(str(value), 40)}: grouped and dilated convolutions are not read from another "
                        f"project's .onnx yet (the zoo's own .onnx files of such models read); convert the "
                        f"PyTorch checkpoint instead (zoo convert MODEL model.pt out.onnx)")
                raise ConversionError(f"{path}: {node.op_type} node {_shown(node.name or node.output[0], 60)} has "
                                      f"{a.name}={_shown(str(value), 40)}; the zoo's layers have "
                                      f"{a.name}={1 if want is None else want}, as PyTorch's exporter writes them, "
                                      f"so its weights would not mean the same in a zoo model")


def _array(path: Path, name: str, t: TensorProto) -> np.ndarray:
    try:
        a = numpy_helper.to_array(t)
    except Exception as e:  # a size that disagrees with the data, an unknown type, ...
        raise ConversionError(f"{path}: tensor {_shown(name)} of shape {list(t.dims)[:8]} cannot be read: "
                              f"{one_line(e, 200)}: damaged") from None
    return np.array(a)  # a writable copy, not a view of the protobuf's bytes


def _export_hint(graph: onnx.GraphProto, names: list[str]) -> str:
    """How to export again, when the exporter left the BatchNorm tensors out (said when no spec fits)."""
    unnamed = [k for k in names if k.startswith("onnx::")]
    if unnamed:
        return (f"Its weights named {_some(unnamed)} are how torch.onnx.export (dynamo=False) names a convolution "
                f"into which its constant folding merged the BatchNorm after it (in eval mode): the BatchNorm "
                f"tensors are gone, so no zoo model fits. Export again with do_constant_folding=False (or "
                f"training=torch.onnx.TrainingMode.PRESERVE)")
    merged = [n.input[2] for n in graph.node if n.op_type == "Conv" and len(n.input) > 2
              and n.input[2] == n.input[1] + "_bias"]
    if merged:
        return (f"Its biases named {_some(merged)} are how torch.onnx.export(dynamo=True) names a convolution into "
                f"which its optimizer merged the BatchNorm after it: the BatchNorm tensors are gone, so no zoo model "
                f"fits. Export again with optimize=False (or with dynamo=False, do_constant_folding=False)")
    return ""


def _shown(text: str, limit: int = 80) -> str:
    """A name from the file, for a message: shortened, and on one line whatever it holds."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", "?", text[:limit])


def _some(names: list[str]) -> str:
    return ", ".join(_shown(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """An input's dims: a size, a symbolic name, or None where unknown; None when its rank is unknown."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param or None for d in t.shape.dim]


def _inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (old files list their initializers as inputs too)."""
    held = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in held]


def describe(proto: onnx.ModelProto) -> str:
    """Opset, producer and input of a model, in one line."""
    opset = next((o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS), "?")
    producer = " ".join(p for p in (_shown(proto.producer_name, 40), _shown(proto.producer_version, 20)) if p)
    inputs = _inputs(proto.graph)
    text = f"ONNX opset {opset}, IR version {proto.ir_version}, written by {producer or 'an unnamed tool'}"
    if len(inputs) != 1:
        return f"{text}; {len(inputs)} inputs"
    dims = _dims(inputs[0])
    if dims is None:
        return f"{text}; input {_shown(inputs[0].name, 40)!r} of unknown shape"
    shown = "[" + ", ".join("?" if d is None else _shown(str(d), 20) for d in dims) + "]"
    batch = "" if not dims else ", batch fixed at " + str(dims[0]) if isinstance(dims[0], int) else ", dynamic batch"
    return f"{text}; input {_shown(inputs[0].name, 40)!r} {shown}{batch}"


# --------------------------------------------------------------------------- running a file's own graph

class Graph:
    """A file's own graph in onnxruntime: what a conversion from the file is verified against.

    >>> graph = Graph('model.onnx')        # checked and bounded as `read` does
    >>> graph.batch, graph.size            # fixed by the file (None: any)
    (1, (96, 96))
    >>> graph(x)                           # [B, C, H, W] -> logits, run in batches of graph.batch
    """

    runner = "onnxruntime, the file's own graph"

    def __init__(self, path: Path, max_elements: int = 2**25):
        path = Path(path)
        proto = load(path)
        inputs, outputs = _inputs(proto.graph), proto.graph.output
        dims = _dims(inputs[0]) if len(inputs) == 1 else None
        if dims is None or len(dims) != 4 or not outputs \
                or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ConversionError(f"{path}: its graph ({describe(proto)}) does not take one float [B, C, H, W] "
                                  f"batch and give logits, as a zoo model does")
        for node in proto.graph.node:
            if node.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i for a in node.attribute):
                raise ConversionError(f"{path}: its graph was exported in training mode (BatchNormalization "
                                      f"{_shown(node.name, 60)} normalizes with batch statistics): export it with the "
                                      f"model in eval mode")
        fixed = [d if isinstance(d, int) else None for d in dims]
        self.batch, self.channels = fixed[0], fixed[1]
        self.size = (fixed[2], fixed[3]) if fixed[2] and fixed[3] else None
        self.path, self.input, self.output = path, inputs[0].name, outputs[0].name
        self.max_elements, self._skeleton, self._checked = max_elements, _skeleton(proto), set()
        try:
            self.session = onnx_model.session(proto)
        except Exception as e:
            raise ConversionError(f"{path}: onnxruntime cannot run its graph: {one_line(e)}") from None

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, C, H, W] -> [B, classes]
        x = np.ascontiguousarray(x, np.float32)
        step = self.batch or len(x)
        self._check_activations((step, *x.shape[1:]))
        try:
            return np.concatenate([self.session.run([self.output], {self.input: x[i:i + step]})[0]
                                   for i in range(0, len(x), step)])
        except Exception as e:
            raise ConversionError(f"{self.path}: onnxruntime could not run its graph on a {list(x.shape)} input: "
                                  f"{one_line(e)}") from None

    def _check_activations(self, shape: tuple[int, ...]) -> None:
        """Refuse, before onnxruntime allocates them, activations of over `max_elements` values on an input of
        `shape` (onnx's shape inference, which also refuses a graph inconsistent with itself)."""
        if shape in self._checked:
            return
        model = onnx.ModelProto()
        model.CopyFrom(self._skeleton)
        model.graph.input.append(helper.make_tensor_value_info(self.input, TensorProto.FLOAT, list(shape)))
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception as e:
            raise ConversionError(f"{self.path}: its graph cannot run on a {list(shape)} input: "
                                  f"{one_line(e)}") from None
        for v in [*inferred.graph.value_info, *inferred.graph.output]:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            made = f"{self.path}: on a {list(shape)} input its graph makes {_shown(v.name, 60)} of shape {dims[:8]}"
            if any(d is not None and d < 1 for d in dims):  # onnxruntime has crashed (SIGFPE) on empty maps
                raise ConversionError(f"{made}, which is empty; refused (a zoo model makes no empty maps)")
            if None not in dims and math.prod(dims) > self.max_elements:
                raise ConversionError(f"{made}, over {self.max_elements:,} values; refused (a zoo model of this "
                                      f"size makes none so large)")
        self._checked.add(shape)


def check_graph(path: Path, spec: ModelSpec, weights: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    """Refuse a file from elsewhere whose own graph does not compute what `spec` with `weights` does.

    Its weights were read by the ops that take them and its spec inferred from their shapes; the glue between
    them (strides, activations, pools, ...) is the file's own. So the graph runs on a seeded probe, as
    `zoo convert` verifies it, against the spec's model in onnxruntime: within `tol` of the logits' scale.
    """
    graph = Graph(path)
    if graph.channels not in (None, spec.in_channels):
        raise ConversionError(f"{path}: its graph takes {graph.channels} input channel(s), {spec.name} "
                              f"{spec.in_channels}: the file holds another model")
    batch, size = max(2, graph.batch or 2), graph.size or tuple(spec.input_size)
    reason = spec.fits(size)
    if reason is None and max(math.prod(s) for _, s in spec.layer_shapes(size, batch)) > graph.max_elements:
        reason = f"its activations would exceed {graph.max_elements:,} values"
    if reason is not None:
        raise ConversionError(f"{path}: its graph takes {size[0]}x{size[1]} inputs, at which {spec.name} (read from "
                              f"its weights) does not run ({reason}); check that the file holds this model")
    x = np.random.default_rng(0).standard_normal((batch, spec.in_channels, *size)).astype(np.float32)
    a = graph(x).astype(np.float64)
    b = onnx_model.OnnxModel(spec, weights)(x)
    scale = float(np.abs(a[np.isfinite(a)]).max(initial=0.0))
    err = float(np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b)).max()) if a.shape == b.shape else math.inf
    if not err <= tol * max(1.0, scale):  # NaN fails
        raise ConversionError(f"{path}: its own graph and {spec.name} (read from its weights) differ by {err:.3e} "
                              f"(scale {scale:.3g}) on a {list(x.shape)} probe: the graph computes something other "
                              f"than that model, between the layers that hold weights; refused")


def trace_file(path: Path, spec: ModelSpec, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(layer path, output) of a zoo file's own graph on `x` [B, C, H, W]: each of the spec's layers is the tensor
    the zoo's graph names its output; the last one is the file's logits. A layer whose tensor the file lacks
    is left out (`zoo diff` shows it as diverged)."""
    graph = Graph(path)
    graph._check_activations(tuple(x.shape))
    proto = load(path)
    _, outputs = onnx_model._proto(spec, {k: np.zeros(s, np.float32) for k, s in spec.param_shapes().items()},
                                   tuple(x.shape[2:]))
    made = {o for n in proto.graph.node for o in n.output}
    logits = proto.graph.output[0].name
    last = outputs[-1][1] if outputs else None
    wanted = [(layer, logits if name == last else name) for layer, name in outputs if name == last or name in made]
    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in dict.fromkeys(n for _, n in wanted) if name not in known)
    try:
        values = onnx_model.session(proto).run([n for _, n in wanted], {graph.input: np.ascontiguousarray(x)})
    except Exception as e:
        raise ConversionError(f"{path}: onnxruntime could not run its graph on a {list(x.shape)} input: "
                              f"{one_line(e)}") from None
    return [(layer, v) for (layer, _), v in zip(wanted, values)]


def _skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its float data (shapes and types kept) and with outputs of unknown shape, for shape
    inference at other inputs."""
    held = {t.name for t in proto.graph.initializer}
    graph = helper.make_graph(list(proto.graph.node), "skeleton", [],
                              [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None)
                               for o in proto.graph.output])
    for t in proto.graph.initializer:
        if t.data_type in FLOAT_TYPES:
            graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
        else:
            graph.initializer.append(t)
    graph.input.extend(v for v in proto.graph.input if v.name in held)  # files of IR < 4 list them as inputs
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    return model
