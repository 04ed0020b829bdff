"""NiN (Network in Network, Lin et al. 2013): the spec, its presets and its canonical weights.

The spec is the single source of truth. Every framework builds its model from a
`NiNSpec` and nothing else, and every weight file uses the canonical names and
layout defined here:

    blocks.{b}.conv{j}.weight   float32 [out, in, kh, kw]   (PyTorch's OIHW)
    blocks.{b}.conv{j}.bias     float32 [out]

b counts the NiN blocks from 0; j is 0 for the KxK conv and 1, 2 for the 1x1 convs.

Example:
    >>> spec = nin(num_classes=100)
    >>> spec.min_input_size
    67
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo._registry import register_model

__all__ = [
    "BlockSpec", "ConvSpec", "PoolSpec", "StageSpec", "NiNSpec", "LayerSpec",
    "Activation", "Dropout", "GlobalAvgPool", "Flatten",
    "nin", "nin_cifar10", "nin_imagenet", "init_weights",
]


class SpecError(ValueError):
    """A spec, or an override of one, that describes no valid model."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# Sane limits on every spec field, so that a spec read from a hostile file is refused
# before anything is allocated: the presets use kernels of at most 11 and widths of 1024.
MAX_WINDOW = 512  # kernel, pool size, stride, padding
MAX_WIDTH = 65_536  # channels of any conv, input channels
MAX_STAGES = 64
MAX_INPUT_SIZE = 16_384  # nominal input side
MAX_PARAMS = 500_000_000  # 2 GB of float32; the largest preset has 7.6 million


def _bounded(v: Any, lo: int, hi: int) -> bool:
    return _is_int(v) and lo <= v <= hi


# --------------------------------------------------------------------------- layers
# A spec compiles to a flat list of named layers (`NiNSpec.layers()`); the summary
# table, the float64 reference and every framework's layer-by-layer trace walk it.

@dataclass(frozen=True)
class ConvSpec:
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0  # symmetric zero padding, in pixels; never 'same'

    def out_size(self, n: int) -> int:
        return (n + 2 * self.padding - self.kernel_size) // self.stride + 1

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)


@dataclass(frozen=True)
class PoolSpec:
    kind: str  # 'max' or 'avg'
    size: int = 3
    stride: int = 2
    padding: int = 0  # symmetric; max pooling pads with -inf, average pooling with zeros
    # Average pooling only: whether padded zeros count in the divisor. True is PyTorch's
    # and Caffe's default; every framework is made to do exactly what this says.
    count_include_pad: bool = True

    def __post_init__(self):
        _require(self.kind in ("max", "avg"), f"pool kind must be 'max' or 'avg', got {self.kind!r}")
        _require(_bounded(self.size, 1, MAX_WINDOW),
                 f"pool size must be an int >= 1 (at most {MAX_WINDOW}), got {self.size!r}")
        _require(_bounded(self.stride, 1, MAX_WINDOW),
                 f"pool stride must be an int >= 1 (at most {MAX_WINDOW}), got {self.stride!r}")
        # PyTorch refuses more padding than half the window, and such a pool could
        # produce windows that hold padding alone.
        _require(_is_int(self.padding) and 0 <= self.padding <= self.size // 2,
                 f"pool padding must be an int in [0, size // 2] = [0, {self.size // 2}], got {self.padding!r}")

    def out_size(self, n: int) -> int:
        return (n + 2 * self.padding - self.size) // self.stride + 1  # floor, as the paper's d2l port


@dataclass(frozen=True)
class Activation:
    kind: str = "relu"


@dataclass(frozen=True)
class Dropout:
    rate: float  # identity at inference


@dataclass(frozen=True)
class GlobalAvgPool:
    """Mean over H and W, keeping them as size-1 axes (as PyTorch's AdaptiveAvgPool2d(1))."""


@dataclass(frozen=True)
class Flatten:
    """[B, C, 1, 1] -> [B, C]."""


LayerOp = ConvSpec | PoolSpec | Activation | Dropout | GlobalAvgPool | Flatten


