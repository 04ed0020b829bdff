"""Flax NNX's ways to run a zoo model, written plainly, for `zoo bench`.

Each entry of `alternatives` takes a batch (numpy, NHWC) and returns a function that
runs the model once on it and returns numpy logits (which waits for the result).
"""

from __future__ import annotations

import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import zoo
from zoo.spec import SelfAttention

LAYOUT = "NHWC"


def describe() -> str:
    return f"flax {flax.__version__}, jax {jax.__version__} on {jax.devices()[0].platform}"


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = jnp.ones((n, n), jnp.float32), jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def _device_input(make_run):
    def make(x: np.ndarray):
        a = jnp.asarray(x)
        return lambda: np.asarray(make_run(a))
    return make


def alternatives(model) -> dict:
    """name -> make(x) -> run(); the first is the zoo's default call, as the README shows it."""
    jitted = nnx.jit(lambda m, x: m(x))
    # Flax's way to skip re-walking the graph each call; on a jit of its own: sharing `jitted`
    # with it made the plain nnx.jit calls 10x slower here (24 img/s at 1x96).
    cached = nnx.cached_partial(nnx.jit(lambda m, x: m(x)), model)
    graphdef, state = nnx.split(model)
    pure = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))  # the functional style, split once
    runs = {
        "zoo.predict(model, x)": lambda x: (lambda: zoo.predict(model, x)),
        "nnx.jit": _device_input(lambda a: jitted(model, a)),
        "nnx.cached_partial(nnx.jit)": _device_input(cached),
        "jax.jit, split once": _device_input(lambda a: pure(state, a)),
        "eager model(x)": _device_input(model),
    }
    fused = _fused_attention(model)
    if fused is not None:
        fused_def, fused_state = nnx.split(fused)
        call = jax.jit(lambda state, x: nnx.merge(fused_def, state)(x))
        runs["attention: jax.nn.dot_product_attention"] = _device_input(lambda a: call(fused_state, a))
    return runs


def _dot_product_attention(query, key, value, mask=None, **_):
    """nnx.MultiHeadAttention's attention_fn as JAX's fused attention ([B, N, heads, head_dim] in and out;
    scaled by 1/sqrt(head_dim) there as in Flax's default); deterministic, as in eval."""
    return jax.nn.dot_product_attention(query, key, value, mask=mask)


def _fused_attention(model):
    """A copy of the model whose attentions call jax.nn.dot_product_attention instead of Flax's
    einsum-and-softmax nnx.dot_product_attention (the default); None without attention."""
    if not any(isinstance(op, SelfAttention) for op in zoo.spec_of(model).ops().values()):
        return None  # decided from the spec: no copy of a model without attention
    copy = nnx.clone(model)
    for _, m in nnx.iter_graph(copy):
        if isinstance(m, nnx.MultiHeadAttention):
            m.attention_fn = _dot_product_attention
    return copy
