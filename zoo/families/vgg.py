"""VGG (Simonyan and Zisserman 2014): torchvision's VGG-11, -13, -16 and -19, with and without BatchNorm
(`vgg11_bn` ...), and d2l's small VGG-11.

Canonical names follow torchvision's state_dict, N the index in its flat nn.Sequential:

    features.N                    3x3 convs (padding 1), each followed by ReLU (by BatchNorm, then ReLU, in the
                                  _bn variants); a 2x2/2 max pool ends each block
    classifier.{0,3,6}            Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear

torchvision pools adaptively to 7x7 before the classifier; d2l flattens what 224x224 leaves (7x7).
`ratio` divides the conv widths (d2l's own knob: its VGG-11 divides by 4); `hidden` sets the two
hidden dense layers (4096 in both sources).

    >>> zoo.get_spec('vgg16').num_params
    138357544
"""

from __future__ import annotations

import re
from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, dropout_rate, module_renames, out_shape, scaled, width
from zoo.spec import Act, AdaptivePool, BatchNorm, Conv, Dropout, Flatten, Linear, ModelSpec, Pool, Seq

# (convs, width) per block: configurations A (11 layers) and D (16 layers) of the paper's table 1
# and B (13) and E (19)
VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG13 = ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512))
VGG16 = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
VGG19 = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))


def features(in_channels: int, arch: Any, ratio: Any, batch_norm: bool = False) -> tuple[Seq, int]:
    """The conv blocks, numbered as torchvision's flat nn.Sequential; returns (features, last width)."""
    layers, c = [], in_channels
    for convs, w in arch:
        for _ in range(convs):
            layers += [Conv(c, scaled(w, ratio), 3, 1, 1), *([BatchNorm(scaled(w, ratio))] if batch_norm else []),
                       Act()]
            c = scaled(w, ratio)
        layers.append(Pool("max", 2, 2))
    return Seq(*((str(i), op) for i, op in enumerate(layers))), c


def classifier(in_features: int, hidden: Any, num_classes: int, dropout: Any) -> Seq:
    h, p = width(hidden, "hidden"), dropout_rate(dropout)
    return Seq(("0", Linear(in_features, h)), ("1", Act()), ("2", Dropout(p)),
               ("3", Linear(h, h)), ("4", Act()), ("5", Dropout(p)), ("6", Linear(h, num_classes)))


def torchvision_vgg(name: str, arch: Any, in_channels: int, num_classes: int, ratio: int, hidden: int,
                    dropout: float, input_size: Any, batch_norm: bool = False) -> ModelSpec:
    check_counts(in_channels, num_classes)
    feats, c = features(in_channels, arch, ratio, batch_norm)
    body = Seq(("features", feats), ("avgpool", AdaptivePool(7)), ("flatten", Flatten()),
               ("classifier", classifier(c * 49, hidden, num_classes, dropout)))
    return ModelSpec(name=name, family="vgg", in_channels=in_channels, num_classes=num_classes, body=body,
                     input_size=input_size)


