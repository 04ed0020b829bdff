"""Which spec a set of canonical tensors fits: the file's own, an explicit one, or one inferred from shapes."""

from __future__ import annotations

import dataclasses
import re

from zoo import _registry as zoo  # get_spec, list_models: the registry alone, not zoo.api
from zoo.io.checkpoint import Checkpoint, ConversionError
from zoo.spec import ModelSpec, SpecError


def infer_spec(shapes: dict[str, tuple[int, ...]], model: str | None = None) -> ModelSpec:
    """The first registered preset (or `model`) whose structure fits `shapes`.

    Shapes give widths, kernel sizes, input channels and the class count; strides,
    padding, pooling and dropout come from the preset. A preset whose default widths
    fit exactly is preferred.
    """
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not blocks:
        raise ConversionError("no NiN tensors (blocks.N.convJ.*) in the file, so no spec can be inferred; "
                              f"it holds: {', '.join(list(shapes)[:8])}{' ...' if len(shapes) > 8 else ''}")
    reasons, fits = [], []
    for name in [model] if model else zoo.list_models():
        base = zoo.get_spec(name)
        try:
            stages = []
            for b, stage in enumerate(base.stages):
                kernels = [shapes[f"blocks.{b}.conv{j}.weight"] for j in range(3)]
                if kernels[0][2:] != (stage.block.kernel_size,) * 2:
                    raise SpecError(f"block {b} has a {kernels[0][2]}x{kernels[0][3]} kernel, "
                                    f"{name} a {stage.block.kernel_size}x{stage.block.kernel_size}")
                block = dataclasses.replace(stage.block, widths=tuple(k[0] for k in kernels))
                stages.append(dataclasses.replace(stage, block=block))
            spec = dataclasses.replace(base, stages=tuple(stages), in_channels=shapes["blocks.0.conv0.weight"][1],
                                       num_classes=stages[-1].block.widths[-1])
        except KeyError as e:
            reasons.append(f"{name}: no tensor {e}")
            continue
        except SpecError as e:
            reasons.append(f"{name}: {e}")
            continue
        expected = spec.param_shapes()
        if expected == shapes:
            matches = (spec.stages == base.stages, spec.in_channels == base.in_channels,
                       spec.num_classes == base.num_classes)
            fits.append((-sum(matches), spec))
        else:
            diff = next((k for k in expected if shapes.get(k) != expected[k]), None) or \
                next(k for k in shapes if k not in expected)
            reasons.append(f"{name}: {diff} should be {expected.get(diff)}, the file has {shapes.get(diff)}")
    if not fits:
        raise ConversionError("the tensors fit no registered model: " + "; ".join(reasons)  # one line
                              + ". Name the model and its overrides (e.g. zoo convert nin --set num_classes=100 ...)")
    return min(fits, key=lambda f: f[0])[1]  # the first best, in registry order


def resolve_spec(ckpt: Checkpoint, model: str | None = None, overrides: dict | None = None,
                 spec: ModelSpec | None = None) -> tuple[ModelSpec, str]:
    """The spec to use for a checkpoint, and where it came from (said in reports)."""
    if spec is not None:
        return spec, "given"
    if overrides:
        if not model:
            raise ConversionError("overrides need the model they apply to (e.g. zoo convert nin --set ...)")
        return zoo.get_spec(model, **overrides), f"{model} with {overrides}"
    if ckpt.spec is not None:
        if model and ckpt.spec.name != model:
            raise ConversionError(f"the file holds a {ckpt.spec.name} model, not a {model}")
        return ckpt.spec, ckpt.spec_origin
    shapes = {k: tuple(a.shape) for k, a in ckpt.weights.items()}
    return infer_spec(shapes, model), "inferred from the tensor shapes"
