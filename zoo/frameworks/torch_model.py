"""Any zoo spec in PyTorch. Input [B, C, H, W].

The op table (`_module`) turns each leaf op into the torch.nn layer that has its exact
semantics, registered under the op's path, so `state_dict()` keys are the canonical names
(plus BatchNorm's `num_batches_tracked`, which the canonical weights leave out: the zoo's
momentum is never None, so the count changes no output). `forward` runs a plan compiled once
from the spec's tree; two rewrites that apply to every family keep today's speed:

  * ReLU in place after an op that made a new tensor in the same sequence (torchvision does
    the same; a new tensor per ReLU was 17% of NiN's time at 32x224);
  * ReLU before max pooling swapped to after it: they commute exactly (ReLU is monotonic)
    and the ReLU then touches a quarter of the values (2% for NiN at 32x224).

The model computes in channels_last memory format (its conv weights are stored so, and
`forward` turns the input into it: one copy, or a view when C is 1), 1.16-1.64x faster on
CPU for NiN (`zoo bench`); callers still pass and see ordinary NCHW tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zoo.spec import (
    GELU,
    Act,
    AdaptivePool,
    BatchNorm,
    ClassToken,
    Conv,
    Dropout,
    DropPath,
    Flatten,
    LayerNorm,
    LayerScale,
    Linear,
    ModelSpec,
    Parallel,
    Pool,
    PosEmbedding,
    SelfAttention,
    Seq,
    TakeToken,
    Tokens,
    join_path,
    run,
)

LAYOUT = "NCHW"


class StochasticDepth(nn.Dropout):
    """DropPath: torchvision's StochasticDepth in 'row' mode (one keep-or-drop per sample, the kept
    ones scaled by 1 / (1 - p)); the identity in eval mode or at p = 0. A kind of Dropout, so that
    whatever turns the model's dropout off (step-equivalence runs, `train_forward`) turns it off too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask.div_(keep)


class FeatureLinear(nn.Linear):
    """Linear on the feature axis: the last of tokens, the channels of an NCHW image (through a permute
    to channels last, torchvision's ConvNeXt's way: a view of a channels_last tensor, no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)


class FeatureLayerNorm(nn.LayerNorm):
    """LayerNorm over the feature axis, as FeatureLinear: an NCHW image's channels (ConvNeXt's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)


class SelfAttentionModule(nn.MultiheadAttention):
    """nn.MultiheadAttention on one input (batch first), its state_dict torchvision's: in_proj_weight [3D, D]
    (query, key, value), in_proj_bias, out_proj.weight, out_proj.bias. In inference it takes PyTorch's fused
    path (scaled_dot_product_attention)."""

    def __init__(self, op: SelfAttention):
        super().__init__(op.dim, op.num_heads, bias=op.bias, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x, x, x, need_weights=False)[0]


