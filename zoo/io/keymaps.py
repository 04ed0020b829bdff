"""Foreign checkpoints: other projects' NiN parameter names, mapped to canonical ones. Data, not code.

Each entry names where a foreign model keeps its NiN blocks and, inside a block,
its three convs; the layout is PyTorch's in all of them, so only names change.
"""

from __future__ import annotations

import re

import numpy as np

FOREIGN_NIN: dict[str, dict[str, tuple[str, ...]]] = {
    # The seed blog post's class: self.net = nn.Sequential(nin_block, MaxPool2d, nin_block, MaxPool2d,
    # nin_block, MaxPool2d, Dropout, nin_block, AdaptiveAvgPool2d, Flatten); nin_block is
    # nn.Sequential(Conv2d, ReLU, Conv2d, ReLU, Conv2d, ReLU).
    "d2l NiN class (seed post, keys net.N.M.*)": {"blocks": ("net.0", "net.2", "net.4", "net.7"),
                                                   "convs": ("0", "2", "4")},
    # The d2l book's plain nn.Sequential of the same layers.
    "d2l NiN nn.Sequential (keys N.M.*)": {"blocks": ("0", "2", "4", "7"), "convs": ("0", "2", "4")},
}

_CANONICAL = re.compile(r"blocks\.\d+\.conv[012]\.(weight|bias)")


def key_map(entry: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Foreign name -> canonical name for one FOREIGN_NIN entry."""
    return {f"{block}.{conv}.{leaf}": f"blocks.{b}.conv{j}.{leaf}"
            for b, block in enumerate(entry["blocks"]) for j, conv in enumerate(entry["convs"])
            for leaf in ("weight", "bias")}


def to_canonical(weights: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str | None]:
    """Rename a foreign state_dict to canonical names; returns (weights, the map's name or None).

    Canonical names pass unchanged; names that fit no map also pass unchanged, and the
    spec check that follows lists them.
    """
    if all(_CANONICAL.fullmatch(k) for k in weights):
        return weights, None
    for name, entry in FOREIGN_NIN.items():
        mapping = key_map(entry)
        if set(weights) == set(mapping):
            return {mapping[k]: weights[k] for k in weights}, name
    return weights, None
