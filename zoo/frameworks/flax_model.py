"""Any zoo spec in Flax NNX. Input [B, H, W, C].

Modules sit at their canonical paths split on dots, so `nnx.state(model)` reads like the
canonical names: NiN's `blocks.0.conv0.weight` is `model.blocks[0].conv0.kernel` (the paths
of the NiN-only module before it, so its Orbax checkpoints still read). Only ops with state or
a mode are modules (Conv, Linear, BatchNorm, LayerNorm, SelfAttention, Dropout); an op whose one
tensor the layer's path names (LayerScale, ClassToken, PosEmbedding) is an nnx.Param at that path
(`model.class_token`, as torchvision's bare nn.Parameter); the rest are functions of the op table.
Tokens are [B, N, D] as everywhere; images NHWC, so every op "on the feature axis" (Linear,
LayerNorm) acts on the last axis of both. Layouts differ from the canonical ones as the table
`LAYOUTS` says, applied by `to_canonical` and `from_canonical`: conv kernels are HWIO, linear
kernels [in, out] (a Linear fed by a Flatten of an image takes its inputs in (H, W, C) order, so its
columns are permuted), a layer scale is (C,) to broadcast over NHWC, and attention is
nnx.MultiHeadAttention's three kernels [D, heads, head_dim] and out kernel [heads, head_dim, D].

BatchNorm is written here rather than taken from nnx.BatchNorm, whose momentum weighs the old
statistics, whose running variance is the biased one and whose batch variance is E[x^2] - E[x]^2
by default (use_fast_variance): this one is PyTorch's exactly.
"""

from __future__ import annotations

import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from zoo.frameworks import jax_ops
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


class TorchBatchNorm(nnx.Module):
    """PyTorch's BatchNorm2d on the last axis: eps and momentum from the spec, the running variance
    updated with the unbiased batch variance (running = (1 - momentum) * running + momentum * batch)."""

    def __init__(self, op: BatchNorm, values: bool = True):
        n = op.num_features
        ones, zeros = (jnp.ones(n), jnp.zeros(n)) if values else (jax.ShapeDtypeStruct((n,), jnp.float32),) * 2
        self.scale, self.bias = nnx.Param(ones), nnx.Param(zeros)
        self.mean, self.var = nnx.BatchStat(zeros), nnx.BatchStat(ones)
        self.eps, self.momentum = op.eps, op.momentum
        self.use_running_average = True  # the name model.train() and model.eval() set

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C]
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean = x.mean(axis=(0, 1, 2))
            var = jnp.square(x - mean).mean(axis=(0, 1, 2))  # two passes: E[x^2] - E[x]^2 cancels badly
            n, m = x.size // x.shape[-1], self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * mean
            self.var[...] = (1 - m) * self.var[...] + m * var * (n / max(n - 1, 1))
        return (x - mean) * (self.scale[...] / jnp.sqrt(var + self.eps)) + self.bias[...]


