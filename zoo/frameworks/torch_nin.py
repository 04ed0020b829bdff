"""NiN in PyTorch, built from a NiNSpec. Input [B, C, H, W].

The module tree mirrors the canonical names (`blocks.0.conv0.weight` is
`model.blocks[0].conv0.weight`), so this adapter only converts tensors.

Inside, the model computes in channels_last memory format: its conv weights are
stored so, and `forward` turns the input into it (a view when C is 1; else one
copy). The whole network runs 1.16-1.64x faster so on CPU (`zoo bench`), and the
caller still passes and sees ordinary NCHW tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zoo.nin import Activation, ConvSpec, NiNSpec, PoolSpec

LAYOUT = "NCHW"


def _conv(c: ConvSpec) -> nn.Conv2d:
    return nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding)


def _pool(p: PoolSpec) -> nn.Module:
    if p.kind == "max":
        return nn.MaxPool2d(p.size, p.stride, p.padding)  # pads with -inf; floor sizes
    return nn.AvgPool2d(p.size, p.stride, p.padding, count_include_pad=p.count_include_pad)


class NiNBlock(nn.Module):
    """A KxK conv and two 1x1 convs, each followed by ReLU."""

    def __init__(self, convs: tuple[ConvSpec, ConvSpec, ConvSpec]):
        super().__init__()
        self.conv0, self.conv1, self.conv2 = (_conv(c) for c in convs)

    def forward(self, x: torch.Tensor, last_relu: bool = True) -> torch.Tensor:  # [B, C, H, W]
        # ReLU in place, as torchvision does: a new tensor per ReLU made them 17% of the time
        # at 32x224; and as a function, since 12 more module calls cost 1.5% at 1x96.
        x = self.conv0(x).relu_()
        x = self.conv1(x).relu_()
        x = self.conv2(x)
        return x.relu_() if last_relu else x


class NiN(nn.Module):
    def __init__(self, spec: NiNSpec):
        super().__init__()
        self.spec = spec
        blocks, channels = [], spec.in_channels
        for stage in spec.stages:
            blocks.append(NiNBlock(stage.block.convs(channels)))
            channels = stage.block.widths[-1]
        self.blocks = nn.ModuleList(blocks)
        # Keyed by stage, present only where the spec has one: `pools.0`, `dropouts.2`.
        self.pools = nn.ModuleDict({str(b): _pool(s.pool) for b, s in enumerate(spec.stages) if s.pool})
        self.dropouts = nn.ModuleDict({str(b): nn.Dropout(s.dropout) for b, s in enumerate(spec.stages) if s.dropout})
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, num_classes]
        self.spec.check_input(tuple(x.shape), LAYOUT)
        x = x.contiguous(memory_format=torch.channels_last)
        for b, block in enumerate(self.blocks):
            pool = self.pools[str(b)] if str(b) in self.pools else None
            if isinstance(pool, nn.MaxPool2d):
                # ReLU and max pooling commute exactly (ReLU is monotonic), so the block's last
                # ReLU runs after the pool, on a quarter of the values (2% at 32x224).
                x = pool(block(x, last_relu=False)).relu_()
            else:
                x = block(x)
                x = x if pool is None else pool(x)
            if str(b) in self.dropouts:
                x = self.dropouts[str(b)](x)
        return self.flatten(self.global_pool(x))


# --------------------------------------------------------------------------- adapter

def build(spec: NiNSpec, weights: dict[str, np.ndarray]) -> NiN:
    model = NiN(spec).to(memory_format=torch.channels_last)
    set_weights(model, weights)
    return model.eval()


def owns(model) -> bool:
    return isinstance(model, NiN)


def spec_of(model: NiN) -> NiNSpec:
    return model.spec


def get_weights(model: NiN) -> dict[str, np.ndarray]:
    # copies, C-contiguous: the conv weights are channels_last (permuted strides) here
    return {k: np.array(v.detach().cpu().numpy(), order="C") for k, v in model.state_dict().items()}


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
            t = torch.relu(t) if isinstance(layer.op, Activation) else model.get_submodule(layer.name)(t)
            out.append((layer.name, tuple(t.shape)))
    return out
