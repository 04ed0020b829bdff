"""A float64 NumPy forward pass: the reference every framework is measured against.

Written from the spec's ops alone, with no framework involved, so that an error shared by
all three frameworks would still show. Each op follows PyTorch's documented semantics.

    >>> logits = forward(spec, weights, x)                  # x: [B, C, H, W], any float dtype
    >>> logits = forward(spec, weights, x, train=True)      # BatchNorm on batch statistics
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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
    Pool,
    PosEmbedding,
    SelfAttention,
    TakeToken,
    Tokens,
    adaptive_bins,
    run,
)


def _windows(x: np.ndarray, size: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """[B, C, H, W] -> [B, C, H', W', kh, kw] strided windows (a view)."""
    return sliding_window_view(x, size, axis=(2, 3))[:, :, ::stride[0], ::stride[1]]


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, op: Conv) -> np.ndarray:
    (ph, pw), (dh, dw), g = op.padding, op.dilation, op.groups
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = _windows(x, op.extent, op.stride)[..., ::dh, ::dw]  # [B, I, H', W', kh, kw]: the dilated taps
    bsz, i, oh, ow, kh, kw = win.shape
    # group k: output channels [k*O/g, (k+1)*O/g) read input channels [k*I/g, (k+1)*I/g)
    win = win.reshape(bsz, g, i // g, oh, ow, kh, kw)
    y = np.einsum("bgihwkl,goikl->bgohw", win, w.reshape(g, -1, *w.shape[1:]), optimize=True)
    y = y.reshape(bsz, -1, oh, ow)
    return y if b is None else y + b[None, :, None, None]


def activation(x: np.ndarray, kind: str) -> np.ndarray:
    """PyTorch's definitions (see spec.ACTIVATIONS)."""
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow
    if kind == "silu":
        return x * 0.5 * (1.0 + np.tanh(0.5 * x))
    if kind == "relu6":
        return np.clip(x, 0.0, 6.0)
    if kind == "hardsigmoid":
        return np.clip(x + 3.0, 0.0, 6.0) / 6.0
    if kind == "hardswish":
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    raise TypeError(f"no reference for activation {kind!r}")


def pool2d(x: np.ndarray, op: Pool) -> np.ndarray:
    """Pad symmetrically, then on the right/bottom as far as ceil_mode's last window reaches."""
    (ph, pw), (kh, kw), (sh, sw) = op.padding, op.size, op.stride
    oh, ow = op.out_len(x.shape[2], 0), op.out_len(x.shape[3], 1)
    eh = max(0, (oh - 1) * sh + kh - (x.shape[2] + 2 * ph))  # ceil_mode's extra cells
    ew = max(0, (ow - 1) * sw + kw - (x.shape[3] + 2 * pw))
    pad = ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew))
    if op.kind == "max":
        y = _windows(np.pad(x, pad, constant_values=-np.inf), op.size, op.stride).max(axis=(4, 5))
        return y[:, :, :oh, :ow]
    sums = _windows(np.pad(x, pad), op.size, op.stride).sum(axis=(4, 5))[:, :, :oh, :ow]
    # the divisor: cells of the input, plus the symmetric padding when count_include_pad; never the extra
    mask = np.pad(np.ones(x.shape[2:]), ((ph, ph), (pw, pw)), constant_values=1.0 if op.count_include_pad else 0.0)
    mask = np.pad(mask, ((0, eh), (0, ew)))[None, None]
    counts = _windows(mask, op.size, op.stride).sum(axis=(4, 5))[:, :, :oh, :ow]
    return sums / counts


def adaptive_pool2d(x: np.ndarray, op: AdaptivePool) -> np.ndarray:
    rows, cols = adaptive_bins(x.shape[2], op.output_size[0]), adaptive_bins(x.shape[3], op.output_size[1])
    return np.stack([np.stack([x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)) for c0, c1 in cols], -1)
                     for r0, r1 in rows], -2)


def batch_norm(x: np.ndarray, w: dict[str, np.ndarray], op: BatchNorm, train: bool,
               updates: dict | None, path: str) -> np.ndarray:
    if train:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))  # biased: what normalises
        n = x.size // x.shape[1]
        if updates is not None:  # torch's update: the unbiased batch variance, weighted by momentum
            m = op.momentum
            updates[f"{path}.running_mean"] = (1 - m) * w["running_mean"] + m * mean
            updates[f"{path}.running_var"] = (1 - m) * w["running_var"] + m * var * n / max(n - 1, 1)
    else:
        mean, var = w["running_mean"], w["running_var"]
    scale = w["weight"] / np.sqrt(var + op.eps)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + w["bias"][None, :, None, None]


_erf = np.frompyfunc(math.erf, 1, 1)  # NumPy has no erf; math.erf is correctly rounded to float64


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)).astype(np.float64))


