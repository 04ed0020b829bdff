"""DenseNet (Huang et al. 2016): torchvision's DenseNet-121, -161, -169 and -201, and the d2l book's DenseNet.

Canonical names follow torchvision's state_dict:

    features.conv0, .norm0        7x7/2 stem conv and its BatchNorm (then ReLU, 3x3/2 max pool)
    features.denseblock{i}.denselayer{j}.norm1/conv1/norm2/conv2
                                  dense layer j of block i (both from 1): BN, ReLU, 1x1 conv to
                                  bn_size * growth_rate, BN, ReLU, 3x3 conv to growth_rate; its output
                                  is concatenated to its input
    features.transition{i}.norm/conv
                                  BN, ReLU, 1x1 conv halving the channels, 2x2/2 average pool
    features.norm5, classifier    final BatchNorm; ReLU, global average pooling, the linear layer

d2l's DenseNet keeps these names; its dense layer is one BN, ReLU, 3x3 conv (with bias), named
`denselayer{j}.norm/conv`, and its convs all have biases.

    >>> zoo.get_spec('densenet121').num_params
    7978856
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, width
from zoo.spec import (
    Act,
    AdaptivePool,
    BatchNorm,
    Conv,
    Flatten,
    Linear,
    ModelSpec,
    Parallel,
    Pool,
    Seq,
    is_int,
    require,
)


def torchvision_layer(c: int, growth: int, bn_size: int) -> Seq:
    mid = bn_size * growth
    return Seq(("norm1", BatchNorm(c)), ("relu1", Act()), ("conv1", Conv(c, mid, 1, bias=False)),
               ("norm2", BatchNorm(mid)), ("relu2", Act()), ("conv2", Conv(mid, growth, 3, 1, 1, bias=False)))


def d2l_layer(c: int, growth: int, bn_size: int) -> Seq:
    return Seq(("norm", BatchNorm(c)), ("relu", Act()), ("conv", Conv(c, growth, 3, 1, 1)))


def network(name: str, layer: Any, in_channels: int, num_classes: int, growth_rate: Any, block_config: Any,
            num_init_features: Any, bn_size: Any, input_size: Any, bias: bool) -> ModelSpec:
    check_counts(in_channels, num_classes)
    growth, c = width(growth_rate, "growth_rate"), width(num_init_features, "num_init_features")
    bn_size = width(bn_size, "bn_size")
    require(isinstance(block_config, (tuple, list)) and 1 <= len(block_config) <= 8
            and all(is_int(n) and 1 <= n <= 128 for n in block_config),
            f"block_config must be 1 to 8 layer counts, each in [1, 128], got {block_config!r}")
    feats = [("conv0", Conv(in_channels, c, 7, 2, 3, bias=bias)), ("norm0", BatchNorm(c)), ("relu0", Act()),
             ("pool0", Pool("max", 3, 2, 1))]
    for i, n in enumerate(block_config, 1):
        block = []
        for j in range(1, n + 1):
            block.append((f"denselayer{j}.concat",
                          Parallel("concat", ("", Seq()), (f"denselayer{j}", layer(c, growth, bn_size)))))
            c += growth
        feats.append((f"denseblock{i}", Seq(*block)))
        if i < len(block_config):
            feats.append((f"transition{i}", Seq(("norm", BatchNorm(c)), ("relu", Act()),
                                                ("conv", Conv(c, c // 2, 1, bias=bias)), ("pool", Pool("avg", 2, 2)))))
            c //= 2
    feats.append((f"norm{len(block_config) + 1}", BatchNorm(c)))
    body = Seq(("features", Seq(*feats)), ("relu", Act()), ("avgpool", AdaptivePool(1)), ("flatten", Flatten()),
               ("classifier", Linear(c, num_classes)))
    return ModelSpec(name=name, family="densenet", in_channels=in_channels, num_classes=num_classes, body=body,
                     input_size=input_size)


@register_model
def densenet121(*, in_channels: int = 3, num_classes: int = 1000, growth_rate: int = 32,
                block_config: tuple[int, ...] = (6, 12, 24, 16), num_init_features: int = 64, bn_size: int = 4,
                input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's DenseNet-121 (`torchvision.models.densenet121`): 7,978,856 parameters, 224x224 RGB input.

    Convs without bias; dropout is off (torchvision's drop_rate 0).
    """
    return network("densenet121", torchvision_layer, in_channels, num_classes, growth_rate, block_config,
                   num_init_features, bn_size, input_size, bias=False)


