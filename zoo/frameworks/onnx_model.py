"""Any zoo spec as an ONNX graph, run by onnxruntime. Input [B, C, H, W]; no PyTorch involved.

The op table (`_Graph.leaf`) writes each spec op as the ONNX nodes with its exact semantics.
ONNX is NCHW and keeps PyTorch's weight layouts (conv OIHW, Gemm with transB holds [out, in]),
so the graph's initializers are the canonical weights under their canonical names, unchanged: where
an op wants another layout (a Linear's weight transposed for MatMul, reshaped for a 1x1 Conv), the
graph holds a Transpose or Reshape node of the initializer, which onnxruntime folds.

Transformers (opset 17, which has no Gelu or attention op) are written as their formulas, in the
patterns onnxruntime fuses: LayerNormalization over the last axis (an NCHW image's channels through a
Transpose to NHWC and back: measured faster on ConvNeXt than a ReduceMean form, and onnxruntime
keeps it channels last), GELU as 0.5 x (1 + erf(x / sqrt 2)), attention as MatMul, Softmax and
MatMul over [B, heads, N, head_dim]. Tokens are [B, N, D]; their count is fixed by the input size.

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

import math
import threading

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from zoo.spec import (
    GELU,
    Act,
    AdaptivePool,
    BatchNorm,
    ClassToken,
    Conv,
    Dropout,
    DropPath,
    Flatten,
    LayerNorm,
    LayerScale,
    Linear,
    ModelSpec,
    Parallel,
    Pool,
    PosEmbedding,
    SelfAttention,
    TakeToken,
    Tokens,
    adaptive_bins,
    join_shapes,
    run,
    tensor_name,
)

LAYOUT = "NCHW"
OPSET = 17  # onnxruntime >= 1.13, OpenVINO, TensorRT 8.6 all run it
IR_VERSION = 8  # the IR of opset 17: older runtimes refuse a newer IR even when they know the ops
INPUT, OUTPUT = "input", "logits"
# Every op a zoo graph is written with. A file holding others is not one the zoo wrote or can match.
# CONV_OPS are those of convolutional networks (the ops the zoo also reads from other projects' files);
# TRANSFORMER_OPS those that LayerNorm, GELU, tokens and attention add (ViT, ConvNeXt).
CONV_OPS = frozenset({"Conv", "BatchNormalization", "Relu", "Sigmoid", "MaxPool", "AveragePool", "Mul",
                      "GlobalAveragePool", "Slice", "ReduceMean", "Concat", "Gemm", "Flatten", "Identity",
                      "Add", "Clip", "HardSigmoid", "HardSwish"})
TRANSFORMER_OPS = frozenset({"LayerNormalization", "Transpose", "Reshape", "Div", "Erf", "Pow", "Tanh", "MatMul",
                             "Shape", "Gather", "Expand", "Split", "Softmax"})
WRITTEN_OPS = CONV_OPS | TRANSFORMER_OPS


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

    def split(self, x: str, sizes: list[int], axis: int, path: str) -> list[str]:
        """Split's several outputs, in order."""
        outs = [self.name(path, "Split") for _ in sizes]
        self.nodes.append(helper.make_node("Split", [x, self.const(path, "split", np.array(sizes, np.int64))], outs,
                                           name=outs[0], axis=axis))
        return outs

    def const(self, path: str, what: str, array: np.ndarray) -> str:
        name = f"{path}/{what}"
        self.consts.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def params(self, path: str, op) -> list[str]:
        return [tensor_name(path, k) for k in (*op.params(), *op.buffers())]

    def scalar(self, path: str, what: str, value: float) -> str:
        return self.const(path, what, np.array(value, np.float32))

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
            y = self._linear(path, op, name, len(shape))
        elif isinstance(op, Flatten):
            y = self.node("Flatten", [name], path, axis=1)  # NCHW order: PyTorch's
        elif isinstance(op, LayerNorm):
            y = self._layer_norm(path, op, name, len(shape))
        elif isinstance(op, GELU):
            y = self._gelu(path, op.approximate, name)
        elif isinstance(op, LayerScale):
            y = self.node("Mul", [name, path], path)  # [C, 1, 1] over [B, C, H, W]
        elif isinstance(op, Tokens):  # [B, C, H, W] -> [B, C, H*W] -> [B, H*W, C], row by row
            c, h, w = shape
            flat = self.node("Reshape", [name, self.const(path, "shape", np.array([0, c, h * w], np.int64))], path)
            y = self.node("Transpose", [flat], path, perm=[0, 2, 1])
        elif isinstance(op, ClassToken):
            y = self._class_token(path, name)
        elif isinstance(op, PosEmbedding):
            y = self.node("Add", [name, path], path)  # [1, N, D] over [B, N, D]
        elif isinstance(op, TakeToken):  # a scalar index: [B, N, D] -> [B, D]
            y = self.node("Gather", [name, self.const(path, "index", np.array(op.index, np.int64))], path, axis=1)
        elif isinstance(op, SelfAttention):
            y = self._attention(path, op, name, shape[0])
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

    def _linear(self, path: str, op: Linear, x: str, rank: int) -> str:
        """A vector: Gemm (transB holds the canonical [out, in]). Tokens: MatMul with the transposed weight, as
        Gemm is 2-D only. An image's channels: a 1x1 Conv with the weight reshaped to [out, in, 1, 1]."""
        weight, *bias = self.params(path, op)
        if rank == 1:
            return self.node("Gemm", [x, weight, *bias], path, transB=1)
        if rank == 3:
            shape = self.const(path, "conv_shape", np.array([op.out_features, op.in_features, 1, 1], np.int64))
            kernel = self.node("Reshape", [weight, shape], path)
            return self.node("Conv", [x, kernel, *bias], path, kernel_shape=[1, 1])
        return self._matmul(path, x, weight, bias)

    def _matmul(self, path: str, x: str, weight: str, bias: list[str]) -> str:
        """x W^T (+ b) for x [B, N, in] and W [out, in]: the Transpose of an initializer, folded by onnxruntime."""
        y = self.node("MatMul", [x, self.node("Transpose", [weight], path, perm=[1, 0])], path)
        return self.node("Add", [y, *bias], path) if bias else y

    def _layer_norm(self, path: str, op: LayerNorm, x: str, rank: int) -> str:
        """Tokens and vectors: LayerNormalization over the last axis. An NCHW image over its channels:
        transposed to NHWC and back."""
        inputs = self.params(path, op)
        if rank != 3:
            return self.node("LayerNormalization", [x, *inputs], path, axis=-1, epsilon=op.eps)
        nhwc = self.node("Transpose", [x], path, perm=[0, 2, 3, 1])
        y = self.node("LayerNormalization", [nhwc, *inputs], path, axis=-1, epsilon=op.eps)
        return self.node("Transpose", [y], path, perm=[0, 3, 1, 2])

    def _gelu(self, path: str, approximate: str, x: str) -> str:
        """0.5 x (1 + erf(x / sqrt 2)), or with tanh(sqrt(2 / pi) (x + 0.044715 x^3)): opset 17 has no Gelu,
        and onnxruntime fuses these patterns into its own Gelu and FastGelu."""
        if approximate == "tanh":
            cube = self.node("Pow", [x, self.scalar(path, "three", 3.0)], path)
            inner = self.node("Add", [x, self.node("Mul", [cube, self.scalar(path, "coefficient", 0.044715)], path)],
                              path)
            phi = self.node("Tanh", [self.node("Mul", [inner, self.scalar(path, "sqrt_2_over_pi",
                                                                            np.sqrt(2.0 / np.pi))], path)], path)
        else:
            phi = self.node("Erf", [self.node("Div", [x, self.scalar(path, "sqrt_2", np.sqrt(2.0))], path)], path)
        y = self.node("Mul", [x, self.node("Add", [phi, self.scalar(path, "one", 1.0)], path)], path)
        return self.node("Mul", [y, self.scalar(path, "half", 0.5)], path)

    def _class_token(self, path: str, x: str) -> str:
        """The [1, 1, D] token expanded to [B, 1, D] (B read from x: the batch is dynamic), then first."""
        first = self.const(path, "batch_axis", np.array([0], np.int64))
        batch = self.node("Gather", [self.node("Shape", [x], path), first], path, axis=0)
        shape = self.node("Concat", [batch, self.const(path, "ones", np.array([1, 1], np.int64))], path, axis=0)
        return self.node("Concat", [self.node("Expand", [path, shape], path), x], path, axis=1)

    def _attention(self, path: str, op: SelfAttention, x: str, n: int) -> str:
        """torchvision's packed in_proj, split into q, k, v; each [B, N, D] -> [B, heads, N, head_dim] (head h holds
        features h*hd to (h+1)*hd); softmax(q k^T / sqrt(hd)) v; the heads back in order; out_proj."""
        d, heads, hd, bias = op.dim, op.num_heads, op.head_dim, op.bias
        qkv = self._matmul(path, x, f"{path}.in_proj_weight", [f"{path}.in_proj_bias"] if bias else [])
        split = self.const(path, "heads_shape", np.array([0, n, heads, hd], np.int64))
        q, k, v = (self.node("Reshape", [t, split], path) for t in self.split(qkv, [d, d, d], 2, path))
        q = self.node("Transpose", [q], path, perm=[0, 2, 1, 3])
        k = self.node("Transpose", [k], path, perm=[0, 2, 3, 1])  # k^T: [B, heads, hd, N]
        v = self.node("Transpose", [v], path, perm=[0, 2, 1, 3])
        scale = self.scalar(path, "scale", 1.0 / np.sqrt(hd))
        scores = self.node("Mul", [self.node("MatMul", [q, k], path), scale], path)
        y = self.node("MatMul", [self.node("Softmax", [scores], path, axis=-1), v], path)  # [B, heads, N, hd]
        y = self.node("Transpose", [y], path, perm=[0, 2, 1, 3])
        y = self.node("Reshape", [y, self.const(path, "merged_shape", np.array([0, n, d], np.int64))], path)
        return self._matmul(path, y, f"{path}.out_proj.weight", [f"{path}.out_proj.bias"] if bias else [])

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
        # image shape (C, H, W) -> its session's run, once the shape has passed the spec's input check: a call on
        # a shape seen before is one dict lookup (the check and the session lookup took 1.3 us of LeNet's 27)
        self._ready: dict[tuple[int, ...], object] = {}
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
        run = self._ready.get(x.shape[1:]) if x.ndim == 4 and len(x) else None
        if run is None:
            self.spec.check_input(x.shape, LAYOUT)
            if x.shape[0] == 0:  # onnxruntime's kernels do not all take an empty batch
                return np.zeros((0, self.spec.num_classes), np.float32)
            run = self._ready[x.shape[1:]] = _fast_run(self.session(tuple(x.shape[2:])))
        return _nan_policy(x, run([OUTPUT], {INPUT: x}, None)[0])

    def __repr__(self) -> str:
        return f"OnnxModel({self.spec.name}, {self.spec.num_params:,} parameters, onnxruntime {ort.__version__})"


def _fast_run(sess: ort.InferenceSession):
    """The session's run without the Python checks `InferenceSession.run` makes of every feed before its
    C++ call (`_sess.run`): that the feed names every input, that an OrtValue in it belongs to the session's
    device, that no WebGPU graph is being captured. For the zoo's own graph and a NumPy input of its one
    input name none can fail, and they took 2.2 us of LeNet's 27 at batch 1 (8%). Where onnxruntime has
    no such attribute (a release that renames it), the public run. The C++ call is the same, and so are
    its errors."""
    inner = getattr(sess, "_sess", None)
    return inner.run if callable(getattr(inner, "run", None)) else sess.run


def _nan_policy(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Non-finite input, the zoo's policy in every framework: an image holding NaN or Inf gets NaN
    logits. onnxruntime needs this: measured, its ReLU (max(x, 0), fused into the conv) turns NaN
    into 0, so an image with an Inf gave finite logits. One pass over the input, in NumPy."""
    flat = x.reshape(-1)
    if math.isfinite(np.dot(flat, flat)):  # NaN and Inf reach x . x (so may a huge value: then the exact check
        return logits  # below); 1.6 us at LeNet's batch 1, where isfinite + all over each image took 6
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
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
        model._ready = {}


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