@dataclass(frozen=True)
class LayerSpec:
    name: str  # e.g. 'blocks.0.conv0'; conv names are the canonical weight prefixes
    op: LayerOp


# --------------------------------------------------------------------------- the spec

@dataclass(frozen=True)
class BlockSpec:
    """A NiN block: a KxK conv and two 1x1 convs, each followed by ReLU."""

    widths: tuple[int, int, int]  # output channels of the KxK conv and of the two 1x1 convs
    kernel_size: int
    stride: int = 1
    padding: int = 0  # symmetric zero padding of the KxK conv

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        _require(len(self.widths) == 3 and all(_bounded(w, 1, MAX_WIDTH) for w in self.widths),
                 f"a block needs three widths, each an int >= 1 (at most {MAX_WIDTH}), got {self.widths!r}"[:300])
        _require(_bounded(self.kernel_size, 1, MAX_WINDOW),
                 f"kernel_size must be an int >= 1 (at most {MAX_WINDOW}), got {self.kernel_size!r}")
        _require(_bounded(self.stride, 1, MAX_WINDOW),
                 f"stride must be an int >= 1 (at most {MAX_WINDOW}), got {self.stride!r}")
        _require(_bounded(self.padding, 0, MAX_WINDOW),
                 f"padding must be an int >= 0 (at most {MAX_WINDOW}), got {self.padding!r}")

    def convs(self, in_channels: int) -> tuple[ConvSpec, ConvSpec, ConvSpec]:
        w0, w1, w2 = self.widths
        return (ConvSpec(in_channels, w0, self.kernel_size, self.stride, self.padding),
                ConvSpec(w0, w1, 1), ConvSpec(w1, w2, 1))


