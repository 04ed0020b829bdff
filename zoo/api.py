"""The public functions: load, get_weights, set_weights, predict, summary."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from zoo._checks import WeightsError, check_finite, check_weights, nonfinite_tensors  # noqa: F401
from zoo._frameworks import adapter, adapter_for
from zoo._frameworks import framework as framework_info
from zoo._registry import get_spec, preset_overrides
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
    TakeToken,
    init_weights,
)


def load(name, framework: str, *, seed: int = 0, weights=None, pretrained: bool = False, allow_nonfinite: bool = False,
         state_dict_key: str | None = None, **overrides):
    """A model ready for inference: torch.nn.Module (NCHW), flax.nnx.Module or keras.Model (NHWC).

    The same `seed` gives the same parameters in every framework. `name` may also be a spec.
    `weights` is a pretrained tag (`zoo.list_pretrained()`), a file in any format
    `zoo convert` reads (its spec is taken from the file, or inferred from its shapes),
    or a dict of canonical arrays. A string is a tag only when the manifest lists it for
    this model; a tag that is also a file or folder here is refused as ambiguous (write
    './fashion_mnist' for the file); a pathlib.Path is always a path. Weights holding
    NaN or Inf are refused unless `allow_nonfinite`. A .pt training checkpoint gives its
    state_dict; `state_dict_key` names the entry where it holds several ('model_ema'). A Hugging Face
    folder as timm writes it (config.json, model.safetensors) reads too, and `'hf-hub:ORG/NAME'` is such
    a folder in the local hub cache (never downloaded).
    `pretrained=True` loads the weights the model ships with (its first tag;
    `zoo.list_pretrained()` lists them), as timm's does.

    >>> model = zoo.load('nin', framework='torch', num_classes=100)
    >>> model = zoo.load('nin', framework='torch', pretrained=True)   # = weights='fashion_mnist'
    >>> model = zoo.load('nin', framework='flax', weights='fashion_mnist')
    >>> model = zoo.load('nin', framework='keras', weights='model.pt')
    >>> model = zoo.load('resnet50', framework='flax', weights='hf-hub:timm/resnet50.a1_in1k')
    """
    mod = adapter(framework)  # fails here, before any work, if the framework is missing
    if pretrained:
        from zoo import pretrained as shipped

        if weights is not None:
            raise TypeError("pass either pretrained=True (the shipped weights) or weights=, not both")
        if not isinstance(name, str):
            raise TypeError("pretrained=True takes a model name ('nin'), not a spec")
        weights = shipped.default_tag(name)
    if state_dict_key is not None and (weights is None or isinstance(weights, Mapping)):
        raise TypeError("state_dict_key names an entry of a .pt weights file; pass one as weights=")
    if weights is None:
        spec = get_spec(name, **overrides)
        return mod.build(spec, init_weights(spec, seed))
    if isinstance(weights, Mapping):
        spec = get_spec(name, **overrides)
        arrays = check_weights(spec, weights)
        if not allow_nonfinite:
            check_finite(arrays)
        return mod.build(spec, arrays)
    from zoo import io  # imports the file's framework only when a file is read

    if not isinstance(name, str):
        raise TypeError("with a weights file, name the model ('nin'); the spec comes from the file")
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a pretrained tag, a path or a dict of arrays, got {type(weights).__name__}")
    if isinstance(weights, str) and _is_tag(name, weights):
        from zoo import pretrained as shipped

        if overrides:
            raise TypeError(f"pretrained weights fix the spec; drop the overrides {sorted(overrides)}")
        weights, _ = shipped.resolve(name, weights)
    elif isinstance(weights, str) and not os.path.lexists(weights) and not weights.startswith("hf-hub:"):
        from zoo import pretrained as shipped

        raise shipped.not_a_file(name, weights)
    spec, arrays, _ = io.load(weights, name, overrides, allow_nonfinite=allow_nonfinite,
                              state_dict_key=state_dict_key)
    return mod.build(spec, arrays)


def _is_tag(model: str, text: str) -> bool:
    """Whether `text` names shipped weights: only tags the manifest lists are; paths never are.

    A listed tag that is also a file or folder here is refused: either reading could be meant,
    and loading the local one would skip the hash check of the shipped weights.
    """
    from zoo import pretrained

    looks_like_path = os.sep in text or "/" in text or text.endswith((".pt", ".pth", ".safetensors", ".h5", ".keras"))
    if looks_like_path:
        return False
    listed = f"{model}.{text}" in pretrained.manifest()
    if listed and (os.path.exists(text) or os.path.islink(text)):
        raise ValueError(f"{text!r} is both a pretrained tag of {model} and a file or folder in the current "
                         f"directory; write './{text}' (or pass a pathlib.Path) for the file, or run from another "
                         f"folder for the shipped weights")
    if listed:
        return True
    if os.path.exists(text):
        return False  # a file or folder named like an identifier, e.g. a Flax checkpoint folder 'ckpt'
    return text.isidentifier()  # an unknown tag: pretrained.resolve says which tags exist


def get_weights(model) -> dict[str, np.ndarray]:
    """A zoo model's parameters in canonical form (names as ModelSpec's docs, OIHW, float32 copies)."""
    return adapter_for(model)[1].get_weights(model)


def set_weights(model, weights: Mapping[str, np.ndarray], *, allow_nonfinite: bool = False) -> None:
    """Load canonical weights into a zoo model of any framework, after checking every name, shape and dtype,
    and that every value is finite (unless `allow_nonfinite`)."""
    _, mod = adapter_for(model)
    arrays = check_weights(mod.spec_of(model), weights)
    if not allow_nonfinite:
        check_finite(arrays)
    mod.set_weights(model, arrays)


def spec_of(model) -> ModelSpec:
    """The spec a zoo model was built from."""
    return adapter_for(model)[1].spec_of(model)


def predict(model, x: np.ndarray, *, layout: str | None = None) -> np.ndarray:
    """Logits as numpy for a numpy batch in the model's own layout (NCHW for torch, NHWC otherwise),
    or in `layout` ('NCHW' or 'NHWC'), transposed here as needed."""
    fw, mod = adapter_for(model)
    x = np.asarray(x, np.float32)
    if layout not in (None, "NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if layout and layout != fw.layout:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if layout == "NCHW" else x.transpose(0, 3, 1, 2))
    return mod.predict(model, x)


def _size(pair) -> str:
    return f"{pair[0]}x{pair[1]}"


def _describe(op) -> str:
    """A layer's type column in summaries and `zoo diff`."""
    if isinstance(op, Conv):
        bias = "" if op.bias else ", no bias"
        kind = "Conv" if op.groups == 1 else "DepthwiseConv" if op.groups == op.in_channels else f"Conv/{op.groups}g"
        dilation = "" if op.dilation == (1, 1) else f" dil {op.dilation[0]}"
        return (f"{kind} {_size(op.kernel_size)}/{op.stride[0]} pad {op.padding[0]}{dilation}, "
                f"{op.in_channels}->{op.out_channels}{bias}")
    if isinstance(op, BatchNorm):
        return f"BatchNorm {op.num_features}, eps {op.eps:g}"
    if isinstance(op, Act):
        return {"relu": "ReLU", "sigmoid": "Sigmoid", "silu": "SiLU", "relu6": "ReLU6", "hardswish": "Hardswish",
                "hardsigmoid": "Hardsigmoid"}[op.kind]
    if isinstance(op, Pool):
        extra = "" if op.kind == "max" else f", count_include_pad={op.count_include_pad}"
        ceil = ", ceil" if op.ceil_mode else ""
        return f"{op.kind.capitalize()}Pool {_size(op.size)}/{op.stride[0]} pad {op.padding[0]}{ceil}{extra}"
    if isinstance(op, AdaptivePool):
        return f"AdaptiveAvgPool {_size(op.output_size)}"
    if isinstance(op, Linear):
        return f"Linear {op.in_features}->{op.out_features}"
    if isinstance(op, Dropout):
        return f"Dropout {op.rate}"
    if isinstance(op, DropPath):
        return f"DropPath {op.rate}"
    if isinstance(op, Flatten):
        return "Flatten"
    if isinstance(op, Parallel):
        return f"{ {'concat': 'Concat', 'add': 'Add', 'mul': 'Mul'}[op.join]} of {len(op.branches)}"
    if isinstance(op, LayerNorm):
        return f"LayerNorm {op.num_features}, eps {op.eps:g}"
    if isinstance(op, GELU):
        return "GELU (erf)" if op.approximate == "none" else "GELU (tanh)"
    if isinstance(op, SelfAttention):
        return f"SelfAttention {op.dim}, {op.num_heads} heads{'' if op.bias else ', no bias'}"
    if isinstance(op, PosEmbedding):
        return f"PosEmbedding {op.num_tokens}x{op.dim}"
    if isinstance(op, (ClassToken, LayerScale)):
        return f"{type(op).__name__} {op.dim if isinstance(op, ClassToken) else op.num_features}"
    if isinstance(op, TakeToken):
        return f"TakeToken {op.index}"
    return type(op).__name__


