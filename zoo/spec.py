"""The language every model of the zoo is written in: layer ops, two containers, and `ModelSpec`.

A model is a tree. Its leaves are layer ops (small frozen dataclasses: `Conv`, `BatchNorm`,
`Act`, `Pool`, `AdaptivePool`, `Linear`, `Dropout`, `DropPath`, `Flatten`, and for transformers and
ConvNeXt `LayerNorm`, `GELU`, `LayerScale`, `Tokens`, `ClassToken`, `PosEmbedding`, `TakeToken`,
`SelfAttention`); its inner nodes are
`Seq` (children run one after another) and `Parallel` (branches that all take the same input,
joined by channel concatenation, addition or a broadcasting product). Every node sits in its parent under a name;
names join with dots into paths, and a leaf's path is its canonical weight prefix:

    Seq(('conv1', Conv(3, 64, 7, 2, 3, bias=False)), ('bn1', BatchNorm(64)), ...)
      -> conv1.weight, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var

A name may hold dots ('blocks.0') and may be '' (the node adds nothing to its children's
paths), so the paths can equal another project's `state_dict` keys. An op's tensor key may be ''
(the path itself names the tensor: `class_token`) or hold dots (`out_proj.weight`):
`ModelSpec.tensor_keys` splits names, never the last dot. A `Parallel` never adds its own name to
its branches' paths: its name only labels its output in summaries and traces.

Canonical weights: PyTorch's names and layouts (conv OIHW, linear [out, in]), float32, the
BatchNorm running statistics included (torch's convention: the running variance is updated
with the unbiased batch variance; `momentum` weighs the new batch). `ModelSpec` walks the
tree for everything a framework would otherwise repeat: parameter shapes, output shapes,
FLOPs, the smallest input, input checks, initial weights and JSON.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


class SpecError(ValueError):
    """A spec, or an override of one, that describes no valid model."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message[:400])


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# Sane limits on every field, so that a spec read from a hostile file is refused before
# anything is allocated: the presets use kernels of at most 11 and widths of at most 4096.
MAX_WINDOW = 512  # kernel, pool size, stride, padding
MAX_WIDTH = 65_536  # channels, features
MAX_NODES = 5_000  # DenseNet-121 has about 600
MAX_DEPTH = 32
MAX_INPUT_SIZE = 16_384  # nominal input side
MAX_PARAMS = 500_000_000  # 2 GB of float32; VGG-16 has 138 million
# A spec's JSON, in characters: room for MAX_NODES nodes (DenseNet-121's 552 take 39,803, 72 a node) with long names
MAX_SPEC_CHARS = 1_000_000


def _bounded(v: Any, lo: int, hi: int) -> bool:
    return is_int(v) and lo <= v <= hi


def _pair(v: Any, what: str, lo: int) -> tuple[int, int]:
    """An int or (h, w) pair, each in [lo, MAX_WINDOW]."""
    pair = (v, v) if is_int(v) else tuple(v) if isinstance(v, (tuple, list)) else None
    require(pair is not None and len(pair) == 2 and all(_bounded(n, lo, MAX_WINDOW) for n in pair),
            f"{what} must be an int or (h, w), each in [{lo}, {MAX_WINDOW}], got {v!r}")
    return tuple(int(n) for n in pair)


# --------------------------------------------------------------------------- layer ops
# Each op knows its canonical tensors (`params`, then `buffers`: state that is not trained
# by gradients), its output shape for an input shape (C, H, W) or (F,), and its FLOPs.

Shape = tuple[int, ...]


class _NoTensors:
    """An op without canonical tensors and without FLOPs that count (activations, pools, reshapes)."""

    def params(self) -> dict[str, Shape]:
        return {}

    def buffers(self) -> dict[str, Shape]:
        return {}

    def flops(self, shape: Shape) -> int:
        return 0


@dataclass(frozen=True)
class Conv:
    """2-D convolution with explicit symmetric zero padding (never 'same': it pads unevenly under strides).

    `groups` splits the channels into that many independent convolutions, PyTorch's way: output
    channel o sees input channels [g * I/groups, (g + 1) * I/groups) of its group g = o // (O/groups),
    so the weight is [O, I/groups, kh, kw]. groups == in_channels is a depthwise convolution, with
    a channel multiplier of O/I (output channels c*m .. c*m + m-1 all read input channel c).
    `dilation` spaces the kernel's taps: it covers dilation * (k - 1) + 1 pixels.
    """

    in_channels: int
    out_channels: int
    kernel_size: Any  # int or (kh, kw)
    stride: Any = 1
    padding: Any = 0
    bias: bool = True
    groups: int = 1
    dilation: Any = 1

    def __post_init__(self):
        require(_bounded(self.in_channels, 1, MAX_WIDTH) and _bounded(self.out_channels, 1, MAX_WIDTH),
                f"conv channels must be ints in [1, {MAX_WIDTH}], got {self.in_channels!r} -> {self.out_channels!r}")
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size, "kernel_size", 1))
        object.__setattr__(self, "stride", _pair(self.stride, "stride", 1))
        object.__setattr__(self, "padding", _pair(self.padding, "padding", 0))
        object.__setattr__(self, "dilation", _pair(self.dilation, "dilation", 1))
        require(isinstance(self.bias, bool), f"bias must be True or False, got {self.bias!r}")
        require(_bounded(self.groups, 1, MAX_WIDTH) and self.in_channels % self.groups == 0
                and self.out_channels % self.groups == 0,
                f"conv groups must be an int >= 1 that divides both in_channels ({self.in_channels}) and "
                f"out_channels ({self.out_channels}), got {self.groups!r}")

    @property
    def extent(self) -> tuple[int, int]:
        """The pixels the dilated kernel spans, per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    def params(self) -> dict[str, Shape]:
        w = {"weight": (self.out_channels, self.in_channels // self.groups, *self.kernel_size)}
        return {**w, "bias": (self.out_channels,)} if self.bias else w

    def buffers(self) -> dict[str, Shape]:
        return {}

    def out_shape(self, shape: Shape) -> Shape:
        c, h, w = _image(shape, self)
        require(c == self.in_channels, f"takes {self.in_channels} channels, gets {c}")
        return (self.out_channels, *(_window_out(n, k, s, p) for n, k, s, p in
                                     zip((h, w), self.extent, self.stride, self.padding)))

    def flops(self, shape: Shape) -> int:
        _, h, w = self.out_shape(shape)
        per_output = (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]
        return 2 * h * w * self.out_channels * per_output


@dataclass(frozen=True)
class BatchNorm:
    """BatchNorm over channels. `eps` is part of the spec, never a framework's default (torch 1e-5,
    Keras 1e-3); `momentum` is torch's: running = (1 - momentum) * running + momentum * batch."""

    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1

    def __post_init__(self):
        require(_bounded(self.num_features, 1, MAX_WIDTH),
                f"BatchNorm num_features must be an int in [1, {MAX_WIDTH}], got {self.num_features!r}")
        require(isinstance(self.eps, float) and 0 < self.eps < 1,
                f"BatchNorm eps must be a float in (0, 1), got {self.eps!r}")
        require(isinstance(self.momentum, float) and 0 < self.momentum <= 1,
                f"BatchNorm momentum must be a float in (0, 1], got {self.momentum!r}")

    def params(self) -> dict[str, Shape]:
        return {"weight": (self.num_features,), "bias": (self.num_features,)}

    def buffers(self) -> dict[str, Shape]:
        return {"running_mean": (self.num_features,), "running_var": (self.num_features,)}

    def out_shape(self, shape: Shape) -> Shape:
        require(len(shape) == 3 and shape[0] == self.num_features,
                f"normalises {self.num_features} channels, gets shape {shape}")
        return shape

    def flops(self, shape: Shape) -> int:
        return 0  # folded into the conv before it at inference, and under 1% when not


