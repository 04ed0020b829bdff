"""Any zoo spec in Keras 3 (TensorFlow, JAX or PyTorch backend). Input [B, H, W, C].

A functional model with one Keras layer per leaf op and one per Parallel join, each named
after its canonical path with every dot doubled into `__` (`res.downsample.0` ->
`res__downsample__0`): Keras on PyTorch refuses dots in names, and `__` is one-to-one on
paths whose names neither start nor end with `_` nor hold `__` (a single `_` is not:
`stem_bn` vs `stem.bn`); the names of each model are checked to be distinct anyway.

The op table (`_layer`) and its layout rules, where Keras and the canonical weights differ:
  * conv kernels are HWIO here (OIHW canonical), dense kernels [in, out] ([out, in]);
  * convs and pools pad explicitly, as the spec says: Keras has only 'valid' and 'same',
    and 'same' pads unevenly under strides; max pooling pads with -inf;
  * BatchNorm is `TorchBatchNorm`: torch's eps and momentum conventions, never Keras' own;
  * on the torch backend, convs, pools and BatchNorm call torch's own kernels on the NHWC tensor's
    channels_last view (zoo/frameworks/keras_torch_ops.py): Keras' torch ops copy to NCHW and back;
  * a Flatten feeding a Linear (`spec.flatten_inputs()`) flattens natively, (H, W, C), and that
    Linear's kernel rows are permuted on the way in and out; any other Flatten of an image
    transposes to (C, H, W) first, so that its output is in the canonical order;
  * LayerNorm and Linear act on the last axis, the feature axis of tokens [B, N, D] and of NHWC
    images alike; LayerNorm is Keras' own with the spec's eps (its variance two-pass on TensorFlow
    and JAX, torch's layer_norm on PyTorch: measured within 4e-7 of float64 on centred features of std 1e-3);
  * layer scales are (C,) here ([C, 1, 1] canonical); SelfAttention is Keras' MultiHeadAttention on
    (x, x), its packed in_proj split into query, key and value kernels [D, heads, head_dim]
    (`spec.attention_to_heads`). Tokens need no layout: [B, N, D] in every framework.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
from keras import ops

from zoo.spec import (
    ATTENTION_PARTS,
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
    attention_from_heads,
    attention_to_heads,
    nchw_to_nhwc_columns,
    nhwc_to_nchw_columns,
    run,
    tensor_name,
)

LAYOUT = "NHWC"
INPUT_NAME = "images"


# --------------------------------------------------------------------------- names

def keras_name(path: str) -> str:
    """A layer path's Keras name: dots doubled into underscores ('blocks.0.conv0' -> 'blocks__0__conv0')."""
    return path.replace(".", "__")


@functools.lru_cache(maxsize=64)
def layer_names(spec: ModelSpec) -> dict[str, str]:
    """Layer path -> Keras layer name, for every leaf and join of `spec`; refuses names Keras can't take."""
    names = {layer.path: keras_name(layer.path) for layer in spec.layers()}
    seen = {INPUT_NAME: "the input"}
    for path, name in names.items():
        if "/" in name:
            raise ValueError(f"layer {path!r}: Keras layer names cannot hold '/'; rename it in the spec")
        if name in seen:
            raise ValueError(f"layers {seen[name]!r} and {path!r} both get the Keras name {name!r}; rename one "
                             f"(names that start or end with '_' or hold '__' can meet another's dots)")
        seen[name] = path
    return names


def _join_paths(spec: ModelSpec) -> list[str]:
    """The Parallels' paths in the order `run` joins them (walk_layers' order: a join after its branches)."""
    return [layer.path for layer in spec.layers() if isinstance(layer.node, Parallel)]


@functools.lru_cache(maxsize=64)
def _native_flattens(spec: ModelSpec) -> frozenset[str]:
    """The Flattens whose output reaches a permuted Linear (through dropouts only): they flatten (H, W, C)."""
    feeds = spec.flatten_inputs()
    out, pending = set(), None
    for layer in spec.layers():
        if isinstance(layer.node, Flatten):
            pending = layer.path
        elif isinstance(layer.node, Linear):
            if pending is not None and layer.path in feeds:
                out.add(pending)
            pending = None
        elif not isinstance(layer.node, Dropout):
            pending = None
    return frozenset(out)


# --------------------------------------------------------------------------- layers

def _size(x, axis: int):
    """A dimension of x: an int, or (TensorFlow graph, size unknown at tracing) a scalar tensor."""
    n = x.shape[axis]
    return n if n is not None else ops.shape(x)[axis]


def _pad(x, pads, value: float = 0.0):
    """Pad H and W by ((top, bottom), (left, right))."""
    if not any(a or b for a, b in pads):
        return x
    return ops.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]], constant_values=value)


