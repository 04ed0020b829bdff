"""Any zoo spec in Flax NNX. Input [B, H, W, C].

Modules sit at their canonical paths split on dots, so `nnx.state(model)` reads like the
canonical names: NiN's `blocks.0.conv0.weight` is `model.blocks[0].conv0.kernel` (the paths
of the NiN-only module before it, so its Orbax checkpoints still read). Only ops with state or
a mode are modules (Conv, Linear, BatchNorm, Dropout); the rest are functions of the op table.
Layouts differ from the canonical ones in three ways, all handled by `to_canonical` and
`from_canonical`: conv kernels are HWIO, linear kernels [in, out], and a Linear fed by a
Flatten of an image takes its inputs in (H, W, C) order, so its columns are permuted.

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
    nchw_to_nhwc_columns,
    nhwc_to_nchw_columns,
    run,
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


def _module(op, rngs: nnx.Rngs, values: bool = True) -> nnx.Module | None:
    """The op table's modules: one per op that holds weights or has a training mode; `values=False`
    gives their variables shapes only."""
    inits = {} if values else {"kernel_init": shape_only, "bias_init": shape_only}
    if isinstance(op, Conv):
        (ph, pw) = op.padding  # explicit: 'SAME' pads unevenly under strides, unlike torch
        # feature_group_count's kernel is [kh, kw, I/groups, O], output channels grouped as torch's
        return nnx.Conv(op.in_channels, op.out_channels, op.kernel_size, op.stride, padding=((ph, ph), (pw, pw)),
                        kernel_dilation=op.dilation, feature_group_count=op.groups, use_bias=op.bias, rngs=rngs,
                        **inits)
    if isinstance(op, BatchNorm):
        return TorchBatchNorm(op, values)
    if isinstance(op, Linear):
        return nnx.Linear(op.in_features, op.out_features, use_bias=op.bias, rngs=rngs, **inits)
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
        y = lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pads)  # a Python scalar: differentiable
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
        if isinstance(op, (Conv, BatchNorm, Linear)):
            return self.layer(path)(x)
        return _function(op, x)  # a Flatten gets the nominal map: spec.check_input refuses other sizes


def _check_name(owner: nnx.Module, name: str, path: str) -> None:
    if name in vars(owner) or hasattr(type(owner), name) or name.startswith("_"):
        raise ValueError(f"layer path {path!r}: the name {name!r} is taken in its Flax module (by another layer's "
                         f"path, or reserved by Flax: its modules' attributes and names starting with '_'); "
                         f"rename the layer")


# --------------------------------------------------------------------------- canonical weights

# Flax's name of each tensor -> the canonical one (layouts: see to_canonical).
NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def to_canonical(native: dict[str, np.ndarray], flatten_inputs: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Flax state paths ('blocks.0.conv0.kernel') to canonical names and layouts: conv kernels HWIO -> OIHW,
    linear kernels [in, out] -> [out, in] with the columns of those in `flatten_inputs`
    (spec.flatten_inputs()) put back in NCHW order. Arrays are not copied where no layout changes."""
    out = {}
    for path, a in native.items():
        prefix, _, leaf = path.rpartition(".")
        if leaf not in NAMES or not prefix:
            raise KeyError(f"{path!r} is not a zoo tensor of Flax's ('<layer>.' + one of {', '.join(NAMES)})")
        a = np.asarray(a)
        if leaf == "kernel" and a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        elif leaf == "kernel" and a.ndim == 2:
            a = a.T if prefix not in flatten_inputs else nhwc_to_nchw_columns(a.T, flatten_inputs[prefix])
        elif leaf == "kernel":
            raise KeyError(f"{path!r} has shape {a.shape}: a kernel of Flax's has 4 dims (conv) or 2 (linear)")
        out[f"{prefix}.{NAMES[leaf]}"] = a
    return out


def from_canonical(weights: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Canonical weights to Flax state paths and layouts (the inverse of to_canonical)."""
    ops, flatten_inputs, out = spec.ops(), spec.flatten_inputs(), {}
    for name, a in weights.items():
        prefix, _, leaf = name.rpartition(".")
        a = np.asarray(a)
        if isinstance(ops[prefix], BatchNorm):
            out[f"{prefix}.{_BN_NAMES[leaf]}"] = a
        elif leaf == "bias":
            out[f"{prefix}.bias"] = a
        elif a.ndim == 4:
            out[f"{prefix}.kernel"] = a.transpose(2, 3, 1, 0)
        else:
            a = a if prefix not in flatten_inputs else nchw_to_nhwc_columns(a, flatten_inputs[prefix])
            out[f"{prefix}.kernel"] = a.T
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
    canonical = to_canonical(native, model.spec.flatten_inputs())
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