class MatmulSelfAttention(SelfAttentionModule):
    """The same attention, its parameters and names, written as plain matmuls and a float32 softmax: the
    alternative `zoo bench` times against nn.MultiheadAttention's fused path (`build(..., attention='matmul')`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, head_dim]
        scores = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(y)


class ToTokens(nn.Module):
    """[B, C, H, W] -> [B, H*W, C], row by row (of a channels_last tensor, a view)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class TakeTokenModule(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


class BareTensorOp:
    """An op whose one tensor the layer's path names (LayerScale, ClassToken, PosEmbedding): the tensor is
    a parameter of the parent module under the path's last name (torchvision's `class_token`,
    `features.1.0.layer_scale`), and this callable, not a module, applies it. Looked up on each call, so
    `.to(device)` and `set_weights` are seen; a deepcopy of the model copies it with its owner."""

    def __init__(self, op, owner: nn.Module, name: str):
        self.op, self.owner, self.name = op, owner, name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = getattr(self.owner, self.name)
        if isinstance(self.op, LayerScale):
            return x * p  # [C, 1, 1] over [B, C, H, W]
        if isinstance(self.op, ClassToken):
            return torch.cat([p.expand(x.shape[0], -1, -1), x], 1)
        return x + p  # PosEmbedding: [1, N, D] over [B, N, D]


BARE = (LayerScale, ClassToken, PosEmbedding)

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "relu6": nn.ReLU6,
                "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid}


ATTENTION = {"fused": SelfAttentionModule, "matmul": MatmulSelfAttention}


def _module(op, attention: str = "fused") -> nn.Module:
    """The op table: one torch layer per spec op."""
    if isinstance(op, Conv):
        return nn.Conv2d(op.in_channels, op.out_channels, op.kernel_size, op.stride, op.padding,
                         dilation=op.dilation, groups=op.groups, bias=op.bias)
    if isinstance(op, BatchNorm):
        return nn.BatchNorm2d(op.num_features, eps=op.eps, momentum=op.momentum)  # torch's momentum, as the spec's
    if isinstance(op, Act):
        return _ACTIVATIONS[op.kind]()
    if isinstance(op, Pool):
        if op.kind == "max":
            return nn.MaxPool2d(op.size, op.stride, op.padding, ceil_mode=op.ceil_mode)  # pads with -inf
        return nn.AvgPool2d(op.size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                            count_include_pad=op.count_include_pad)
    if isinstance(op, AdaptivePool):
        return nn.AdaptiveAvgPool2d(op.output_size)
    if isinstance(op, Linear):
        return FeatureLinear(op.in_features, op.out_features, bias=op.bias)
    if isinstance(op, LayerNorm):
        return FeatureLayerNorm(op.num_features, eps=op.eps)
    if isinstance(op, GELU):
        return nn.GELU(approximate=op.approximate)
    if isinstance(op, SelfAttention):
        return ATTENTION[attention](op)
    if isinstance(op, Tokens):
        return ToTokens()
    if isinstance(op, TakeToken):
        return TakeTokenModule(op.index)
    if isinstance(op, Dropout):
        return nn.Dropout(op.rate)
    if isinstance(op, DropPath):
        return StochasticDepth(op.rate)
    if isinstance(op, Flatten):
        return nn.Flatten(1)
    raise TypeError(f"no PyTorch layer for {op!r}")


# Ops whose output is a fresh tensor that nothing else holds, so a ReLU after them may work in place.
_FRESH = (Conv, BatchNorm, Linear, Pool, AdaptivePool, Parallel)


class ZooModel(nn.Module):
    def __init__(self, spec: ModelSpec, memory_format: torch.memory_format = torch.channels_last,
                 attention: str = "fused"):
        super().__init__()
        self.spec = spec
        self.memory_format = memory_format  # of the activations, which forward turns its input into
        self._bare: dict[str, BareTensorOp] = {}
        for layer in spec.layers():
            if isinstance(layer.node, BARE):
                owner, name = self._owner(layer.path)
                shape = {**layer.node.params()}[""]
                owner.register_parameter(name, nn.Parameter(torch.zeros(shape)))
                self._bare[layer.path] = BareTensorOp(layer.node, owner, name)
            elif not isinstance(layer.node, Parallel):
                self._register(layer.path, _module(layer.node, attention))
        self._moves = [0]  # counts what can move or replace the parameters (_apply, load_state_dict)
        self._where: tuple[int, torch.device | None] = (-1, None)  # (moves, device) when `device` last looked
        self._plan = self._compile(spec.body, "")  # its FoldedConvBN steps read `_moves` too

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (the CPU for a model that holds none, such as an activation alone).
        Kept after the first look: `next(self.parameters())` cost 12-16 us of each LeNet call (of ~190)
        at batch 1. Moving the model (`.to`, `.cuda`, `.cpu`: all through `_apply`) or loading a state
        dict (whose `assign=True` replaces the parameters) counts in `_moves`, and the next look is fresh."""
        if self._where[0] != self._moves[0]:
            first = next(self.parameters(), None)
            self._where = self._moves[0], first.device if first is not None else torch.device("cpu")
        return self._where[1]

    def _apply(self, fn, recurse=True):
        self._moves[0] += 1
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._moves[0] += 1
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _owner(self, path: str) -> tuple[nn.Module, str]:
        """The module that holds the layer at `path` (made where missing), and the layer's name in it."""
        *parents, leaf = path.split(".")
        owner = self
        for name in parents:
            if not hasattr(owner, name):
                owner.add_module(name, nn.Module())
            owner = getattr(owner, name)
        return owner, leaf

    def _register(self, path: str, module: nn.Module) -> None:
        owner, leaf = self._owner(path)
        owner.add_module(leaf, module)

    def layer(self, path: str):
        """The callable that runs the layer at `path`: its module, or for a bare tensor op its BareTensorOp."""
        return self._bare[path] if path in self._bare else self.get_submodule(path)

    def _compile(self, seq: Seq, prefix: str):
        """The tree as nested lists of callables (nested sequences spliced into one list, so the
        rewrites see across their borders), with the two ReLU rewrites applied."""
        children = list(_spliced(seq, prefix))
        steps, kinds, i = [], [], 0
        while i < len(children):
            path, node, parent = children[i]
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            if isinstance(node, Parallel):
                branches = [self._compile(b, join_path(parent, bn))
                            for bn, b in node.branches]
                steps.append(_joiner(node.join, branches))
            elif isinstance(node, Conv) and isinstance(nxt, BatchNorm):  # folded in inference: FoldedConvBN
                steps.append(FoldedConvBN(self.layer(path), self.get_submodule(children[i + 1][0]), self._moves))
                kinds.append(nxt)
                i += 2
                continue
            elif isinstance(node, Act) and node.kind == "relu":
                if isinstance(nxt, Pool) and nxt.kind == "max":  # pool first, then ReLU in place
                    steps.append(_pool_relu(self.get_submodule(children[i + 1][0])))
                    kinds.append(nxt)
                    i += 2
                    continue
                fresh = bool(kinds) and isinstance(kinds[-1], _FRESH)
                steps.append(torch.relu_ if fresh else torch.relu)
            else:
                steps.append(self.layer(path))
            kinds.append(node)
            i += 1
        return steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, num_classes]
        # Tracing (torch.jit.trace, torch.onnx.export) would record the check's Python comparisons as
        # TracerWarnings, and torch.compile re-traces for each new shape anyway: check only when run.
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.spec.check_input(tuple(x.shape), LAYOUT)
        return _chain(self._plan, x.contiguous(memory_format=self.memory_format))


