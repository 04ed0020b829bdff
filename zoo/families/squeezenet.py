"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016), as torchvision builds them.

Fire modules: a 1x1 "squeeze" conv, then 1x1 and 3x3 "expand" convs whose outputs are concatenated;
max pools with ceil_mode; the classifier is a 1x1 conv to the classes, ReLU, and global average
pooling. Canonical names follow torchvision's state_dict: `features.{i}.squeeze`,
`features.{i}.expand1x1`, `features.{i}.expand3x3`, `features.0` (the stem conv), `classifier.1`.

    >>> zoo.get_spec('squeezenet1_1').num_params
    1235496
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, dropout_rate, scaled
from zoo.spec import Act, AdaptivePool, Conv, Dropout, Flatten, ModelSpec, Parallel, Pool, Seq


def fire(c_in: int, squeeze: int, e1: int, e3: int) -> Seq:
    expand1x1 = Seq(("expand1x1", Conv(squeeze, e1, 1)), ("expand1x1_activation", Act()))
    expand3x3 = Seq(("expand3x3", Conv(squeeze, e3, 3, 1, 1)), ("expand3x3_activation", Act()))
    return Seq(("squeeze", Conv(c_in, squeeze, 1)), ("squeeze_activation", Act()),
               ("cat", Parallel("concat", ("", expand1x1), ("", expand3x3))))


# (squeeze, expand) of the Fire modules, None a max pool: torchvision's feature lists after the stem
V1_0 = ((16, 64), (16, 64), (32, 128), None, (32, 128), (48, 192), (48, 192), (64, 256), None, (64, 256))
V1_1 = ((16, 64), (16, 64), None, (32, 128), (32, 128), None, (48, 192), (48, 192), (64, 256), (64, 256))


def network(name: str, stem: Conv, layout, in_channels: int, num_classes: int, ratio: Any, dropout: Any,
            input_size: Any) -> ModelSpec:
    check_counts(in_channels, num_classes)
    children = [("features.0", stem), ("features.1", Act()), ("features.2", Pool("max", 3, 2, ceil_mode=True))]
    c = stem.out_channels
    for entry in layout:
        i = len(children)
        if entry is None:
            children.append((f"features.{i}", Pool("max", 3, 2, ceil_mode=True)))
        else:
            s, e = scaled(entry[0], ratio), scaled(entry[1], ratio)
            children.append((f"features.{i}", fire(c, s, e, e)))
            c = 2 * e
    children += [("classifier", Seq(("0", Dropout(dropout_rate(dropout))), ("1", Conv(c, num_classes, 1)),
                                    ("2", Act()), ("3", AdaptivePool(1)))), ("flatten", Flatten())]
    return ModelSpec(name=name, family="squeezenet", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


@register_model
def squeezenet1_0(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, dropout: float = 0.5,
                  input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's SqueezeNet 1.0 (`torchvision.models.squeezenet1_0`): 1,248,424 parameters, 224x224 RGB.
    `ratio` divides every width: tiny variants."""
    check_counts(in_channels, num_classes)
    return network("squeezenet1_0", Conv(in_channels, scaled(96, ratio), 7, 2), V1_0, in_channels, num_classes,
                   ratio, dropout, input_size)


@register_model
def squeezenet1_1(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, dropout: float = 0.5,
                  input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's SqueezeNet 1.1 (`torchvision.models.squeezenet1_1`): 1,235,496 parameters, 224x224 RGB;
    2.4x fewer FLOPs than 1.0 for the same accuracy (a 3x3 stem of 64, earlier pools)."""
    check_counts(in_channels, num_classes)
    return network("squeezenet1_1", Conv(in_channels, scaled(64, ratio), 3, 2), V1_1, in_channels, num_classes,
                   ratio, dropout, input_size)


TORCHVISION_SQUEEZENET = register_keymap(KeyMap(
    name="torchvision SqueezeNet (features.0.weight, features.3.squeeze.weight, classifier.1.weight, ...)",
    models=("squeezenet1_0", "squeezenet1_1"),
    rules=((r"((?:features|classifier)\.[\w.]+)", r"\1"),)))
