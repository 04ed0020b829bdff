"""NiN in Flax NNX, built from a NiNSpec. Input [B, H, W, C].

Attribute paths mirror the canonical names (`blocks.0.conv0.weight` is
`model.blocks[0].conv0.kernel`); kernels are HWIO here, OIHW in canonical form.
"""

from __future__ import annotations

import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo.nin import ConvSpec, NiNSpec, PoolSpec

LAYOUT = "NHWC"


def _conv(c: ConvSpec, rngs: nnx.Rngs) -> nnx.Conv:
    p = c.padding
    return nnx.Conv(c.in_channels, c.out_channels, (c.kernel_size, c.kernel_size), (c.stride, c.stride),
                    padding=((p, p), (p, p)), rngs=rngs)


def pool(x: jax.Array, p: PoolSpec | None) -> jax.Array:  # [B, H, W, C]
    if p is None:
        return x
    args = dict(window_shape=(p.size, p.size), strides=(p.stride, p.stride), padding=((p.padding,) * 2,) * 2)
    if p.kind == "max":
        return nnx.max_pool(x, **args)  # pads with -inf
    return nnx.avg_pool(x, **args, count_include_pad=p.count_include_pad)


class NiNBlock(nnx.Module):
    """A KxK conv and two 1x1 convs, each followed by ReLU."""

    def __init__(self, convs: tuple[ConvSpec, ConvSpec, ConvSpec], *, rngs: nnx.Rngs):
        self.conv0, self.conv1, self.conv2 = (_conv(c, rngs) for c in convs)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C]
        x = nnx.relu(self.conv0(x))
        x = nnx.relu(self.conv1(x))
        return nnx.relu(self.conv2(x))


class NiN(nnx.Module):
    def __init__(self, spec: NiNSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        blocks, channels = [], spec.in_channels
        for stage in spec.stages:
            blocks.append(NiNBlock(stage.block.convs(channels), rngs=rngs))
            channels = stage.block.widths[-1]
        self.blocks = nnx.List(blocks)
        # Rate 0 is the identity: one dropout per stage keeps the lists aligned. Their random
        # keys come with each training call (`model(x, rngs=...)`), so the model holds no RNG state.
        self.dropouts = nnx.List(nnx.Dropout(s.dropout) for s in spec.stages)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:  # [B, H, W, C] -> [B, classes]
        self.spec.check_input(x.shape, LAYOUT)
        for block, stage, dropout in zip(self.blocks, self.spec.stages, self.dropouts):
            x = dropout(pool(block(x), stage.pool), rngs=rngs)
        return x.mean(axis=(1, 2))


# --------------------------------------------------------------------------- adapter

def _layer(model: NiN, name: str):
    """The callable for one of the spec's layer names."""
    kind, *rest = name.split(".")
    if kind == "blocks":
        block, attr = model.blocks[int(rest[0])], rest[1]
        return getattr(block, attr) if attr.startswith("conv") else nnx.relu
    if kind == "pools":
        return functools.partial(pool, p=model.spec.stages[int(rest[0])].pool)
    if kind == "dropouts":
        return model.dropouts[int(rest[0])]
    if kind == "global_pool":
        return lambda x: x.mean(axis=(1, 2), keepdims=True)
    if kind == "flatten":
        return lambda x: x.reshape(x.shape[0], -1)
    raise KeyError(name)


def build(spec: NiNSpec, weights: dict[str, np.ndarray]) -> NiN:
    # Shapes only: drawing initial values that are overwritten at once took seconds.
    model = nnx.eval_shape(lambda: NiN(spec, rngs=nnx.Rngs(0)))
    set_weights(model, weights)
    model.eval()  # dropout off
    return model


def owns(model) -> bool:
    return isinstance(model, NiN)


def spec_of(model: NiN) -> NiNSpec:
    return model.spec


def to_canonical(native: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax parameter paths ('blocks.0.conv0.kernel', HWIO) to canonical names and layout (OIHW)."""
    out = {}
    for path, a in native.items():
        prefix, _, leaf = path.rpartition(".")
        if leaf == "kernel":
            out[f"{prefix}.weight"] = np.asarray(a).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif leaf == "bias":
            out[f"{prefix}.bias"] = np.asarray(a)
        else:
            raise KeyError(f"{path!r} is not a NiN parameter of Flax's ('<layer>.kernel' or '<layer>.bias')")
    return out


def get_weights(model: NiN) -> dict[str, np.ndarray]:
    flat = {".".join(map(str, path)): np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    canonical = to_canonical(flat)
    return {name: canonical[name] for name in model.spec.param_shapes()}  # in layer order


def set_weights(model: NiN, weights: dict[str, np.ndarray]) -> None:
    for name in model.spec.convs():
        conv = _layer(model, name)
        conv.kernel.set_value(jnp.asarray(weights[f"{name}.weight"].transpose(2, 3, 1, 0)))  # OIHW -> HWIO
        conv.bias.set_value(jnp.asarray(weights[f"{name}.bias"]))


# nnx.jit splits the model into graph and state on every call, walking the whole module
# graph: about 1 ms for NiN, as long as the network itself takes on one 96x96 image. So
# predict splits each model once and keeps a jitted function of its state. The state's leaves
# are the model's own Variables: later set_weights or optimizer updates are seen; only
# swapping in a new Variable object is not. The graph is closed over, not passed as a static
# argument: hashing it takes 0.2 ms, so it is hashed once per model, not once per call.
_split: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def _forward(graphdef: nnx.GraphDef):
    """One compiled function per model structure, shared by all models of that structure."""
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))


def _jitted(model: NiN):
    if model not in _split:
        graphdef, state = nnx.split(model)
        _split[model] = _forward(graphdef), state
    return _split[model]


def predict(model: NiN, x: np.ndarray) -> np.ndarray:
    forward, state = _jitted(model)
    return np.asarray(forward(state, x))  # jit moves a numpy x itself, sooner than jnp.asarray


def trace(model: NiN, x: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    model.spec.check_input(x.shape, LAYOUT)
    out, a = [], jnp.asarray(x)
    for layer in model.spec.layers():
        a = _layer(model, layer.name)(a)
        out.append((layer.name, tuple(a.shape)))
    return out