def shape_only(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    """An initializer that draws nothing: the value's shape and dtype, for `build` to set."""
    return jax.ShapeDtypeStruct(shape, dtype)


def zeros(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """For nnx.MultiHeadAttention under `values=False`: its LinearGenerals reshape what their
    initializer returns, which a ShapeDtypeStruct cannot be; zeros cost no draws."""
    return jnp.zeros(shape, dtype)


BARE = (LayerScale, ClassToken, PosEmbedding)  # one tensor, named by the layer's path


def _module(op, rngs: nnx.Rngs, values: bool = True) -> nnx.Module | nnx.Param | None:
    """The op table's modules: one per op that holds weights or has a training mode (for a BARE op, its
    tensor's nnx.Param); `values=False` gives their variables shapes only."""
    inits = {} if values else {"kernel_init": shape_only, "bias_init": shape_only}
    if isinstance(op, Conv):
        (ph, pw) = op.padding  # explicit: 'SAME' pads unevenly under strides, unlike torch
        # feature_group_count's kernel is [kh, kw, I/groups, O], output channels grouped as torch's
        return nnx.Conv(op.in_channels, op.out_channels, op.kernel_size, op.stride, padding=((ph, ph), (pw, pw)),
                        kernel_dilation=op.dilation, feature_group_count=op.groups, use_bias=op.bias, rngs=rngs,
                        **inits)
    if isinstance(op, BatchNorm):
        return TorchBatchNorm(op, values)
    if isinstance(op, Linear):  # on the last axis: tokens' features, an NHWC image's channels
        return nnx.Linear(op.in_features, op.out_features, use_bias=op.bias, rngs=rngs, **inits)
    if isinstance(op, LayerNorm):  # two passes, (x - mean) * (scale / sqrt(var + eps)) + bias, as TorchBatchNorm
        return nnx.LayerNorm(op.num_features, epsilon=op.eps, use_fast_variance=False, rngs=rngs,
                             **({} if values else {"scale_init": shape_only, "bias_init": shape_only}))
    if isinstance(op, SelfAttention):
        return nnx.MultiHeadAttention(op.num_heads, op.dim, op.dim, op.dim, use_bias=op.bias, decode=False,
                                      deterministic=True, rngs=rngs,
                                      **({} if values else {"kernel_init": zeros, "bias_init": zeros}))
    if isinstance(op, BARE):
        shape = (op.num_features,) if isinstance(op, LayerScale) else op.params()[""]  # (C,): over NHWC
        return nnx.Param(jnp.zeros(shape) if values else jax.ShapeDtypeStruct(shape, jnp.float32))
    if isinstance(op, Dropout):
        # Its random keys come with each training call (`model(x, rngs=...)`): the model holds no RNG state.
        return nnx.Dropout(op.rate)
    if isinstance(op, DropPath):  # one mask value per sample, shared by H, W and C: torchvision's 'row' mode
        return nnx.Dropout(op.rate, broadcast_dims=(1, 2, 3))
    return None


_ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "silu": jax.nn.silu, "relu6": jax.nn.relu6,
                "hardswish": jax.nn.hard_swish, "hardsigmoid": jax.nn.hard_sigmoid}  # relu6(x + 3) / 6, as torch's


def pool2d(x: jax.Array, op: Pool) -> jax.Array:  # [B, H, W, C]
    """PyTorch's pooling: symmetric padding, then on the bottom/right as far as ceil_mode's last window reaches."""
    outs = [op.out_len(x.shape[1 + a], a) for a in (0, 1)]
    pads = ((0, 0), *((p, p + op.extra(x.shape[1 + a], a)) for a, p in enumerate(op.padding)), (0, 0))
    window, strides = (1, *op.size, 1), (1, *op.stride, 1)
    if op.kind == "max":  # padded cells hold the initial value, -inf; NaN wins over every number
        y = jax_ops.max_pool(x, op.size, op.stride, pads)  # its gradient without select-and-scatter: jax_ops
        return y[:, :outs[0], :outs[1]]
    sums = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)[:, :outs[0], :outs[1]]
    counts = np.outer(op.divisors(x.shape[1], 0), op.divisors(x.shape[2], 1))
    return sums / jnp.asarray(counts[None, :, :, None], x.dtype)


def adaptive_pool2d(x: jax.Array, op: AdaptivePool) -> jax.Array:  # [B, H, W, C]
    """PyTorch's bins (which need not divide the input), averaged over rows, then columns."""
    if op.output_size == (1, 1):
        return x.mean(axis=(1, 2), keepdims=True)
    rows = jnp.stack([x[:, a:b].mean(axis=1) for a, b in adaptive_bins(x.shape[1], op.output_size[0])], 1)
    return jnp.stack([rows[:, :, a:b].mean(axis=2) for a, b in adaptive_bins(x.shape[2], op.output_size[1])], 2)


