"""ResNet (He et al. 2015): torchvision's ResNet-18/34 (BasicBlock) and ResNet-50 (Bottleneck, stride on
the 3x3 conv: "v1.5"), and the d2l book's ResNet-18.

Canonical names follow torchvision's state_dict:

    conv1, bn1                    7x7/2 stem conv and its BatchNorm (then ReLU, 3x3/2 max pool)
    layer{s}.{b}.conv1/bn1 ...    block b of stage s (both from torchvision: s from 1, b from 0)
    layer{s}.{b}.downsample.0/.1  the projection shortcut (1x1 conv, BatchNorm) where the shape changes
    fc                            after global average pooling

d2l's ResNet-18 keeps these names where its structure matches; its projection shortcut is a single 1x1
conv with bias and no BatchNorm, named as d2l names it: `layer{s}.0.conv3`. `width` is the first stage's
width (64; the stages double it), `layers` the blocks per stage: tiny test variants.

    >>> zoo.get_spec('resnet50').num_params
    25557032
"""

from __future__ import annotations

import functools
from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, conv_widths, module_renames, width
from zoo.families._common import width as _width
from zoo.spec import Act, AdaptivePool, BatchNorm, Conv, Flatten, Linear, ModelSpec, Parallel, Pool, Seq

IDENTITY = ("", Seq())


def basic_block(c_in: int, planes: int, stride: int) -> tuple[Seq, int]:
    body = Seq(("conv1", Conv(c_in, planes, 3, stride, 1, bias=False)), ("bn1", BatchNorm(planes)), ("relu1", Act()),
               ("conv2", Conv(planes, planes, 3, 1, 1, bias=False)), ("bn2", BatchNorm(planes)))
    return _residual(body, c_in, planes, stride), planes


def bottleneck(c_in: int, planes: int, stride: int, groups: int = 1, width_per_group: int = 64) -> tuple[Seq, int]:
    """torchvision's Bottleneck: the 3x3 conv is `groups` groups of planes * width_per_group / 64 channels
    (ResNeXt: groups 32, 4 a group at planes 64; Wide ResNet: width_per_group 128, twice ResNet-50's)."""
    c_out, mid = planes * 4, int(planes * (width_per_group / 64.0)) * groups
    body = Seq(("conv1", Conv(c_in, mid, 1, bias=False)), ("bn1", BatchNorm(mid)), ("relu1", Act()),
               ("conv2", Conv(mid, mid, 3, stride, 1, bias=False, groups=groups)), ("bn2", BatchNorm(mid)),
               ("relu2", Act()), ("conv3", Conv(mid, c_out, 1, bias=False)), ("bn3", BatchNorm(c_out)))
    return _residual(body, c_in, c_out, stride), c_out


def _residual(body: Seq, c_in: int, c_out: int, stride: int) -> Seq:
    shortcut = IDENTITY if stride == 1 and c_in == c_out else (
        "downsample", Seq(("0", Conv(c_in, c_out, 1, stride, bias=False)), ("1", BatchNorm(c_out))))
    return Seq(("add", Parallel("add", ("", body), shortcut)), ("relu", Act()))


def d2l_residual(c_in: int, planes: int, stride: int) -> tuple[Seq, int]:
    """d2l's Residual: 3x3 convs with bias, each followed by BatchNorm; a 1x1 conv shortcut (`conv3`)
    in the first block of every stage but the first."""
    body = Seq(("conv1", Conv(c_in, planes, 3, stride, 1)), ("bn1", BatchNorm(planes)), ("relu1", Act()),
               ("conv2", Conv(planes, planes, 3, 1, 1)), ("bn2", BatchNorm(planes)))
    shortcut = IDENTITY if stride == 1 and c_in == planes else ("", Seq(("conv3", Conv(c_in, planes, 1, stride))))
    return Seq(("add", Parallel("add", ("", body), shortcut)), ("relu", Act())), planes


