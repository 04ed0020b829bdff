"""EfficientNet-B0 to B3 (Tan and Le 2019), as torchvision builds them.

MBConv blocks (MobileNetV2's inverted residual with SiLU and a squeeze-and-excitation gate), and
stochastic depth on every residual branch, its rate growing linearly from 0 to 0.2 over the blocks.
B1-B3 scale B0's widths (`width_mult`, rounded to multiples of 8) and depths (`depth_mult`, rounded up).
Canonical names follow torchvision's state_dict:

    features.0.0 / .1                   the stem conv and its BatchNorm
    features.{s}.{i}.block.{j}.0 / .1   block i of stage s: conv j and its BatchNorm; block.{j}.fc1 / fc2 the SE
    features.8.0 / .1                   the last 1x1 conv
    classifier.1                        after global average pooling and dropout

    >>> zoo.get_spec('efficientnet_b0').num_params
    5288548
"""

from __future__ import annotations

import math
from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, dropout_rate, module_renames
from zoo.families.mobilenet import conv_bn, make_divisible, multiplier, squeeze_excitation
from zoo.spec import AdaptivePool, Dropout, DropPath, Flatten, Linear, ModelSpec, Parallel, Seq, require

# expansion, kernel, first stride, input channels, output channels, blocks (B0's)
SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
           (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
STOCHASTIC_DEPTH = 0.2


def mbconv(c_in: int, c_out: int, expand: int, k: int, stride: int, drop: float) -> Seq:
    hidden = make_divisible(c_in * expand)
    layers = [] if hidden == c_in else [("0", conv_bn(c_in, hidden, 1, act="silu"))]
    layers.append((str(len(layers)), conv_bn(hidden, hidden, k, stride, groups=hidden, act="silu")))
    name = str(len(layers))
    layers.append((f"{name}_scale", squeeze_excitation(name, hidden, max(1, c_in // 4), "silu", "sigmoid")))
    layers.append((str(len(layers)), conv_bn(hidden, c_out, 1)))
    if stride != 1 or c_in != c_out:
        return Seq(("block", Seq(*layers)))
    branch = Seq(("block", Seq(*layers)), ("stochastic_depth", DropPath(drop)))
    return Seq(("add", Parallel("add", ("", branch), ("", Seq()))))


def network(name: str, width_mult: Any, depth_mult: Any, in_channels: int, num_classes: int, dropout: Any,
            stochastic_depth: Any, input_size: Any) -> ModelSpec:
    check_counts(in_channels, num_classes)
    wm, dm = multiplier(width_mult), multiplier(depth_mult)
    sd = dropout_rate(stochastic_depth)
    stages = [(e, k, s, make_divisible(ci * wm), make_divisible(co * wm), int(math.ceil(n * dm)))
              for e, k, s, ci, co, n in SETTING]
    total = sum(n for *_, n in stages)
    require(total <= 200, f"depth_mult {depth_mult!r} gives {total} blocks; at most 200")
    children = [("features.0", conv_bn(in_channels, stages[0][3], 3, 2, act="silu"))]
    done = 0
    for s, (e, k, stride, c_in, c_out, n) in enumerate(stages, start=1):
        for i in range(n):
            children.append((f"features.{s}.{i}", mbconv(c_in if i == 0 else c_out, c_out, e, k,
                                                          stride if i == 0 else 1, sd * done / total)))
            done += 1
    c = stages[-1][4]
    children += [(f"features.{len(stages) + 1}", conv_bn(c, 4 * c, 1, act="silu")),
                 ("avgpool", AdaptivePool(1)), ("flatten", Flatten()),
                 ("classifier", Seq(("0", Dropout(dropout_rate(dropout))), ("1", Linear(4 * c, num_classes))))]
    return ModelSpec(name=name, family="efficientnet", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


@register_model
def efficientnet_b0(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0,
                    depth_mult: float = 1.0, dropout: float = 0.2, stochastic_depth: float = STOCHASTIC_DEPTH,
                    input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's EfficientNet-B0 (`torchvision.models.efficientnet_b0`): 5,288,548 parameters, 224x224 RGB."""
    return network("efficientnet_b0", width_mult, depth_mult, in_channels, num_classes, dropout, stochastic_depth,
                   input_size)


@register_model
def efficientnet_b1(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0,
                    depth_mult: float = 1.1, dropout: float = 0.2, stochastic_depth: float = STOCHASTIC_DEPTH,
                    input_size: int | tuple[int, int] = 240) -> ModelSpec:
    """torchvision's EfficientNet-B1: 7,794,184 parameters; torchvision evaluates it at 240x240."""
    return network("efficientnet_b1", width_mult, depth_mult, in_channels, num_classes, dropout, stochastic_depth,
                   input_size)


@register_model
def efficientnet_b2(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.1,
                    depth_mult: float = 1.2, dropout: float = 0.3, stochastic_depth: float = STOCHASTIC_DEPTH,
                    input_size: int | tuple[int, int] = 288) -> ModelSpec:
    """torchvision's EfficientNet-B2: 9,109,994 parameters; torchvision evaluates it at 288x288."""
    return network("efficientnet_b2", width_mult, depth_mult, in_channels, num_classes, dropout, stochastic_depth,
                   input_size)


@register_model
def efficientnet_b3(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.2,
                    depth_mult: float = 1.4, dropout: float = 0.3, stochastic_depth: float = STOCHASTIC_DEPTH,
                    input_size: int | tuple[int, int] = 300) -> ModelSpec:
    """torchvision's EfficientNet-B3: 12,233,232 parameters; torchvision evaluates it at 300x300."""
    return network("efficientnet_b3", width_mult, depth_mult, in_channels, num_classes, dropout, stochastic_depth,
                   input_size)


TORCHVISION_EFFICIENTNET = register_keymap(KeyMap(
    name="torchvision EfficientNet (features.0.0.weight, features.1.0.block.1.fc1.weight, classifier.1.weight, ...)",
    models=("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"),
    rules=((r"((?:features|classifier)\.[\w.]+)", r"\1"),),
    drop=(r".*\.num_batches_tracked",)))


# timm's EfficientNets (timm.models.efficientnet: efficientnet_b0 ... b3) are torchvision's networks (same widths,
# depths, SE widths, symmetric padding, BatchNorm eps 1e-5) under other names: blocks.{s}.{i} is torchvision's
# features.{s + 1}.{i}; stage 0's blocks (no expansion) are timm's DepthwiseSeparableConv (conv_dw, se, conv_pw),
# the others its InvertedResidual (conv_pw, conv_dw, se, conv_pwl).
_TIMM_EFFICIENTNET = (
    [("conv_stem", "features.0.0"), ("bn1", "features.0.1")]
    + [(f"blocks.0.{{b}}.{a}", f"features.1.{{b}}.block.{c}") for a, c in (
        ("conv_dw", "0.0"), ("bn1", "0.1"), ("se.conv_reduce", "1.fc1"), ("se.conv_expand", "1.fc2"),
        ("conv_pw", "2.0"), ("bn2", "2.1"))]
    + [(f"blocks.{s}.{{b}}.{a}", f"features.{s + 1}.{{b}}.block.{c}") for s in range(1, len(SETTING)) for a, c in (
        ("conv_pw", "0.0"), ("bn1", "0.1"), ("conv_dw", "1.0"), ("bn2", "1.1"), ("se.conv_reduce", "2.fc1"),
        ("se.conv_expand", "2.fc2"), ("conv_pwl", "3.0"), ("bn3", "3.1"))]
    + [("conv_head", f"features.{len(SETTING) + 1}.0"), ("bn2", f"features.{len(SETTING) + 1}.1"),
       ("classifier", "classifier.1")])
_rules, _writes = module_renames(_TIMM_EFFICIENTNET)
TIMM_EFFICIENTNET = register_keymap(KeyMap(
    name="timm EfficientNet (conv_stem.weight, blocks.1.0.conv_pw.weight, blocks.1.0.se.conv_reduce.weight, "
         "conv_head.weight, classifier.weight, ...)",
    models=("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"),
    rules=_rules, drop=(r".*\.num_batches_tracked",), library="timm", writes=_writes))
