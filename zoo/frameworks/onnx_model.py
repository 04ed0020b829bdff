"""Any zoo spec as an ONNX graph, run by onnxruntime. Input [B, C, H, W]; no PyTorch involved.

The op table (`_Graph.leaf`) writes each spec op as the ONNX nodes with its exact semantics.
ONNX is NCHW and keeps PyTorch's weight layouts (conv OIHW, Gemm with transB holds [out, in]),
so the graph's initializers are the canonical weights under their canonical names, unchanged.

The batch axis is dynamic. The spatial size is fixed per graph (the spec's input size in a
written file): pooling's ceil_mode windows, average-pool divisors and adaptive-pool bins are then
static, and written with plain ops rather than trusting each runtime's reading of ceil_mode:

  * ceil_mode: explicit extra padding on the bottom/right (MaxPool ignores padded cells);
  * average pools whose PyTorch divisor differs from ONNX's (the extra cells never count):
    AveragePool, then a constant per-cell correction;
  * adaptive pools: GlobalAveragePool, an AveragePool when the bins divide the input, else
    one Slice + ReduceMean per bin and axis.

A model here (`OnnxModel`) holds the spec and canonical weights, and one onnxruntime session
per input size it has seen (built on first use).
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from zoo.spec import (
    Act,
    AdaptivePool,
    BatchNorm,
    Conv,
    Dropout,
    DropPath,
    Flatten,
    Linear,
    ModelSpec,
    Parallel,
    Pool,
    adaptive_bins,
    join_shapes,
    run,
)

LAYOUT = "NCHW"
OPSET = 17  # onnxruntime >= 1.13, OpenVINO, TensorRT 8.6 all run it
IR_VERSION = 8  # the IR of opset 17: older runtimes refuse a newer IR even when they know the ops
INPUT, OUTPUT = "input", "logits"
# Every op a zoo graph is written with. A file holding others is not one the zoo wrote or can match.
WRITTEN_OPS = frozenset({"Conv", "BatchNormalization", "Relu", "Sigmoid", "MaxPool", "AveragePool", "Mul",
                         "GlobalAveragePool", "Slice", "ReduceMean", "Concat", "Gemm", "Flatten", "Identity",
                         "Add", "Clip", "HardSigmoid", "HardSwish"})


class _Graph:
    """Nodes and initializers as `run` walks the spec; `leaf` and `join` are the op table."""

    def __init__(self):
        self.nodes, self.consts = [], []
        self.outputs: list[tuple[str, str]] = []  # (layer path, tensor name), for traces
        self._n = 0

    def name(self, path: str, what: str = "") -> str:
        self._n += 1
        return f"{path or 'model'}{'/' + what if what else ''}:{self._n}"

    def node(self, op_type: str, inputs: list[str], path: str, **attrs) -> str:
        out = self.name(path, op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, path: str, what: str, array: np.ndarray) -> str:
        name = f"{path}/{what}"
        self.consts.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def params(self, path: str, op) -> list[str]:
        return [f"{path}.{k}" for k in (*op.params(), *op.buffers())]

    def leaf(self, path: str, op, x: tuple[str, tuple]) -> tuple[str, tuple]:
        name, shape = x
        out_shape = op.out_shape(shape)
        if isinstance(op, Conv):
            (ph, pw) = op.padding
            extra = {} if op.groups == 1 else {"group": op.groups}  # attributes at their defaults left out:
            if op.dilation != (1, 1):                               # the graphs of earlier zoos stay the same
                extra["dilations"] = list(op.dilation)
            y = self.node("Conv", [name, *self.params(path, op)], path, kernel_shape=list(op.kernel_size),
                          strides=list(op.stride), pads=[ph, pw, ph, pw], **extra)
        elif isinstance(op, BatchNorm):
            y = self.node("BatchNormalization", [name, *self.params(path, op)], path, epsilon=op.eps)
        elif isinstance(op, Act):
            y = self._activation(path, op.kind, name)
        elif isinstance(op, Pool):
            y = self._pool(path, op, name, shape[1:])
        elif isinstance(op, AdaptivePool):
            y = self._adaptive(path, op, name, shape[1:])
        elif isinstance(op, Linear):
            y = self.node("Gemm", [name, *self.params(path, op)], path, transB=1)
        elif isinstance(op, Flatten):
            y = self.node("Flatten", [name], path, axis=1)  # NCHW order: PyTorch's
        elif isinstance(op, (Dropout, DropPath)):
            y = self.node("Identity", [name], path)  # inference: dropout and stochastic depth do nothing
        else:
            raise TypeError(f"no ONNX op for {op!r}")
        return y, out_shape

    def _activation(self, path: str, kind: str, x: str) -> str:
        if kind == "relu":
            return self.node("Relu", [x], path)
        if kind == "sigmoid":
            return self.node("Sigmoid", [x], path)
        if kind == "silu":  # x * sigmoid(x): opset 17 has no SiLU
            return self.node("Mul", [x, self.node("Sigmoid", [x], path)], path)
        if kind == "relu6":
            low, high = (self.const(path, what, np.array(v, np.float32)) for what, v in (("min", 0.0), ("max", 6.0)))
            return self.node("Clip", [x, low, high], path)
        if kind == "hardsigmoid":  # torch's relu6(x + 3) / 6; ONNX's default alpha is 0.2 (Keras 2's)
            return self.node("HardSigmoid", [x], path, alpha=1.0 / 6.0, beta=0.5)
        if kind == "hardswish":  # x * relu6(x + 3) / 6, as torch's
            return self.node("HardSwish", [x], path)
        raise TypeError(f"no ONNX op for activation {kind!r}")

    def _pool(self, path: str, op: Pool, x: str, hw: tuple[int, int]) -> str:
        extra = [op.extra(n, a) for a, n in enumerate(hw)]
        (ph, pw) = op.padding
        attrs = dict(kernel_shape=list(op.size), strides=list(op.stride), pads=[ph, pw, ph + extra[0], pw + extra[1]])
        if op.kind == "max":
            return self.node("MaxPool", [x], path, **attrs)
        if not op.count_include_pad:  # ONNX then counts the input cells alone, as PyTorch does
            return self.node("AveragePool", [x], path, count_include_pad=0, **attrs)
        y = self.node("AveragePool", [x], path, count_include_pad=1, **attrs)  # divides by the window's area
        divisors = np.outer(op.divisors(hw[0], 0), op.divisors(hw[1], 1))
        area = op.size[0] * op.size[1]
        if np.all(divisors == area):
            return y
        scale = (area / divisors).astype(np.float32)[None, None]
        return self.node("Mul", [y, self.const(path, "divisor_correction", scale)], path)

    def _adaptive(self, path: str, op: AdaptivePool, x: str, hw: tuple[int, int]) -> str:
        if op.output_size == (1, 1):
            return self.node("GlobalAveragePool", [x], path)
        if all(n % o == 0 for n, o in zip(hw, op.output_size)):  # equal bins: a plain average pool
            k = [n // o for n, o in zip(hw, op.output_size)]
            return self.node("AveragePool", [x], path, kernel_shape=k, strides=k)
        for axis, (n, o) in enumerate(zip(hw, op.output_size), start=2):  # rows, then columns
            bins = []
            for i, (a, b) in enumerate(adaptive_bins(n, o)):
                bounds = [self.const(path, f"axis{axis}_bin{i}_{what}", np.array([v], np.int64))
                          for what, v in (("start", a), ("end", b), ("axis", axis))]
                piece = self.node("Slice", [x, *bounds], path)
                bins.append(self.node("ReduceMean", [piece], path, axes=[axis], keepdims=1))
            x = self.node("Concat", bins, path, axis=axis)
        return x

    def join(self, par: Parallel, outs: list[tuple[str, tuple]], path: str) -> tuple[str, tuple]:
        shape = join_shapes(par, [s for _, s in outs])
        names = [n for n, _ in outs]
        if par.join == "concat":
            return self.node("Concat", names, path, axis=1), shape
        y = names[0]
        for other in names[1:]:  # left to right, as every framework adds or multiplies ([B, C, 1, 1] broadcasts)
            y = self.node("Mul" if par.join == "mul" else "Add", [y, other], path)
        return y, shape


def to_onnx(spec: ModelSpec, weights: dict[str, np.ndarray], size: tuple[int, int] | None = None, *,
            metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The spec as an ONNX model for inputs of `size` (the spec's input size by default), any batch."""
    return _proto(spec, weights, size, metadata=metadata)[0]


