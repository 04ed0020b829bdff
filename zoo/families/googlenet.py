"""GoogLeNet (Inception v1, Szegedy et al. 2014): torchvision's version, and the d2l book's.

Canonical names follow torchvision's state_dict; d2l's convs, which have a bias and no BatchNorm,
keep the same paths (without the `.bn`):

    conv1.conv, conv1.bn          BasicConv2d: conv without bias, BatchNorm (eps 0.001), ReLU
    conv2, conv3                  1x1 then 3x3 convs of the stem
    inception3a ... inception5b   branch1 (1x1), branch2.0/.1 (1x1, 3x3), branch3.0/.1 (1x1, then 3x3 in
                                  torchvision, 5x5 in d2l), branch4 (3x3/1 max pool, 1x1 conv `branch4.1`),
                                  concatenated on channels
    fc                            after global average pooling (and dropout 0.2 in torchvision)

torchvision's max pools use ceil_mode (56, 28, 14, 7 at 224x224, as in the paper); d2l pads them by 1
instead, with the same sizes at 96x96. `ratio` divides every width (tiny test variants).

    >>> zoo.get_spec('googlenet').num_params
    6624904
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, dropout_rate, scaled
from zoo.spec import Act, AdaptivePool, BatchNorm, Conv, Dropout, Flatten, Linear, ModelSpec, Parallel, Pool, Seq

# name, then widths: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection (the paper's table 1)
INCEPTIONS = (
    ("inception3a", (64, 96, 128, 16, 32, 32)),
    ("inception3b", (128, 128, 192, 32, 96, 64)),
    ("inception4a", (192, 96, 208, 16, 48, 64)),
    ("inception4b", (160, 112, 224, 24, 64, 64)),
    ("inception4c", (128, 128, 256, 24, 64, 64)),
    ("inception4d", (112, 144, 288, 32, 64, 64)),
    ("inception4e", (256, 160, 320, 32, 128, 128)),
    ("inception5a", (256, 160, 320, 32, 128, 128)),
    ("inception5b", (384, 192, 384, 48, 128, 128)),
)
POOL_AFTER = {"conv3": "maxpool2", "inception3b": "maxpool3", "inception4e": "maxpool4"}


def basic(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, bn_eps: float | None = 0.001) -> Seq:
    """torchvision's BasicConv2d (conv without bias, BatchNorm, ReLU); with bn_eps None, d2l's conv with bias."""
    if bn_eps is None:
        return Seq(("conv", Conv(c_in, c_out, kernel, stride, padding)), ("relu", Act()))
    return Seq(("conv", Conv(c_in, c_out, kernel, stride, padding, bias=False)),
               ("bn", BatchNorm(c_out, eps=bn_eps)), ("relu", Act()))


def inception(c_in: int, w: tuple[int, ...], k3: int, pool: Pool, bn_eps: float | None) -> Seq:
    return Seq(("concat", Parallel(
        "concat",
        ("branch1", basic(c_in, w[0], 1, bn_eps=bn_eps)),
        ("branch2", Seq(("0", basic(c_in, w[1], 1, bn_eps=bn_eps)), ("1", basic(w[1], w[2], 3, 1, 1, bn_eps)))),
        ("branch3", Seq(("0", basic(c_in, w[3], 1, bn_eps=bn_eps)),
                        ("1", basic(w[3], w[4], k3, 1, k3 // 2, bn_eps)))),
        ("branch4", Seq(("0", pool), ("1", basic(c_in, w[5], 1, bn_eps=bn_eps)))))))


def network(name: str, in_channels: int, num_classes: int, ratio: Any, input_size: Any, *, bn_eps: float | None,
            k3: int, pool: Pool, last_pool: Pool, branch_pool: Pool, dropout: float | None) -> ModelSpec:
    check_counts(in_channels, num_classes)
    s = lambda c: scaled(c, ratio)  # noqa: E731
    children = [("conv1", basic(in_channels, s(64), 7, 2, 3, bn_eps)), ("maxpool1", pool),
                ("conv2", basic(s(64), s(64), 1, bn_eps=bn_eps)), ("conv3", basic(s(64), s(192), 3, 1, 1, bn_eps)),
                ("maxpool2", pool)]
    c = s(192)
    for block, widths in INCEPTIONS:
        w = tuple(s(n) for n in widths)
        children.append((block, inception(c, w, k3, branch_pool, bn_eps)))
        c = w[0] + w[2] + w[4] + w[5]
        if block in POOL_AFTER:
            children.append((POOL_AFTER[block], last_pool if block == "inception4e" else pool))
    children += [("avgpool", AdaptivePool(1)), ("flatten", Flatten())]
    if dropout is not None:
        children.append(("dropout", Dropout(dropout)))
    children.append(("fc", Linear(c, num_classes)))
    return ModelSpec(name=name, family="googlenet", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


@register_model
def googlenet(*, in_channels: int = 3, num_classes: int = 1000, ratio: int = 1, dropout: float = 0.2,
              input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's GoogLeNet (`torchvision.models.googlenet`) without the auxiliary heads and with
    transform_input=False: 6,624,904 parameters, 224x224 RGB input.

    Follows torchvision exactly, including its known slip (pytorch/vision#906): the "5x5" branch
    convolves 3x3. Every max pool uses ceil_mode; BatchNorm eps is 0.001 (ported from TensorFlow).
    """
    ceil = Pool("max", 3, 2, ceil_mode=True)
    return network("googlenet", in_channels, num_classes, ratio, input_size, bn_eps=0.001, k3=3, pool=ceil,
                   last_pool=Pool("max", 2, 2, ceil_mode=True), branch_pool=Pool("max", 3, 1, 1, ceil_mode=True),
                   dropout=dropout_rate(dropout))


