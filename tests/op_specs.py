"""Small specs that exercise every op and container, and weights that make mistakes visible.

`every_op()` holds each layer op in its awkward settings: a rectangular kernel with uneven
padding, no-bias convs, BatchNorm with a non-default eps and momentum, sigmoid, max pooling
with padding and ceil_mode, average pooling with and without count_include_pad (and with
ceil_mode), concatenation with an identity branch, addition with a strided shortcut,
adaptive pooling to a size that divides nothing, and Flatten -> Dropout -> Linear on a
non-square 3-channel map (the NCHW/NHWC flatten order shows).

`modern_ops()` holds the ops of the last eight years, each where a port goes wrong: a depthwise
convolution with a channel multiplier of 2 and dilation 2 (the order of the multiplied output
channels differs between Keras' DepthwiseConv2D and torch), a grouped convolution with stride 2
and dilation 2 (Keras refuses that pair), SiLU, ReLU6, Hardswish and Hardsigmoid (Keras 2's and
ONNX's default hard sigmoid are 0.2 x + 0.5), a squeeze-and-excitation gate multiplied into a map
of odd size, BatchNorm with MobileNetV3's eps 1e-3 and momentum 0.01, and stochastic depth on a
residual branch.
"""

from __future__ import annotations

import numpy as np

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
    Parallel,
    Pool,
    PosEmbedding,
    SelfAttention,
    Seq,
    TakeToken,
    Tokens,
)


def every_op(in_channels: int = 2, num_classes: int = 5, input_size=(23, 17)) -> ModelSpec:
    body = Seq(
        ("stem", Conv(in_channels, 6, (3, 2), 1, (1, 0))),
        ("stem_bn", BatchNorm(6, eps=1e-3, momentum=0.3)),
        ("stem_act", Act("relu")),
        ("pool0", Pool("max", 3, 2, 1, ceil_mode=True)),
        ("dense", Seq(("cat", Parallel("concat",
                                       ("", Seq()),
                                       ("grow", Seq(("bn", BatchNorm(6)), ("act", Act()),
                                                    ("conv", Conv(6, 4, 3, 1, 1, bias=False)))))))),
        ("res", Seq(("add", Parallel("add",
                                     ("", Seq(("conv1", Conv(10, 8, 3, 2, 1, bias=False)), ("bn1", BatchNorm(8)),
                                              ("act1", Act("sigmoid")))),
                                     ("downsample", Seq(("0", Conv(10, 8, 1, 2, 0, bias=False)),
                                                        ("1", BatchNorm(8, eps=1e-2)))))),
                    ("act", Act()))),
        ("pool1", Pool("avg", 3, 1, 1, count_include_pad=False)),
        ("pool2", Pool("avg", 2, 2, 1, ceil_mode=True, count_include_pad=True)),
        ("adaptive", AdaptivePool((3, 2))),
        ("head", Seq(("0", Conv(8, 3, 1)), ("1", Act()), ("2", Flatten()), ("3", Dropout(0.5)),
                     ("4", Linear(18, 7)), ("5", Act("sigmoid")), ("6", Linear(7, num_classes, bias=False)))),
    )
    return ModelSpec(name="every_op", family="test", in_channels=in_channels, num_classes=num_classes,
                     body=body, input_size=input_size)


def modern_ops(in_channels: int = 3, num_classes: int = 5, input_size=(21, 19)) -> ModelSpec:
    se = Seq(("pool", AdaptivePool(1)), ("fc1", Conv(16, 4, 1)), ("act", Act("silu")), ("fc2", Conv(4, 16, 1)),
             ("gate", Act("hardsigmoid")))
    body = Seq(
        ("stem", Seq(("0", Conv(in_channels, 8, 3, 2, 1, bias=False)), ("1", BatchNorm(8, eps=1e-3, momentum=0.01)),
                     ("2", Act("hardswish")))),
        ("dw", Seq(("0", Conv(8, 16, 3, 1, 2, bias=False, groups=8, dilation=2)), ("1", BatchNorm(16)),
                   ("2", Act("relu6")))),
        ("excite", Parallel("mul", ("", Seq()), ("se", se))),
        ("grouped", Seq(("0", Conv(16, 12, 3, 2, 2, groups=4, dilation=2)), ("1", BatchNorm(12)), ("2", Act("silu")))),
        ("res", Seq(("add", Parallel("add",
                                     ("block", Seq(("0", Conv(12, 24, 1, bias=False, groups=3)), ("1", BatchNorm(24)),
                                                   ("2", Act("sigmoid")), ("3", Conv(24, 12, (1, 3), 1, (0, 1))),
                                                   ("drop", DropPath(0.25)))),
                                     ("", Seq()))),)),
        ("head", Seq(("pool", AdaptivePool(1)), ("flatten", Flatten()), ("fc", Linear(12, num_classes)))),
    )
    return ModelSpec(name="modern_ops", family="test", in_channels=in_channels, num_classes=num_classes,
                     body=body, input_size=input_size)