def network(name: str, block: Any, in_channels: int, num_classes: int, base: Any, layers: Any, input_size: Any,
            stem_bias: bool = False) -> ModelSpec:
    check_counts(in_channels, num_classes)
    w = width(base, "width")
    counts = conv_widths(layers, 4, "layers")
    children = [("conv1", Conv(in_channels, w, 7, 2, 3, bias=stem_bias)), ("bn1", BatchNorm(w)), ("relu", Act()),
                ("maxpool", Pool("max", 3, 2, 1))]
    c = w
    for s, n in enumerate(counts):
        for b in range(n):
            blk, c = block(c, w * 2**s, 2 if s > 0 and b == 0 else 1)
            children.append((f"layer{s + 1}.{b}", blk))
    children += [("avgpool", AdaptivePool(1)), ("flatten", Flatten()), ("fc", Linear(c, num_classes))]
    return ModelSpec(name=name, family="resnet", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


@register_model
def resnet18(*, in_channels: int = 3, num_classes: int = 1000, width: int = 64,
             layers: tuple[int, int, int, int] = (2, 2, 2, 2), input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ResNet-18 (`torchvision.models.resnet18`): 11,689,512 parameters, 224x224 RGB input."""
    return network("resnet18", basic_block, in_channels, num_classes, width, layers, input_size)


@register_model
def resnet34(*, in_channels: int = 3, num_classes: int = 1000, width: int = 64,
             layers: tuple[int, int, int, int] = (3, 4, 6, 3), input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ResNet-34 (`torchvision.models.resnet34`): 21,797,672 parameters, 224x224 RGB input."""
    return network("resnet34", basic_block, in_channels, num_classes, width, layers, input_size)


@register_model
def resnet50(*, in_channels: int = 3, num_classes: int = 1000, width: int = 64,
             layers: tuple[int, int, int, int] = (3, 4, 6, 3), input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ResNet-50 (`torchvision.models.resnet50`): 25,557,032 parameters, 224x224 RGB input.

    Bottleneck blocks (1x1, 3x3, 1x1 four times wider) that downsample on the 3x3 conv, as torchvision
    does ("ResNet v1.5"; the paper strides the first 1x1).
    """
    return network("resnet50", bottleneck, in_channels, num_classes, width, layers, input_size)


@register_model
def resnet101(*, in_channels: int = 3, num_classes: int = 1000, width: int = 64,
              layers: tuple[int, int, int, int] = (3, 4, 23, 3), input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ResNet-101 (`torchvision.models.resnet101`): 44,549,160 parameters, 224x224 RGB input."""
    return network("resnet101", bottleneck, in_channels, num_classes, width, layers, input_size)


@register_model
def resnet152(*, in_channels: int = 3, num_classes: int = 1000, width: int = 64,
              layers: tuple[int, int, int, int] = (3, 8, 36, 3), input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ResNet-152 (`torchvision.models.resnet152`): 60,192,808 parameters, 224x224 RGB input."""
    return network("resnet152", bottleneck, in_channels, num_classes, width, layers, input_size)


@register_model
def resnext50_32x4d(*, in_channels: int = 3, num_classes: int = 1000, width: int = 64,
                    layers: tuple[int, int, int, int] = (3, 4, 6, 3), groups: int = 32, width_per_group: int = 4,
                    input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ResNeXt-50 32x4d (`torchvision.models.resnext50_32x4d`): 25,028,904 parameters; ResNet-50
    with 32 groups of 4 channels (at the first stage) in every 3x3 conv."""
    block = functools.partial(bottleneck, groups=_width(groups, "groups"),
                              width_per_group=_width(width_per_group, "width_per_group"))
    return network("resnext50_32x4d", block, in_channels, num_classes, width, layers, input_size)


@register_model
def wide_resnet50_2(*, in_channels: int = 3, num_classes: int = 1000, width: int = 64,
                    layers: tuple[int, int, int, int] = (3, 4, 6, 3), width_per_group: int = 128,
                    input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's Wide ResNet-50-2 (`torchvision.models.wide_resnet50_2`): 68,883,240 parameters; ResNet-50
    with its bottlenecks' inner convs twice as wide."""
    block = functools.partial(bottleneck, width_per_group=_width(width_per_group, "width_per_group"))
    return network("wide_resnet50_2", block, in_channels, num_classes, width, layers, input_size)


@register_model
def resnet18_d2l(*, in_channels: int = 1, num_classes: int = 10, width: int = 64,
                 layers: tuple[int, int, int, int] = (2, 2, 2, 2), input_size: int | tuple[int, int] = 96) -> ModelSpec:
    """d2l's ResNet-18 (section 7.6) for Fashion-MNIST resized to 96x96: 11,178,378 parameters.

    Every conv has a bias (the stem's too); the projection shortcut is a 1x1 conv without BatchNorm.
    """
    return network("resnet18_d2l", d2l_residual, in_channels, num_classes, width, layers, input_size,
                   stem_bias=True)


# torchvision's checkpoints carry every BatchNorm's num_batches_tracked, which changes no output here
# (the zoo's momentum is never None); their other names are canonical. timm's ResNets (timm.models.resnet:
# resnet18 ... resnet152, resnext50_32x4d, wide_resnet50_2) use the same names and layouts, so this map reads
# and writes (a Hugging Face folder) theirs too.
TORCHVISION_RESNET = register_keymap(KeyMap(
    name="torchvision and timm ResNet (conv1.weight, layer1.0.bn1.running_mean, layer2.0.downsample.0.weight, ...)",
    models=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
            "wide_resnet50_2"),
    rules=((r"((?:layer[1-4]\.\d+\.)?(?:conv[1-3]\.weight|bn[1-3]\.(?:weight|bias|running_mean|running_var))"
            r"|layer[1-4]\.\d+\.downsample\.(?:0\.weight|1\.(?:weight|bias|running_mean|running_var))"
            r"|fc\.(?:weight|bias))", r"\1"),),
    drop=(r".*\.num_batches_tracked",),
    library="timm", writes=((r"(.*)", r"\1"),)))

# d2l-zh 2.0 (PyTorch tab of chapter_convolutional-modern/resnet.md): nn.Sequential(b1, b2, b3, b4, b5,
# AdaptiveAvgPool2d, Flatten, Linear); b1 = (Conv2d, BatchNorm2d, ReLU, MaxPool2d); b2..b5 are
# nn.Sequential of Residual modules (attributes conv1, conv2, optional conv3, bn1, bn2), so block j of
# b(s+1) is `s.j`: d2l's index s is torchvision's stage number.
D2L_RESNET = register_keymap(KeyMap(
    name="d2l ResNet-18 (nn.Sequential: 0.0.weight, 0.1.running_mean, 1.0.conv1.weight, 2.0.conv3.weight, "
         "7.weight)",
    models=("resnet18_d2l",),
    rules=((r"0\.0\.(weight|bias)", r"conv1.\1"), (r"0\.1\.(weight|bias|running_mean|running_var)", r"bn1.\1"),
           (r"([1-4])\.(\d+)\.(conv[1-3]\.(?:weight|bias)|bn[12]\.(?:weight|bias|running_mean|running_var))",
            r"layer\1.\2.\3"),
           (r"7\.(weight|bias)", r"fc.\1")),
    drop=(r".*\.num_batches_tracked",)))


# keras-hub's ResNets (keras_hub.models.ResNetBackbone, v1.5 as torchvision's, with its ResNetImageClassifier's
# head): layer names conv1_conv, stack{s}_block{b}_{j}_conv/_bn (j = 0 the shortcut, 1-3 the body), predictions;
# stages counted from 0 (zoo/io/io_keras_hub.py reads them through keras_hub, in PyTorch's layouts).
_KERAS_HUB = [("conv1_conv", "conv1"), ("conv1_bn", "bn1"), ("predictions", "fc")]
for _s in range(4):
    _KERAS_HUB += [(f"stack{_s}_block{{b}}_{j}_{kind}", f"layer{_s + 1}.{{b}}.{kind}{j}")
                   for j in (1, 2, 3) for kind in ("conv", "bn")]
    _KERAS_HUB += [(f"stack{_s}_block{{b}}_0_conv", f"layer{_s + 1}.{{b}}.downsample.0"),
                   (f"stack{_s}_block{{b}}_0_bn", f"layer{_s + 1}.{{b}}.downsample.1")]
_rules, _writes = module_renames(_KERAS_HUB)
KERAS_HUB_RESNET = register_keymap(KeyMap(
    name="keras-hub ResNet (conv1_conv.weight, stack0_block0_1_conv.weight, stack1_block0_0_bn.running_mean, "
         "predictions.weight, ...)",
    models=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"), rules=_rules, library="keras_hub",
    writes=_writes))