def _function(op, x: jax.Array) -> jax.Array:
    """The op table's functions: the ops without weights or modes."""
    if isinstance(op, Act):
        return _ACTIVATIONS[op.kind](x)
    if isinstance(op, Pool):
        return pool2d(x, op)
    if isinstance(op, AdaptivePool):
        return adaptive_pool2d(x, op)
    if isinstance(op, Flatten):
        # (H, W, C) order: the next Linear's columns are permuted to match. No -1: a batch may be empty.
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))
    if isinstance(op, GELU):  # jax.nn.gelu's own default is the tanh form: always say which
        return jax.nn.gelu(x, approximate=(op.approximate == "tanh"))
    if isinstance(op, Tokens):  # [B, H, W, C] -> [B, H*W, C], row by row
        return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])
    if isinstance(op, TakeToken):  # [B, N, D] -> [B, D]
        return x[:, op.index]
    raise TypeError(f"no Flax layer for {op!r}")


def _with_tensor(op, t: jax.Array, x: jax.Array) -> jax.Array:
    """The BARE ops, given their tensor."""
    if isinstance(op, LayerScale):  # (C,) over [B, H, W, C]
        return x * t
    if isinstance(op, ClassToken):  # [1, 1, D] prepended to [B, N, D]
        return jnp.concatenate([jnp.broadcast_to(t, (x.shape[0], 1, x.shape[2])), x], axis=1)
    if isinstance(op, PosEmbedding):  # [1, N, D] over [B, N, D]
        return x + t
    raise TypeError(f"no Flax layer for {op!r}")


def _join(par: Parallel, outs: list[jax.Array]) -> jax.Array:
    if par.join == "concat":
        return jnp.concatenate(outs, axis=-1)
    if par.join == "mul":  # [B, 1, 1, C] broadcasts over [B, H, W, C]
        return functools.reduce(lambda a, b: a * b, outs)
    return functools.reduce(lambda a, b: a + b, outs)


class Children(nnx.Dict):
    """The modules under one dotted part of their paths. An int indexes too, as the NiN-only module's
    nnx.List did: `model.blocks[0].conv0` still works beside `model.blocks['0']`."""

    def __getitem__(self, key):
        return super().__getitem__(str(key))