# At most this many output cells (H x W), a dense convolution on JAX and TensorFlow runs as one matmul
# (`_as_matmul`), and on JAX so does every 1x1 one: XLA's CPU convolution is slower there
# (zoo/frameworks/flax_model.py, SMALL_MAP), and so is TensorFlow's oneDNN one on small maps: resnet18_d2l's
# 3x3, 512 -> 512 convs on its 1x1 maps at 32 px (batch 128) took 25 ms for the input's gradient alone
# (24 GFLOP/s), and its training step on TensorFlow went from 471 to 275 ms as matmuls. As 1x1 convs,
# TensorFlow's matmul gained nothing more (281 ms).
SMALL_MAP = 4


@keras.saving.register_keras_serializable(package="zoo")
class PaddedConv2D(keras.layers.Conv2D):
    """Conv2D with explicit symmetric zero padding of `pad` = (ph, pw) pixels.

    Keras refuses strides > 1 with dilation_rate > 1; PyTorch does not. Such a layer convolves with
    stride 1 and keeps every `step`-th output (the same numbers, `step`^2 times the work). The
    grouped kernel is Keras' [kh, kw, I/groups, O] with torch's order of output channels; on
    TensorFlow's CPU Keras runs grouped convolutions through XLA (TensorFlow has no CPU kernel),
    except depthwise ones (groups == input channels): see `_depthwise`. On the torch backend every conv is
    torch's conv2d (`keras_torch_ops.conv2d`), the padding, strides and dilation passed as they are.
    """

    def __init__(self, filters, kernel_size, strides=1, *, pad=(0, 0), step=(1, 1), **kwargs):
        kwargs.pop("padding", None)  # always 'valid' after the explicit pad
        strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        dilation = kwargs.get("dilation_rate", 1)
        if max(strides) > 1 and (dilation if isinstance(dilation, int) else max(dilation)) > 1:
            strides, step = (1, 1), strides
        super().__init__(filters, kernel_size, strides, padding="valid", **kwargs)
        self.pad = (pad, pad) if isinstance(pad, int) else tuple(pad)
        self.step = tuple(step)

    def build(self, input_shape):
        super().build(self._padded(input_shape))

    def call(self, x):
        if keras.backend.backend() == "torch":  # every conv: torch's own on the channels_last view
            from zoo.frameworks import keras_torch_ops

            stride = tuple(s * k for s, k in zip(self.strides, self.step))  # torch takes strides with dilation
            return keras_torch_ops.conv2d(x, self.kernel.value, self.bias.value if self.use_bias else None, stride,
                                          self.pad, self.dilation_rate, self.groups)
        jax = keras.backend.backend() == "jax"
        depthwise = self.groups > 1 and self.groups == x.shape[-1]
        matmul = self.groups == 1 and (self._small(self._padded(x.shape)) or (jax and self.kernel_size == (1, 1)))
        if jax and not depthwise and not matmul:  # the padding inside the conv
            from zoo.frameworks import jax_ops

            stride = tuple(s * k for s, k in zip(self.strides, self.step))
            y = jax_ops.conv2d(x, self.kernel.value, stride, self.pad, self.dilation_rate, self.groups)
            return y + self.bias.value if self.use_bias else y
        x = _pad(x, [(self.pad[0],) * 2, (self.pad[1],) * 2])
        if depthwise:
            y = self._depthwise(x)
        elif matmul:
            y = self._as_matmul(x)
        else:
            y = super().call(x)
        return y if self.step == (1, 1) else y[:, ::self.step[0], ::self.step[1], :]

    def _out_size(self, padded_shape) -> tuple[int, int]:
        """(Ho, Wo) of the valid convolution of a padded NHWC map."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        return (padded_shape[1] - dh * (kh - 1) - 1) // sh + 1, (padded_shape[2] - dw * (kw - 1) - 1) // sw + 1

    def _windows(self, x):
        """The kh * kw shifted views of the padded NHWC map that tap (i, j) multiplies, row-major (i, j)."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        ho, wo = self._out_size(x.shape)
        return [x[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw, :]
                for i in range(kh) for j in range(kw)]

    def _small(self, padded_shape) -> bool:
        """An output map of at most SMALL_MAP cells: XLA's and TensorFlow's CPU convolutions collapse there (as in
        the Flax model: zoo/frameworks/flax_model.py, `small_map`), their matmul forms do not."""
        if padded_shape[1] is None or padded_shape[2] is None:
            return False
        ho, wo = self._out_size(padded_shape)
        return ho * wo <= SMALL_MAP

    def _as_matmul(self, x):
        """A dense convolution as one matmul: the windows side by side [B, Ho, Wo, kh * kw * C] times the
        same kernel [kh, kw, C, O] read as [kh * kw * C, O]; every tap kept, those on the padding too."""
        y = ops.matmul(ops.concatenate(self._windows(x), axis=-1), ops.reshape(self.kernel, (-1, self.filters)))
        return y + self.bias if self.use_bias else y

    def _depthwise(self, x):
        """groups == input channels, from the same kernel [kh, kw, 1, C * m] (output c * m + j reads input c):
        TensorFlow's own depthwise kernel (ops.depthwise_conv, kernel [kh, kw, C, m]: the same numbers), and on
        JAX kh * kw shifted multiply-adds, as the Flax model does (PyTorch takes `call`'s torch path). Keras'
        grouped Conv2D ran a 3x3 depthwise on [8, 56, 56, 144] at 0.5-0.6 GFLOP/s on TensorFlow and JAX here
        (XLA's grouped convolution); these at 6.8 (TensorFlow), 7.7 (JAX) and 5.3 (PyTorch's ops.depthwise_conv),
        and a 7x7 at 37, 17 and 28."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        c = x.shape[-1]
        if keras.backend.backend() != "jax" and sh == sw:
            kernel = ops.reshape(self.kernel, (kh, kw, c, self.filters // c))
            y = ops.depthwise_conv(x, kernel, (sh, sw), padding="valid", dilation_rate=(dh, dw))
        else:
            if self.filters > c:
                x = ops.repeat(x, self.filters // c, axis=-1)
            kernel = ops.reshape(self.kernel, (kh * kw, self.filters))  # tap-major, as `_windows`
            y = sum(view * kernel[k] for k, view in enumerate(self._windows(x)))
        return y + self.bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        b, h, w, c = super().compute_output_shape(self._padded(input_shape))
        h, w = (None if n is None else -(-n // s) for n, s in zip((h, w), self.step))
        return b, h, w, c

    def _padded(self, shape):
        return (shape[0], *(None if n is None else n + 2 * p for n, p in zip(shape[1:3], self.pad)), shape[3])

    def get_config(self):
        return {**super().get_config(), "pad": list(self.pad), "step": list(self.step)}


@keras.saving.register_keras_serializable(package="zoo")
class TorchBatchNorm(keras.layers.Layer):
    """BatchNorm over the last axis with PyTorch's semantics, eps and momentum as the spec gives them.

    Inference normalises with the moving statistics. training=True normalises with the batch's
    biased variance and updates moving = (1 - momentum) * moving + momentum * batch, with the
    unbiased variance (keras.layers.BatchNormalization weighs the other way and keeps its own eps).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.op = BatchNorm(int(num_features), float(eps), float(momentum))

    def build(self, input_shape):
        c = (self.op.num_features,)
        # the order of the canonical tensors (weight, bias, running_mean, running_var) is Keras' order too:
        # trainable variables first, then the others, as Keras numbers them in a .weights.h5
        self.gamma = self.add_weight(shape=c, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=c, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=c, initializer="zeros", trainable=False, name="moving_mean")
        self.moving_var = self.add_weight(shape=c, initializer="ones", trainable=False, name="moving_var")

    def call(self, x, training=None):
        if keras.backend.backend() == "torch":  # torch's own batch_norm: one kernel forward, one backward
            from zoo.frameworks import keras_torch_ops

            y, mean, var = keras_torch_ops.batch_norm(x, self.gamma.value, self.beta.value, self.moving_mean.value,
                                                      self.moving_var.value, bool(training), self.op.momentum,
                                                      self.op.eps)
            if training:
                self.moving_mean.assign(mean)
                self.moving_var.assign(var)
            return y
        if training:
            mean = ops.mean(x, axis=(0, 1, 2))
            var = ops.mean(ops.square(x - mean), axis=(0, 1, 2))  # biased, two passes: what normalises
            shape = ops.shape(x)
            n = ops.cast(shape[0] * shape[1] * shape[2], x.dtype)
            m = self.op.momentum
            self.moving_mean.assign((1 - m) * self.moving_mean + m * mean)
            self.moving_var.assign((1 - m) * self.moving_var + m * var * n / ops.maximum(n - 1, 1))
        else:
            mean, var = self.moving_mean, self.moving_var
        return (x - mean) * (self.gamma * ops.rsqrt(var + self.op.eps)) + self.beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_features": self.op.num_features, "eps": self.op.eps,
                "momentum": self.op.momentum}