def transformer_ops(in_channels: int = 3, num_classes: int = 5, input_size=(12, 8)) -> ModelSpec:
    """The ops of ViT and ConvNeXt, each where a port goes wrong: a ConvNeXt block on a non-square map (depthwise
    7x7, LayerNorm over the channels with eps 1e-6, Linear on the channels, tanh GELU, layer scale, stochastic
    depth), the patches as tokens (row by row: a 3x2 grid shows a transposed order), a class token and a position
    embedding (the class token's row is the first), a pre-norm encoder block with 3 heads of 4 features (the packed
    q, k, v order and the head order show) and biases, another without biases, exact GELU, LayerNorm eps 1e-5 on
    tokens, and the class token taken at the end."""
    d = 12
    cnblock = Seq(("0", Conv(8, 8, 7, 1, 3, groups=8)), ("2", LayerNorm(8, 1e-6)), ("3", Linear(8, 16)),
                  ("4", GELU("tanh")), ("5", Linear(16, 8)))
    cn = Seq(("block", cnblock), ("layer_scale", LayerScale(8)), ("drop", DropPath(0.3)))

    def residual(*layers):
        return Parallel("add", ("", Seq(*layers)), ("", Seq()))

    def encoder_layer(i: int, bias: bool) -> Seq:
        mlp = Seq(("0", Linear(d, 20)), ("1", GELU("none")), ("2", Dropout(0.2)), ("3", Linear(20, d)))
        return Seq(("add_1", residual((f"ln_{i}a", LayerNorm(d, 1e-5)), ("attn", SelfAttention(d, 3, bias=bias)))),
                   ("add_2", residual((f"ln_{i}b", LayerNorm(d, 1e-5)), ("mlp", mlp))))

    body = Seq(
        ("stem", Seq(("0", Conv(in_channels, 8, 1)), ("1", LayerNorm(8, 1e-6)))),
        ("cn", Seq(("add", Parallel("add", ("", cn), ("", Seq()))))),
        ("patch", Conv(8, d, 4, 4, 0)),  # 12x8 -> 3x2 patches
        ("tokens", Tokens()),
        ("class_token", ClassToken(d)),
        ("pos_embedding", PosEmbedding(7, d)),
        ("dropout", Dropout(0.4)),
        ("layer0", encoder_layer(0, True)),
        ("layer1", encoder_layer(1, False)),
        ("ln", LayerNorm(d, 1e-6)),
        ("take", TakeToken(0)),
        ("head", Linear(d, num_classes)),
    )
    return ModelSpec(name="transformer_ops", family="test", in_channels=in_channels, num_classes=num_classes,
                     body=body, input_size=input_size)


def flatten_spec(input_size=(11, 7)) -> ModelSpec:
    """Conv -> Flatten -> Linear on a non-square, many-channel map: only the right column order agrees."""
    body = Seq(("conv", Conv(3, 4, 3, 1, 0)), ("act", Act()), ("flatten", Flatten()),
               ("fc", Linear(4 * (input_size[0] - 2) * (input_size[1] - 2), 6)))
    return ModelSpec(name="flatten", family="test", in_channels=3, num_classes=6, body=body, input_size=input_size)


def revealing_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled weights, non-zero biases, and BatchNorm statistics that show an eps or variance mistake:
    running variances spread over [0.5, 2] with every fourth one tiny (1e-4, where eps 1e-5 vs 1e-3 differ
    by 3x in the scale), non-zero running means, BatchNorm scales around 1 (0.01 on the tiny-variance channels)."""
    rng = np.random.default_rng(seed)
    out = {}
    keys = spec.tensor_keys()
    for name, w in spec.init_weights(seed).items():
        leaf = keys[name][1].rpartition(".")[2]  # 'weight' of 'out_proj.weight'; '' for a tensor the path names
        if leaf == "":  # class token, position embedding, layer scale: far from their initial 0, 0.02 and 1e-6,
            out[name] = rng.normal(0, 0.5, w.shape).astype(np.float32)  # so that an order or broadcast mistake shows
        elif leaf == "running_var":
            v = rng.uniform(0.5, 2.0, w.shape)
            v[::4] = 1e-4
            out[name] = v.astype(np.float32)
        elif leaf == "running_mean":
            out[name] = rng.normal(0, 0.3, w.shape).astype(np.float32)
        elif leaf == "weight" and w.ndim == 1:  # BatchNorm scale; small where the variance is tiny, so that
            g = rng.uniform(0.5, 1.5, w.shape)  # activations keep a unit scale (no saturated sigmoid hides
            g[::4] *= 0.01  # an error) while eps still weighs: sqrt(1e-4 + 1e-5) vs sqrt(1e-4 + 1e-3) is 3x
            out[name] = g.astype(np.float32)
        elif leaf.endswith("bias"):  # in_proj_bias too
            out[name] = rng.normal(0, 0.1, w.shape).astype(np.float32)
        else:
            out[name] = w
    return out
