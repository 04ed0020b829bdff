"""Small helpers the family files share: override checks, so that a message names the argument given."""

from __future__ import annotations

import re
from typing import Any

from zoo.spec import MAX_WIDTH, Seq, Shape, is_int, join_shapes, require, run


def check_counts(in_channels: Any, num_classes: Any) -> None:
    require(is_int(in_channels) and 1 <= in_channels <= MAX_WIDTH,
            f"in_channels must be an int in [1, {MAX_WIDTH}], got {in_channels!r}")
    require(is_int(num_classes) and 1 <= num_classes <= MAX_WIDTH,
            f"num_classes must be an int in [1, {MAX_WIDTH}], got {num_classes!r}")


def widths(value: Any, count: int, what: str) -> tuple:
    require(isinstance(value, (tuple, list)) and len(value) == count,
            f"{what} must be a sequence of {count} entries, got {value!r}")
    return tuple(value)


def width(value: Any, what: str) -> int:
    require(is_int(value) and 1 <= value <= MAX_WIDTH, f"{what} must be an int in [1, {MAX_WIDTH}], got {value!r}")
    return int(value)


def scaled(base: int, ratio: Any) -> int:
    """A width divided by `ratio` (d2l's small VGG divides every width by 4), at least 1."""
    require(is_int(ratio) and 1 <= ratio <= 1024, f"width ratio must be an int in [1, 1024], got {ratio!r}")
    return max(1, base // ratio)


def size_pair(value: Any) -> tuple[int, int]:
    """An input_size override (int or (H, W)) as a pair; ModelSpec checks the range."""
    pair = (value, value) if is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else ()
    require(len(pair) == 2 and all(is_int(n) for n in pair), f"input_size must be an int or (H, W), got {value!r}")
    return int(pair[0]), int(pair[1])


def out_shape(body: Seq, in_channels: int, input_size: Any) -> Shape:
    """The per-image shape `body` gives for an input of `input_size`: how a family sizes the Linear
    after a Flatten that no AdaptivePool precedes. SpecError naming the layer where the input vanishes."""

    def leaf(path, op, shape):
        new = op.out_shape(shape)
        require(len(new) != 3 or min(new[1:]) >= 1,
                f"input_size {input_size!r} is too small: it vanishes at layer {path} (output {new})")
        return new

    return run(body, (in_channels, *size_pair(input_size)), leaf, join_shapes)


def conv_widths(value: Any, count: int, what: str) -> tuple[int, ...]:
    """A sequence of `count` widths, each an int in [1, MAX_WIDTH]."""
    return tuple(width(v, f"{what}[{i}]") for i, v in enumerate(widths(value, count, what)))


def dropout_rate(value: Any) -> float:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0,
            f"dropout must be a float in [0, 1), got {value!r}")
    return float(value)


TENSORS = "weight|bias|running_mean|running_var"  # what a conv, linear or BatchNorm module holds


def module_renames(pairs) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """Key-map rules, both ways, for modules renamed whole: (foreign module, canonical module) pairs, such as
    ("blocks.1.{b}.conv_dw", "features.2.{b}.block.1.0"), where `{b}` stands for a block index both share.
    Returns (rules, writes): each pattern is a module's tensors (weight, bias, running_mean, running_var)."""
    def pattern(module: str) -> str:
        return r"(?P<b>\d+)".join(re.escape(part) for part in module.split("{b}")) + rf"\.(?P<t>{TENSORS})"

    def replacement(module: str) -> str:
        return module.replace("{b}", r"\g<b>") + r".\g<t>"

    return (tuple((pattern(f), replacement(c)) for f, c in pairs),
            tuple((pattern(c), replacement(f)) for f, c in pairs))