def layer_norm(x: np.ndarray, w: dict[str, np.ndarray], op: LayerNorm) -> np.ndarray:
    """Over the features: axis 1 of an NCHW image, the last axis of tokens or vectors; biased variance."""
    axis = 1 if x.ndim == 4 else -1
    mean = x.mean(axis=axis, keepdims=True)
    var = np.square(x - mean).mean(axis=axis, keepdims=True)
    shape = (-1, 1, 1) if x.ndim == 4 else (-1,)
    return (x - mean) / np.sqrt(var + op.eps) * w["weight"].reshape(shape) + w["bias"].reshape(shape)


def linear(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """On the feature axis: the channels of an NCHW image, the last axis otherwise."""
    if x.ndim == 4:
        y = np.einsum("bchw,oc->bohw", x, w["weight"], optimize=True)
        return y if "bias" not in w else y + w["bias"][None, :, None, None]
    y = x @ w["weight"].T
    return y if "bias" not in w else y + w["bias"]


def to_tokens(x: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B, H*W, C], row by row."""
    return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)


def prepend_token(x: np.ndarray, token: np.ndarray) -> np.ndarray:
    """The class token [1, 1, D] first, then the N tokens of [B, N, D]."""
    return np.concatenate([np.broadcast_to(token, (x.shape[0], 1, x.shape[2])), x], axis=1)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def self_attention(x: np.ndarray, w: dict[str, np.ndarray], op: SelfAttention) -> np.ndarray:
    """torchvision's nn.MultiheadAttention(batch_first=True)(x, x, x): [B, N, D] -> [B, N, D]."""
    b, n, d = x.shape
    h, hd = op.num_heads, op.head_dim
    qkv = x @ w["in_proj_weight"].T
    if op.bias:
        qkv = qkv + w["in_proj_bias"]
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, n, h, hd).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)  # [B, heads, N, N]
    y = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, n, d)  # heads concatenated in order
    y = y @ w["out_proj.weight"].T
    return y + w["out_proj.bias"] if op.bias else y


def forward(spec: ModelSpec, weights: dict[str, np.ndarray], x: np.ndarray, *, trace: list | None = None,
            train: bool = False, updates: dict | None = None) -> np.ndarray:
    """Logits [B, num_classes] in float64 for an NCHW input.

    `trace` collects (layer path, output) for every layer (`zoo diff` compares them).
    `train=True` normalises with batch statistics (dropout stays off) and, with `updates`,
    puts the new BatchNorm running statistics there, as PyTorch would update them.
    """
    spec.check_input(x.shape, "NCHW")

    by_layer: dict[str, dict[str, np.ndarray]] = {}
    for name, (path, key) in spec.tensor_keys().items():
        by_layer.setdefault(path, {})[key] = np.asarray(weights[name], np.float64)

    def tensors(path: str) -> dict[str, np.ndarray]:
        return by_layer.get(path, {})

    def leaf(path, op, x):
        if isinstance(op, Conv):
            t = tensors(path)
            return conv2d(x, t["weight"], t.get("bias"), op)
        if isinstance(op, BatchNorm):
            return batch_norm(x, tensors(path), op, train, updates, path)
        if isinstance(op, Act):
            return activation(x, op.kind)
        if isinstance(op, Pool):
            return pool2d(x, op)
        if isinstance(op, AdaptivePool):
            return adaptive_pool2d(x, op)
        if isinstance(op, Linear):
            return linear(x, tensors(path))
        if isinstance(op, LayerNorm):
            return layer_norm(x, tensors(path), op)
        if isinstance(op, GELU):
            return gelu(x, op.approximate)
        if isinstance(op, LayerScale):
            return x * tensors(path)[""][None]
        if isinstance(op, Tokens):
            return to_tokens(x)
        if isinstance(op, ClassToken):
            return prepend_token(x, tensors(path)[""])
        if isinstance(op, PosEmbedding):
            return x + tensors(path)[""]
        if isinstance(op, TakeToken):
            return x[:, op.index]
        if isinstance(op, SelfAttention):
            return self_attention(x, tensors(path), op)
        if isinstance(op, (Dropout, DropPath)):
            return x  # off: at inference, and in the agreement tests of training mode
        if isinstance(op, Flatten):
            return x.reshape(x.shape[0], -1)
        raise TypeError(f"no reference for layer {path}: {op!r}")

    def join(par, outs):
        if par.join == "concat":
            return np.concatenate(outs, axis=1)
        if par.join == "mul":  # [B, C, 1, 1] broadcasts over [B, C, H, W]
            return functools.reduce(np.multiply, outs)
        return sum(outs[1:], outs[0])

    after = (lambda path, node, y: trace.append((path, y))) if trace is not None else None
    return run(spec.body, np.asarray(x, np.float64), leaf, join, after=after)