@dataclass(frozen=True)
class StageSpec:
    block: BlockSpec
    pool: PoolSpec | None = None  # after the block
    dropout: float = 0.0  # after the pool; 0 means no dropout layer

    def __post_init__(self):
        _require(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
                 f"dropout must be a float in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class NiNSpec:
    """A NiN network: stages of (block, optional pool, optional dropout), then global average pooling.

    The last block's last width is the class count. Input is [B, in_channels, H, W]
    (PyTorch) or [B, H, W, in_channels] (Flax, Keras); any H, W >= `min_input_size` works.
    """

    name: str  # the preset it was made from
    in_channels: int
    num_classes: int
    stages: tuple[StageSpec, ...]
    input_size: tuple[int, int] = (224, 224)  # nominal (H, W): summaries and benchmarks use it

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        size = self.input_size
        if _is_int(size):
            size = (size, size)
        object.__setattr__(self, "input_size", tuple(size))
        _require(_is_int(self.in_channels) and self.in_channels >= 1,
                 f"in_channels must be an int >= 1, got {self.in_channels!r}")
        _require(self.in_channels <= MAX_WIDTH, f"in_channels must be at most {MAX_WIDTH}, got {self.in_channels}")
        _require(_is_int(self.num_classes) and self.num_classes >= 1,
                 f"num_classes must be an int >= 1, got {self.num_classes!r}")
        _require(1 <= len(self.stages) <= MAX_STAGES and all(isinstance(s, StageSpec) for s in self.stages),
                 f"a NiN needs 1 to {MAX_STAGES} StageSpecs")
        last = self.stages[-1].block.widths[-1]
        _require(last == self.num_classes,
                 f"the last block's last width ({last}) must equal num_classes ({self.num_classes})")
        _require(len(self.input_size) == 2 and all(_bounded(n, 1, MAX_INPUT_SIZE) for n in self.input_size),
                 f"input_size must be an int or (H, W), each in [1, {MAX_INPUT_SIZE}], got {self.input_size!r}"[:300])
        _require(self.num_params <= MAX_PARAMS,
                 f"the spec has {self.num_params:,} parameters, over the limit of {MAX_PARAMS:,}")
        _require(min(self.input_size) >= self.min_input_size,
                 f"input_size {self.input_size} is below this spec's minimum of "
                 f"{self.min_input_size}x{self.min_input_size}")

    # ----- derived facts

    def layers(self) -> list[LayerSpec]:
        """The network as a flat list of named layers, in execution order."""
        out, channels = [], self.in_channels
        for b, stage in enumerate(self.stages):
            for j, conv in enumerate(stage.block.convs(channels)):
                out.append(LayerSpec(f"blocks.{b}.conv{j}", conv))
                out.append(LayerSpec(f"blocks.{b}.relu{j}", Activation()))
            channels = stage.block.widths[-1]
            if stage.pool is not None:
                out.append(LayerSpec(f"pools.{b}", stage.pool))
            if stage.dropout:
                out.append(LayerSpec(f"dropouts.{b}", Dropout(stage.dropout)))
        out.append(LayerSpec("global_pool", GlobalAvgPool()))
        out.append(LayerSpec("flatten", Flatten()))
        return out

    def convs(self) -> dict[str, ConvSpec]:
        """Conv layers by canonical name prefix."""
        return {layer.name: layer.op for layer in self.layers() if isinstance(layer.op, ConvSpec)}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight names and shapes, in layer order."""
        shapes = {}
        for name, conv in self.convs().items():
            shapes[f"{name}.weight"] = conv.weight_shape
            shapes[f"{name}.bias"] = (conv.out_channels,)
        return shapes

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(s) for s in self.param_shapes().values()))

    def layer_shapes(self, input_size: tuple[int, int] | None = None,
                     batch: int = 1) -> list[tuple[str, tuple[int, ...]]]:
        """(layer name, NCHW output shape) for each layer; raises if the input is too small."""
        h, w = input_size or self.input_size
        c, shapes = self.in_channels, []
        for layer in self.layers():
            op = layer.op
            if isinstance(op, (ConvSpec, PoolSpec)):
                h, w = op.out_size(h), op.out_size(w)
                if h < 1 or w < 1:
                    raise SpecError(f"input {input_size} is too small: it vanishes at layer {layer.name}")
                c = op.out_channels if isinstance(op, ConvSpec) else c
            elif isinstance(op, GlobalAvgPool):
                h = w = 1
            shapes.append((layer.name, (batch, c) if isinstance(op, Flatten) else (batch, c, h, w)))
        return shapes

    def flops(self, input_size: tuple[int, int] | None = None) -> int:
        """Floating-point operations of one image's forward pass: 2 per multiply-add of each conv.

        Biases, ReLUs and pools add under 1% and are not counted, as is usual for CNNs.
        """
        total, shapes = 0, dict(self.layer_shapes(input_size))
        for name, conv in self.convs().items():
            _, c_out, h, w = shapes[name]
            total += 2 * h * w * c_out * conv.in_channels * conv.kernel_size**2
        return total

    @functools.cached_property  # check_input uses it on every forward call
    def min_input_size(self) -> int:
        """The smallest square input that every layer accepts, in closed form.

        Walking back from the last conv or pool, whose output needs 1 pixel: an output of m
        pixels needs an input of (m - 1) * stride + kernel - 2 * padding (and at least 1).
        Every layer's output grows with its input, so that input makes every layer fit.
        """
        m = 1
        for layer in reversed(self.layers()):
            op = layer.op
            if isinstance(op, (ConvSpec, PoolSpec)):
                k = op.kernel_size if isinstance(op, ConvSpec) else op.size
                m = max(1, (m - 1) * op.stride + k - 2 * op.padding)
        return m

    def check_input(self, shape: tuple[int, ...], layout: str) -> None:
        """Refuse an input of the wrong rank, channel count or size, before any framework runs it.

        `layout` is 'NCHW' (PyTorch) or 'NHWC' (Flax, Keras). Unknown dims (None) pass.
        """
        shape = tuple(shape)
        expected = "[B, C, H, W]" if layout == "NCHW" else "[B, H, W, C]"
        if len(shape) != 4:
            raise ValueError(f"{self.name} expects a 4-D {layout} input {expected}, got shape {shape}")
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        other = (shape[3] if layout == "NCHW" else shape[1])  # where the channels sit in the other layout
        if c is not None and c != self.in_channels and other == self.in_channels:
            flip = "NHWC" if layout == "NCHW" else "NCHW"
            raise ValueError(
                f"{self.name} expects {layout} input {expected}, got shape {shape}, which looks like {flip} "
                f"({self.in_channels} channel(s) {'last' if flip == 'NHWC' else 'second'}): pass "
                f"zoo.predict(model, x, layout={flip!r}), or transpose it to {layout}")
        if c is not None and c != self.in_channels:
            raise ValueError(
                f"{self.name} expects {self.in_channels} input channel(s) in {layout} layout {expected}, "
                f"got shape {shape} with {c}; convert the images (e.g. to "
                f"{'grayscale' if self.in_channels == 1 else 'RGB'}) or build the model with "
                f"in_channels={c}")
        known = [n for n in (h, w) if n is not None]
        if known and min(known) < self.min_input_size:
            m = self.min_input_size
            raise ValueError(
                f"input {h}x{w} is too small for {self.name}: the minimum is {m}x{m} "
                f"(any larger size works, thanks to global average pooling); resize or pad the images")

    # ----- serialisation (weight files carry the spec as JSON)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NiNSpec:
        """A spec from `to_dict`'s output, e.g. read from a file: every field's type and range checked."""
        try:
            _require(isinstance(d, dict), f"expected a dictionary, got {type(d).__name__}")
            _require(isinstance(d["name"], str) and len(d["name"]) <= 100,
                     f"name must be a string of at most 100 characters, got {type(d['name']).__name__}")
            raw = d["stages"]
            _require(isinstance(raw, (list, tuple)) and 1 <= len(raw) <= MAX_STAGES,
                     f"stages must be a list of 1 to {MAX_STAGES} stages")
            stages = []
            for s in raw:
                _require(isinstance(s, dict) and isinstance(s.get("block"), dict)
                         and isinstance(s.get("pool") or {}, dict), "a stage must be a dictionary with a block")
                stages.append(StageSpec(BlockSpec(**s["block"]), PoolSpec(**s["pool"]) if s.get("pool") else None,
                                        s.get("dropout", 0.0)))
            size = d.get("input_size", (224, 224))
            _require(_is_int(size) or (isinstance(size, (list, tuple)) and len(size) == 2),
                     f"input_size must be an int or [H, W], got {size!r}"[:200])
            return cls(name=d["name"], in_channels=d["in_channels"], num_classes=d["num_classes"],
                       stages=tuple(stages), input_size=size if _is_int(size) else tuple(size))
        except (KeyError, TypeError) as e:
            raise SpecError(f"not a NiNSpec dictionary ({type(e).__name__}: {str(e)[:200]})") from None

    @classmethod
    def from_json(cls, text: str) -> NiNSpec:
        """A spec from `to_json`'s output; any damage (bad JSON, deep nesting, absurd values) is a SpecError."""
        if not isinstance(text, (str, bytes)) or len(text) > 100_000:
            raise SpecError("the spec is not a JSON string of at most 100,000 characters")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise SpecError(f"the spec is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        return cls.from_dict(d)


# --------------------------------------------------------------------------- presets

_MAX_3S2 = PoolSpec("max", 3, 2)
_AVG_3S2 = PoolSpec("avg", 3, 2, count_include_pad=True)


def _check_counts(in_channels, num_classes) -> None:
    """Checked before the blocks are built, so that the message names the argument given."""
    _require(_is_int(in_channels) and in_channels >= 1, f"in_channels must be an int >= 1, got {in_channels!r}")
    _require(_is_int(num_classes) and num_classes >= 1, f"num_classes must be an int >= 1, got {num_classes!r}")


def _widths(widths, count: int, what: str) -> tuple:
    _require(isinstance(widths, (tuple, list)) and len(widths) == count,
             f"{what} must be a sequence of {count} entries, got {widths!r}")
    return tuple(widths)


@register_model
def nin(*, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (96, 256, 384),
        dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> NiNSpec:
    """The d2l book's NiN (the seed blog post): 1-channel 224x224 input, 10 classes.

    `widths` are the three hidden blocks' widths; the last block is num_classes wide.
    """
    _check_counts(in_channels, num_classes)
    w = _widths(widths, 3, "widths")
    return NiNSpec(
        name="nin", in_channels=in_channels, num_classes=num_classes, input_size=input_size,
        stages=(
            StageSpec(BlockSpec((w[0],) * 3, kernel_size=11, stride=4, padding=0), _MAX_3S2),
            StageSpec(BlockSpec((w[1],) * 3, kernel_size=5, stride=1, padding=2), _MAX_3S2),
            StageSpec(BlockSpec((w[2],) * 3, kernel_size=3, stride=1, padding=1), _MAX_3S2, dropout),
            StageSpec(BlockSpec((num_classes,) * 3, kernel_size=3, stride=1, padding=1)),
        ))


@register_model
def nin_cifar10(*, in_channels: int = 3, num_classes: int = 10,
                widths: tuple = ((192, 160, 96), (192, 192, 192), (192, 192)),
                dropout: float = 0.5, input_size: int | tuple[int, int] = 32) -> NiNSpec:
    """The paper's CIFAR-10 NiN: 5x5, 5x5, 3x3 blocks; max then average pooling, dropout after both.

    `widths` gives the first two blocks' three widths and the last block's first two
    (its third is num_classes). Pooling uses floor sizes (Caffe's original used ceil).
    """
    _check_counts(in_channels, num_classes)
    w = _widths(widths, 3, "widths")
    return NiNSpec(
        name="nin_cifar10", in_channels=in_channels, num_classes=num_classes, input_size=input_size,
        stages=(
            StageSpec(BlockSpec(_widths(w[0], 3, "widths[0]"), kernel_size=5, padding=2), _MAX_3S2, dropout),
            StageSpec(BlockSpec(_widths(w[1], 3, "widths[1]"), kernel_size=5, padding=2), _AVG_3S2, dropout),
            StageSpec(BlockSpec((*_widths(w[2], 2, "widths[2]"), num_classes), kernel_size=3, padding=1)),
        ))


@register_model
def nin_imagenet(*, in_channels: int = 3, num_classes: int = 1000,
                 widths: tuple = ((96, 96, 96), (256, 256, 256), (384, 384, 384), (1024, 1024)),
                 dropout: float = 0.5, input_size: int | tuple[int, int] = 224) -> NiNSpec:
    """The Caffe model-zoo ImageNet NiN: last block 1024, 1024, num_classes wide.

    `widths` gives the first three blocks' widths and the last block's first two.
    """
    _check_counts(in_channels, num_classes)
    w = _widths(widths, 4, "widths")
    return NiNSpec(
        name="nin_imagenet", in_channels=in_channels, num_classes=num_classes, input_size=input_size,
        stages=(
            StageSpec(BlockSpec(_widths(w[0], 3, "widths[0]"), kernel_size=11, stride=4), _MAX_3S2),
            StageSpec(BlockSpec(_widths(w[1], 3, "widths[1]"), kernel_size=5, padding=2), _MAX_3S2),
            StageSpec(BlockSpec(_widths(w[2], 3, "widths[2]"), kernel_size=3, padding=1), _MAX_3S2, dropout),
            StageSpec(BlockSpec((*_widths(w[3], 2, "widths[3]"), num_classes), kernel_size=3, padding=1)),
        ))


# --------------------------------------------------------------------------- initial weights

def init_weights(spec: NiNSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial canonical weights, drawn once in numpy so every framework starts from the same values.

    He-normal kernels (std = sqrt(2 / fan_in): every conv feeds a ReLU) and zero biases.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in spec.param_shapes().items():
        if name.endswith(".weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            weights[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            weights[name] = np.zeros(shape, np.float32)
    return weights
