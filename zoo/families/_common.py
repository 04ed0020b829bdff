"""Small helpers the family files share: override checks, so that a message names the argument given."""

from __future__ import annotations

from typing import Any

from zoo.spec import MAX_WIDTH, is_int, require


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