# PyTorch's definitions: silu x * sigmoid(x); relu6 min(max(x, 0), 6); hardsigmoid relu6(x + 3) / 6
# (not Keras 2's 0.2 x + 0.5, nor ONNX HardSigmoid's default alpha 0.2); hardswish x * hardsigmoid(x).
ACTIVATIONS = ("relu", "sigmoid", "silu", "relu6", "hardswish", "hardsigmoid")


@dataclass(frozen=True)
class Act(_NoTensors):
    kind: str = "relu"

    def __post_init__(self):
        require(self.kind in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.kind!r}")


    def out_shape(self, shape: Shape) -> Shape:
        return shape


@dataclass(frozen=True)
class Pool(_NoTensors):
    """Max or average pooling, PyTorch's semantics exactly: symmetric padding (max pads with -inf),
    floor or `ceil_mode` output sizes (a window must start inside the input or its left padding), and,
    for average pooling, whether padded zeros count in the divisor (`count_include_pad`; the extra
    cells that ceil_mode adds never count)."""

    kind: str  # 'max' or 'avg'
    size: Any = 3
    stride: Any = 2
    padding: Any = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    def __post_init__(self):
        require(self.kind in ("max", "avg"), f"pool kind must be 'max' or 'avg', got {self.kind!r}")
        object.__setattr__(self, "size", _pair(self.size, "pool size", 1))
        object.__setattr__(self, "stride", _pair(self.stride, "pool stride", 1))
        object.__setattr__(self, "padding", _pair(self.padding, "pool padding", 0))
        # PyTorch refuses more padding than half the window: such windows could hold padding alone.
        require(all(p <= k // 2 for p, k in zip(self.padding, self.size)),
                f"pool padding must be at most half the window ({self.size}), got {self.padding}")
        require(isinstance(self.ceil_mode, bool) and isinstance(self.count_include_pad, bool),
                "ceil_mode and count_include_pad must be True or False")

    def out_len(self, n: int, axis: int) -> int:
        k, s, p = self.size[axis], self.stride[axis], self.padding[axis]
        if not self.ceil_mode:
            return _window_out(n, k, s, p)
        span = n + 2 * p - k
        if span < 0:
            return 0
        out = -(-span // s) + 1
        if (out - 1) * s >= n + p:  # the last window would start in the right padding
            out -= 1
        return out

    def extra(self, n: int, axis: int) -> int:
        """Cells past the right padding that ceil_mode's last window reaches (0 without ceil_mode)."""
        k, s, p = self.size[axis], self.stride[axis], self.padding[axis]
        return max(0, (self.out_len(n, axis) - 1) * s + k - (n + 2 * p))

    def divisors(self, n: int, axis: int) -> np.ndarray:
        """Average pooling's divisor per output cell along one axis: the input cells each window covers,
        plus the symmetric padding's when count_include_pad; never ceil_mode's extra cells. (The 2-D
        divisor is the outer product of the two axes'.)"""
        k, s, p = self.size[axis], self.stride[axis], self.padding[axis]
        pad = np.full(p, float(self.count_include_pad))
        cells = np.concatenate([pad, np.ones(n), pad, np.zeros(self.extra(n, axis))])
        return np.array([cells[i * s:i * s + k].sum() for i in range(self.out_len(n, axis))])


    def out_shape(self, shape: Shape) -> Shape:
        c, h, w = _image(shape, self)
        return (c, self.out_len(h, 0), self.out_len(w, 1))


@dataclass(frozen=True)
class AdaptivePool(_NoTensors):
    """PyTorch's AdaptiveAvgPool2d: output bin i of n input cells averages [floor(i*n/o), ceil((i+1)*n/o))."""

    output_size: Any = 1

    def __post_init__(self):
        object.__setattr__(self, "output_size", _pair(self.output_size, "adaptive pool output_size", 1))


    def out_shape(self, shape: Shape) -> Shape:
        c, _, _ = _image(shape, self)
        return (c, *self.output_size)


def adaptive_bins(n: int, out: int) -> list[tuple[int, int]]:
    """AdaptivePool's [start, end) per output cell along an axis of n cells."""
    return [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


@dataclass(frozen=True)
class Linear:
    """y = x W^T + b on the feature axis; the weight is [out, in], torch's."""

    in_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self):
        require(_bounded(self.in_features, 1, 2**28) and _bounded(self.out_features, 1, MAX_WIDTH),
                f"linear features must be ints >= 1, got {self.in_features!r} -> {self.out_features!r}")
        require(isinstance(self.bias, bool), f"bias must be True or False, got {self.bias!r}")

    def params(self) -> dict[str, Shape]:
        w = {"weight": (self.out_features, self.in_features)}
        return {**w, "bias": (self.out_features,)} if self.bias else w

    def buffers(self) -> dict[str, Shape]:
        return {}

    def out_shape(self, shape: Shape) -> Shape:
        """A vector [F], each of N tokens [N, F], or each pixel of an image [F, H, W] (ConvNeXt's
        Linear after a permute to channels last): the feature axis is the channel axis."""
        require(len(shape) in (1, 2, 3) and _features(shape, self) == self.in_features,
                f"takes {self.in_features} features, gets shape {shape}")
        if len(shape) == 3:
            return (self.out_features, *shape[1:])
        return (*shape[:-1], self.out_features)

    def flops(self, shape: Shape) -> int:
        return 2 * self.in_features * self.out_features * math.prod(shape) // self.in_features


@dataclass(frozen=True)
class Dropout(_NoTensors):
    rate: float  # identity at inference

    def __post_init__(self):
        require(isinstance(self.rate, (int, float)) and not isinstance(self.rate, bool) and 0.0 <= self.rate < 1.0,
                f"dropout must be a float in [0, 1), got {self.rate!r}")


    def out_shape(self, shape: Shape) -> Shape:
        return shape


@dataclass(frozen=True)
class DropPath(_NoTensors):
    """Stochastic depth (torchvision's StochasticDepth, mode 'row'): the identity at inference; in
    training each sample's whole input is zeroed with probability `rate`, and the kept ones are
    scaled by 1 / (1 - rate). It sits on a residual branch, before the addition."""

    rate: float

    def __post_init__(self):
        require(isinstance(self.rate, (int, float)) and not isinstance(self.rate, bool) and 0.0 <= self.rate < 1.0,
                f"drop path rate must be a float in [0, 1), got {self.rate!r}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape


@dataclass(frozen=True)
class Flatten(_NoTensors):
    """[C, H, W] -> [C*H*W] in PyTorch's (NCHW) order: channels-last frameworks permute the next
    linear layer's weights, so that the canonical weights are the same everywhere."""


    def out_shape(self, shape: Shape) -> Shape:
        return (int(np.prod(shape)),)


# --------------------------------------------------------------------------- the vocabulary of transformers
# Shapes: an image is (C, H, W), tokens are (N, D), a vector is (F,). Tokens are [B, N, D] in every
# framework (no layout differs); on an image, "the feature axis" is the channel axis.

def _features(shape: Shape, op) -> int:
    """The feature count of an image (its channels), of tokens (D) or of a vector."""
    require(len(shape) in (1, 2, 3), f"{type(op).__name__} takes an image, tokens or a vector, gets shape {shape}")
    return shape[0] if len(shape) == 3 else shape[-1]


def _eps(v: Any, what: str) -> float:
    require(isinstance(v, float) and 0 < v < 1, f"{what} eps must be a float in (0, 1), got {v!r}")
    return v


@dataclass(frozen=True)
class LayerNorm:
    """LayerNorm over the feature axis: each token's D features, or each pixel's C channels of an
    image (ConvNeXt's LayerNorm2d, which torch computes through a permute to channels last). The
    biased variance, as torch's. `eps` has no default: torch's is 1e-5, Keras' 1e-3, Flax's 1e-6, and
    ViT and ConvNeXt set 1e-6; a spec always says which."""

    num_features: int
    eps: float

    def __post_init__(self):
        require(_bounded(self.num_features, 1, MAX_WIDTH),
                f"LayerNorm num_features must be an int in [1, {MAX_WIDTH}], got {self.num_features!r}")
        _eps(self.eps, "LayerNorm")

    def params(self) -> dict[str, Shape]:
        return {"weight": (self.num_features,), "bias": (self.num_features,)}

    def buffers(self) -> dict[str, Shape]:
        return {}

    def out_shape(self, shape: Shape) -> Shape:
        n = _features(shape, self)
        require(n == self.num_features, f"normalises {self.num_features} features, gets shape {shape}")
        return shape

    def flops(self, shape: Shape) -> int:
        return 0


GELU_APPROXIMATIONS = ("none", "tanh")


@dataclass(frozen=True)
class GELU(_NoTensors):
    """x * Phi(x). `approximate` has no default: 'none' is the exact erf form (torch's and Keras'
    default), 'tanh' the approximation (jax.nn.gelu's default); they differ by up to about 5e-4."""

    approximate: str

    def __post_init__(self):
        require(self.approximate in GELU_APPROXIMATIONS,
                f"GELU approximate must be one of {GELU_APPROXIMATIONS}, got {self.approximate!r}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape


@dataclass(frozen=True)
class LayerScale:
    """A learned per-channel scale of an image (ConvNeXt, CaiT): x * gamma. Its one tensor is named by
    the layer's path itself, with no '.weight' (torchvision's `features.1.0.layer_scale`, a bare
    nn.Parameter), and shaped as torchvision stores it: [C, 1, 1]."""

    num_features: int

    def __post_init__(self):
        require(_bounded(self.num_features, 1, MAX_WIDTH),
                f"LayerScale num_features must be an int in [1, {MAX_WIDTH}], got {self.num_features!r}")

    def params(self) -> dict[str, Shape]:
        return {"": (self.num_features, 1, 1)}

    def buffers(self) -> dict[str, Shape]:
        return {}

    def out_shape(self, shape: Shape) -> Shape:
        c, _, _ = _image(shape, self)
        require(c == self.num_features, f"scales {self.num_features} channels, gets shape {shape}")
        return shape

    def flops(self, shape: Shape) -> int:
        return 0


@dataclass(frozen=True)
class Tokens(_NoTensors):
    """An image [C, H, W] as H*W tokens of C features, row by row (torchvision's ViT: a patch embedding
    conv, then x.reshape(B, C, H*W).permute(0, 2, 1)); in a channels-last framework a reshape."""

    def out_shape(self, shape: Shape) -> Shape:
        c, h, w = _image(shape, self)
        return (h * w, c)


@dataclass(frozen=True)
class ClassToken:
    """Prepends a learned token: [N, D] -> [N + 1, D], the class token first. Its tensor, named by the
    layer's path (torchvision's `class_token`), is [1, 1, D]."""

    dim: int

    def __post_init__(self):
        require(_bounded(self.dim, 1, MAX_WIDTH),
                f"ClassToken dim must be an int in [1, {MAX_WIDTH}], got {self.dim!r}")

    def params(self) -> dict[str, Shape]:
        return {"": (1, 1, self.dim)}

    def buffers(self) -> dict[str, Shape]:
        return {}

    def out_shape(self, shape: Shape) -> Shape:
        require(len(shape) == 2 and shape[1] == self.dim, f"takes tokens of {self.dim} features, gets shape {shape}")
        return (shape[0] + 1, self.dim)

    def flops(self, shape: Shape) -> int:
        return 0


@dataclass(frozen=True)
class PosEmbedding:
    """Adds a learned table [1, N, D] to N tokens (after the class token is prepended: its row is the
    first). The tensor is named by the layer's path (torchvision's `encoder.pos_embedding`).

    Only N tokens fit, so only input sizes that give N tokens: torchvision interpolates the table
    bicubically when it loads weights for another size, which makes other weights; the zoo refuses
    other sizes instead (spec.check_input says which size fits)."""

    num_tokens: int
    dim: int

    def __post_init__(self):
        require(_bounded(self.num_tokens, 1, MAX_WIDTH) and _bounded(self.dim, 1, MAX_WIDTH),
                f"PosEmbedding num_tokens and dim must be ints in [1, {MAX_WIDTH}], got {self.num_tokens!r}, "
                f"{self.dim!r}")

    def params(self) -> dict[str, Shape]:
        return {"": (1, self.num_tokens, self.dim)}

    def buffers(self) -> dict[str, Shape]:
        return {}

    def out_shape(self, shape: Shape) -> Shape:
        require(shape == (self.num_tokens, self.dim),
                f"its position embedding holds {self.num_tokens} tokens of {self.dim} features, gets {shape}")
        return shape

    def flops(self, shape: Shape) -> int:
        return 0


@dataclass(frozen=True)
class TakeToken(_NoTensors):
    """One token's features: [N, D] -> [D] (ViT's class token, x[:, 0], at the end)."""

    index: int = 0

    def __post_init__(self):
        require(_bounded(self.index, 0, MAX_WIDTH), f"TakeToken index must be an int >= 0, got {self.index!r}")

    def out_shape(self, shape: Shape) -> Shape:
        require(len(shape) == 2 and shape[0] > self.index, f"takes token {self.index} of tokens, gets shape {shape}")
        return (shape[1],)


@dataclass(frozen=True)
class SelfAttention:
    """Multi-head self-attention in torchvision's layout (nn.MultiheadAttention, batch_first):
    `in_proj_weight` [3D, D] packs the query, key and value projections in that order (`in_proj_bias`
    [3D]), `out_proj.weight` [D, D] and `out_proj.bias` [D]. Head h reads features [h * hd, (h + 1) * hd)
    of the query, key and value (hd = D / heads); its scores q k^T are scaled by 1 / sqrt(hd), softmaxed
    over the keys in float32, and the heads' outputs are concatenated in head order before out_proj.
    No dropout on the attention weights (torchvision's ViT default, attention_dropout=0)."""

    dim: int
    num_heads: int
    bias: bool = True

    def __post_init__(self):
        require(_bounded(self.dim, 1, MAX_WIDTH) and _bounded(self.num_heads, 1, MAX_WIDTH)
                and self.dim % self.num_heads == 0,
                f"SelfAttention needs ints dim and num_heads with num_heads dividing dim, got {self.dim!r}, "
                f"{self.num_heads!r}")
        require(isinstance(self.bias, bool), f"bias must be True or False, got {self.bias!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def params(self) -> dict[str, Shape]:
        d = self.dim
        w = {"in_proj_weight": (3 * d, d), "in_proj_bias": (3 * d,), "out_proj.weight": (d, d), "out_proj.bias": (d,)}
        return w if self.bias else {k: v for k, v in w.items() if "bias" not in k}

    def buffers(self) -> dict[str, Shape]:
        return {}

    def out_shape(self, shape: Shape) -> Shape:
        require(len(shape) == 2 and shape[1] == self.dim, f"takes tokens of {self.dim} features, gets shape {shape}")
        return shape

    def flops(self, shape: Shape) -> int:
        n, d = shape
        return 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d  # projections, q k^T and a v, out_proj


def _window_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _image(shape: Shape, op) -> tuple[int, int, int]:
    require(len(shape) == 3, f"{type(op).__name__} takes a [C, H, W] image, gets shape {shape}")
    return shape


Op = (Conv | BatchNorm | Act | Pool | AdaptivePool | Linear | Dropout | DropPath | Flatten | LayerNorm | GELU
      | LayerScale | Tokens | ClassToken | PosEmbedding | TakeToken | SelfAttention)
OPS: dict[str, type] = {t.__name__: t for t in (Conv, BatchNorm, Act, Pool, AdaptivePool, Linear, Dropout, DropPath,
                                                Flatten, LayerNorm, GELU, LayerScale, Tokens, ClassToken,
                                                PosEmbedding, TakeToken, SelfAttention)}

# Fields added after specs were first written: left out of a spec's JSON at their default, so that the
# JSON (and the digest over it) of every model that does not use them is what earlier zoos wrote.
_OMITTED_AT_DEFAULT = {"Conv": {"groups": 1, "dilation": (1, 1)}}
JOINS = ("concat", "add", "mul")


# --------------------------------------------------------------------------- containers

@dataclass(frozen=True)
class Seq:
    """Children run in order: each a (name, node) pair."""

    children: tuple[tuple[str, Any], ...]

    def __init__(self, *children):
        object.__setattr__(self, "children", tuple((str(n), c) for n, c in children))


@dataclass(frozen=True)
class Parallel:
    """Branches (each a (name, Seq) pair) run on the same input; their outputs are concatenated on
    channels (`join='concat'`), added (`join='add'`) or multiplied (`join='mul'`). An empty Seq is the
    identity branch. A product broadcasts a [C, 1, 1] branch over the others' [C, H, W]: a
    squeeze-and-excitation gate is Parallel('mul', ('', Seq()), ('se', Seq(pool, conv, act, conv, gate)))."""

    join: str
    branches: tuple[tuple[str, Seq], ...]

    def __init__(self, join: str, *branches):
        require(join in JOINS, f"a Parallel joins by one of {', '.join(map(repr, JOINS))}, got {join!r}")
        require(len(branches) >= 1, "a Parallel needs at least one branch")
        object.__setattr__(self, "join", join)
        object.__setattr__(self, "branches", tuple((str(n), b) for n, b in branches))


Node = Op | Seq | Parallel


def join_path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def tensor_name(path: str, key: str) -> str:
    """A canonical tensor's name: its layer's path and the op's key ('' for a tensor the path names)."""
    return f"{path}.{key}" if key else path


@dataclass(frozen=True)
class Layer:
    """One row of a trace: a leaf op or a Parallel's join, with its path."""

    path: str
    node: Any  # an op, or the Parallel itself


def walk_layers(node: Node, prefix: str = "") -> Iterator[Layer]:
    """Leaves and joins in execution order (a Parallel's join after all its branches)."""
    if isinstance(node, Seq):
        for name, child in node.children:
            if isinstance(child, Parallel):
                for bname, branch in child.branches:
                    yield from walk_layers(branch, join_path(prefix, bname))
                yield Layer(join_path(prefix, name), child)
            else:
                yield from walk_layers(child, join_path(prefix, name))
    elif isinstance(node, Parallel):
        raise SpecError("a Parallel must sit inside a Seq")
    else:
        yield Layer(prefix, node)


def join_shapes(par: Parallel, shapes: list[Shape]) -> Shape:
    """The per-image shape a Parallel's join gives; SpecError when its branches do not fit together."""
    first = shapes[0]
    if par.join == "add":
        require(all(s == first for s in shapes), f"branches to add have different shapes: {shapes}")
        return first
    if par.join == "mul":  # channel-wise broadcasting: every branch [C, H, W] or [C, 1, 1]
        full = [s for s in shapes if len(s) != 3 or s[1:] != (1, 1)] or [first]
        require(all(s == full[0] for s in full) and all(len(s) == 3 and s[0] == full[0][0] for s in shapes),
                f"branches to multiply must have one shape, or [C, 1, 1] beside [C, H, W]: {shapes}")
        return full[0]
    require(all(len(s) == 3 and s[1:] == first[1:] for s in shapes),
            f"branches to concatenate differ in H, W: {shapes}")
    return (sum(s[0] for s in shapes), *first[1:])


def run(node: Node, x, leaf: Callable, join: Callable, prefix: str = "", after: Callable | None = None):
    """The one interpreter of the tree, for every framework: `leaf(path, op, x)` runs an op,
    `join(parallel, outputs)` joins branches; `after(path, node, y)` sees each layer's output."""
    if isinstance(node, Seq):
        for name, child in node.children:
            path = join_path(prefix, name)
            if isinstance(child, Parallel):
                outs = [run(b, x, leaf, join, join_path(prefix, bname), after) for bname, b in child.branches]
                x = join(child, outs)
                if after:
                    after(path, child, x)
            else:
                x = run(child, x, leaf, join, path, after)
        return x
    y = leaf(prefix, node, x)
    if after:
        after(prefix, node, y)
    return y


# --------------------------------------------------------------------------- the model spec

@dataclass(frozen=True)
class ModelSpec:
    """A whole network: its tree, what it takes and what it gives.

    Input is [B, in_channels, H, W] (PyTorch) or [B, H, W, in_channels] (Flax, Keras); every
    size the tree accepts works (`check_input` says which don't). The output is [B, num_classes].
    """

    name: str  # the preset it was made from
    family: str
    in_channels: int
    num_classes: int
    body: Seq
    input_size: tuple[int, int] = (224, 224)  # nominal (H, W): summaries, FLOPs and benchmarks use it

    def __post_init__(self):
        size = (self.input_size,) * 2 if is_int(self.input_size) else tuple(self.input_size)
        object.__setattr__(self, "input_size", size)
        require(isinstance(self.name, str) and 0 < len(self.name) <= 100 and isinstance(self.family, str),
                f"name and family must be strings, got {self.name!r}, {self.family!r}")
        require(_bounded(self.in_channels, 1, MAX_WIDTH), f"in_channels must be an int in [1, {MAX_WIDTH}], "
                                                           f"got {self.in_channels!r}")
        require(_bounded(self.num_classes, 1, MAX_WIDTH), f"num_classes must be an int in [1, {MAX_WIDTH}], "
                                                           f"got {self.num_classes!r}")
        require(isinstance(self.body, Seq), "the body must be a Seq")
        require(len(self.input_size) == 2 and all(_bounded(n, 1, MAX_INPUT_SIZE) for n in self.input_size),
                f"input_size must be an int or (H, W), each in [1, {MAX_INPUT_SIZE}], got {self.input_size!r}")
        _check_tree(self.body)
        paths = [layer.path for layer in self.layers()]
        require(bool(paths), "the network has no layers")
        # linear in the number of layers: comparing every pair took 1 s for 2,400 parallel branches
        dupes = sorted(p for p, n in collections.Counter(paths).items() if n > 1)
        require(not dupes, f"layer paths must be unique; repeated: {', '.join(dupes[:5])}")
        require(all(p for p in paths), "every layer needs a non-empty path")
        prefixes = {q[:i] for q in paths for i, c in enumerate(q) if c == "."}
        nested = sorted(p for p in paths if p in prefixes)
        require(not nested, f"a layer path may not also prefix other layers' paths: {', '.join(nested[:5])}")
        require(self.num_params <= MAX_PARAMS,
                f"the spec has {self.num_params:,} parameters, over the limit of {MAX_PARAMS:,}")
        out = self.output_shape(self.input_size)  # raises if the nominal input does not fit
        require(out == (self.num_classes,), f"the network gives shape {out} per image, "
                                            f"not ({self.num_classes},) = (num_classes,)")

    # ----- the tree, flattened

    def layers(self) -> list[Layer]:
        """Leaves and joins in execution order: the rows of summaries, traces and `zoo diff`."""
        return self._layers

    @functools.cached_property
    def _layers(self) -> list[Layer]:
        return list(walk_layers(self.body))

    def ops(self) -> dict[str, Op]:
        """Leaf ops with canonical tensors, by path."""
        return {layer.path: layer.node for layer in self.layers()
                if not isinstance(layer.node, Parallel) and (layer.node.params() or layer.node.buffers())}

    def param_shapes(self) -> dict[str, Shape]:
        """Every canonical tensor (parameters and BatchNorm statistics) and its shape, in layer order."""
        return dict(self._param_shapes)

    @functools.cached_property
    def _param_shapes(self) -> dict[str, Shape]:
        ops = self.ops()
        return {name: {**ops[path].params(), **ops[path].buffers()}[key]
                for name, (path, key) in self._tensor_keys.items()}

    def tensor_keys(self) -> dict[str, tuple[str, str]]:
        """Each canonical tensor's name -> (its layer's path, the op's key for it), in layer order. A key
        may hold dots (SelfAttention's 'out_proj.weight'), and may be '' where the path itself names the
        tensor (LayerScale's `features.1.0.layer_scale`, ClassToken's `class_token`): split names with
        this, never at their last dot."""
        return dict(self._tensor_keys)

    @functools.cached_property
    def _tensor_keys(self) -> dict[str, tuple[str, str]]:
        return {tensor_name(path, k): (path, k) for path, op in self.ops().items() for k in {**op.params(),
                                                                                            **op.buffers()}}

    def buffer_names(self) -> set[str]:
        """The canonical tensors that are state, not trained parameters (BatchNorm running statistics)."""
        return {tensor_name(p, k) for p, op in self.ops().items() for k in op.buffers()}

    @functools.cached_property
    def num_params(self) -> int:
        """Trained parameters (BatchNorm statistics not counted, as torchvision counts them)."""
        return int(sum(math.prod(s) for p, op in self.ops().items() for s in op.params().values()))

    def flatten_inputs(self) -> dict[str, Shape]:
        """For each Linear fed by a Flatten of an image: its path -> that image's (C, H, W).

        Canonical weights flatten in NCHW order; a channels-last framework flattens (H, W, C),
        so it permutes these layers' weights on the way in and out (`nchw_to_nhwc_columns`).
        """
        out, pending = {}, None
        for layer, _ in self._shapes(self.input_size):
            if isinstance(layer.node, Flatten):
                pending = self._flatten_in.get(layer.path)
            elif isinstance(layer.node, Linear):
                if pending is not None and len(pending) == 3:
                    out[layer.path] = pending
                pending = None
            elif not isinstance(layer.node, Dropout):
                pending = None
        return out

    @functools.cached_property
    def _flatten_in(self) -> dict[str, Shape]:
        return self.flatten_input_shapes(self.input_size)

    def flatten_input_shapes(self, size: tuple[int, int]) -> dict[str, Shape]:
        """Each Flatten's per-image input shape for an input of `size` that fits (as the interpreter
        sees it, so a Flatten that opens a branch gets the branch's input)."""
        shapes = {}

        def leaf(path, op, shape):
            if isinstance(op, Flatten):
                shapes[path] = shape
            return op.out_shape(shape)

        run(self.body, (self.in_channels, *size), leaf, join_shapes)
        return shapes

    # ----- shapes

    def _shapes(self, size: tuple[int, int]) -> list[tuple[Layer, Shape]]:
        """(layer, per-image output shape) for each layer; SpecError naming the layer that fails."""
        out = []

        def leaf(path, op, shape):
            try:
                new = op.out_shape(shape)
            except SpecError as e:
                raise SpecError(f"layer {path} ({type(op).__name__}): {e}") from None
            if len(new) == 3 and min(new[1:]) < 1:
                raise SpecError(f"layer {path} ({type(op).__name__}): the input vanishes (output {new})")
            return new

        run(self.body, (self.in_channels, *size), leaf, join_shapes,
            after=lambda path, node, s: out.append((Layer(path, node), s)))
        return out

    def layer_shapes(self, input_size: tuple[int, int] | None = None, batch: int = 1) -> list[tuple[str, Shape]]:
        """(layer path, NCHW output shape with the batch) for each layer; raises if the input does not fit."""
        size = tuple(input_size or self.input_size)
        return [(layer.path, (batch, *s)) for layer, s in self._shapes(size)]

    def output_shape(self, input_size: tuple[int, int]) -> Shape:
        return self._shapes(tuple(input_size))[-1][1]

    def flops(self, input_size: tuple[int, int] | None = None) -> int:
        """Floating-point operations of one image's forward pass: 2 per multiply-add of convs and
        linear layers; BatchNorm, activations and pools (under 1% for these CNNs) not counted."""
        size = tuple(input_size or self.input_size)
        total = 0

        def leaf(path, op, shape):
            nonlocal total
            total += op.flops(shape)
            return op.out_shape(shape)

        run(self.body, (self.in_channels, *size), leaf, join_shapes)
        return total

    def fits(self, size: tuple[int, int]) -> str | None:
        """None when an input of `size` runs through every layer, else why not.

        Before a linear layer, the flattened map must have the nominal input's (C, H, W), not
        just as many features: channels-last frameworks keep that layer's weights permuted for
        the nominal map, so a transposed map of the same size would run but disagree.
        """
        try:
            self._shapes(tuple(size))
        except SpecError as e:
            return str(e)
        if self._flattens_to_linear and tuple(size) != self.input_size:
            seen = self.flatten_input_shapes(tuple(size))
            for path in sorted(self._flattens_to_linear):
                if seen[path] != self._flatten_in[path]:
                    return (f"layer {path} (Flatten) gets a {seen[path]} map; the linear layer after it takes "
                            f"the nominal input's {self._flatten_in[path]}")
        return None

    @functools.cached_property
    def _flattens_to_linear(self) -> set[str]:
        """The Flatten layers that feed a Linear (through Dropouts at most)."""
        out, pending = set(), None
        for layer in self.layers():
            if isinstance(layer.node, Flatten):
                pending = layer.path
            elif isinstance(layer.node, Linear) and pending:
                out.add(pending)
                pending = None
            elif not isinstance(layer.node, Dropout):
                pending = None
        return out

    @functools.cached_property
    def min_input_size(self) -> int:
        """The smallest square side that every layer accepts (for a network whose linear layer needs
        one exact size, the smallest that fits; the nominal size always does)."""
        if self.needs_exact_size:  # only some sizes fit: the smallest of them
            side = min(self.input_size)  # a non-square nominal input may fit no square one
            return next((s for s in range(1, side + 1) if self.fits((s, s)) is None), side)
        lo, hi = 0, min(self.input_size)  # lo fails (or is 0), hi fits (checked at construction)
        while hi - lo > 1:  # a larger input never vanishes where a smaller one did not
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.fits((mid, mid)) is None else (mid, hi)
        return hi

    @functools.cached_property
    def needs_exact_size(self) -> bool:
        """Whether a Flatten reaches a Linear with no AdaptivePool to fix the size, or a position embedding
        holds a fixed number of tokens: then only some sizes fit."""
        if self._position_embedding:
            return True
        seen_adaptive = False
        for layer in self.layers():
            if isinstance(layer.node, AdaptivePool):
                seen_adaptive = True
            if isinstance(layer.node, Flatten):
                return not seen_adaptive and any(isinstance(lr.node, Linear) for lr in self.layers())
        return False

    def check_input(self, shape: tuple[int, ...], layout: str) -> None:
        """Refuse an input of the wrong rank, channel count or size, before any framework runs it.

        `layout` is 'NCHW' (PyTorch) or 'NHWC' (Flax, Keras). Unknown dims (None) pass.
        """
        shape = tuple(shape)
        expected = "[B, C, H, W]" if layout == "NCHW" else "[B, H, W, C]"
        if len(shape) != 4:
            raise ValueError(f"{self.name} expects a 4-D {layout} input {expected}, got shape {shape}")
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        other = (shape[3] if layout == "NCHW" else shape[1])  # where the channels sit in the other layout
        if c is not None and c != self.in_channels and other == self.in_channels:
            flip = "NHWC" if layout == "NCHW" else "NCHW"
            raise ValueError(
                f"{self.name} expects {layout} input {expected}, got shape {shape}, which looks like {flip} "
                f"({self.in_channels} channel(s) {'last' if flip == 'NHWC' else 'second'}): pass "
                f"zoo.predict(model, x, layout={flip!r}), or transpose it to {layout}")
        if c is not None and c != self.in_channels:
            raise ValueError(
                f"{self.name} expects {self.in_channels} input channel(s) in {layout} layout {expected}, "
                f"got shape {shape} with {c}; convert the images (e.g. to "
                f"{'grayscale' if self.in_channels == 1 else 'RGB'}) or build the model with "
                f"in_channels={c}")
        if h is None or w is None:
            return
        why = self._fits_cached(int(h), int(w))
        if why is None:
            return
        if self.needs_exact_size:
            H, W = self.input_size
            what = (f"its position embedding ({self._position_embedding}) holds a fixed number of tokens"
                    if self._position_embedding else "its linear layer takes a fixed number of features")
            raise ValueError(f"input {h}x{w} does not fit {self.name}: {what}, which its nominal input {H}x{W} "
                             f"gives ({why}); resize the images to {H}x{W}")
        m = self.min_input_size
        raise ValueError(f"input {h}x{w} is too small for {self.name}: the minimum is {m}x{m} "
                         f"(any larger size works); resize or pad the images ({why})")

    @functools.cached_property
    def _position_embedding(self) -> str:
        """The path of the first PosEmbedding, or ''."""
        return next((layer.path for layer in self.layers() if isinstance(layer.node, PosEmbedding)), "")

    def _fits_cached(self, h: int, w: int) -> str | None:
        """`fits`, remembered per size: check_input runs on every forward call."""
        cache = self._fit_cache
        if (h, w) not in cache:
            if len(cache) >= 256:
                cache.clear()
            cache[(h, w)] = self.fits((h, w))
        return cache[(h, w)]

    @functools.cached_property
    def _fit_cache(self) -> dict:
        return {}

    # ----- initial weights

    def init_weights(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Initial canonical weights, drawn once in NumPy so that every framework starts from the same values.

        He-normal conv, linear and attention weights (std sqrt(2 / fan_in)), zero biases; BatchNorm
        and LayerNorm: weight 1, bias 0, running mean 0, running variance 1; layer scales 1e-6
        (torchvision's ConvNeXt); class tokens 0; position embeddings normal with std 0.02 (torchvision's ViT).
        """
        rng = np.random.default_rng(seed)
        weights = {}
        shapes, ops = self.param_shapes(), self.ops()
        for name, (path, key) in self.tensor_keys().items():
            shape, op = shapes[name], ops[path]
            if isinstance(op, PosEmbedding):
                weights[name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
            elif isinstance(op, LayerScale):
                weights[name] = np.full(shape, 1e-6, np.float32)
            elif key.endswith("weight") and len(shape) >= 2:
                fan_in = math.prod(shape[1:])
                weights[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            elif key in ("weight", "running_var"):
                weights[name] = np.ones(shape, np.float32)
            else:
                weights[name] = np.zeros(shape, np.float32)
        return weights

    # ----- serialisation (weight files carry the spec as JSON)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "input_size": list(self.input_size), "body": _node_to_dict(self.body)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """A spec from `to_dict`'s output, e.g. read from a file: every field's type and range checked."""
        require(isinstance(d, dict), f"a spec must be a dictionary, got {type(d).__name__}")
        if "stages" in d and "body" not in d:  # written by multizoo 0.1, before the zoo had families
            from zoo.families.nin import from_v1_dict

            return from_v1_dict(d)
        try:
            counter = [0]
            body = _node_from_dict(d["body"], counter, 0)
            require(isinstance(body, Seq), "the body must be a Seq")
            size = d.get("input_size", (224, 224))
            require(is_int(size) or (isinstance(size, (list, tuple)) and len(size) == 2),
                    f"input_size must be an int or [H, W], got {size!r}")
            return cls(name=d["name"], family=d.get("family", d["name"]), in_channels=d["in_channels"],
                       num_classes=d["num_classes"], body=body, input_size=size if is_int(size) else tuple(size))
        except (KeyError, TypeError) as e:
            raise SpecError(f"not a spec dictionary ({type(e).__name__}: {str(e)[:200]})") from None

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """A spec from `to_json`'s output; any damage (bad JSON, deep nesting, absurd values) is a SpecError."""
        if not isinstance(text, (str, bytes)) or len(text) > MAX_SPEC_CHARS:
            raise SpecError(f"the spec is not a JSON string of at most {MAX_SPEC_CHARS:,} characters")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise SpecError(f"the spec is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        return cls.from_dict(d)

    def __hash__(self):  # the tree is deep: hash its JSON once
        return hash(self._json)

    @functools.cached_property
    def _json(self) -> str:
        return self.to_json()


_NAME = re.compile(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*(\.[A-Za-z0-9]+(_[A-Za-z0-9]+)*)*")


def _check_tree(node, depth: int = 0, count: list | None = None) -> None:
    count = count if count is not None else [0]
    count[0] += 1
    require(count[0] <= MAX_NODES and depth <= MAX_DEPTH,
            f"the tree is too large (at most {MAX_NODES} nodes, {MAX_DEPTH} deep)")
    if isinstance(node, Seq):
        for name, child in node.children:
            require(isinstance(name, str) and len(name) <= 200 and (name == "" or _NAME.fullmatch(name)),
                    f"a node name is '' or dot-separated words of letters and digits joined by single "
                    f"underscores (Keras spells a path with '__' for '.'), got {str(name)[:80]!r}")
            _check_tree(child, depth + 1, count)
    elif isinstance(node, Parallel):
        for name, branch in node.branches:
            require(isinstance(name, str) and (name == "" or _NAME.fullmatch(name)),
                    f"a branch name is '' or words joined by dots and single underscores, got {str(name)[:80]!r}")
            require(isinstance(branch, Seq), f"a Parallel's branch must be a Seq, got {type(branch).__name__}")
            _check_tree(branch, depth + 1, count)
    else:
        require(type(node).__name__ in OPS and isinstance(node, OPS[type(node).__name__]),
                f"not a layer op: {type(node).__name__}")


def _node_to_dict(node) -> dict[str, Any]:
    if isinstance(node, Seq):
        return {"seq": [[n, _node_to_dict(c)] for n, c in node.children]}
    if isinstance(node, Parallel):
        return {"parallel": node.join, "branches": [[n, _node_to_dict(b)] for n, b in node.branches]}
    omitted = _OMITTED_AT_DEFAULT.get(type(node).__name__, {})
    fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)
              if f.name not in omitted or getattr(node, f.name) != omitted[f.name]}
    return {"op": type(node).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def _node_from_dict(d, counter: list, depth: int):
    counter[0] += 1
    require(counter[0] <= MAX_NODES and depth <= MAX_DEPTH,
            f"the spec's tree is too large (at most {MAX_NODES} nodes, {MAX_DEPTH} deep)")
    require(isinstance(d, dict), f"a spec node must be a dictionary, got {type(d).__name__}")

    def pairs(items):
        require(isinstance(items, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                                for p in items), "a container's children must be [name, node] pairs")
        return [(n, _node_from_dict(c, counter, depth + 1)) for n, c in items]

    if "seq" in d:
        return Seq(*pairs(d["seq"]))
    if "parallel" in d:
        return Parallel(d["parallel"], *pairs(d["branches"]))
    kind = d.get("op")
    require(kind in OPS, f"unknown layer op {str(kind)[:40]!r}; known: {', '.join(OPS)}")
    fields = {k: v for k, v in d.items() if k != "op"}
    names = {f.name for f in dataclasses.fields(OPS[kind])}
    require(set(fields) <= names, f"{kind} has no field(s) {sorted(set(fields) - names)}"[:200])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return OPS[kind](**fields)


def nchw_to_nhwc_columns(weight: np.ndarray, chw: Shape) -> np.ndarray:
    """A linear weight [out, C*H*W] whose columns follow NCHW flattening, reordered for (H, W, C) flattening."""
    c, h, w = chw
    return weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def nhwc_to_nchw_columns(weight: np.ndarray, chw: Shape) -> np.ndarray:
    """The inverse of `nchw_to_nhwc_columns`."""
    c, h, w = chw
    return weight.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(weight.shape[0], -1)


# Keras' and Flax's attention layers keep the query, key and value projections as three kernels
# [D, heads, head_dim] (biases [heads, head_dim]) and the output projection as [heads, head_dim, D]:
# torchvision's packed in_proj, split. One layout, shared by both adapters (each names the parts its way).
ATTENTION_PARTS = ("query", "key", "value", "out")


def attention_to_heads(t: dict[str, np.ndarray], op: SelfAttention) -> dict[str, np.ndarray]:
    """SelfAttention's canonical tensors (keyed as `op.params()`) -> '{part}.kernel' and '{part}.bias'."""
    d, h, hd = op.dim, op.num_heads, op.head_dim
    out = {}
    for i, part in enumerate(ATTENTION_PARTS[:3]):
        out[f"{part}.kernel"] = t["in_proj_weight"][i * d:(i + 1) * d].T.reshape(d, h, hd)  # [D] -> [heads, hd]
        if op.bias:
            out[f"{part}.bias"] = t["in_proj_bias"][i * d:(i + 1) * d].reshape(h, hd)
    out["out.kernel"] = t["out_proj.weight"].T.reshape(h, hd, d)
    if op.bias:
        out["out.bias"] = t["out_proj.bias"]
    return out


def attention_from_heads(t: dict[str, np.ndarray], op: SelfAttention) -> dict[str, np.ndarray]:
    """The inverse of `attention_to_heads`."""
    d = op.dim
    out = {"in_proj_weight": np.concatenate([t[f"{p}.kernel"].reshape(d, d).T for p in ATTENTION_PARTS[:3]])}
    if op.bias:
        out["in_proj_bias"] = np.concatenate([t[f"{p}.bias"].reshape(d) for p in ATTENTION_PARTS[:3]])
    out["out_proj.weight"] = t["out.kernel"].reshape(d, d).T
    if op.bias:
        out["out_proj.bias"] = t["out.bias"]
    return {k: out[k] for k in op.params()}


def init_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """`spec.init_weights(seed)`: the same initial canonical weights in every framework."""
    return spec.init_weights(seed)
