"""AlexNet (Krizhevsky et al. 2012) in two versions: torchvision's single-tower one, and the d2l book's.

Canonical names follow torchvision's state_dict (`features.N`, `classifier.N`, N its nn.Sequential
index), so a torchvision checkpoint loads as it is; d2l's variant numbers its own layers the same way:

    features.{0,3,6,8,10}         the five convs (each followed by ReLU; max pools after the 1st, 2nd, 5th)
    classifier.{1,4,6}            torchvision: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
    classifier.{0,3,6}            d2l: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear

`ratio` divides the conv widths and `hidden` sets the two hidden dense layers (tiny test variants).

    >>> zoo.get_spec('alexnet').num_params
    61100840
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, dropout_rate, out_shape, scaled, width
from zoo.spec import Act, AdaptivePool, Conv, Dropout, Flatten, Linear, ModelSpec, Pool, Seq


def features(in_channels: int, w: tuple[int, ...], conv1: tuple[int, int, int]) -> Seq:
    """Five convs; conv1 is (kernel, stride, padding): (11, 4, 2) in torchvision, (11, 4, 1) in d2l."""
    return Seq(("0", Conv(in_channels, w[0], *conv1)), ("1", Act()), ("2", Pool("max", 3, 2)),
               ("3", Conv(w[0], w[1], 5, 1, 2)), ("4", Act()), ("5", Pool("max", 3, 2)),
               ("6", Conv(w[1], w[2], 3, 1, 1)), ("7", Act()),
               ("8", Conv(w[2], w[3], 3, 1, 1)), ("9", Act()),
               ("10", Conv(w[3], w[4], 3, 1, 1)), ("11", Act()), ("12", Pool("max", 3, 2)))


@register_model
def alexnet(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, hidden: int = 4096,
            dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's AlexNet (`torchvision.models.alexnet`): 61,100,840 parameters, 224x224 RGB input.

    Convs 64, 192, 384, 256, 256 wide (divided by `ratio`), adaptive average pooling to 6x6,
    then dropout before each of the two `hidden`-wide dense layers.
    """
    check_counts(in_channels, num_classes)
    w = tuple(scaled(c, ratio) for c in (64, 192, 384, 256, 256))
    h, p = width(hidden, "hidden"), dropout_rate(dropout)
    body = Seq(("features", features(in_channels, w, (11, 4, 2))), ("avgpool", AdaptivePool(6)),
               ("flatten", Flatten()),
               ("classifier", Seq(("0", Dropout(p)), ("1", Linear(w[4] * 36, h)), ("2", Act()),
                                  ("3", Dropout(p)), ("4", Linear(h, h)), ("5", Act()),
                                  ("6", Linear(h, num_classes)))))
    return ModelSpec(name="alexnet", family="alexnet", in_channels=in_channels, num_classes=num_classes,
                     body=body, input_size=input_size)


@register_model
def alexnet_d2l(*, in_channels: int = 1, num_classes: int = 10, ratio: int = 1, hidden: int = 4096,
                dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """d2l's AlexNet (section 7.1) for Fashion-MNIST resized to 224x224: 46,764,746 parameters.

    Convs 96, 256, 384, 384, 256 wide (divided by `ratio`), the first 11x11/4 with padding 1;
    no adaptive pooling: the first dense layer takes the 256x5x5 = 6400 features that 224x224 gives
    (or whatever `input_size` gives). Dropout follows each `hidden`-wide dense layer's ReLU.
    """
    check_counts(in_channels, num_classes)
    w = tuple(scaled(c, ratio) for c in (96, 256, 384, 384, 256))
    h, p = width(hidden, "hidden"), dropout_rate(dropout)
    feats = features(in_channels, w, (11, 4, 1))
    flat = out_shape(Seq(*feats.children, ("flatten", Flatten())), in_channels, input_size)[0]
    body = Seq(("features", feats), ("flatten", Flatten()),
               ("classifier", Seq(("0", Linear(flat, h)), ("1", Act()), ("2", Dropout(p)),
                                  ("3", Linear(h, h)), ("4", Act()), ("5", Dropout(p)),
                                  ("6", Linear(h, num_classes)))))
    return ModelSpec(name="alexnet_d2l", family="alexnet", in_channels=in_channels, num_classes=num_classes,
                     body=body, input_size=input_size)


def _rules(pairs: Any) -> tuple[tuple[str, str], ...]:
    return tuple((rf"{foreign}\.(weight|bias)", rf"{canonical}.\1") for foreign, canonical in pairs)


# d2l-zh 2.0 (PyTorch tab of chapter_convolutional-modern/alexnet.md): one nn.Sequential of Conv2d, ReLU,
# MaxPool2d, ..., Flatten (13), Linear (14), ReLU, Dropout, Linear (17), ReLU, Dropout, Linear (20).
D2L_ALEXNET = register_keymap(KeyMap(
    name="d2l AlexNet (nn.Sequential: 0.weight, 3.weight, ..., 14.weight, 17.weight, 20.weight)",
    models=("alexnet_d2l",),
    rules=_rules([(i, f"features.{i}") for i in (0, 3, 6, 8, 10)]
                 + [(14, "classifier.0"), (17, "classifier.3"), (20, "classifier.6")])))
