"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3 large and small (Howard et al. 2019), as torchvision builds them.

Inverted residual blocks: a 1x1 expansion, a depthwise 3x3 or 5x5 convolution, (V3: a squeeze-and-
excitation gate,) and a linear 1x1 projection, added to the input where the shape allows. Widths are
rounded to multiples of 8 (`make_divisible`). Canonical names follow torchvision's state_dict:

    features.0.0 / .1              the stem conv and its BatchNorm
    features.{i}.conv.{j}.0 / .1   V2's block i: conv j (and its BatchNorm), the projection conv.{k}, its BN conv.{k+1}
    features.{i}.block.{j}.0 / .1  V3's block i: conv j and its BatchNorm; block.{j}.fc1 / fc2 the SE gate
    features.{n}.0 / .1            the last 1x1 conv
    classifier.1 (V2), classifier.0 / classifier.3 (V3)

MobileNetV3's BatchNorms have eps 1e-3 and momentum 0.01 (torchvision's choice; V2's are PyTorch's 1e-5
and 0.1). `width_mult` scales every width: tiny variants.

    >>> zoo.get_spec('mobilenet_v3_small').num_params
    2542856
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, dropout_rate, module_renames
from zoo.spec import Act, AdaptivePool, BatchNorm, Conv, Dropout, Flatten, Linear, ModelSpec, Parallel, Seq, require

IDENTITY = ("", Seq())


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's (and the TensorFlow reference's) rounding of a width: the nearest multiple of
    `divisor`, at least `divisor`, and never more than 10% below `v`."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def multiplier(value: Any) -> float:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 16.0,
            f"width_mult must be a number in (0, 16], got {value!r}")
    return float(value)


def conv_bn(c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, act: str | None = None,
            bn: dict | None = None, dilation: int = 1) -> Seq:
    """torchvision's Conv2dNormActivation: conv (no bias, 'same'-sized padding), BatchNorm, activation."""
    layers = [("0", Conv(c_in, c_out, k, stride, (k - 1) // 2 * dilation, bias=False, groups=groups,
                         dilation=dilation)),
              ("1", BatchNorm(c_out, **(bn or {})))]
    return Seq(*layers, *([("2", Act(act))] if act else []))


def squeeze_excitation(name: str, channels: int, squeeze: int, act: str = "relu", gate: str = "sigmoid") -> Parallel:
    """torchvision's SqueezeExcitation: global average pool, 1x1 conv `fc1`, act, 1x1 conv `fc2`, gate; its
    output scales the input channel-wise. The gate branch is named `name` (its convs: `name.fc1`, `name.fc2`)."""
    gate_branch = Seq(("avgpool", AdaptivePool(1)), ("fc1", Conv(channels, squeeze, 1)), ("activation", Act(act)),
                      ("fc2", Conv(squeeze, channels, 1)), ("scale_activation", Act(gate)))
    return Parallel("mul", IDENTITY, (name, gate_branch))


def residual(body: Seq, use: bool, name: str) -> Seq:
    """The block's layers under `name`, added to the block's input when `use`."""
    return Seq(("add", Parallel("add", (name, body), IDENTITY))) if use else Seq((name, body))


# --------------------------------------------------------------------------- MobileNetV2

# expansion t, output channels c, repeats n, first stride s
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