@register_model
def densenet161(*, in_channels: int = 3, num_classes: int = 1000, growth_rate: int = 48,
                block_config: tuple[int, ...] = (6, 12, 36, 24), num_init_features: int = 96, bn_size: int = 4,
                input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's DenseNet-161 (`torchvision.models.densenet161`): 28,681,000 parameters, 224x224 RGB input."""
    return network("densenet161", torchvision_layer, in_channels, num_classes, growth_rate, block_config,
                   num_init_features, bn_size, input_size, bias=False)


@register_model
def densenet169(*, in_channels: int = 3, num_classes: int = 1000, growth_rate: int = 32,
                block_config: tuple[int, ...] = (6, 12, 32, 32), num_init_features: int = 64, bn_size: int = 4,
                input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's DenseNet-169 (`torchvision.models.densenet169`): 14,149,480 parameters, 224x224 RGB input."""
    return network("densenet169", torchvision_layer, in_channels, num_classes, growth_rate, block_config,
                   num_init_features, bn_size, input_size, bias=False)


@register_model
def densenet201(*, in_channels: int = 3, num_classes: int = 1000, growth_rate: int = 32,
                block_config: tuple[int, ...] = (6, 12, 48, 32), num_init_features: int = 64, bn_size: int = 4,
                input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's DenseNet-201 (`torchvision.models.densenet201`): 20,013,928 parameters, 224x224 RGB input."""
    return network("densenet201", torchvision_layer, in_channels, num_classes, growth_rate, block_config,
                   num_init_features, bn_size, input_size, bias=False)


@register_model
def densenet_d2l(*, in_channels: int = 1, num_classes: int = 10, growth_rate: int = 32,
                 block_config: tuple[int, ...] = (4, 4, 4, 4), num_init_features: int = 64,
                 input_size: int | tuple[int, int] = 96) -> ModelSpec:
    """d2l's DenseNet (section 7.7) for Fashion-MNIST resized to 96x96: 758,226 parameters.

    Four dense blocks of four BN-ReLU-3x3 conv layers (growth 32), transitions that halve the
    channels; every conv has a bias.
    """
    return network("densenet_d2l", d2l_layer, in_channels, num_classes, growth_rate, block_config,
                   num_init_features, 1, input_size, bias=True)


_BN = "weight|bias|running_mean|running_var"  # a BatchNorm's tensors

# torchvision's checkpoints carry num_batches_tracked, which changes no output here (momentum is never
# None). Its oldest DenseNet files (densenet121-a639ec97.pth) name dense-layer modules `norm.1`, `conv.2`:
# torchvision itself renames them on load with a regex; this map does the same.
# timm's DenseNets (timm.models.densenet: densenet121, 161, 169, 201) use the same names and layouts: this map
# reads and writes (a Hugging Face folder) theirs too.
TORCHVISION_DENSENET = register_keymap(KeyMap(
    name="torchvision and timm DenseNet (features.denseblock1.denselayer1.norm1.weight, ...; also the old norm.1 "
         "names)",
    models=("densenet121", "densenet161", "densenet169", "densenet201"),
    rules=((rf"(features\.denseblock\d+\.denselayer\d+\.)(norm|conv)\.([12])\.({_BN})", r"\1\2\3.\4"),
           (rf"(features\.(?:conv0|denseblock\d+\.denselayer\d+\.conv[12]|transition\d+\.conv)\.weight"
            rf"|features\.(?:norm\d+|denseblock\d+\.denselayer\d+\.norm[12]|transition\d+\.norm)\.(?:{_BN})"
            rf"|classifier\.(?:weight|bias))", r"\1")),
    drop=(r".*\.num_batches_tracked",),
    library="timm", writes=((r"(.*)", r"\1"),)))

# d2l-zh 2.0 (PyTorch tab of chapter_convolutional-modern/densenet.md): nn.Sequential(b1, DenseBlock,
# transition, DenseBlock, transition, DenseBlock, transition, DenseBlock, BatchNorm2d, ReLU,
# AdaptiveAvgPool2d, Flatten, Linear); b1 = (Conv2d, BatchNorm2d, ReLU, MaxPool2d); a DenseBlock keeps its
# conv_blocks (BatchNorm2d, ReLU, Conv2d) in `net`; a transition is (BatchNorm2d, ReLU, Conv2d, AvgPool2d).
# d2l counts layers from 0 and interleaves blocks with transitions, so the rules are listed, for the
# 4-block layout and up to 32 layers a block (256 rules: Python caches 512 compiled patterns).
D2L_DENSENET = register_keymap(KeyMap(
    name="d2l DenseNet (nn.Sequential: 0.0.weight, 1.net.0.0.running_mean, 2.2.weight, 8.running_var, 12.weight)",
    models=("densenet_d2l",),
    rules=((r"0\.0\.(weight|bias)", r"features.conv0.\1"), (rf"0\.1\.({_BN})", r"features.norm0.\1"),
           (rf"8\.({_BN})", r"features.norm5.\1"), (r"12\.(weight|bias)", r"classifier.\1"))
    + tuple((rf"{2 * i - 1}\.net\.{j}\.0\.({_BN})", rf"features.denseblock{i}.denselayer{j + 1}.norm.\1")
            for i in range(1, 5) for j in range(32))
    + tuple((rf"{2 * i - 1}\.net\.{j}\.2\.(weight|bias)", rf"features.denseblock{i}.denselayer{j + 1}.conv.\1")
            for i in range(1, 5) for j in range(32))
    + tuple(rule for i in range(1, 4) for rule in (
        (rf"{2 * i}\.0\.({_BN})", rf"features.transition{i}.norm.\1"),
        (rf"{2 * i}\.2\.(weight|bias)", rf"features.transition{i}.conv.\1"))),
    drop=(r".*\.num_batches_tracked",)))
