"""RegNet (Radosavovic et al. 2020, "Designing Network Design Spaces"): torchvision's RegNetX-400MF and
RegNetY-400MF, and the d2l book's RegNetX-32 for Fashion-MNIST (section 8.8, AnyNet/RegNet).

A RegNet is an AnyNet whose stage widths come from a quantised linear rule (w_0, w_a, w_m, rounded to
multiples of 8) and whose blocks are ResNeXt bottlenecks (1x1, grouped 3x3 with `group_width` channels a
group, 1x1), with a squeeze-and-excitation gate in the Y variants. Canonical names follow torchvision's
state_dict, except that its block names hold a '-' (`trunk_output.block1.block1-0`), which no zoo path
may hold: they are `block1_0` here, and the torchvision key map renames them.

    stem.0 / .1                                     3x3/2 stem conv and BatchNorm
    trunk_output.block{s}.block{s}_{i}.f.a.0 / .1   block i of stage s: 1x1, then f.b (grouped 3x3), f.se, f.c
    trunk_output.block{s}.block{s}_{i}.proj.0 / .1  the projection shortcut where the shape changes
    fc

    >>> zoo.get_spec('regnet_y_400mf').num_params
    4344144
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, module_renames, width
from zoo.families.mobilenet import conv_bn, make_divisible, squeeze_excitation
from zoo.spec import Act, AdaptivePool, BatchNorm, Conv, Flatten, Linear, ModelSpec, Parallel, Seq, require


def stage_params(depth: int, w_0: int, w_a: float, w_m: float, group_width: int) -> list[tuple[int, int, int]]:
    """torchvision's BlockParams.from_init_params: (width, depth, group width) per stage, bottleneck ratio 1.

    Widths w_0 + w_a * i for blocks i, each snapped to w_0 * w_m^round(log_{w_m}(.)), quantised to 8; runs of
    one width form a stage; a stage's width is then made divisible by its group width. float32, as torch computes.
    """
    require(isinstance(depth, int) and 1 <= depth <= 100, f"depth must be an int in [1, 100], got {depth!r}")
    require(all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w_a, w_m))
            and w_m > 1, f"w_a must be > 0 and w_m > 1, got {w_a!r}, {w_m!r}")
    widths_cont = np.arange(depth, dtype=np.float32) * np.float32(w_a) + np.float32(w_0)
    capacity = np.round(np.log(widths_cont / np.float32(w_0)) / np.float32(math.log(w_m)))
    widths = (np.round(np.float32(w_0) * np.power(np.float32(w_m), capacity) / 8) * 8).astype(int).tolist()
    require(min(widths) >= 8, f"w_0={w_0}, w_a={w_a}, w_m={w_m} give a stage of width {min(widths)}: every stage "
                              "needs 8 channels at least (w_0 >= 4)")
    stages: list[list[int]] = []
    for w in widths:
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    out = []
    for w, d in stages:
        g = min(group_width, w)
        out.append((make_divisible(w, g), d, g))
    return out


def block(c_in: int, c_out: int, stride: int, group_width: int, se_ratio: float | None) -> Seq:
    """torchvision's ResBottleneckBlock (bottleneck multiplier 1): x + f(x), or proj(x) + f(x), then ReLU."""
    groups = c_out // group_width
    layers = [("a", conv_bn(c_in, c_out, 1, act="relu")), ("b", conv_bn(c_out, c_out, 3, stride, groups=groups,
                                                                             act="relu"))]
    if se_ratio:
        layers.append(("se_scale", squeeze_excitation("se", c_out, int(round(se_ratio * c_in)))))
    layers.append(("c", conv_bn(c_out, c_out, 1)))
    shortcut = ("", Seq()) if stride == 1 and c_in == c_out else ("proj", conv_bn(c_in, c_out, 1, stride))
    return Seq(("add", Parallel("add", shortcut, ("f", Seq(*layers)))), ("activation", Act()))