def v2_block(c_in: int, c_out: int, stride: int, t: int) -> Seq:
    hidden = int(round(c_in * t))
    layers = [] if t == 1 else [("0", conv_bn(c_in, hidden, 1, act="relu6"))]
    layers.append((str(len(layers)), conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6")))
    layers += [(str(len(layers)), Conv(hidden, c_out, 1, bias=False)), (str(len(layers) + 1), BatchNorm(c_out))]
    return residual(Seq(*layers), stride == 1 and c_in == c_out, "conv")


@register_model
def mobilenet_v2(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's MobileNetV2 (`torchvision.models.mobilenet_v2`): 3,504,872 parameters, 224x224 RGB input."""
    check_counts(in_channels, num_classes)
    m = multiplier(width_mult)
    c = make_divisible(32 * m)
    last = make_divisible(1280 * max(1.0, m))
    children = [("features.0", conv_bn(in_channels, c, 3, 2, act="relu6"))]
    for t, width, n, s in V2_SETTING:
        out = make_divisible(width * m)
        for i in range(n):
            children.append((f"features.{len(children)}", v2_block(c, out, s if i == 0 else 1, t)))
            c = out
    children.append((f"features.{len(children)}", conv_bn(c, last, 1, act="relu6")))
    children += [("avgpool", AdaptivePool(1)), ("flatten", Flatten()),
                 ("classifier", Seq(("0", Dropout(dropout_rate(dropout))), ("1", Linear(last, num_classes))))]
    return ModelSpec(name="mobilenet_v2", family="mobilenet", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


# --------------------------------------------------------------------------- MobileNetV3

V3_BN = {"eps": 1e-3, "momentum": 0.01}
# input, kernel, expanded, output, SE, activation (RE: relu, HS: hardswish), stride
V3_LARGE = ((16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
            (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
            (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
            (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1))
V3_SMALL = ((16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1))
_ACT = {"RE": "relu", "HS": "hardswish"}


def v3_block(c_in: int, k: int, expanded: int, c_out: int, se: bool, act: str, stride: int, bn: dict) -> Seq:
    act = _ACT[act]
    layers = [] if expanded == c_in else [("0", conv_bn(c_in, expanded, 1, act=act, bn=bn))]
    layers.append((str(len(layers)), conv_bn(expanded, expanded, k, stride, groups=expanded, act=act, bn=bn)))
    if se:
        name = str(len(layers))
        layers.append((f"{name}_scale", squeeze_excitation(name, expanded, make_divisible(expanded // 4), "relu",
                                                           "hardsigmoid")))
    layers.append((str(len(layers)), conv_bn(expanded, c_out, 1, bn=bn)))  # the SE gate counts as one
    return residual(Seq(*layers), stride == 1 and c_in == c_out, "block")


def mobilenet_v3(name: str, setting, last_channel: int, in_channels: int, num_classes: int, width_mult: Any,
                 dropout: Any, input_size: Any, bn: dict = V3_BN) -> ModelSpec:
    check_counts(in_channels, num_classes)
    m = multiplier(width_mult)

    def adjust(c: int) -> int:
        return make_divisible(c * m)

    first = adjust(setting[0][0])
    children = [("features.0", conv_bn(in_channels, first, 3, 2, act="hardswish", bn=bn))]
    for c_in, k, expanded, c_out, se, act, stride in setting:
        children.append((f"features.{len(children)}",
                         v3_block(adjust(c_in), k, adjust(expanded), adjust(c_out), se, act, stride, bn)))
    c = adjust(setting[-1][3])
    children.append((f"features.{len(children)}", conv_bn(c, 6 * c, 1, act="hardswish", bn=bn)))
    last = adjust(last_channel)
    children += [("avgpool", AdaptivePool(1)), ("flatten", Flatten()),
                 ("classifier", Seq(("0", Linear(6 * c, last)), ("1", Act("hardswish")),
                                    ("2", Dropout(dropout_rate(dropout))), ("3", Linear(last, num_classes))))]
    return ModelSpec(name=name, family="mobilenet", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


@register_model
def mobilenet_v3_large(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0,
                       dropout: float = 0.2, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's MobileNetV3-Large (`torchvision.models.mobilenet_v3_large`): 5,483,032 parameters,
    224x224 RGB input. Hardswish, SE gates with a hardsigmoid, BatchNorm eps 1e-3 and momentum 0.01."""
    return mobilenet_v3("mobilenet_v3_large", V3_LARGE, 1280, in_channels, num_classes, width_mult, dropout,
                        input_size)


@register_model
def mobilenet_v3_small(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0,
                       dropout: float = 0.2, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's MobileNetV3-Small (`torchvision.models.mobilenet_v3_small`): 2,542,856 parameters,
    224x224 RGB input."""
    return mobilenet_v3("mobilenet_v3_small", V3_SMALL, 1024, in_channels, num_classes, width_mult, dropout,
                        input_size)


@register_model
def mobilenetv3_large_100(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0,
                          dropout: float = 0.2, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """timm's MobileNetV3-Large (`timm.create_model('mobilenetv3_large_100')`): torchvision's network with
    PyTorch's BatchNorm defaults, eps 1e-5 and momentum 0.1 (torchvision's are 1e-3 and 0.01), so its own
    preset; 5,483,032 parameters, 224x224 RGB input. Canonical names are torchvision's; timm's read and write.
    `width_mult` scales the widths by torchvision's rule (tiny test variants): timm's own mobilenetv3_large_075
    rounds otherwise and keeps a 1280-wide head, so it is not this preset at 0.75."""
    return mobilenet_v3("mobilenetv3_large_100", V3_LARGE, 1280, in_channels, num_classes, width_mult, dropout,
                        input_size, bn={})


@register_model
def mobilenetv3_small_100(*, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0,
                          dropout: float = 0.2, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """timm's MobileNetV3-Small (`timm.create_model('mobilenetv3_small_100')`): torchvision's network with
    BatchNorm eps 1e-5 and momentum 0.1; 2,542,856 parameters, 224x224 RGB input."""
    return mobilenet_v3("mobilenetv3_small_100", V3_SMALL, 1024, in_channels, num_classes, width_mult, dropout,
                        input_size, bn={})


# torchvision's checkpoints: the canonical names, plus every BatchNorm's num_batches_tracked.
TORCHVISION_MOBILENET = register_keymap(KeyMap(
    name="torchvision MobileNetV2/V3 (features.0.0.weight, features.1.conv.0.0.weight, features.4.block.2.fc1.weight, "
         "classifier.1.weight, ...)",
    models=("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"),
    rules=((r"((?:features|classifier)\.[\w.]+)", r"\1"),),
    drop=(r".*\.num_batches_tracked",)))


# timm's names (timm.models.mobilenetv3, _efficientnet_blocks): the stem conv_stem/bn1; blocks.{s}.{i} for block i
# of stage s, where torchvision counts blocks through the stages (features.{n}); a block without expansion is a
# DepthwiseSeparableConv (conv_dw, bn1, se, conv_pw, bn2), the others InvertedResidual (conv_pw, bn1, conv_dw, bn2,
# se.conv_reduce/conv_expand, conv_pwl, bn3); then timm's last 1x1 conv (V2: conv_head/bn2; V3: blocks.{last}.0.conv
# and bn1) and, in V3, conv_head: a 1x1 conv with bias on the pooled 1x1 map, torchvision's classifier.0 (an exact
# reshape, the layout hook conv_as_linear).
_DS = {"conv_dw": "0", "bn1": "0", "se.conv_reduce": "1.fc1", "se.conv_expand": "1.fc2"}
_IR = {"conv_pw": "0", "bn1": "0", "conv_dw": "1", "bn2": "1", "se.conv_reduce": "2.fc1", "se.conv_expand": "2.fc2"}
TIMM_V3_STAGES = {"large": (1, 2, 3, 4, 2, 3), "small": (1, 2, 3, 2, 3)}  # timm's blocks per stage, V3_* rows


def _timm_blocks(stages) -> list[tuple[int, int, int]]:
    """(timm stage, index in it, torchvision's features index) of each block."""
    return [(s, i, 1 + sum(stages[:s]) + i) for s, n in enumerate(stages) for i in range(n)]


def _timm_v2_pairs() -> list[tuple[str, str]]:
    pairs = [("conv_stem", "features.0.0"), ("bn1", "features.0.1")]
    for (s, i, n), (t, *_) in zip(_timm_blocks([row[2] for row in V2_SETTING]),
                                  [row for row in V2_SETTING for _ in range(row[2])]):
        b, f = f"blocks.{s}.{i}", f"features.{n}.conv"
        convs = (("conv_dw", "0.0"), ("bn1", "0.1"), ("conv_pw", "1"), ("bn2", "2")) if t == 1 else (
            ("conv_pw", "0.0"), ("bn1", "0.1"), ("conv_dw", "1.0"), ("bn2", "1.1"), ("conv_pwl", "2"), ("bn3", "3"))
        pairs += [(f"{b}.{a}", f"{f}.{c}") for a, c in convs]
    last = 1 + sum(row[2] for row in V2_SETTING)
    return pairs + [("conv_head", f"features.{last}.0"), ("bn2", f"features.{last}.1"), ("classifier", "classifier.1")]


def _timm_v3_pairs(setting, stages) -> list[tuple[str, str]]:
    pairs = [("conv_stem", "features.0.0"), ("bn1", "features.0.1")]
    for (s, i, n), (c_in, _, expanded, _, se, _, _) in zip(_timm_blocks(stages), setting):
        b, f, ds = f"blocks.{s}.{i}", f"features.{n}.block", expanded == c_in
        proj = 1 + se if ds else 2 + se  # the projection's index after the optional SE gate
        convs = [("conv_dw", "0.0"), ("bn1", "0.1"), ("conv_pw", f"{proj}.0"), ("bn2", f"{proj}.1")] if ds else [
            ("conv_pw", "0.0"), ("bn1", "0.1"), ("conv_dw", "1.0"), ("bn2", "1.1"), ("conv_pwl", f"{proj}.0"),
            ("bn3", f"{proj}.1")]
        if se:
            convs += [("se.conv_reduce", f"{proj - 1}.fc1"), ("se.conv_expand", f"{proj - 1}.fc2")]
        pairs += [(f"{b}.{a}", f"{f}.{c}") for a, c in convs]
    last = len(setting) + 1
    return pairs + [(f"blocks.{len(stages)}.0.conv", f"features.{last}.0"), (f"blocks.{len(stages)}.0.bn1",
                    f"features.{last}.1"), ("conv_head", "classifier.0"), ("classifier", "classifier.3")]


_v2_rules, _v2_writes = module_renames(_timm_v2_pairs())
TIMM_MOBILENET_V2 = register_keymap(KeyMap(
    name="timm MobileNetV2 mobilenetv2_100 (conv_stem.weight, blocks.1.0.conv_pw.weight, conv_head.weight, "
         "classifier.weight, ...)",
    models=("mobilenet_v2",), rules=_v2_rules, drop=(r".*\.num_batches_tracked",),
    library="timm", writes=_v2_writes, architectures=(("mobilenet_v2", "mobilenetv2_100"),)))
for _size, _setting in (("large", V3_LARGE), ("small", V3_SMALL)):
    _rules, _writes = module_renames(_timm_v3_pairs(_setting, TIMM_V3_STAGES[_size]))
    register_keymap(KeyMap(
        name=f"timm MobileNetV3-{_size.capitalize()} mobilenetv3_{_size}_100 (conv_stem.weight, blocks.1.0.conv_pw."
             f"weight, blocks.{len(TIMM_V3_STAGES[_size])}.0.conv.weight, conv_head.weight, classifier.weight, ...)",
        models=(f"mobilenetv3_{_size}_100",), rules=_rules, drop=(r".*\.num_batches_tracked",),
        reshape=((r"conv_head\.weight", "conv_as_linear"),), library="timm", writes=_writes,
        write_reshape=((r"classifier\.0\.weight", "linear_as_conv"),)))
