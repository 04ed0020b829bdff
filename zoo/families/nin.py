"""NiN (Network in Network, Lin et al. 2013): the d2l book's variant of the seed post, and two more presets.

Canonical names (unchanged since the first release, so shipped weights load as they are):

    blocks.{b}.conv{j}.weight / .bias    j = 0 for the KxK conv, 1 and 2 for the 1x1 convs

A NiN block is a KxK conv and two 1x1 convs, each followed by ReLU; blocks may be followed by a
pool (`pools.{b}`) and a dropout (`dropouts.{b}`); the last block is num_classes wide and global
average pooling gives the logits.

    >>> zoo.get_spec('nin', num_classes=100).min_input_size
    67
"""

from __future__ import annotations

import re
from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts
from zoo.families._common import widths as _widths
from zoo.spec import Act, AdaptivePool, Conv, Dropout, Flatten, ModelSpec, Pool, Seq, SpecError, require

MAX_3S2 = Pool("max", 3, 2)
AVG_3S2 = Pool("avg", 3, 2, count_include_pad=True)


def block(in_channels: int, w: tuple[int, int, int], kernel_size: int, stride: int = 1, padding: int = 0) -> Seq:
    return Seq(("conv0", Conv(in_channels, w[0], kernel_size, stride, padding)), ("relu0", Act()),
               ("conv1", Conv(w[0], w[1], 1)), ("relu1", Act()),
               ("conv2", Conv(w[1], w[2], 1)), ("relu2", Act()))


def network(name: str, in_channels: int, num_classes: int, stages: list[tuple], input_size: Any) -> ModelSpec:
    """stages: (block widths, kernel, stride, padding, pool or None, dropout rate) per block."""
    children, channels = [], in_channels
    for b, (w, k, s, p, pool, dropout) in enumerate(stages):
        children.append((f"blocks.{b}", block(channels, w, k, s, p)))
        channels = w[-1]
        if pool is not None:
            children.append((f"pools.{b}", pool))
        if dropout:
            children.append((f"dropouts.{b}", Dropout(dropout)))
    children += [("global_pool", AdaptivePool(1)), ("flatten", Flatten())]
    require(channels == num_classes, f"the last block's last width ({channels}) must equal num_classes ({num_classes})")
    return ModelSpec(name=name, family="nin", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


@register_model
def nin(*, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (96, 256, 384),
        dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """The d2l book's NiN (the seed blog post): 1-channel 224x224 input, 10 classes.

    `widths` are the three hidden blocks' widths; the last block is num_classes wide.
    """
    check_counts(in_channels, num_classes)
    w = _widths(widths, 3, "widths")
    return network("nin", in_channels, num_classes, [
        ((w[0],) * 3, 11, 4, 0, MAX_3S2, 0),
        ((w[1],) * 3, 5, 1, 2, MAX_3S2, 0),
        ((w[2],) * 3, 3, 1, 1, MAX_3S2, dropout),
        ((num_classes,) * 3, 3, 1, 1, None, 0)], input_size)


@register_model
def nin_cifar10(*, in_channels: int = 3, num_classes: int = 10,
                widths: tuple = ((192, 160, 96), (192, 192, 192), (192, 192)),
                dropout: float = 0.5, input_size: int | tuple[int, int] = 32) -> ModelSpec:
    """The paper's CIFAR-10 NiN: 5x5, 5x5, 3x3 blocks; max then average pooling, dropout after both.

    `widths` gives the first two blocks' three widths and the last block's first two
    (its third is num_classes). Pooling uses floor sizes (Caffe's original used ceil).
    """
    check_counts(in_channels, num_classes)
    w = _widths(widths, 3, "widths")
    return network("nin_cifar10", in_channels, num_classes, [
        (_widths(w[0], 3, "widths[0]"), 5, 1, 2, MAX_3S2, dropout),
        (_widths(w[1], 3, "widths[1]"), 5, 1, 2, AVG_3S2, dropout),
        ((*_widths(w[2], 2, "widths[2]"), num_classes), 3, 1, 1, None, 0)], input_size)


@register_model
def nin_imagenet(*, in_channels: int = 3, num_classes: int = 1000,
                 widths: tuple = ((96, 96, 96), (256, 256, 256), (384, 384, 384), (1024, 1024)),
                 dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """The Caffe model-zoo ImageNet NiN: last block 1024, 1024, num_classes wide.

    `widths` gives the first three blocks' widths and the last block's first two.
    """
    check_counts(in_channels, num_classes)
    w = _widths(widths, 4, "widths")
    return network("nin_imagenet", in_channels, num_classes, [
        (_widths(w[0], 3, "widths[0]"), 11, 4, 0, MAX_3S2, 0),
        (_widths(w[1], 3, "widths[1]"), 5, 1, 2, MAX_3S2, 0),
        (_widths(w[2], 3, "widths[2]"), 3, 1, 1, MAX_3S2, dropout),
        ((*_widths(w[3], 2, "widths[3]"), num_classes), 3, 1, 1, None, 0)], input_size)


def from_v1_dict(d: dict) -> ModelSpec:
    """A spec from the JSON that multizoo 0.1 wrote (a NiNSpec: stages of block, pool, dropout),
    as the shipped Fashion-MNIST weights carry it."""
    try:
        stages = []
        require(isinstance(d["stages"], list) and 1 <= len(d["stages"]) <= 64, "stages must be a list of 1 to 64")
        for s in d["stages"]:
            b, p = s["block"], s.get("pool")
            require(isinstance(b, dict) and (p is None or isinstance(p, dict)), "a stage needs a block dictionary")
            pool = None if p is None else Pool(p["kind"], p.get("size", 3), p.get("stride", 2), p.get("padding", 0),
                                               count_include_pad=p.get("count_include_pad", True))
            stages.append((tuple(b["widths"]), b["kernel_size"], b.get("stride", 1), b.get("padding", 0),
                           pool, s.get("dropout", 0.0)))
        size = d.get("input_size", (224, 224))
        return network(d["name"], d["in_channels"], d["num_classes"], stages,
                       size if isinstance(size, int) else tuple(size))
    except (KeyError, TypeError) as e:
        raise SpecError(f"not a NiN spec dictionary ({type(e).__name__}: {str(e)[:200]})") from None


# --------------------------------------------------------------------------- foreign names (data)
# The d2l NiN: nn.Sequential(nin_block, MaxPool2d, nin_block, MaxPool2d, nin_block, MaxPool2d,
# Dropout, nin_block, AdaptiveAvgPool2d, Flatten), each nin_block an nn.Sequential(Conv2d, ReLU,
# Conv2d, ReLU, Conv2d, ReLU): blocks sit at indices 0, 2, 4, 7 and convs at 0, 2, 4 within them.
# The seed post's class keeps that Sequential as `self.net`.
_D2L_BLOCKS, _D2L_CONVS = ("0", "2", "4", "7"), ("0", "2", "4")


def _d2l_rules(prefix: str) -> tuple[tuple[str, str], ...]:
    return tuple((rf"{re.escape(prefix)}{block}\.{conv}\.(weight|bias)", rf"blocks.{b}.conv{j}.\1")
                 for b, block in enumerate(_D2L_BLOCKS) for j, conv in enumerate(_D2L_CONVS))


register_keymap(KeyMap("d2l NiN class (seed post, keys net.N.M.*)", ("nin",), _d2l_rules("net.")))
register_keymap(KeyMap("d2l NiN nn.Sequential (keys N.M.*)", ("nin",), _d2l_rules("")))
