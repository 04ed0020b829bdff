"""Keras 3's ways to run a zoo model, written plainly, for `zoo bench`.

Each entry of `alternatives` takes a batch (numpy, NHWC) and returns a function that
runs the model once on it and returns numpy logits. The XLA-compiled call is written
for the backend in use (TensorFlow: tf.function(jit_compile=True); JAX: jax.jit);
the torch backend has no XLA.
"""

from __future__ import annotations

import time

import keras
import numpy as np
from keras import ops

import zoo
from zoo.spec import SelfAttention

LAYOUT = "NHWC"


def describe() -> str:
    backend = keras.backend.backend()
    module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
    return f"keras {keras.__version__} on {backend} {module.__version__}"


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = ops.ones((n, n)), ops.ones((n, n))
    done = lambda c: ops.convert_to_numpy(c[0, 0])  # waits for the product without copying all of it
    done(ops.matmul(a, b))  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        done(ops.matmul(a, b))
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def _xla_call(model):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        call = tf.function(lambda x: model(x, training=False), jit_compile=True)
        return lambda x: (lambda: call(x).numpy())
    if backend == "jax":
        import jax

        call = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        # the variables' current values at every call: Keras' own predict step donates and
        # replaces their buffers, so values captured once would be deleted arrays
        values = lambda vs: [v.value for v in vs]
        return lambda x: (lambda: np.asarray(call(values(model.trainable_variables),
                                                  values(model.non_trainable_variables), x)))
    return None


def _graph_call(model):
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False))
    return lambda x: (lambda: call(x).numpy())


def _with_scores(compute):
    """Keras calls it as (query, key, value, mask, training, return_attention_scores)."""
    def call(query, key, value, mask=None, training=None, *_, **kwargs):
        return compute(query, key, value, mask, training, True, **kwargs)
    return call


def _explicit_attention(model):
    """The model's MultiHeadAttentions computing their scores explicitly (einsum, softmax, einsum), the
    path Keras takes when scores are asked for, instead of ops.dot_product_attention (its default here:
    no dropout in eval); a second model on the same weights, through predict_on_batch. None without
    attention."""
    if not any(isinstance(op, SelfAttention) for op in zoo.spec_of(model).ops().values()):
        return None  # decided from the spec: no second model without attention
    other = zoo.load(zoo.spec_of(model), "keras", weights=zoo.get_weights(model))
    for layer in other._flatten_layers():
        if isinstance(layer, keras.layers.MultiHeadAttention):
            layer._compute_attention = _with_scores(layer._compute_attention)
    return lambda x: (lambda: other.predict_on_batch(x))


def alternatives(model) -> dict:
    """name -> make(x) -> run(); the first is the zoo's default call, as the README shows it."""
    out = {
        "zoo.predict(model, x)": lambda x: (lambda: zoo.predict(model, x)),
        "model.predict(x)": lambda x: (lambda: model.predict(x, batch_size=len(x), verbose=0)),
        "model.predict_on_batch(x)": lambda x: (lambda: model.predict_on_batch(x)),
        "direct call model(x)": lambda x: (lambda: ops.convert_to_numpy(model(x, training=False))),
        "XLA-compiled call": _xla_call(model),
        "tf.function, no XLA": _graph_call(model),
        "attention as einsums (Keras' explicit scores)": _explicit_attention(model),
    }
    return {name: make for name, make in out.items() if make is not None}
