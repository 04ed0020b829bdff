"""PyTorch functions that the Keras layers and optimizers run on Keras' torch backend, where Keras' own is slow.

Keras' torch backend convolves an NHWC tensor by copying it to NCHW, copying that to channels_last, and
reading the HWIO kernel through a permuted view; it pools through the same NCHW copies, and the zoo's
BatchNorm and optimizers in keras.ops ran as one torch kernel per arithmetic step. An NHWC tensor permuted
to NCHW is already a channels_last tensor, which torch's kernels take as it is, and their outputs permute
back to NHWC without a copy. Measured on this project's 2-core CPU, one training step of resnet18_d2l at
32 px, batch 128: see docs/training.md.

The kernel stays HWIO (the layout of Keras' files on every backend); `conv2d` reads it in torch's
channels_last order [O, kh, kw, I] through a two-dimensional transpose both ways (`_KernelOHWI`, which
torch's copy does blockwise). Through a permuted view instead, which torch then copies to channels_last and
the gradient back to HWIO as strided four-dimensional copies, resnet18_d2l's training step took 1.13x as
long (median of 6 interleaved rounds in one process).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nchw(x: torch.Tensor) -> torch.Tensor:
    """An NHWC tensor as NCHW: a view, channels_last where x is contiguous."""
    return x.permute(0, 3, 1, 2)


def nhwc(y: torch.Tensor) -> torch.Tensor:
    return y.permute(0, 2, 3, 1)


class _KernelOHWI(torch.autograd.Function):
    """An HWIO kernel copied to [O, kh, kw, I] (the memory order of a channels_last OIHW weight), its gradient
    copied back to HWIO: each a transpose of one matrix, [kh * kw * I, O] <-> [O, kh * kw * I]."""

    @staticmethod
    def forward(ctx, kernel):
        kh, kw, i, o = kernel.shape
        return kernel.reshape(kh * kw * i, o).t().contiguous().reshape(o, kh, kw, i)

    @staticmethod
    def backward(ctx, grad):
        o, kh, kw, i = grad.shape
        return grad.reshape(o, kh * kw * i).t().contiguous().reshape(kh, kw, i, o)


def conv2d(x, kernel, bias, stride, padding, dilation, groups: int):
    """torch's conv2d of NHWC x with an HWIO kernel ([kh, kw, I / groups, O]), symmetric zero `padding` (ph, pw)."""
    weight = _KernelOHWI.apply(kernel).permute(0, 3, 1, 2)
    return nhwc(F.conv2d(nchw(x), weight, bias, stride, padding, dilation, groups))


def pool2d(x, op):
    """torch's max or average pooling of NHWC x, as a spec `Pool` says (its semantics are PyTorch's)."""
    if op.kind == "max":
        y = F.max_pool2d(nchw(x), op.size, op.stride, op.padding, ceil_mode=op.ceil_mode)
    else:
        y = F.avg_pool2d(nchw(x), op.size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                         count_include_pad=op.count_include_pad)
    return nhwc(y)


def batch_norm(x, gamma, beta, mean, var, training: bool, momentum: float, eps: float):
    """torch's batch_norm of NHWC x: (y, mean, var), the running statistics it leaves (training updates them in
    copies by torch's rule, with the batch's unbiased variance; inference leaves them).

    Training runs on an NCHW copy: on a channels_last tensor torch's training kernels sum less exactly. Measured
    on [32, 16, 16, 8] of mean 1 and std 3, from float64: the output 1.9e-6 (NCHW 4.3e-7), the gradient of the
    scale 3.1e-4 (NCHW 3.0e-6); in channels_last a tiny RegNetY's running variance ended 3.7e-3 (relative) from
    the float64 steps after five SGD steps (tests/test_training.py), in NCHW 2.8e-7. The copies cost 4% of a
    training step of resnet18_d2l at 32 px."""
    if not training:
        return nhwc(F.batch_norm(nchw(x), mean, var, gamma, beta, False, momentum, eps)), mean, var
    mean, var = mean.clone(), var.clone()
    y = F.batch_norm(nchw(x).contiguous(), mean, var, gamma, beta, True, momentum, eps)
    return nhwc(y).contiguous(), mean, var


@torch.no_grad()
def sgd_step(weights, grads, bufs, lr: float, momentum: float, decay: float) -> None:
    """PyTorch's SGD with Nesterov momentum and L2 weight decay, in place on every tensor at once:
    g = grad + decay * w;  buf = momentum * buf + g;  w -= lr * (g + momentum * buf)."""
    g = torch._foreach_add(grads, weights, alpha=decay)  # new tensors: the gradients stay as they were
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, g)
    torch._foreach_add_(g, bufs, alpha=momentum)
    torch._foreach_add_(weights, g, alpha=-lr)


@torch.no_grad()
def adamw_step(weights, grads, ms, vs, lr: float, step: int, decay: float, beta_1: float, beta_2: float,
               eps: float) -> None:
    """PyTorch's AdamW at step `step` (from 1), in place on every tensor at once: w -= lr * decay * w, then
    Adam with bias correction and eps added to sqrt(v_hat)."""
    torch._foreach_lerp_(ms, grads, 1 - beta_1)
    torch._foreach_mul_(vs, beta_2)
    torch._foreach_addcmul_(vs, grads, grads, 1 - beta_2)
    correction_1, correction_2 = -math.expm1(step * math.log(beta_1)), -math.expm1(step * math.log(beta_2))
    denominator = torch._foreach_sqrt(vs)
    torch._foreach_div_(denominator, math.sqrt(correction_2))
    torch._foreach_add_(denominator, eps)
    if decay:
        torch._foreach_mul_(weights, 1 - lr * decay)
    torch._foreach_addcdiv_(weights, ms, denominator, -lr / correction_1)
