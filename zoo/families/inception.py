"""Inception-v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture"): torchvision's version.

Canonical names follow torchvision's state_dict (`torchvision.models.inception_v3`). Every conv is a
BasicConv2d: conv without bias `.conv`, BatchNorm (eps 0.001) `.bn`, ReLU. Inside a Mixed block the
branch convs sit side by side under the block's name, as torchvision's attributes do:

    Conv2d_1a_3x3 .. Conv2d_4a_3x3   the stem (3x3/2, 3x3, 3x3 padded, 3x3/2 max pool, 1x1, 3x3, 3x3/2 max pool)
    Mixed_5b, 5c, 5d                 InceptionA: branch1x1; branch5x5_1, _2; branch3x3dbl_1 .. _3; 3x3/1 average
                                     pool then the 1x1 conv branch_pool
    Mixed_6a                         InceptionB (grid reduction): branch3x3 (3x3/2); branch3x3dbl_1 .. _3; max pool
    Mixed_6b .. 6e                   InceptionC: 7x7 factorised into (1,7) and (7,1) convs (branch7x7_1 .. _3,
                                     branch7x7dbl_1 .. _5), branch1x1, branch_pool
    Mixed_7a                         InceptionD (grid reduction): branch3x3_1, _2 (3x3/2); branch7x7x3_1 .. _4; max pool
    Mixed_7b, 7c                     InceptionE: branch3x3_1 then (1,3) and (3,1) convs side by side
                                     (branch3x3_2a, _2b), the same after branch3x3dbl_1, _2 (branch3x3dbl_3a, _3b)
    fc                               after global average pooling and dropout 0.5

A block's branches are concatenated on channels in that order (the pool branch last). The average pools
count their padding (PyTorch's default count_include_pad=True). The network's pools and strided convs
are unpadded: an input must be at least 75x75. `ratio` divides every width (tiny test variants).

    >>> zoo.get_spec('inception_v3').num_params
    23834568
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, dropout_rate, scaled
from zoo.spec import Act, AdaptivePool, BatchNorm, Conv, Dropout, Flatten, Linear, ModelSpec, Parallel, Pool, Seq

AVG = Pool("avg", 3, 1, 1)  # the branch pools: 3x3/1 padded by 1, padding counted in the divisor
MAX = Pool("max", 3, 2)  # the stem's and the grid reductions' pools, unpadded
# the factorised convs: a row (1, k) and a column (k, 1), padded to keep the size
ROW7, COL7 = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
ROW3, COL3 = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))


def basic(c_in: int, c_out: int, kernel: Any, stride: int = 1, padding: Any = 0) -> Seq:
    """torchvision's BasicConv2d: conv without bias, BatchNorm (eps 0.001), ReLU."""
    return Seq(("conv", Conv(c_in, c_out, kernel, stride, padding, bias=False)),
               ("bn", BatchNorm(c_out, eps=0.001)), ("relu", Act()))


def chain(*convs: tuple[str, Seq]) -> tuple[str, Seq]:
    """A branch of convs in a row, named by their own (torchvision's) names: an unnamed Seq."""
    return "", Seq(*convs)


def block(*branches: tuple[str, Seq]) -> Seq:
    """A Mixed block: its branches on the same input, concatenated on channels (the join `concat`)."""
    return Seq(("concat", Parallel("concat", *branches)))


def pool_branch(c_in: int, c_out: int) -> tuple[str, Seq]:
    return chain(("avg_pool", AVG), ("branch_pool", basic(c_in, c_out, 1)))


def inception_a(c_in: int, pool_features: int, s) -> tuple[Seq, int]:
    b = block(("branch1x1", basic(c_in, s(64), 1)),
              chain(("branch5x5_1", basic(c_in, s(48), 1)), ("branch5x5_2", basic(s(48), s(64), 5, 1, 2))),
              chain(("branch3x3dbl_1", basic(c_in, s(64), 1)), ("branch3x3dbl_2", basic(s(64), s(96), 3, 1, 1)),
                    ("branch3x3dbl_3", basic(s(96), s(96), 3, 1, 1))),
              pool_branch(c_in, pool_features))
    return b, s(64) + s(64) + s(96) + pool_features


def inception_b(c_in: int, s) -> tuple[Seq, int]:
    b = block(("branch3x3", basic(c_in, s(384), 3, 2)),
              chain(("branch3x3dbl_1", basic(c_in, s(64), 1)), ("branch3x3dbl_2", basic(s(64), s(96), 3, 1, 1)),
                    ("branch3x3dbl_3", basic(s(96), s(96), 3, 2))),
              chain(("max_pool", MAX)))
    return b, s(384) + s(96) + c_in


def inception_c(c_in: int, c7: int, s) -> tuple[Seq, int]:
    b = block(("branch1x1", basic(c_in, s(192), 1)),
              chain(("branch7x7_1", basic(c_in, c7, 1)), ("branch7x7_2", basic(c7, c7, **ROW7)),
                    ("branch7x7_3", basic(c7, s(192), **COL7))),
              chain(("branch7x7dbl_1", basic(c_in, c7, 1)), ("branch7x7dbl_2", basic(c7, c7, **COL7)),
                    ("branch7x7dbl_3", basic(c7, c7, **ROW7)), ("branch7x7dbl_4", basic(c7, c7, **COL7)),
                    ("branch7x7dbl_5", basic(c7, s(192), **ROW7))),
              pool_branch(c_in, s(192)))
    return b, 4 * s(192)