def network(name: str, in_channels: int, num_classes: int, stem: int, stages, se_ratio: float | None,
            input_size: Any) -> ModelSpec:
    check_counts(in_channels, num_classes)
    children = [("stem", conv_bn(in_channels, stem, 3, 2, act="relu"))]
    c = stem
    for s, (w, depth, g) in enumerate(stages, start=1):
        for i in range(depth):
            children.append((f"trunk_output.block{s}.block{s}_{i}", block(c, w, 2 if i == 0 else 1, g, se_ratio)))
            c = w
    children += [("avgpool", AdaptivePool(1)), ("flatten", Flatten()), ("fc", Linear(c, num_classes))]
    return ModelSpec(name=name, family="regnet", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


@register_model
def regnet_x_400mf(*, in_channels: int = 3, num_classes: int = 1000, depth: int = 22, w_0: int = 24,
                   w_a: float = 24.48, w_m: float = 2.54, group_width: int = 16,
                   input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's RegNetX-400MF (`torchvision.models.regnet_x_400mf`): 5,495,976 parameters, 224x224 RGB."""
    stages = stage_params(depth, width(w_0, "w_0"), w_a, w_m, width(group_width, "group_width"))
    return network("regnet_x_400mf", in_channels, num_classes, 32, stages, None, input_size)


@register_model
def regnet_y_400mf(*, in_channels: int = 3, num_classes: int = 1000, depth: int = 16, w_0: int = 48,
                   w_a: float = 27.89, w_m: float = 2.09, group_width: int = 8,
                   input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's RegNetY-400MF (`torchvision.models.regnet_y_400mf`): 4,344,144 parameters, 224x224 RGB;
    squeeze-and-excitation with a quarter of each block's input width."""
    stages = stage_params(depth, width(w_0, "w_0"), w_a, w_m, width(group_width, "group_width"))
    return network("regnet_y_400mf", in_channels, num_classes, 32, stages, 0.25, input_size)


def d2l_block(c_in: int, c_out: int, stride: int, group_width: int) -> Seq:
    """d2l's ResNeXtBlock (bottleneck multiplier 1): convs with biases, each followed by BatchNorm; the first
    block of a stage projects its input with `conv4`/`bn4`."""
    body = Seq(("conv1", Conv(c_in, c_out, 1)), ("bn1", BatchNorm(c_out)), ("relu1", Act()),
               ("conv2", Conv(c_out, c_out, 3, stride, 1, groups=c_out // group_width)), ("bn2", BatchNorm(c_out)),
               ("relu2", Act()), ("conv3", Conv(c_out, c_out, 1)), ("bn3", BatchNorm(c_out)))
    shortcut = ("", Seq()) if stride == 1 and c_in == c_out else (
        "", Seq(("conv4", Conv(c_in, c_out, 1, stride)), ("bn4", BatchNorm(c_out))))
    return Seq(("add", Parallel("add", ("", body), shortcut)), ("relu", Act()))


@register_model
def regnet_d2l(*, in_channels: int = 1, num_classes: int = 10, stem: int = 32, depths: tuple[int, int] = (4, 6),
               widths: tuple[int, int] = (32, 80), group_width: int = 16,
               input_size: int | tuple[int, int] = 96) -> ModelSpec:
    """d2l's RegNetX-32 (section 8.8, AnyNet) for Fashion-MNIST at 96x96: a 3x3/2 stem of 32 channels, two
    stages of 4 and 6 ResNeXt blocks of widths 32 and 80 (16 channels a group), each stage's first block
    strided 2 with a 1x1 projection; every conv has a bias."""
    check_counts(in_channels, num_classes)
    require(isinstance(depths, (tuple, list)) and isinstance(widths, (tuple, list)) and len(depths) == len(widths)
            and 1 <= len(widths) <= 8, f"depths and widths must be sequences of one length, got {depths!r}, {widths!r}")
    gw = width(group_width, "group_width")
    c = width(stem, "stem")
    children = [("stem", Seq(("0", Conv(in_channels, c, 3, 2, 1)), ("1", BatchNorm(c)), ("2", Act())))]
    for s, (d, w) in enumerate(zip(depths, widths), start=1):
        w = width(w, f"widths[{s - 1}]")
        require(w % min(gw, w) == 0, f"widths[{s - 1}] = {w} is not a multiple of group_width {gw}")
        for i in range(width(d, f"depths[{s - 1}]")):
            children.append((f"stage{s}.{i}", d2l_block(c, w, 2 if i == 0 else 1, min(gw, w))))
            c = w
    children += [("avgpool", AdaptivePool(1)), ("flatten", Flatten()), ("fc", Linear(c, num_classes))]
    return ModelSpec(name="regnet_d2l", family="regnet", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


# torchvision's names hold a '-' between stage and block (block1-0); the zoo's hold '_'.
TORCHVISION_REGNET = register_keymap(KeyMap(
    name="torchvision RegNet (stem.0.weight, trunk_output.block1.block1-0.f.a.0.weight, fc.weight, ...)",
    models=("regnet_x_400mf", "regnet_y_400mf"),
    rules=((r"trunk_output\.block(\d+)\.block(\d+)-(\d+)\.([\w.]+)", r"trunk_output.block\1.block\2_\3.\4"),
           (r"((?:stem|fc)\.[\w.]+)", r"\1")),
    drop=(r".*\.num_batches_tracked",)))

# d2l-zh 2.0 (PyTorch tab of chapter_convolutional-modern/cnn-design.md): AnyNet's `self.net` is
# nn.Sequential(stem, stage1, stage2, head); the stem is (Conv2d, BatchNorm2d, ReLU), each stage an nn.Sequential of
# ResNeXtBlocks (conv1..conv4, bn1..bn4), the head (AdaptiveAvgPool2d, Flatten, Linear).
D2L_REGNET = register_keymap(KeyMap(
    name="d2l RegNetX-32 (net.0.0.weight, net.stage1.0.conv1.weight, net.head.2.weight)",
    models=("regnet_d2l",),
    rules=((r"net\.0\.([01])\.(weight|bias|running_mean|running_var)", r"stem.\1.\2"),
           (r"net\.(stage\d+\.\d+\.(?:conv[1-4]|bn[1-4])\.(?:weight|bias|running_mean|running_var))", r"\1"),
           (r"net\.head\.2\.(weight|bias)", r"fc.\1")),
    drop=(r".*\.num_batches_tracked",)))


# timm's RegNetY-400MF (`regnety_004`, timm.models.regnet) is torchvision's network under other names: block i of
# stage s is `s{s}.b{i + 1}` (counted from 1: the pairs are listed per block, at the preset's default depths), with
# conv1/conv2/conv3 (each `.conv` and `.bn`), `se.fc1`/`se.fc2` and `downsample`, and the head `head.fc`. timm's
# `regnetx_004` is not torchvision's RegNetX-400MF (its last stage is 384 wide, not 400: another width rule), so
# only the Y maps.
def _timm_regnet_pairs(stages) -> list[tuple[str, str]]:
    pairs = [("stem.conv", "stem.0"), ("stem.bn", "stem.1"), ("head.fc", "fc")]
    for s, (_, depth, _) in enumerate(stages, 1):
        for i in range(depth):
            timm, ours = f"s{s}.b{i + 1}", f"trunk_output.block{s}.block{s}_{i}"
            pairs += [(f"{timm}.conv1.{p}", f"{ours}.f.a.{j}") for p, j in (("conv", 0), ("bn", 1))]
            pairs += [(f"{timm}.conv2.{p}", f"{ours}.f.b.{j}") for p, j in (("conv", 0), ("bn", 1))]
            pairs += [(f"{timm}.conv3.{p}", f"{ours}.f.c.{j}") for p, j in (("conv", 0), ("bn", 1))]
            pairs += [(f"{timm}.se.fc{j}", f"{ours}.f.se.fc{j}") for j in (1, 2)]
            pairs += [(f"{timm}.downsample.{p}", f"{ours}.proj.{j}") for p, j in (("conv", 0), ("bn", 1))]
    return pairs


_rules, _writes = module_renames(_timm_regnet_pairs(stage_params(16, 48, 27.89, 2.09, 8)))
TIMM_REGNET_Y = register_keymap(KeyMap(
    name="timm RegNetY-400MF regnety_004 (stem.conv.weight, s1.b1.conv1.conv.weight, s1.b1.se.fc1.weight, "
         "head.fc.weight, ...)",
    models=("regnet_y_400mf",), rules=_rules, drop=(r".*\.num_batches_tracked",), library="timm", writes=_writes,
    architectures=(("regnet_y_400mf", "regnety_004"),)))