@register_model
def vgg11(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
          dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's VGG-11 (`torchvision.models.vgg11`): 132,863,336 parameters, 224x224 RGB input."""
    return torchvision_vgg("vgg11", VGG11, in_channels, num_classes, ratio, hidden, dropout, input_size)


@register_model
def vgg16(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
          dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's VGG-16 (`torchvision.models.vgg16`): 138,357,544 parameters, 224x224 RGB input."""
    return torchvision_vgg("vgg16", VGG16, in_channels, num_classes, ratio, hidden, dropout, input_size)


@register_model
def vgg11_bn(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
             dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's VGG-11 with BatchNorm after every conv (`torchvision.models.vgg11_bn`): 132,868,840
    parameters, 224x224 RGB input."""
    return torchvision_vgg("vgg11_bn", VGG11, in_channels, num_classes, ratio, hidden, dropout, input_size,
                           batch_norm=True)


@register_model
def vgg13(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
          dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's VGG-13 (`torchvision.models.vgg13`): 133,047,848 parameters, 224x224 RGB input."""
    return torchvision_vgg("vgg13", VGG13, in_channels, num_classes, ratio, hidden, dropout, input_size)


@register_model
def vgg13_bn(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
             dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's VGG-13 with BatchNorm after every conv (`torchvision.models.vgg13_bn`): 133,053,736
    parameters, 224x224 RGB input."""
    return torchvision_vgg("vgg13_bn", VGG13, in_channels, num_classes, ratio, hidden, dropout, input_size,
                           batch_norm=True)


@register_model
def vgg16_bn(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
             dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's VGG-16 with BatchNorm after every conv (`torchvision.models.vgg16_bn`): 138,365,992
    parameters, 224x224 RGB input."""
    return torchvision_vgg("vgg16_bn", VGG16, in_channels, num_classes, ratio, hidden, dropout, input_size,
                           batch_norm=True)


@register_model
def vgg19(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
          dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's VGG-19 (`torchvision.models.vgg19`): 143,667,240 parameters, 224x224 RGB input."""
    return torchvision_vgg("vgg19", VGG19, in_channels, num_classes, ratio, hidden, dropout, input_size)


@register_model
def vgg19_bn(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
             dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's VGG-19 with BatchNorm after every conv (`torchvision.models.vgg19_bn`): 143,678,248
    parameters, 224x224 RGB input."""
    return torchvision_vgg("vgg19_bn", VGG19, in_channels, num_classes, ratio, hidden, dropout, input_size,
                           batch_norm=True)


@register_model
def vgg11_d2l(*, in_channels: int = 1, num_classes: int = 10, ratio: int = 4, hidden: int = 4096,
              dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """d2l's small VGG-11 (section 7.2) for Fashion-MNIST resized to 224x224: convs 16, 32, 64, 128, 128
    wide (VGG-11's divided by `ratio` = 4), no adaptive pooling; 43,093,322 parameters, most of them in
    the first dense layer (128x7x7 -> 4096)."""
    check_counts(in_channels, num_classes)
    feats, _ = features(in_channels, VGG11, ratio)
    flat = out_shape(Seq(*feats.children, ("flatten", Flatten())), in_channels, input_size)[0]
    body = Seq(("features", feats), ("flatten", Flatten()),
               ("classifier", classifier(flat, hidden, num_classes, dropout)))
    return ModelSpec(name="vgg11_d2l", family="vgg", in_channels=in_channels, num_classes=num_classes, body=body,
                     input_size=input_size)


# d2l-zh 2.0 (PyTorch tab of chapter_convolutional-modern/vgg.md): nn.Sequential(*vgg_blocks, Flatten,
# Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear); vgg_block b is nn.Sequential(Conv2d, ReLU, ...,
# MaxPool2d), so the j-th conv of block b is `b.{2j}`. torchvision numbers the same convs in one flat list.
_D2L_CONVS = (("0.0", 0), ("1.0", 3), ("2.0", 6), ("2.2", 8), ("3.0", 11), ("3.2", 13), ("4.0", 16), ("4.2", 18))
D2L_VGG11 = register_keymap(KeyMap(
    name="d2l VGG-11 (nn.Sequential of vgg_blocks: 0.0.weight, 2.2.weight, ..., 6.weight, 9.weight, 12.weight)",
    models=("vgg11_d2l",),
    rules=tuple((rf"{re.escape(foreign)}\.(weight|bias)", rf"features.{i}.\1") for foreign, i in _D2L_CONVS)
    + tuple((rf"{i}\.(weight|bias)", rf"classifier.{j}.\1") for i, j in ((6, 0), (9, 3), (12, 6)))))

# torchvision's VGGs with BatchNorm carry each BatchNorm's num_batches_tracked, which changes no output here;
# their other names are canonical.
TORCHVISION_VGG_BN = register_keymap(KeyMap(
    name="torchvision VGG with BatchNorm (features.1.running_mean, features.1.num_batches_tracked, ...)",
    models=("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"),
    rules=((r"(features\.\d+\.(?:weight|bias|running_mean|running_var)|classifier\.[036]\.(?:weight|bias))", r"\1"),),
    drop=(r".*\.num_batches_tracked",)))

# timm's VGGs (timm.models.vgg) keep torchvision's `features.N` and build the head as convolutions:
# `pre_logits.fc1` a 7x7 conv [4096, 512, 7, 7] on the 7x7 map, `pre_logits.fc2` a 1x1 conv, then global
# pooling (of a 1x1 map) and `head.fc`. At 224x224, where the map is 7x7, those convs are exactly
# torchvision's classifier.0 and classifier.3: the same numbers, flattened channel-major. (At other sizes
# timm's head slides its 7x7 conv and pools the results while torchvision pools to 7x7 first: the
# networks differ there, and the zoo computes torchvision's.)
TIMM_VGG = register_keymap(KeyMap(
    name="timm VGG (features.N.*, pre_logits.fc1/fc2 convolutions read as classifier.0/3, head.fc)",
    models=("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"),
    rules=((r"(features\.\d+\.(?:weight|bias|running_mean|running_var))", r"\1"),
           (r"pre_logits\.fc1\.(weight|bias)", r"classifier.0.\1"),
           (r"pre_logits\.fc2\.(weight|bias)", r"classifier.3.\1"),
           (r"head\.fc\.(weight|bias)", r"classifier.6.\1")),
    drop=(r".*\.num_batches_tracked",),
    reshape=((r"pre_logits\.fc[12]\.weight", "conv_as_linear"),),
    library="timm",
    writes=((r"(features\..*)", r"\1"), (r"classifier\.0\.(.*)", r"pre_logits.fc1.\1"),
            (r"classifier\.3\.(.*)", r"pre_logits.fc2.\1"), (r"classifier\.6\.(.*)", r"head.fc.\1")),
    write_reshape=((r"classifier\.[03]\.weight", "linear_as_conv"),)))


def _keras_hub_vgg(name: str, arch: Any) -> KeyMap:
    """keras-hub's VGG (keras_hub.models.VGGBackbone with its VGGImageClassifier, pooling 'avg'): convs named
    block{b}_conv{j} (both from 1), a head of convolutions as timm's (`fc1` 7x7, `fc2` 1x1, then global average
    pooling and the dense `predictions`), read as torchvision's classifier: the same network at 224x224 only,
    as timm's (zoo/io/io_keras_hub.py reads the preset through keras_hub, in PyTorch's layouts)."""
    pairs, n = [], 0
    for b, (convs, _) in enumerate(arch, 1):
        for j in range(1, convs + 1):
            pairs.append((f"block{b}_conv{j}", f"features.{n}"))
            n += 2  # the conv and its ReLU
        n += 1  # the block's max pool
    pairs += [("fc1", "classifier.0"), ("fc2", "classifier.3"), ("predictions", "classifier.6")]
    rules, writes = module_renames(pairs)
    return register_keymap(KeyMap(
        name=f"keras-hub {name.upper()[:3]}-{name[3:]} (block1_conv1.weight, ..., fc1/fc2 convolutions read as "
             f"classifier.0/3, predictions)",
        models=(name,), rules=rules, library="keras_hub", writes=writes,
        reshape=((r"fc[12]\.weight", "conv_as_linear"),),
        write_reshape=((r"classifier\.[03]\.weight", "linear_as_conv"),)))


KERAS_HUB_VGG = {name: _keras_hub_vgg(name, arch)
                 for name, arch in (("vgg11", VGG11), ("vgg13", VGG13), ("vgg16", VGG16), ("vgg19", VGG19))}