@keras.saving.register_keras_serializable(package="zoo")
class Pool2D(keras.layers.Layer):
    """Max or average pooling with PyTorch's semantics, as a spec `Pool` says (see `reference.pool2d`)."""

    def __init__(self, kind: str, size, stride, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.op = Pool(kind, _tuple(size), _tuple(stride), _tuple(padding), ceil_mode, count_include_pad)

    def call(self, x):
        op = self.op
        (ph, pw), (sh, sw) = op.padding, op.stride
        # ceil_mode's last window may reach past the padding: pad stride - 1 more (its most), crop after
        extra = (sh - 1, sw - 1) if op.ceil_mode else (0, 0)
        pads = [(ph, ph + extra[0]), (pw, pw + extra[1])]
        if keras.backend.backend() == "torch":  # torch's own pools: the spec's semantics are PyTorch's
            from zoo.frameworks import keras_torch_ops

            return keras_torch_ops.pool2d(x, op)
        if op.kind == "max" and keras.backend.backend() == "jax":  # its gradient without select-and-scatter
            from zoo.frameworks import jax_ops

            y = jax_ops.max_pool(x, op.size, op.stride, ((0, 0), *pads, (0, 0)))
        elif op.kind == "max":
            y = ops.max_pool(_pad(x, pads, -np.inf), op.size, op.stride, "valid")
        else:
            y = ops.average_pool(_pad(x, pads), op.size, op.stride, "valid")  # window sums / (kh * kw)
            if op.ceil_mode or (any(op.padding) and not op.count_include_pad):
                # the divisor's share of each window: input cells, the symmetric padding when
                # count_include_pad, never ceil_mode's extra cells
                ones = ops.ones_like(x[:1, :, :, :1])
                mask = _pad(ones, [(ph, ph), (pw, pw)], 1.0 if op.count_include_pad else 0.0)
                mask = _pad(mask, [(0, extra[0]), (0, extra[1])])
                y = y / ops.average_pool(mask, op.size, op.stride, "valid")
        if op.ceil_mode:
            y = y[:, :_out_len(op, _size(x, 1), 0), :_out_len(op, _size(x, 2), 1)]
        return y

    def compute_output_shape(self, shape):
        return (shape[0], *(None if n is None else self.op.out_len(n, a) for a, n in enumerate(shape[1:3])), shape[3])

    def get_config(self):
        op = self.op
        return {**super().get_config(), "kind": op.kind, "size": list(op.size), "stride": list(op.stride),
                "padding": list(op.padding), "ceil_mode": op.ceil_mode, "count_include_pad": op.count_include_pad}


def _out_len(op: Pool, n, axis: int):
    """Pool.out_len for ceil_mode, also for a size that is a tensor (TensorFlow graph, size unknown at tracing)."""
    if isinstance(n, (int, np.integer)):
        return op.out_len(int(n), axis)
    k, s, p = op.size[axis], op.stride[axis], op.padding[axis]
    out = (n + 2 * p - k + s - 1) // s + 1
    return ops.where((out - 1) * s >= n + p, out - 1, out)  # the last window would start in the right padding


@keras.saving.register_keras_serializable(package="zoo")
class AdaptivePool2D(keras.layers.Layer):
    """PyTorch's AdaptiveAvgPool2d: bins [floor(i*n/o), ceil((i+1)*n/o)), rows then columns (a rectangle's
    mean is the mean of its rows' means)."""

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        self.op = AdaptivePool(_tuple(output_size))

    def call(self, x):
        for axis, out in ((1, self.op.output_size[0]), (2, self.op.output_size[1])):
            cells = [(slice(None),) * axis + (slice(start, end),) for start, end in adaptive_bins(_size(x, axis), out)]
            x = ops.concatenate([ops.mean(x[c], axis=axis, keepdims=True) for c in cells], axis=axis)
        return x

    def compute_output_shape(self, shape):
        return (shape[0], *self.op.output_size, shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": list(self.op.output_size)}


@keras.saving.register_keras_serializable(package="zoo")
class FlattenNCHW(keras.layers.Layer):
    """Flatten in PyTorch's order, (C, H, W) for an image, for a Flatten whose output no permuted Linear takes."""

    def call(self, x):
        if len(x.shape) == 4:
            x = ops.transpose(x, (0, 3, 1, 2))
        return ops.reshape(x, (ops.shape(x)[0], -1))

    def compute_output_shape(self, shape):
        return (shape[0], None if None in shape[1:] else int(np.prod(shape[1:])))


@keras.saving.register_keras_serializable(package="zoo")
class GELUActivation(keras.layers.Layer):
    """GELU, exact (erf) or its tanh approximation, as the spec's `approximate` says ('none' or 'tanh')."""

    def __init__(self, approximate: str, **kwargs):
        super().__init__(**kwargs)
        self.op = GELU(approximate)

    def call(self, x):
        return keras.activations.gelu(x, approximate=self.op.approximate == "tanh")

    def compute_output_shape(self, shape):
        return shape

    def get_config(self):
        return {**super().get_config(), "approximate": self.op.approximate}


@keras.saving.register_keras_serializable(package="zoo")
class LayerScale2D(keras.layers.Layer):
    """x * gamma over the channels (the last axis); gamma is (C,) here, [C, 1, 1] canonical."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__(**kwargs)
        self.op = LayerScale(int(num_features))

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(self.op.num_features,), initializer="ones", name="gamma")

    def call(self, x):
        return x * self.gamma

    def compute_output_shape(self, shape):
        return shape

    def get_config(self):
        return {**super().get_config(), "num_features": self.op.num_features}


@keras.saving.register_keras_serializable(package="zoo")
class ImageTokens(keras.layers.Layer):
    """[B, H, W, C] -> [B, H*W, C]: row by row, the order of torchvision's NCHW flatten(2).transpose(1, 2)."""

    def call(self, x):
        return ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))

    def compute_output_shape(self, shape):
        b, h, w, c = shape
        return b, None if h is None or w is None else h * w, c


