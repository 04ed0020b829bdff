"""LeNet-5 as the d2l book writes it (LeCun et al. 1998, without the final Gaussian layer), and d2l's
exercise variant with ReLU and max pooling.

Canonical names, the classic ones (there is no torchvision LeNet to follow):

    conv1, conv2                  5x5 convs (the first pads by 2, so 28x28 input keeps LeNet's 32x32 geometry)
    fc1, fc2, fc3                 the dense block: 400 -> 120 -> 84 -> num_classes

    >>> zoo.get_spec('lenet').num_params
    61706
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, conv_widths, out_shape
from zoo.spec import Act, Conv, Flatten, Linear, ModelSpec, Pool, Seq


def network(name: str, act: str, pool: str, in_channels: int, num_classes: int, widths: Any,
            input_size: Any) -> ModelSpec:
    check_counts(in_channels, num_classes)
    c1, c2, f1, f2 = conv_widths(widths, 4, "widths")
    features = Seq(("conv1", Conv(in_channels, c1, 5, 1, 2)), ("act1", Act(act)), ("pool1", Pool(pool, 2, 2)),
                   ("conv2", Conv(c1, c2, 5)), ("act2", Act(act)), ("pool2", Pool(pool, 2, 2)),
                   ("flatten", Flatten()))
    flat = out_shape(features, in_channels, input_size)[0]  # 16 * 5 * 5 = 400 at 28x28
    body = Seq(*features.children, ("fc1", Linear(flat, f1)), ("act3", Act(act)),
               ("fc2", Linear(f1, f2)), ("act4", Act(act)), ("fc3", Linear(f2, num_classes)))
    return ModelSpec(name=name, family="lenet", in_channels=in_channels, num_classes=num_classes, body=body,
                     input_size=input_size)


@register_model
def lenet(*, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int, int] = (6, 16, 120, 84),
          input_size: int | tuple[int, int] = 28) -> ModelSpec:
    """d2l's LeNet-5 (section 6.6): sigmoid activations, 2x2 average pooling; 61,706 parameters, 28x28 input.

    `widths`: the two convs' and the two hidden dense layers' widths. The first dense layer takes
    whatever the convs leave at `input_size` (400 at 28x28).
    """
    return network("lenet", "sigmoid", "avg", in_channels, num_classes, widths, input_size)


@register_model
def lenet_relu(*, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int, int] = (6, 16, 120, 84),
               input_size: int | tuple[int, int] = 28) -> ModelSpec:
    """LeNet-5 with ReLU and 2x2 max pooling (d2l section 6.6, exercise 1); 61,706 parameters, 28x28 input.

    The same layers and names as `lenet`, so the same weights load into either.
    """
    return network("lenet_relu", "relu", "max", in_channels, num_classes, widths, input_size)


# d2l-zh 2.0 (the PyTorch tab of chapter_convolutional-neural-networks/lenet.md, as of the release with
# the paddle and mindspore tabs) writes LeNet as one nn.Sequential: Conv2d, Sigmoid, AvgPool2d, Conv2d,
# Sigmoid, AvgPool2d, Flatten, Linear, Sigmoid, Linear, Sigmoid, Linear; the exercise's ReLU/max-pool
# variant keeps the indices. (Older drafts put a Reshape module first, which shifts every index by one.)
D2L_LENET = register_keymap(KeyMap(
    name="d2l LeNet (nn.Sequential: 0.weight, 3.weight, 7.weight, 9.weight, 11.weight)",
    models=("lenet", "lenet_relu"),
    rules=tuple((rf"{i}\.(weight|bias)", rf"{name}.\1")
                for i, name in ((0, "conv1"), (3, "conv2"), (7, "fc1"), (9, "fc2"), (11, "fc3")))))
