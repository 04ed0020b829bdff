"""NiN in PyTorch, built from a NiNSpec. Input [B, C, H, W].

The module tree mirrors the canonical names (`blocks.0.conv0.weight` is
`model.blocks[0].conv0.weight`), so this adapter only converts tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zoo.nin import ConvSpec, NiNSpec, PoolSpec

LAYOUT = "NCHW"


def _conv(c: ConvSpec) -> nn.Conv2d:
    return nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding)


def _pool(p: PoolSpec | None) -> nn.Module:
    if p is None:
        return nn.Identity()
    if p.kind == "max":
        return nn.MaxPool2d(p.size, p.stride, p.padding)  # pads with -inf; floor sizes
    return nn.AvgPool2d(p.size, p.stride, p.padding, count_include_pad=p.count_include_pad)


class NiNBlock(nn.Module):
    """A KxK conv and two 1x1 convs, each followed by ReLU."""

    def __init__(self, convs: tuple[ConvSpec, ConvSpec, ConvSpec]):
        super().__init__()
        self.conv0, self.conv1, self.conv2 = (_conv(c) for c in convs)
        # Modules rather than functional calls, so that a layer-by-layer trace finds them.
        self.relu0, self.relu1, self.relu2 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        x = self.relu0(self.conv0(x))
        x = self.relu1(self.conv1(x))
        return self.relu2(self.conv2(x))


class NiN(nn.Module):
    def __init__(self, spec: NiNSpec):
        super().__init__()
        self.spec = spec
        blocks, channels = [], spec.in_channels
        for stage in spec.stages:
            blocks.append(NiNBlock(stage.block.convs(channels)))
            channels = stage.block.widths[-1]
        self.blocks = nn.ModuleList(blocks)
        self.pools = nn.ModuleList(_pool(s.pool) for s in spec.stages)
        self.dropouts = nn.ModuleList(nn.Dropout(s.dropout) if s.dropout else nn.Identity() for s in spec.stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, num_classes]
        self.spec.check_input(tuple(x.shape), LAYOUT)
        for block, pool, dropout in zip(self.blocks, self.pools, self.dropouts):
            x = dropout(pool(block(x)))
        return self.flatten(self.global_pool(x))


# --------------------------------------------------------------------------- adapter

def build(spec: NiNSpec, weights: dict[str, np.ndarray]) -> NiN:
    model = NiN(spec)
    set_weights(model, weights)
    return model.eval()


def owns(model) -> bool:
    return isinstance(model, NiN)


def spec_of(model: NiN) -> NiNSpec:
    return model.spec


def get_weights(model: NiN) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: NiN, weights: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        for name, p in model.state_dict().items():  # tensors share storage with the parameters
            p.copy_(torch.from_numpy(np.ascontiguousarray(weights[name])))


def predict(model: NiN, x: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(torch.as_tensor(x, device=device)).cpu().numpy()


def trace(model: NiN, x: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    model.spec.check_input(x.shape, LAYOUT)
    out, t = [], torch.as_tensor(x, device=next(model.parameters()).device)
    with torch.inference_mode():
        for layer in model.spec.layers():
            t = model.get_submodule(layer.name)(t)
            out.append((layer.name, tuple(t.shape)))
    return out