@register_model
def googlenet_d2l(*, in_channels: int = 1, num_classes: int = 10, ratio: int = 1,
                  input_size: int | tuple[int, int] = 96) -> ModelSpec:
    """d2l's GoogLeNet (section 7.4) for Fashion-MNIST resized to 96x96: 5,977,530 parameters.

    The paper's widths and 5x5 branch, convs with bias and no BatchNorm, every max pool 3x3/2
    padded by 1 (floor sizes), no dropout.
    """
    pad = Pool("max", 3, 2, 1)
    return network("googlenet_d2l", in_channels, num_classes, ratio, input_size, bn_eps=None, k3=5, pool=pad,
                   last_pool=pad, branch_pool=Pool("max", 3, 1, 1), dropout=None)


# torchvision's checkpoint (googlenet-1378be20.pth) holds the auxiliary classifiers, which only training
# uses, and every BatchNorm's num_batches_tracked, which changes no output here (momentum is never None).
TORCHVISION_GOOGLENET = register_keymap(KeyMap(
    name="torchvision GoogLeNet (conv1.conv.weight, inception3a.branch1.bn.running_mean, ...; aux1/aux2 dropped)",
    models=("googlenet",),
    rules=((r"((?:conv[123]|inception[345][a-e]\.branch[1-4](?:\.[01])?)"
            r"\.(?:conv\.weight|bn\.(?:weight|bias|running_mean|running_var))|fc\.(?:weight|bias))", r"\1"),),
    drop=(r"aux[12]\..*", r".*\.num_batches_tracked")))

# d2l-zh 2.0 (PyTorch tab of chapter_convolutional-modern/googlenet.md): nn.Sequential(b1, b2, b3, b4, b5,
# Linear); b1 = (Conv2d, ReLU, MaxPool2d), b2 = (Conv2d, ReLU, Conv2d, ReLU, MaxPool2d), b3..b5 hold the
# Inception modules (attributes p1_1, p2_1, p2_2, p3_1, p3_2, p4_1 pool, p4_2) in order.
_D2L_BLOCKS = ((2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4), (4, 0), (4, 1))  # (block, index in it)
_D2L_BRANCHES = (("p1_1", "branch1"), ("p2_1", "branch2.0"), ("p2_2", "branch2.1"), ("p3_1", "branch3.0"),
                 ("p3_2", "branch3.1"), ("p4_2", "branch4.1"))
D2L_GOOGLENET = register_keymap(KeyMap(
    name="d2l GoogLeNet (nn.Sequential of blocks: 0.0.weight, 1.2.weight, 2.0.p1_1.weight, ..., 5.weight)",
    models=("googlenet_d2l",),
    rules=((r"0\.0\.(weight|bias)", r"conv1.conv.\1"), (r"1\.0\.(weight|bias)", r"conv2.conv.\1"),
           (r"1\.2\.(weight|bias)", r"conv3.conv.\1"), (r"5\.(weight|bias)", r"fc.\1"))
    + tuple((rf"{b}\.{i}\.{p}\.(weight|bias)", rf"{name}.{branch}.conv.\1")
            for (b, i), (name, _) in zip(_D2L_BLOCKS, INCEPTIONS) for p, branch in _D2L_BRANCHES)))
