"""A float64 NumPy forward pass: the reference every framework is measured against.

Written from the spec's layer list alone, with no framework involved, so that an
error shared by all three frameworks would still show.

    >>> logits = forward(spec, weights, x)   # x: [B, C, H, W], any float dtype
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from zoo.nin import Activation, ConvSpec, Dropout, Flatten, GlobalAvgPool, NiNSpec, PoolSpec


def _windows(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """[B, C, H, W] -> [B, C, H', W', size, size] strided windows (a view)."""
    return sliding_window_view(x, (size, size), axis=(2, 3))[:, :, ::stride, ::stride]


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, conv: ConvSpec) -> np.ndarray:
    p = conv.padding
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = _windows(x, conv.kernel_size, conv.stride)  # [B, I, H', W', kh, kw]
    return np.einsum("bihwkl,oikl->bohw", win, w, optimize=True) + b[None, :, None, None]


def pool2d(x: np.ndarray, pool: PoolSpec) -> np.ndarray:
    p = pool.padding
    pad = ((0, 0), (0, 0), (p, p), (p, p))
    if pool.kind == "max":
        return _windows(np.pad(x, pad, constant_values=-np.inf), pool.size, pool.stride).max(axis=(4, 5))
    sums = _windows(np.pad(x, pad), pool.size, pool.stride).sum(axis=(4, 5))
    if pool.count_include_pad:
        return sums / pool.size**2
    ones = np.pad(np.ones((1, 1) + x.shape[2:]), pad)
    return sums / _windows(ones, pool.size, pool.stride).sum(axis=(4, 5))


def forward(spec: NiNSpec, weights: dict[str, np.ndarray], x: np.ndarray, *, trace: list | None = None) -> np.ndarray:
    """Logits [B, num_classes] in float64 for an NCHW input. `trace` collects (layer, shape)."""
    spec.check_input(x.shape, "NCHW")
    x = np.asarray(x, np.float64)
    for layer in spec.layers():
        op = layer.op
        if isinstance(op, ConvSpec):
            x = conv2d(x, np.asarray(weights[f"{layer.name}.weight"], np.float64),
                       np.asarray(weights[f"{layer.name}.bias"], np.float64), op)
        elif isinstance(op, Activation):
            x = np.maximum(x, 0.0)
        elif isinstance(op, PoolSpec):
            x = pool2d(x, op)
        elif isinstance(op, Dropout):
            pass  # identity at inference
        elif isinstance(op, GlobalAvgPool):
            x = x.mean(axis=(2, 3), keepdims=True)
        elif isinstance(op, Flatten):
            x = x.reshape(x.shape[0], -1)
        else:
            raise TypeError(f"no reference for layer {layer.name}: {op!r}")
        if trace is not None:
            trace.append((layer.name, x.shape))
    return x
