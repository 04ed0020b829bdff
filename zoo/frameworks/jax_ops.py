"""JAX functions that both the Flax model and Keras on JAX use where XLA's own CPU kernel is slow, and
Keras on JAX's convolution (`conv2d`), whose padding Keras itself cannot pass.

`max_pool`: max pooling whose gradient is computed from the windows' shifted views (compare, select,
and the views' transposes, which XLA fuses) instead of XLA's select-and-scatter. Measured on this
project's 2-core CPU, NiN's 3x3/2 pool on [128, 17, 17, 96]: forward 2.6 ms, gradient 57 ms through
select-and-scatter, against PyTorch's forward and backward together in 14 ms. The gradient goes, as
PyTorch's does, to the first maximum of each window in row-major order (ties: one cell, not shared).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def windows(x: jax.Array, size, stride, pads, dilation=(1, 1), value: float = 0.0) -> list[jax.Array]:
    """The kh * kw shifted views of NHWC `x` padded with `value` (`pads`: ((0, 0), (top, bottom), (left, right),
    (0, 0))), that tap (i, j) of a window or kernel reads: [B, Ho, Wo, C] each, stride and dilation applied,
    in row-major (i, j) order. The Flax model's convolutions use them too (flax_model.as_matmul, depthwise)."""
    xp = jnp.pad(x, pads, constant_values=value)
    (kh, kw), (sh, sw), (dh, dw) = size, stride, dilation
    ho, wo = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    return [xp[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)]


def conv2d(x: jax.Array, kernel: jax.Array, stride, padding, dilation, groups: int) -> jax.Array:
    """Convolution of NHWC `x` with an HWIO kernel, symmetric zero `padding` (ph, pw) inside the convolution, as
    Flax's nnx.Conv passes it. Keras on JAX pads first and convolves 'valid': the gradient with respect to the
    input is then a convolution over the padded map. NiN's 5x5 conv (96 -> 256, 8x8 at 75 px) had its input
    gradient computed on 12x12, 2.25 times the work: Keras on JAX trained NiN at 0.65x of Flax's speed."""
    return lax.conv_general_dilated(x, kernel, tuple(stride), [(p, p) for p in padding], rhs_dilation=tuple(dilation),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, size: tuple[int, int], stride: tuple[int, int], pads) -> jax.Array:
    """Max pooling of NHWC `x`, windows `size`, `stride`, `pads` ((0, 0), (top, bottom), (left, right), (0, 0))
    of -inf. NaN in a window gives NaN (XLA's max propagates it)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *size, 1), (1, *stride, 1), pads)


def _max_pool_fwd(x, size, stride, pads):
    y = max_pool(x, size, stride, pads)
    return y, (x, y)


def _max_pool_bwd(size, stride, pads, saved, g):
    x, y = saved
    views, pull = jax.vjp(lambda a: windows(a, size, stride, pads, value=-jnp.inf), x)
    taken = jnp.zeros(y.shape, bool)
    parts = []
    for view in views:  # the first view equal to the window's maximum takes the gradient
        hit = (view == y) & ~taken
        parts.append(jnp.where(hit, g, 0.0).astype(g.dtype))
        taken = taken | hit
    return (pull(parts)[0],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