@keras.saving.register_keras_serializable(package="zoo")
class PrependClassToken(keras.layers.Layer):
    """[B, N, D] -> [B, N + 1, D], a learned token [1, 1, D] first; broadcast over a batch known only at run time."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.op = ClassToken(int(dim))

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, self.op.dim), initializer="zeros", name="token")

    def call(self, x):
        token = ops.broadcast_to(ops.cast(self.token, x.dtype), (ops.shape(x)[0], 1, self.op.dim))
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, shape):
        return shape[0], None if shape[1] is None else shape[1] + 1, shape[2]

    def get_config(self):
        return {**super().get_config(), "dim": self.op.dim}


@keras.saving.register_keras_serializable(package="zoo")
class AddPosEmbedding(keras.layers.Layer):
    """x + a learned table [1, N, D] (the class token's row first)."""

    def __init__(self, num_tokens: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.op = PosEmbedding(int(num_tokens), int(dim))

    def build(self, input_shape):
        self.embedding = self.add_weight(shape=(1, self.op.num_tokens, self.op.dim), initializer="zeros",
                                         name="embedding")

    def call(self, x):
        return x + self.embedding

    def compute_output_shape(self, shape):
        return shape[0], self.op.num_tokens, self.op.dim

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.op.num_tokens, "dim": self.op.dim}


@keras.saving.register_keras_serializable(package="zoo")
class TakeTokenAt(keras.layers.Layer):
    """[B, N, D] -> [B, D]: token `index`."""

    def __init__(self, index: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.op = TakeToken(int(index))

    def call(self, x):
        return x[:, self.op.index]

    def compute_output_shape(self, shape):
        return shape[0], shape[2]

    def get_config(self):
        return {**super().get_config(), "index": self.op.index}


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _layer(path: str, op, name: str, initializer: str, spec: ModelSpec) -> keras.layers.Layer:
    """The op table: one Keras layer per spec op."""
    if isinstance(op, Conv):
        return PaddedConv2D(op.out_channels, op.kernel_size, op.stride, pad=op.padding, use_bias=op.bias, name=name,
                            groups=op.groups, dilation_rate=op.dilation, kernel_initializer=initializer)
    if isinstance(op, BatchNorm):
        return TorchBatchNorm(op.num_features, op.eps, op.momentum, name=name)
    if isinstance(op, Act):
        if op.kind in ("relu", "relu6"):
            return keras.layers.ReLU(max_value=6.0 if op.kind == "relu6" else None, name=name)
        # Keras 3's hard_sigmoid is relu6(x + 3) / 6, as torch's (Keras 2's was 0.2 x + 0.5): a test holds it
        return keras.layers.Activation(_ACTIVATIONS[op.kind], name=name)
    if isinstance(op, Pool):
        return Pool2D(op.kind, op.size, op.stride, op.padding, op.ceil_mode, op.count_include_pad, name=name)
    if isinstance(op, AdaptivePool):
        if op.output_size == (1, 1):
            return keras.layers.GlobalAveragePooling2D(keepdims=True, name=name)
        return AdaptivePool2D(op.output_size, name=name)
    if isinstance(op, Linear):
        dense = keras.layers.Dense(op.out_features, use_bias=op.bias, kernel_initializer=initializer, name=name)
        # built now: a Flatten of an image of unknown size has no known width in the functional graph
        dense.build((None, op.in_features))
        return dense
    if isinstance(op, LayerNorm):  # Keras' default epsilon is 1e-3: always the spec's
        return keras.layers.LayerNormalization(axis=-1, epsilon=op.eps, name=name)
    if isinstance(op, GELU):
        return GELUActivation(op.approximate, name=name)
    if isinstance(op, LayerScale):
        return LayerScale2D(op.num_features, name=name)
    if isinstance(op, Tokens):
        return ImageTokens(name=name)
    if isinstance(op, ClassToken):
        return PrependClassToken(op.dim, name=name)
    if isinstance(op, PosEmbedding):
        return AddPosEmbedding(op.num_tokens, op.dim, name=name)
    if isinstance(op, TakeToken):
        return TakeTokenAt(op.index, name=name)
    if isinstance(op, SelfAttention):  # called on (x, x): see _call
        return keras.layers.MultiHeadAttention(op.num_heads, key_dim=op.head_dim, use_bias=op.bias, name=name,
                                               kernel_initializer=initializer)
    if isinstance(op, Dropout):
        return keras.layers.Dropout(op.rate, name=name)
    if isinstance(op, DropPath):  # one mask value per sample: torchvision's 'row' mode, scaled by 1 / (1 - rate)
        return keras.layers.Dropout(op.rate, noise_shape=(None, 1, 1, 1), name=name)
    if isinstance(op, Flatten):
        return keras.layers.Flatten(name=name) if path in _native_flattens(spec) else FlattenNCHW(name=name)
    raise TypeError(f"no Keras layer for {path}: {op!r}")


_ACTIVATIONS = {"sigmoid": "sigmoid", "silu": "silu", "hardswish": "hard_silu", "hardsigmoid": "hard_sigmoid"}


def _call(layer: keras.layers.Layer, op, x, **kwargs):
    """Run an op's layer on x: self-attention is Keras' MultiHeadAttention on (query, value) = (x, x)."""
    return layer(x, x, **kwargs) if isinstance(op, SelfAttention) else layer(x, **kwargs)


def _join_layer(par: Parallel, name: str) -> keras.layers.Layer:
    # NHWC's channel axis is last; the channels concatenate in the same order as NCHW's axis 1
    if par.join == "concat":
        return keras.layers.Concatenate(axis=-1, name=name)
    return keras.layers.Multiply(name=name) if par.join == "mul" else keras.layers.Add(name=name)


def _nan_policy(inputs, logits):
    """Non-finite input, the zoo's policy in every framework: an image holding NaN or Inf gets NaN
    logits, never ordinary-looking ones. TensorFlow needs this: measured, its max pool skips NaN
    (a window of NaN, 1, 2 gives 2) and, in a compiled predict step, its fused conv + bias + ReLU
    turns NaN into 0, so a NaN image gave finite logits. Checking the input costs one pass over it;
    unfusing the ReLUs instead cost 1.4x (NiN, 16x224x224)."""
    finite = ops.all(ops.isfinite(inputs), axis=(1, 2, 3))
    return ops.where(ops.expand_dims(finite, 1), logits, ops.full_like(logits, np.nan))


@keras.saving.register_keras_serializable(package="zoo")
class ZooModel(keras.Model):
    """A functional Keras model of any ModelSpec; saves and loads as a `.keras` archive (the config holds the spec)."""

    def __init__(self, spec: ModelSpec | dict, *, initializer: str = "glorot_uniform", **kwargs):
        spec = ModelSpec.from_dict(spec) if isinstance(spec, dict) else spec
        names, joins = layer_names(spec), iter(_join_paths(spec))
        inputs = keras.Input((None, None, spec.in_channels), name=INPUT_NAME)
        outputs = run(spec.body, inputs,
                      lambda path, op, x: _call(_layer(path, op, names[path], initializer, spec), op, x),
                      lambda par, outs: _join_layer(par, names[next(joins)])(outs))
        super().__init__(inputs, outputs, name=kwargs.pop("name", spec.name), **kwargs)
        self.spec = spec

    def __call__(self, x, *args, **kwargs):  # [B, H, W, C] -> [B, num_classes]
        check_input(self.spec, tuple(x.shape))  # before Keras' own, terser, shape check
        return super().__call__(x, *args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        return _nan_policy(inputs, super().call(inputs, training=training, mask=mask))

    def get_config(self):
        return {"spec": self.spec.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def check_input(spec: ModelSpec, shape: tuple) -> None:
    """`spec.check_input` for NHWC (it also refuses a size whose map at a Flatten differs from the nominal
    input's: the next Dense layer's rows are stored for that map, flattened channels last)."""
    spec.check_input(shape, LAYOUT)


# --------------------------------------------------------------------------- canonical layout
# An op's canonical tensors (keyed as op.params() and op.buffers()) <-> its Keras variables, as three tables:
#   _SPLITS     where one canonical tensor is several Keras variables: SelfAttention's packed in_proj is
#               three kernels [D, heads, head_dim] ('query.kernel', 'key.kernel', 'value.kernel'; spec's
#               attention_to_heads, whose 'out.*' is Keras' attention_output); other ops keep their keys;
#   _LAYOUTS    (op, key) -> (canonical -> Keras, Keras -> canonical) for an array stored otherwise: conv
#               kernels OIHW <-> HWIO, dense kernels [out, in] <-> [in, out] (rows in (H, W, C) order when
#               a Flatten feeds it), layer scales [C, 1, 1] <-> (C,); every other tensor as it is;
#   _VARIABLES  key -> the Keras variable, an attribute of the layer ('sub/attr': of its sublayer `sub`, as
#               a .weights.h5 groups it), in Keras' order: the order a .weights.h5 numbers them.

_SPLITS = {SelfAttention: (attention_to_heads, attention_from_heads)}

_LAYOUTS = {
    (Conv, "weight"): (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    (Linear, "weight"): (lambda a: a.T, lambda a: a.T),
    (LayerScale, ""): (lambda a: a.reshape(-1), lambda a: a.reshape(-1, 1, 1)),
}

_ATTENTION_DENSE = dict(zip(ATTENTION_PARTS, ("query_dense", "key_dense", "value_dense", "output_dense")))
_VARIABLES = {
    Conv: {"weight": "kernel", "bias": "bias"},
    Linear: {"weight": "kernel", "bias": "bias"},
    BatchNorm: {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"},
    LayerNorm: {"weight": "gamma", "bias": "beta"},
    LayerScale: {"": "gamma"},
    ClassToken: {"": "token"},
    PosEmbedding: {"": "embedding"},
    SelfAttention: {f"{part}.{v}": f"{dense}/{v}" for part, dense in _ATTENTION_DENSE.items()
                    for v in ("kernel", "bias")},
}


def tensor_names(op) -> list[str]:
    """The op's canonical tensor keys (without the path), in `spec.tensor_keys()` order."""
    return [*op.params(), *op.buffers()]


def _native(op, tensors: dict[str, np.ndarray], chw) -> dict[str, np.ndarray]:
    """The op's canonical tensors in Keras' layout (views where the layout allows), by key, in Keras' order."""
    split = _SPLITS.get(type(op))
    if chw is not None:
        tensors = {**tensors, "weight": nchw_to_nhwc_columns(tensors["weight"], chw)}
    native = split[0](tensors, op) if split else tensors
    out = {k: native[k] for k in _VARIABLES[type(op)] if k in native}
    return {k: _LAYOUTS[type(op), k][0](a) if (type(op), k) in _LAYOUTS else a for k, a in out.items()}


def keras_tensors(op, tensors: dict[str, np.ndarray], chw: tuple[int, int, int] | None = None) -> dict[str, np.ndarray]:
    """An op's canonical tensors (by key) as its Keras variables hold them: by `variables(op)`'s keys, in
    that order, C-contiguous; `chw` for a flatten-fed Linear."""
    return {k: np.ascontiguousarray(a) for k, a in _native(op, tensors, chw).items()}


def _canonical(op, native: dict[str, np.ndarray], chw) -> dict[str, np.ndarray]:
    """The inverse of `_native`: by canonical key, in `tensor_names(op)` order (views where the layout allows)."""
    native = {k: _LAYOUTS[type(op), k][1](a) if (type(op), k) in _LAYOUTS else a for k, a in native.items()}
    split = _SPLITS.get(type(op))
    tensors = split[1](native, op) if split else native
    if chw is not None:
        tensors = {**tensors, "weight": nhwc_to_nchw_columns(tensors["weight"], chw)}
    return {k: tensors[k] for k in tensor_names(op)}


def canonical_tensors(op, native: dict[str, np.ndarray],
                      chw: tuple[int, int, int] | None = None) -> dict[str, np.ndarray]:
    """The inverse of `keras_tensors`: by canonical key, in `tensor_names(op)` order, float32 C-contiguous copies."""
    return {k: np.array(a, dtype=np.float32, order="C") for k, a in _canonical(op, native, chw).items()}


def variables(op) -> dict[str, str]:
    """The op's Keras variables: key -> attribute ('sub/attr' for a sublayer's), in Keras' order."""
    return {k: _VARIABLES[type(op)][k] for k in native_shapes(op)}


def native_shapes(op) -> dict[str, tuple[int, ...]]:
    """The shapes of the op's Keras variables, by key, in Keras' order."""
    return {k: a.shape for k, a in _native(op, _zeros({**op.params(), **op.buffers()}), None).items()}


def canonical_shapes(op, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The op's canonical shapes, by key, from its Keras variables' (by key)."""
    return {k: a.shape for k, a in _canonical(op, _zeros(shapes), None).items()}


def _zeros(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Zero-strided arrays of these shapes: the layouts applied to them give the shapes, in no memory."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


# --------------------------------------------------------------------------- adapter

def build(spec: ModelSpec, weights: dict[str, np.ndarray]) -> ZooModel:
    # Zeros, as every value is set at once: on the JAX backend, drawing random initial values
    # compiled a kernel per shape and made the first zoo.load take 3.3 s instead of 0.5 s.
    model = ZooModel(spec, initializer="zeros")
    set_weights(model, weights)
    return model


def owns(model) -> bool:
    return isinstance(model, ZooModel)


def spec_of(model: ZooModel) -> ModelSpec:
    return model.spec


def _layers(model: ZooModel):
    """(layer path, op, Keras layer, chw of a flatten-fed Linear or None) for every op holding tensors, in order."""
    spec, names = model.spec, layer_names(model.spec)
    flat = spec.flatten_inputs()
    for path, op in spec.ops().items():
        yield path, op, model.get_layer(names[path]), flat.get(path)


def _variable(layer: keras.layers.Layer, attribute: str) -> keras.Variable:
    """A layer's variable by `_VARIABLES`' attribute: 'kernel', or 'query_dense/kernel' of a sublayer."""
    for name in attribute.split("/"):
        layer = getattr(layer, name)
    return layer


def get_weights(model: ZooModel) -> dict[str, np.ndarray]:
    """Canonical weights (BatchNorm statistics included), in `spec.param_shapes()` order, float32 copies."""
    out = {}
    for path, op, layer, chw in _layers(model):
        native = {k: ops.convert_to_numpy(_variable(layer, v)) for k, v in variables(op).items()}
        out.update({tensor_name(path, k): a for k, a in canonical_tensors(op, native, chw).items()})
    return out


def set_weights(model: ZooModel, weights: dict[str, np.ndarray]) -> None:
    for path, op, layer, chw in _layers(model):
        tensors = {k: np.asarray(weights[tensor_name(path, k)], np.float32) for k in tensor_names(op)}
        for k, a in keras_tensors(op, tensors, chw).items():
            _variable(layer, _VARIABLES[type(op)][k]).assign(a)


def predict(model: ZooModel, x: np.ndarray) -> np.ndarray:
    # Keras' compiled predict step (tf.function on TensorFlow, with XLA where Keras judges it
    # pays, i.e. on a GPU; jax.jit on JAX): 1.3-10x a direct call, which runs op by op, and
    # without the data pipeline that model.predict builds on every call (`zoo bench`).
    check_input(model.spec, x.shape)  # the JAX backend's predict step bypasses ZooModel.__call__
    if x.shape[0] == 0:  # TensorFlow's predict step fails on an empty batch; torch and Flax return (0, classes)
        return np.zeros((0, model.spec.num_classes), np.float32)
    return np.asarray(model.predict_on_batch(x))


def _run_layers(model: ZooModel, x: np.ndarray, train_bn: bool, after=None, flatten_in: dict | None = None):
    """The spec's tree over the model's own layers, one call each, dropout off; `flatten_in` collects
    each Flatten's input shape."""
    check_input(model.spec, x.shape)
    names, joins = layer_names(model.spec), iter(_join_paths(model.spec))

    def leaf(path, op, t):
        if flatten_in is not None and isinstance(op, Flatten):
            flatten_in[path] = tuple(t.shape[1:])
        return _call(model.get_layer(names[path]), op, t, training=train_bn and isinstance(op, BatchNorm))

    def join(par, outs):
        return model.get_layer(names[next(joins)])(outs)

    inputs = ops.convert_to_tensor(np.asarray(x, np.float32))
    return _nan_policy(inputs, run(model.spec.body, inputs, leaf, join, after=after))


def train_forward(model: ZooModel, x: np.ndarray) -> np.ndarray:
    """One forward in training mode with dropout off: BatchNorm normalises with the batch's statistics
    and updates its moving ones in the model. Inference afterwards is as before (training=False)."""
    return ops.convert_to_numpy(_run_layers(model, x, train_bn=True))


def trace(model: ZooModel, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(layer path, output as numpy, images NCHW) for each of the spec's layers, run one by one.

    A natively flattened (H, W, C) vector, and the dropouts after it, are shown in the canonical
    (C, H, W) order, as PyTorch's trace has them.
    """
    out, native, flatten_in, order = [], _native_flattens(model.spec), {}, None

    def after(path, node, t):
        nonlocal order
        y = ops.convert_to_numpy(t)
        if y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        if path in native:
            order = flatten_in[path]
        elif not isinstance(node, Dropout):
            order = None
        if order is not None:
            h, w, c = order
            y = y.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(y.shape[0], -1)
        out.append((path, y))

    _run_layers(model, x, train_bn=False, after=after, flatten_in=flatten_in)
    return out
