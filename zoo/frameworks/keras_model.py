"""NiN in Keras 3 (any backend), built from a NiNSpec. Input [B, H, W, C].

A functional model with one Keras layer per entry of `spec.layers()`, each named
after it with dots as underscores (`blocks_0_conv0`, `pools_0`, ...: Keras on
PyTorch refuses dots in names); kernels are HWIO here, OIHW in
canonical form. Keras offers only 'valid' and 'same' padding, so convs and pools
pad explicitly, as the spec says.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from zoo.nin import Activation, ConvSpec, Dropout, Flatten, GlobalAvgPool, LayerSpec, NiNSpec, PoolSpec

LAYOUT = "NHWC"


def _pad(x, p: int, value: float = 0.0):
    return ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=value) if p else x


@keras.saving.register_keras_serializable(package="zoo")
class PaddedConv2D(keras.layers.Conv2D):
    """Conv2D with explicit symmetric zero padding of `pad` pixels."""

    def __init__(self, filters, kernel_size, strides=1, *, pad: int = 0, **kwargs):
        kwargs.pop("padding", None)  # always 'valid' after the explicit pad
        super().__init__(filters, kernel_size, strides, padding="valid", **kwargs)
        self.pad = pad

    def build(self, input_shape):
        super().build(self._padded(input_shape))

    def call(self, x):
        return super().call(_pad(x, self.pad))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._padded(input_shape))

    def _padded(self, shape):
        return (shape[0], *(None if n is None else n + 2 * self.pad for n in shape[1:3]), shape[3])

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


@keras.saving.register_keras_serializable(package="zoo")
class Pool2D(keras.layers.Layer):
    """Max or average pooling with explicit padding and floor sizes, as a PoolSpec says."""

    def __init__(self, kind: str, size: int, stride: int, padding: int = 0, count_include_pad: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.spec = PoolSpec(kind, size, stride, padding, count_include_pad)

    def call(self, x):
        p = self.spec
        if p.kind == "max":
            return ops.max_pool(_pad(x, p.padding, -np.inf), p.size, p.stride, "valid")
        y = ops.average_pool(_pad(x, p.padding), p.size, p.stride, "valid")
        if p.padding and not p.count_include_pad:
            # divide by the share of each window that lies inside the input
            inside = ops.average_pool(_pad(ops.ones_like(x[:1, :, :, :1]), p.padding), p.size, p.stride, "valid")
            y = y / inside
        return y

    def compute_output_shape(self, shape):
        return (shape[0], *(None if n is None else self.spec.out_size(n) for n in shape[1:3]), shape[3])

    def get_config(self):
        return {**super().get_config(), "kind": self.spec.kind, "size": self.spec.size, "stride": self.spec.stride,
                "padding": self.spec.padding, "count_include_pad": self.spec.count_include_pad}


def _name(layer_name: str) -> str:
    return layer_name.replace(".", "_")


def _keras_layer(layer: LayerSpec, initializer: str) -> keras.layers.Layer:
    op, name = layer.op, _name(layer.name)
    if isinstance(op, ConvSpec):
        return PaddedConv2D(op.out_channels, op.kernel_size, op.stride, pad=op.padding, name=name,
                            kernel_initializer=initializer)
    if isinstance(op, Activation):
        return keras.layers.ReLU(name=name)
    if isinstance(op, PoolSpec):
        return Pool2D(op.kind, op.size, op.stride, op.padding, op.count_include_pad, name=name)
    if isinstance(op, Dropout):
        return keras.layers.Dropout(op.rate, name=name)
    if isinstance(op, GlobalAvgPool):
        return keras.layers.GlobalAveragePooling2D(keepdims=True, name=name)
    if isinstance(op, Flatten):
        return keras.layers.Flatten(name=name)
    raise TypeError(f"no Keras layer for {name}: {op!r}")


@keras.saving.register_keras_serializable(package="zoo")
class NiN(keras.Model):
    """A functional Keras model of a NiNSpec; saves and loads as a `.keras` archive."""

    def __init__(self, spec: NiNSpec | dict, *, initializer: str = "glorot_uniform", **kwargs):
        spec = NiNSpec.from_dict(spec) if isinstance(spec, dict) else spec
        inputs = keras.Input((None, None, spec.in_channels), name="images")
        x = inputs
        for layer in spec.layers():
            x = _keras_layer(layer, initializer)(x)
        super().__init__(inputs, x, name=kwargs.pop("name", spec.name), **kwargs)
        self.spec = spec

    def __call__(self, x, *args, **kwargs):  # [B, H, W, C] -> [B, num_classes]
        self.spec.check_input(tuple(x.shape), LAYOUT)  # before Keras' own, terser, shape check
        return super().__call__(x, *args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        # Non-finite input, the zoo's policy in every framework: an image holding NaN or Inf gets
        # non-finite logits, never ordinary-looking ones. TensorFlow needs this line: measured, its
        # max pool skips NaN (a window of NaN, 1, 2 gives 2) and, in a compiled predict step, its
        # fused conv + bias + ReLU turns NaN into 0, so a NaN image gave finite logits. Checking
        # the input costs one pass over it; unfusing the ReLUs instead cost 1.4x (16x224x224).
        logits = super().call(inputs, training=training, mask=mask)
        finite = ops.all(ops.isfinite(inputs), axis=(1, 2, 3))
        return ops.where(ops.expand_dims(finite, 1), logits, ops.full_like(logits, np.nan))

    def get_config(self):
        return {"spec": self.spec.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# --------------------------------------------------------------------------- adapter

def build(spec: NiNSpec, weights: dict[str, np.ndarray]) -> NiN:
    # Zeros, as every value is set at once: on the JAX backend, drawing random initial values
    # compiled a kernel per shape and made the first zoo.load take 3.3 s instead of 0.5 s.
    model = NiN(spec, initializer="zeros")
    set_weights(model, weights)
    return model


def owns(model) -> bool:
    return isinstance(model, NiN)


def spec_of(model: NiN) -> NiNSpec:
    return model.spec


def get_weights(model: NiN) -> dict[str, np.ndarray]:
    out = {}
    for name in model.spec.convs():
        layer = model.get_layer(_name(name))
        out[f"{name}.weight"] = np.array(ops.convert_to_numpy(layer.kernel)).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        out[f"{name}.bias"] = np.array(ops.convert_to_numpy(layer.bias))
    return out


def set_weights(model: NiN, weights: dict[str, np.ndarray]) -> None:
    for name in model.spec.convs():
        layer = model.get_layer(_name(name))
        layer.kernel.assign(weights[f"{name}.weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
        layer.bias.assign(weights[f"{name}.bias"])


def predict(model: NiN, x: np.ndarray) -> np.ndarray:
    # Keras' compiled predict step (tf.function on TensorFlow, with XLA where Keras judges it
    # pays, i.e. on a GPU; jax.jit on JAX): 1.3-10x a direct call, which runs op by op, and
    # without the data pipeline that model.predict builds on every call (`zoo bench`).
    model.spec.check_input(x.shape, LAYOUT)  # the JAX backend's predict step bypasses NiN.__call__
    if x.shape[0] == 0:  # TensorFlow's predict step fails on an empty batch; torch and Flax return (0, classes)
        return np.zeros((0, model.spec.num_classes), np.float32)
    return np.asarray(model.predict_on_batch(x))


def trace(model: NiN, x: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    model.spec.check_input(x.shape, LAYOUT)
    out, t = [], ops.convert_to_tensor(x)
    for layer in model.spec.layers():
        keras_layer = model.get_layer(_name(layer.name))
        t = keras_layer(t, training=False) if isinstance(layer.op, Dropout) else keras_layer(t)
        out.append((layer.name, tuple(t.shape)))
    return out