def _spliced(seq: Seq, prefix: str):
    """(path, node, parent path) of a sequence's leaves and joins, nested sequences expanded in place.
    A Parallel's path is where its name puts it; its branches hang from its parent's path."""
    for name, child in seq.children:
        path = join_path(prefix, name)
        if isinstance(child, Seq):
            yield from _spliced(child, path)
        else:
            yield path, child, prefix


def _chain(steps, x):
    for step in steps:
        x = step(x)
    return x


def _joiner(join: str, branches):
    if join == "concat":
        return lambda x: torch.cat([_chain(b, x) for b in branches], 1)
    if join == "mul":
        return lambda x: _product([_chain(b, x) for b in branches])
    return lambda x: _sum([_chain(b, x) for b in branches])


def _sum(outs):
    y = outs[0]
    for o in outs[1:]:
        y = y + o
    return y


def _product(outs):  # [B, C, 1, 1] broadcasts over [B, C, H, W]
    y = outs[0]
    for o in outs[1:]:
        y = y * o
    return y


def _join(par: Parallel, outs):
    return torch.cat(outs, 1) if par.join == "concat" else _product(outs) if par.join == "mul" else _sum(outs)


class FoldedConvBN:
    """A Conv and the BatchNorm after it, one step of the plan. In training, or with gradients on, the two
    modules as they are. In inference with gradients off (zoo.predict; torch.inference_mode or no_grad in
    eval mode) one convolution with the BatchNorm folded into it, as onnxruntime runs it: weight * s and
    (bias - running_mean) * s + beta, s = gamma / sqrt(running_var + eps). eager PyTorch's BatchNorm took
    16% of MobileNetV3-Large's time at batch 1. The folded tensors are computed again whenever one of the
    six tensors has changed in place (their version counters: set_weights, an optimizer step, any `mul_`)
    or may have been replaced (the model's `_moves`: .to, load_state_dict); the modules, their parameters
    and the state_dict are untouched. Tracing and torch.compile see the two modules."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, moves: list[int]):
        self.conv, self.bn, self.moves = conv, bn, moves
        self._key, self._folded = None, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if bn.training or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return bn(conv(x))
        key = (self.moves[0], conv.weight._version, None if conv.bias is None else conv.bias._version,
               bn.weight._version, bn.bias._version, bn.running_mean._version, bn.running_var._version)
        if key != self._key:
            self._folded, self._key = self._fold(), key
        return conv._conv_forward(x, *self._folded)

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        conv, bn = self.conv, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        if conv.weight.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        return weight, shift if conv.bias is None else conv.bias * scale + shift


def _pool_relu(pool: nn.Module):
    return lambda x: pool(x).relu_()


# --------------------------------------------------------------------------- adapter

def build(spec: ModelSpec, weights: dict[str, np.ndarray],
          memory_format: torch.memory_format = torch.channels_last, attention: str = "fused") -> ZooModel:
    """The spec as a PyTorch module holding `weights`, in eval mode; its conv weights and activations in
    `memory_format` (channels_last unless asked: the faster on CPUs, see the module's docstring); its
    attention nn.MultiheadAttention's ('fused') or plain matmuls ('matmul')."""
    model = ZooModel(spec, memory_format, attention).to(memory_format=memory_format)
    set_weights(model, weights)
    return model.eval()


def owns(model) -> bool:
    return isinstance(model, ZooModel)


def spec_of(model: ZooModel) -> ModelSpec:
    return model.spec


def get_weights(model: ZooModel) -> dict[str, np.ndarray]:
    # copies, C-contiguous: the conv weights are channels_last (permuted strides) here
    state = model.state_dict()
    return {k: np.array(state[k].detach().cpu().numpy(), order="C") for k in model.spec.param_shapes()}


def set_weights(model: ZooModel, weights: dict[str, np.ndarray]) -> None:
    state = model.state_dict()  # tensors share storage with the parameters and buffers
    with torch.no_grad():
        for name in model.spec.param_shapes():
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(weights[name])))


def predict(model: ZooModel, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.as_tensor(x, device=model.device)).cpu().numpy()


def train_forward(model: ZooModel, x: np.ndarray) -> np.ndarray:
    """One forward in training mode with dropout off: BatchNorm normalises with the batch's
    statistics and updates its running ones in place. The model is left in eval mode."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):  # StochasticDepth too
            m.eval()
    try:
        with torch.no_grad():
            return model(torch.as_tensor(x, device=model.device)).cpu().numpy()
    finally:
        model.eval()


def trace(model: ZooModel, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(layer path, output as NCHW numpy) for each of the spec's layers, run one by one."""
    model.spec.check_input(x.shape, LAYOUT)
    out = []

    def leaf(path, op, t):
        return model.layer(path)(t)

    with torch.inference_mode():
        run(model.spec.body, torch.as_tensor(x, device=model.device), leaf, _join,
            after=lambda path, node, t: out.append((path, t.cpu().numpy())))
    return out