class ZooModel(nnx.Module):
    """`values=False`: variables of shapes only (jax.ShapeDtypeStruct), for `build` to set."""

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, values: bool = True):
        self.spec = spec
        for layer in spec.layers():
            module = None if isinstance(layer.node, Parallel) else _module(layer.node, rngs, values)
            if module is not None:
                self._place(layer.path, module)

    def _place(self, path: str, module: nnx.Module) -> None:
        """Put a module at its path, with a Children for each dotted part before its name."""
        *parents, name = path.split(".")
        owner = self
        for part in parents:
            if not isinstance(vars(owner).get(part), Children):
                _check_name(owner, part, path)
                setattr(owner, part, Children())
            owner = getattr(owner, part)
        _check_name(owner, name, path)
        setattr(owner, name, module)

    def layer(self, path: str) -> nnx.Module:
        """The module at a layer's path."""
        owner = self
        for part in path.split("."):
            owner = getattr(owner, part)
        return owner

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:  # [B, H, W, C] -> [B, classes]
        self.spec.check_input(x.shape, LAYOUT)
        return run(self.spec.body, x, functools.partial(self._leaf, rngs=rngs), _join)

    def _leaf(self, path: str, op, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        if isinstance(op, (Dropout, DropPath)):
            return self.layer(path)(x, rngs=rngs)
        if isinstance(op, BARE):
            return _with_tensor(op, self.layer(path)[...], x)
        if isinstance(op, Conv) and op.groups == op.in_channels > 1:
            return depthwise(self.layer(path), op, x)
        if isinstance(op, Conv) and op.groups == 1 and (op.kernel_size == (1, 1) or small_map(op, x.shape[1:3])):
            return as_matmul(self.layer(path), op, x)
        if isinstance(op, (Conv, BatchNorm, Linear, LayerNorm, SelfAttention)):
            return self.layer(path)(x)
        return _function(op, x)  # a Flatten gets the nominal map: spec.check_input refuses other sizes


# At most this many output cells (H x W), a dense convolution runs as one matmul (`as_matmul`); so does
# every 1x1 convolution: XLA's CPU convolution ran them at 0.4-1x the speed of the same product as a matmul
# (96 -> 96 on [32, 54, 54]: 28 vs 76 GFLOP/s; 256 -> 256 on [1, 26, 26]: 74 vs 183; never faster).
SMALL_MAP = 4


def small_map(op: Conv, hw: tuple[int, int]) -> bool:
    """Whether the convolution's output map is SMALL_MAP cells or fewer (2x2, 1x1: a ResNet's last stages
    at 32 px). XLA's CPU convolution collapses there: a 3x3, 256 -> 256 conv on a [128, 2, 2] map ran at
    6.3 GFLOP/s forward and 21 with its gradients, 512 -> 512 on 1x1 at 15 / 37, where its matmul form
    (`as_matmul`) ran at 169 / 205 and 171 / 220; from 4x4 maps up, XLA's conv was as fast or faster."""
    _, ho, wo = op.out_shape((op.in_channels, *hw))
    return ho * wo <= SMALL_MAP


def windows(op: Conv, x: jax.Array) -> list[jax.Array]:
    """The kh * kw shifted views of the zero-padded NHWC map that tap (i, j) of the conv's kernel multiplies."""
    (ph, pw) = op.padding
    return jax_ops.windows(x, op.kernel_size, op.stride, ((0, 0), (ph, ph), (pw, pw), (0, 0)), op.dilation)


def as_matmul(conv: nnx.Conv, op: Conv, x: jax.Array) -> jax.Array:
    """A dense convolution (groups 1) as one matmul: the windows side by side, [B, Ho, Wo, kh * kw * C],
    times the nnx.Conv's own kernel [kh, kw, C, O] read as [kh * kw * C, O] (the same (i, j, c) order).
    Every tap is kept, those on the padding too, so the sum is the convolution's, term for term."""
    kernel = conv.kernel[...]
    out = jnp.concatenate(windows(op, x), axis=-1) @ kernel.reshape(-1, kernel.shape[-1])
    return out + conv.bias[...] if op.bias else out


def depthwise(conv: nnx.Conv, op: Conv, x: jax.Array) -> jax.Array:
    """A depthwise convolution (groups == input channels, m = out / in outputs per channel) as kh * kw
    shifted multiply-adds on the padded NHWC map, with the nnx.Conv's own kernel [kh, kw, 1, C * m] and bias.
    XLA's CPU grouped convolution (feature_group_count) ran a 3x3 depthwise on [8, 56, 56, 144] at 0.6
    GFLOP/s here; these, which XLA fuses into one loop, at 15-19 GFLOP/s. Output channel c * m + j reads
    input channel c, as torch's grouped weight orders them."""
    if op.out_channels > op.in_channels:
        x = jnp.repeat(x, op.out_channels // op.in_channels, axis=-1)
    kernel = conv.kernel[...].reshape(-1, op.out_channels)  # [kh * kw, C * m], tap-major as `windows`
    out = sum(view * kernel[k] for k, view in enumerate(windows(op, x)))
    return out + conv.bias[...] if op.bias else out


def _check_name(owner: nnx.Module, name: str, path: str) -> None:
    if name in vars(owner) or hasattr(type(owner), name) or name.startswith("_"):
        raise ValueError(f"layer path {path!r}: the name {name!r} is taken in its Flax module (by another layer's "
                         f"path, or reserved by Flax: its modules' attributes and names starting with '_'); "
                         f"rename the layer")


# --------------------------------------------------------------------------- canonical weights

def _keep(a: np.ndarray, chw) -> np.ndarray:
    return a


def _linear_to_flax(a: np.ndarray, chw) -> np.ndarray:
    """[out, in] -> [in, out]; after a Flatten of an image (C, H, W), the inputs in Flax's (H, W, C) order."""
    return (a if chw is None else nchw_to_nhwc_columns(a, chw)).T


def _linear_from_flax(a: np.ndarray, chw) -> np.ndarray:
    return a.T if chw is None else nhwc_to_nchw_columns(a.T, chw)


# Each op's canonical tensor key -> (its Flax name under the layer's path, canonical -> Flax, Flax -> canonical).
# A hook takes the array and, for a Linear fed by a Flatten of an image, that image's (C, H, W), else None.
# '' names the layer's path itself (a BARE op's nnx.Param). SelfAttention's packed in_proj tensors are
# nnx.MultiHeadAttention's 'query', 'key', 'value' and 'out' LinearGenerals: spec.attention_to_heads.
_NORM = {"weight": ("scale", _keep, _keep), "bias": ("bias", _keep, _keep)}
LAYOUTS = {
    Conv: {"weight": ("kernel", lambda a, _: a.transpose(2, 3, 1, 0), lambda a, _: a.transpose(3, 2, 0, 1)),
           "bias": ("bias", _keep, _keep)},  # OIHW <-> HWIO
    Linear: {"weight": ("kernel", _linear_to_flax, _linear_from_flax), "bias": ("bias", _keep, _keep)},
    BatchNorm: {**_NORM, "running_mean": ("mean", _keep, _keep), "running_var": ("var", _keep, _keep)},
    LayerNorm: _NORM,
    LayerScale: {"": ("", lambda a, _: a.reshape(-1), lambda a, _: a.reshape(-1, 1, 1))},  # [C, 1, 1] <-> (C,)
    ClassToken: {"": ("", _keep, _keep)},
    PosEmbedding: {"": ("", _keep, _keep)},
}


def flax_keys(op) -> list[str]:
    """The Flax names of an op's tensors under its layer's path."""
    if isinstance(op, SelfAttention):
        return [f"{part}.{kind}" for part in ATTENTION_PARTS for kind in ("kernel", "bias")[:1 + op.bias]]
    return [LAYOUTS[type(op)][k][0] for k in {**op.params(), **op.buffers()}]


def _layer_to_flax(op, t: dict[str, np.ndarray], chw) -> dict[str, np.ndarray]:
    """One layer's canonical tensors (by the op's keys) -> its Flax tensors (by flax_keys)."""
    if isinstance(op, SelfAttention):
        return attention_to_heads(t, op)
    return {LAYOUTS[type(op)][k][0]: LAYOUTS[type(op)][k][1](a, chw) for k, a in t.items()}


def _layer_from_flax(op, t: dict[str, np.ndarray], chw, path: str = "") -> dict[str, np.ndarray]:
    if isinstance(op, SelfAttention):
        # The canonical in_proj is [3D, D] for any head count; Flax's kernels show it, so it is checked here.
        shape, expected = t["query.kernel"].shape, (op.dim, op.num_heads, op.head_dim)
        if shape != expected:
            raise KeyError(f"{tensor_name(path, 'query.kernel')} has shape {shape}, where the spec's attention "
                           f"({op.num_heads} heads of {op.head_dim}) has {expected}: set the model's head count "
                           f"to the file's")
        return attention_from_heads(t, op)
    return {k: LAYOUTS[type(op)][k][2](t[LAYOUTS[type(op)][k][0]], chw) for k in {**op.params(), **op.buffers()}}


def to_canonical(native: dict[str, np.ndarray], spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
    """Flax state paths ('blocks.0.conv0.kernel') to canonical names and layouts, layer by layer as the
    spec's ops say (LAYOUTS); tensors the spec has no layer for, or all of them without a spec, by their
    Flax names alone (`by_name`), for the caller to match against a spec. Arrays are not copied where
    no layout changes."""
    out, rest = {}, dict(native)
    if spec is not None:
        flatten_inputs = spec.flatten_inputs()
        for path, op in spec.ops().items():
            names = {tensor_name(path, k): k for k in flax_keys(op)}
            if names.keys() <= rest.keys():
                t = _layer_from_flax(op, {k: np.asarray(rest.pop(n)) for n, k in names.items()},
                                     flatten_inputs.get(path), path)
                out.update({tensor_name(path, k): a for k, a in t.items()})
    return {**out, **by_name(rest)}


def by_name(native: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical names and layouts from Flax names and ranks alone, for a checkpoint without its spec: a
    'kernel' of 4 dims is a conv's, of 2 a linear's (the columns as Flax orders them: after a Flatten of an
    image only the spec can put them back); 'scale', 'bias', 'mean', 'var' a norm's or a bias; the parts of
    a layer with a 3-dim 'query.kernel' an attention's; any other name a bare tensor (of 1 dim, a layer scale)."""
    heads = {n.removesuffix(".query.kernel") for n, a in native.items()
             if n.endswith(".query.kernel") and np.ndim(a) == 3}
    attention: dict[str, dict[str, np.ndarray]] = {}
    out = {}
    for name, a in native.items():
        a = np.asarray(a)
        prefix, _, leaf = name.rpartition(".")
        owner = prefix.rpartition(".")[0]
        if owner in heads and prefix.rpartition(".")[2] in ATTENTION_PARTS:
            attention.setdefault(owner, {})[f"{prefix.rpartition('.')[2]}.{leaf}"] = a
            continue
        if leaf == "kernel":
            kind = {4: Conv, 2: Linear}.get(a.ndim)
            if kind is None:
                raise KeyError(f"{name!r} has shape {a.shape}: a kernel of Flax's has 4 dims (conv), 2 (linear) "
                               f"or 3 (an attention's query, key, value or out)")
        else:
            kind = BatchNorm if leaf in ("scale", "bias", "mean", "var") else LayerScale if a.ndim == 1 else ClassToken
        if kind in BARE:
            prefix, leaf = name, ""
        elif not prefix:
            raise KeyError(f"{name!r} is not a zoo tensor of Flax's (a layer's path, then its tensor's name)")
        key, (_, _, hook) = next((k, v) for k, v in LAYOUTS[kind].items() if v[0] == leaf)
        out[tensor_name(prefix, key)] = hook(a, None)
    for path, t in attention.items():
        d, h, _ = t["query.kernel"].shape
        op = SelfAttention(d, h, "query.bias" in t)
        out.update({tensor_name(path, k): a for k, a in attention_from_heads(t, op).items()})
    return out


def from_canonical(weights: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Canonical weights to Flax state paths and layouts (the inverse of to_canonical), layer by layer."""
    ops, keys, flatten_inputs = spec.ops(), spec.tensor_keys(), spec.flatten_inputs()
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, a in weights.items():
        path, key = keys[name]
        layers.setdefault(path, {})[key] = np.asarray(a)
    out = {}
    for path, t in layers.items():
        out.update({tensor_name(path, k): a for k, a in _layer_to_flax(ops[path], t, flatten_inputs.get(path)).items()})
    return out


def _variables(model: ZooModel) -> dict[str, nnx.Variable]:
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {".".join(map(str, path)): v for path, v in nnx.to_flat_state(state)}


# --------------------------------------------------------------------------- adapter

def build(spec: ModelSpec, weights: dict[str, np.ndarray]) -> ZooModel:
    # Shapes only: drawing initial values that are overwritten at once took seconds. Made eagerly, not
    # under nnx.eval_shape: in its trace each RNG draw built an error message walking every equation
    # traced so far (a tracer's missing `sharding`, asked for by Variable.set_value), so building took
    # quadratic time: 400 one-conv branches 6.4 s, 1500 about 90 s; eagerly 1.0 s and 2.6 s.
    model = ZooModel(spec, rngs=nnx.Rngs(0), values=False)
    set_weights(model, weights)
    model.eval()
    return model


def owns(model) -> bool:
    return isinstance(model, ZooModel)


def spec_of(model: ZooModel) -> ModelSpec:
    return model.spec


def get_weights(model: ZooModel) -> dict[str, np.ndarray]:
    native = {k: np.asarray(v.get_value()) for k, v in _variables(model).items()}
    canonical = to_canonical(native, model.spec)
    return {k: np.array(canonical[k], np.float32, order="C") for k in model.spec.param_shapes()}  # in layer order


def set_weights(model: ZooModel, weights: dict[str, np.ndarray]) -> None:
    variables = _variables(model)
    native = from_canonical({k: weights[k] for k in model.spec.param_shapes()}, model.spec)
    if set(native) != set(variables):
        raise ValueError(f"the Flax model's tensors do not match the spec's: "
                         f"{sorted(set(native) ^ set(variables))[:5]}")
    for path, a in native.items():
        if a.shape != variables[path].shape:
            raise ValueError(f"{path}: shape {a.shape}, the model's is {variables[path].shape}")
    for path, a in native.items():
        variables[path].set_value(jnp.asarray(a, jnp.float32))


# nnx.jit splits the model into graph and state on every call, walking the whole module
# graph: about 1 ms for NiN, as long as the network itself takes on one 96x96 image. So
# predict splits each model once and keeps a jitted function of its state. The state's leaves
# are the model's own Variables: later set_weights, train_forward or optimizer updates are
# seen; only swapping in a new Variable object is not. The graph is closed over, not passed as
# a static argument: hashing it takes 0.2 ms, so it is hashed once per model, not once per call.
_split: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def _forward(graphdef: nnx.GraphDef):
    """One compiled inference function per model structure, shared by all models of that structure."""

    def forward(state, x):
        model = nnx.merge(graphdef, state)
        model.eval()  # inference whatever mode the model was split in; the model itself is untouched
        return model(x)

    return jax.jit(forward)


def _jitted(model: ZooModel):
    if model not in _split:
        graphdef, state = nnx.split(model)
        _split[model] = _forward(graphdef), state
    return _split[model]


def predict(model: ZooModel, x: np.ndarray) -> np.ndarray:
    """Logits in inference mode (running statistics, dropout off), whatever mode the model is in."""
    forward, state = _jitted(model)
    return np.asarray(forward(state, x))  # jit moves a numpy x itself, sooner than jnp.asarray


@functools.cache
def _train_forward(graphdef: nnx.GraphDef):
    def forward(state, x):
        model = nnx.merge(graphdef, state)
        return model(x), nnx.state(model, nnx.BatchStat)

    return jax.jit(forward)


def train_forward(model: ZooModel, x: np.ndarray) -> np.ndarray:
    """One forward in training mode with dropout off: BatchNorm normalises with the batch's
    statistics and updates its running ones in the model. The model is left in eval mode."""
    model.train()
    model.set_attributes(nnx.Dropout, deterministic=True, raise_if_not_found=False)
    try:
        graphdef, state = nnx.split(model)
        logits, stats = _train_forward(graphdef)(state, x)
        nnx.update(model, stats)
    finally:
        model.eval()
    return np.asarray(logits)


@functools.cache
def _trace(graphdef: nnx.GraphDef):
    """Every layer's output in one compiled function: run op by op outside jit, JAX compiled each op
    for its shape, 30 s for DenseNet-121's 427 layers."""

    def trace(state, x):
        model = nnx.merge(graphdef, state)
        model.eval()
        outs = []
        run(model.spec.body, x, model._leaf, _join, after=lambda path, node, a: outs.append(a))
        return outs

    return jax.jit(trace)


def trace(model: ZooModel, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(layer path, output as NCHW numpy) for each of the spec's layers, in inference mode.

    Images come back NCHW, and the flattened features between a Flatten and its Linear in NCHW
    order, so that every row compares with PyTorch's and the reference's."""
    spec = model.spec
    spec.check_input(x.shape, LAYOUT)
    graphdef, state = nnx.split(model)
    outs = _trace(graphdef)(state, jnp.asarray(x))
    flat_in = spec.flatten_input_shapes((x.shape[1], x.shape[2]))  # each Flatten's input (C, H, W)
    rows, flat = [], None  # flat: the (C, H, W) that the current flattened features came from
    for layer, a in zip(spec.layers(), outs):
        if isinstance(layer.node, Flatten):
            flat = flat_in[layer.path] if len(flat_in[layer.path]) == 3 else None
        elif not isinstance(layer.node, Dropout):
            flat = None
        a = np.asarray(a)
        if a.ndim == 4:
            a = a.transpose(0, 3, 1, 2)
        elif flat is not None:
            c, h, w = flat
            a = a.reshape(a.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(a.shape)
        rows.append((layer.path, a))
    return rows