def _proto(spec: ModelSpec, weights: dict[str, np.ndarray], size: tuple[int, int] | None = None, *,
           trace: bool = False, metadata: dict[str, str] | None = None) -> tuple[onnx.ModelProto, list]:
    """The model, and (layer path, tensor name) of each layer's output; with `trace`, those tensors
    are graph outputs too."""
    h, w = size or spec.input_size
    g = _Graph()

    def leaf(path, op, x):
        return g.leaf(path, op, x)

    def join(par, outs):
        return g.join(par, outs, "join")

    def after(path, node, y):
        g.outputs.append((path, y[0]))

    logits, _ = run(spec.body, (INPUT, (spec.in_channels, h, w)), leaf, join, after=after)
    nodes = g.nodes + [helper.make_node("Identity", [logits], [OUTPUT], name=OUTPUT)]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", spec.num_classes])]
    if trace:
        outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for _, name in g.outputs]
    initializers = [numpy_helper.from_array(np.ascontiguousarray(weights[k], np.float32), k)
                    for k in spec.param_shapes()]
    graph = helper.make_graph(
        nodes, spec.name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", spec.in_channels, h, w])],
        outputs, initializers + g.consts)
    model = helper.make_model(graph, producer_name="multizoo", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    if metadata:
        helper.set_model_props(model, metadata)
    return model, g.outputs


# --------------------------------------------------------------------------- sessions

def session_options(threads: int = 0, level: str = "all", spinning: bool = True) -> ort.SessionOptions:
    """The zoo's onnxruntime settings: all graph optimisations, sequential execution, intra-op threads
    (0: one per physical core). `zoo bench` measures the alternatives beside it."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's concern
    return opts


def session(proto: onnx.ModelProto, options: ort.SessionOptions | None = None,
            providers: list[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session on `providers` (default: the CPU). onnxruntime falls back to the CPU
    when another provider fails to start; that is refused here, so a GPU run is a GPU run."""
    providers = providers or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(proto.SerializeToString(), options or session_options(), providers=providers)
    if sess.get_providers()[0] != providers[0]:
        raise RuntimeError(f"onnxruntime could not start {providers[0]} (it runs on {sess.get_providers()}); "
                           f"available here: {ort.get_available_providers()}")
    return sess


class OnnxModel:
    """A zoo model in ONNX: the spec, its canonical weights, and an onnxruntime session per input size.

    >>> model = zoo.load('resnet18', framework='onnx', num_classes=10)
    >>> model(np.zeros((2, 3, 224, 224), np.float32)).shape
    (2, 10)
    >>> onnx.save(model.to_onnx(), 'resnet18.onnx')     # or: zoo convert, which also verifies it
    """

    def __init__(self, spec: ModelSpec, weights: dict[str, np.ndarray], options: ort.SessionOptions | None = None,
                 providers: list[str] | None = None):
        self.spec, self.options, self.providers = spec, options, providers
        self._weights = {k: np.array(weights[k], np.float32, order="C") for k in spec.param_shapes()}
        self._sessions: dict[tuple[int, int], ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def to_onnx(self, size: tuple[int, int] | None = None, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        """The model as an ONNX ModelProto for `size` (default: the spec's input size) and any batch."""
        return to_onnx(self.spec, self._weights, size, metadata=metadata)

    def session(self, size: tuple[int, int]) -> ort.InferenceSession:
        with self._lock:
            if size not in self._sessions:
                self._sessions[size] = session(self.to_onnx(size), self.options, self.providers)
            return self._sessions[size]

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, C, H, W] -> [B, num_classes]
        x = np.ascontiguousarray(x, np.float32)
        self.spec.check_input(x.shape, LAYOUT)
        if x.shape[0] == 0:  # onnxruntime's kernels do not all take an empty batch
            return np.zeros((0, self.spec.num_classes), np.float32)
        logits = self.session(tuple(x.shape[2:])).run([OUTPUT], {INPUT: x})[0]
        return _nan_policy(x, logits)

    def __repr__(self) -> str:
        return f"OnnxModel({self.spec.name}, {self.spec.num_params:,} parameters, onnxruntime {ort.__version__})"


def _nan_policy(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Non-finite input, the zoo's policy in every framework: an image holding NaN or Inf gets NaN
    logits. onnxruntime needs this: measured, its ReLU (max(x, 0), fused into the conv) turns NaN
    into 0, so an image with an Inf gave finite logits. One pass over the input, in NumPy."""
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        logits[~finite] = np.nan
    return logits


# --------------------------------------------------------------------------- adapter

def build(spec: ModelSpec, weights: dict[str, np.ndarray]) -> OnnxModel:
    return OnnxModel(spec, weights)


def owns(model) -> bool:
    return isinstance(model, OnnxModel)


def spec_of(model: OnnxModel) -> ModelSpec:
    return model.spec


def get_weights(model: OnnxModel) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model._weights.items()}


def set_weights(model: OnnxModel, weights: dict[str, np.ndarray]) -> None:
    with model._lock:
        model._weights = {k: np.array(weights[k], np.float32, order="C") for k in model.spec.param_shapes()}
        model._sessions.clear()  # the initializers are part of each session's graph


def predict(model: OnnxModel, x: np.ndarray) -> np.ndarray:
    return model(x)


def train_forward(model: OnnxModel, x: np.ndarray) -> np.ndarray:
    raise NotImplementedError("an ONNX model runs inference only: BatchNorm has no training mode in onnxruntime's "
                              "inference sessions; train in torch, flax or keras and convert the weights")


def trace(model: OnnxModel, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(layer path, output as NCHW numpy) for each of the spec's layers: one run of a graph whose
    every layer output is also a graph output."""
    x = np.ascontiguousarray(x, np.float32)
    model.spec.check_input(x.shape, LAYOUT)
    proto, outputs = _proto(model.spec, model._weights, tuple(x.shape[2:]), trace=True)
    values = session(proto, model.options, model.providers).run([name for _, name in outputs], {INPUT: x})
    return [(path, v) for (path, _), v in zip(outputs, values)]