class Summary(str):
    """The table `summary` prints, as a str (print it, search it, split its lines), holding its rows.

    Its repr is one line, so a REPL echoing the returned value after `summary` printed the
    table does not show the table a second time.
    """

    rows: tuple[tuple[str, str, str, str], ...]  # (layer, type, output shape, params), without the header
    total_params: int

    def __new__(cls, table: str, rows, total_params: int):
        self = super().__new__(cls, table)
        self.rows, self.total_params = tuple(rows), total_params
        return self

    def __repr__(self) -> str:
        return f"<Summary: {self.splitlines()[0]}; {len(self.rows)} layers, {self.total_params:,} params>"


def summary(name, framework: str | None = None, *, input_size: int | tuple[int, int] | None = None,
            batch_size: int = 1, print_fn=print, **overrides) -> Summary:
    """Print every layer's output shape and parameter count; return the table as a `Summary`.

    With a framework, the shapes are those its model really produces, layer by layer;
    without one, those the spec predicts (NCHW). `print_fn=None` prints nothing.

    A network whose linear layer takes a fixed size (LeNet, d2l's AlexNet and VGG) is built
    for `input_size`, as the preset's own `input_size` override would build it.

    >>> zoo.summary('nin', framework='keras', input_size=(224, 224))
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    spec = get_spec(name, **overrides)
    if input_size and isinstance(name, str) and spec.fits(tuple(input_size)) is not None \
            and spec.needs_exact_size and "input_size" in preset_overrides(name) and "input_size" not in overrides:
        spec = get_spec(name, **overrides, input_size=tuple(input_size))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    h, w = input_size or spec.input_size
    layout = framework_info(framework).layout if framework else "NCHW"  # refuses an unknown framework
    shape = (batch_size, spec.in_channels, h, w) if layout == "NCHW" else (batch_size, h, w, spec.in_channels)
    spec.check_input(shape, layout)  # before the framework's import (seconds): a wrong size is said at once
    mod = adapter(framework) if framework else None
    if mod:
        model = mod.build(spec, init_weights(spec))
        shapes = mod.trace(model, np.zeros(shape, np.float32))  # (path, output)
    else:
        shapes = spec.layer_shapes((h, w), batch_size)
    ops = spec.ops()
    rows = [("Layer", "Type", "Output shape", "Params")]
    for layer, (_, out) in zip(spec.layers(), shapes):
        op = ops.get(layer.path)
        n = sum(int(np.prod(s)) for s in op.params().values()) if op is not None else 0
        row_shape = tuple(np.shape(out) if mod else out)
        if layout == "NHWC" and len(row_shape) == 4:  # traces are NCHW; the table shows the framework's own layout
            row_shape = (row_shape[0], row_shape[2], row_shape[3], row_shape[1])
        rows.append((layer.path, _describe(layer.node), str(row_shape),
                     f"{n:,}" if n else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{spec.name} ({framework or 'spec'}, input {shape} {layout})"]
    for i, r in enumerate(rows):
        cells = [c.ljust(wd) if j < 3 else c.rjust(wd) for j, (c, wd) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    gflops = spec.flops((h, w)) / 1e9
    lines.append(f"Total params: {spec.num_params:,}   GFLOPs: {gflops:.3g} at {h}x{w}   "
                 f"minimum input: {spec.min_input_size}x{spec.min_input_size}")
    table = Summary("\n".join(lines), rows[1:], spec.num_params)
    if print_fn:
        print_fn(str(table))
    return table