def inception_d(c_in: int, s) -> tuple[Seq, int]:
    b = block(chain(("branch3x3_1", basic(c_in, s(192), 1)), ("branch3x3_2", basic(s(192), s(320), 3, 2))),
              chain(("branch7x7x3_1", basic(c_in, s(192), 1)), ("branch7x7x3_2", basic(s(192), s(192), **ROW7)),
                    ("branch7x7x3_3", basic(s(192), s(192), **COL7)), ("branch7x7x3_4", basic(s(192), s(192), 3, 2))),
              chain(("max_pool", MAX)))
    return b, s(320) + s(192) + c_in


def inception_e(c_in: int, s) -> tuple[Seq, int]:
    def split(name: str, c: int) -> Parallel:  # a (1,3) and a (3,1) conv on the same input, concatenated
        return Parallel("concat", (f"{name}a", basic(c, s(384), **ROW3)), (f"{name}b", basic(c, s(384), **COL3)))

    b = block(("branch1x1", basic(c_in, s(320), 1)),
              chain(("branch3x3_1", basic(c_in, s(384), 1)), ("branch3x3_concat", split("branch3x3_2", s(384)))),
              chain(("branch3x3dbl_1", basic(c_in, s(448), 1)), ("branch3x3dbl_2", basic(s(448), s(384), 3, 1, 1)),
                    ("branch3x3dbl_concat", split("branch3x3dbl_3", s(384)))),
              pool_branch(c_in, s(192)))
    return b, s(320) + 4 * s(384) + s(192)


@register_model
def inception_v3(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, dropout: float = 0.5,
                 input_size: int | tuple[int, int] = 299) -> ModelSpec:
    """torchvision's Inception-v3 (`torchvision.models.inception_v3(aux_logits=False, transform_input=False)`):
    23,834,568 parameters, 299x299 RGB input (at least 75x75).

    Without the auxiliary classifier (AuxLogits, 3,326,696 parameters more, used in training only).
    transform_input is not supported: it is torchvision's re-normalisation of ImageNet-normalised input for
    its pretrained weights (ported from TensorFlow), preprocessing rather than a layer; apply it to the input
    (channel c: x * std[c] / 0.5 + (mean[c] - 0.5) / 0.5) to reproduce those checkpoints' outputs.
    """
    check_counts(in_channels, num_classes)
    s = lambda c: scaled(c, ratio)  # noqa: E731
    children = [("Conv2d_1a_3x3", basic(in_channels, s(32), 3, 2)), ("Conv2d_2a_3x3", basic(s(32), s(32), 3)),
                ("Conv2d_2b_3x3", basic(s(32), s(64), 3, 1, 1)), ("maxpool1", MAX),
                ("Conv2d_3b_1x1", basic(s(64), s(80), 1)), ("Conv2d_4a_3x3", basic(s(80), s(192), 3)),
                ("maxpool2", MAX)]
    c = s(192)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        b, c_out = inception_a(c, s(pool_features), s)
        children.append((name, b))
        c = c_out
    b, c = inception_b(c, s)
    children.append(("Mixed_6a", b))
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        b, c_out = inception_c(c, s(c7), s)
        children.append((name, b))
        c = c_out
    for name, make in (("Mixed_7a", inception_d), ("Mixed_7b", inception_e), ("Mixed_7c", inception_e)):
        b, c_out = make(c, s)
        children.append((name, b))
        c = c_out
    children += [("avgpool", AdaptivePool(1)), ("dropout", Dropout(dropout_rate(dropout))), ("flatten", Flatten()),
                 ("fc", Linear(c, num_classes))]
    return ModelSpec(name="inception_v3", family="inception", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


# torchvision's checkpoint (IMAGENET1K_V1, inception_v3_google-*.pth) holds the auxiliary classifier
# (AuxLogits.*), which only training uses, and every BatchNorm's num_batches_tracked, which changes no output here.
# timm's inception_v3 (timm.models.inception_v3) keeps torchvision's names, so this map reads and writes its too.
TORCHVISION_INCEPTION = register_keymap(KeyMap(
    name="torchvision and timm Inception-v3 (Conv2d_1a_3x3.conv.weight, Mixed_5b.branch1x1.bn.running_mean, ...; "
         "AuxLogits dropped)",
    models=("inception_v3",),
    rules=((r"((?:Conv2d_[1-4][ab]_[13]x[13]|Mixed_[5-7][a-e]\.branch\w+)"
            r"\.(?:conv\.weight|bn\.(?:weight|bias|running_mean|running_var))|fc\.(?:weight|bias))", r"\1"),),
    drop=(r"AuxLogits\..*", r".*\.num_batches_tracked"),
    library="timm", writes=((r"(.*)", r"\1"),)))
