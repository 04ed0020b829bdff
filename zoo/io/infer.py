"""Which spec a set of canonical tensors fits: the file's own, an explicit one, or one inferred from shapes.

Inference tries each registered preset (or the named model) whose canonical names are the file's.
The shapes give the overrides a preset takes: `in_channels` from the first conv or linear layer,
`num_classes` from the last weight, and every other integer override (a width, or a tuple of
widths such as NiN's `widths`) from the tensor dimension it sets. Which dimension that is, the
preset itself says: built with the override one larger, exactly one tensor dimension of its value
grows by one. Strides, padding, pooling and dropout come from the preset. The candidate must then
give the file's shapes exactly; a preset that fits at its defaults is preferred.

    >>> infer_spec({'blocks.0.conv0.weight': (8, 1, 11, 11), ...}).name
    'nin'
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from zoo import _registry as registry  # get_spec, list_models: the registry alone, not zoo.api
from zoo.io.checkpoint import Checkpoint, ConversionError
from zoo.spec import Conv, Linear, ModelSpec, SpecError, is_int

_READ = ("in_channels", "num_classes")  # overrides read from the first and last layers' tensors
_NEVER = ("input_size",)  # not in the tensor shapes (except through a fixed-size linear layer)


@dataclass(frozen=True)
class Inferred:
    spec: ModelSpec
    overrides: dict[str, Any]  # those that differ from the preset's defaults

    def describe(self) -> str:
        """'nin with num_classes=7' or 'nin at its defaults'."""
        if not self.overrides:
            return f"{self.spec.name} at its defaults"
        return f"{self.spec.name} with " + ", ".join(f"{k}={v!r}" for k, v in self.overrides.items())


def _defaults(name: str) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(registry._preset(name)).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _leaves(value: Any, at: tuple = ()) -> list[tuple[tuple, int]] | None:
    """(index path, value) of each int in a nested tuple of ints; None if it is not one."""
    if is_int(value):
        return [(at, int(value))]
    if isinstance(value, (tuple, list)) and value:
        out = []
        for i, v in enumerate(value):
            sub = _leaves(v, (*at, i))
            if sub is None:
                return None
            out += sub
        return out
    return None


def _replaced(value: Any, at: tuple, new: int) -> Any:
    if not at:
        return new
    items = list(value)
    items[at[0]] = _replaced(items[at[0]], at[1:], new)
    return type(value)(items) if isinstance(value, tuple) else items


@functools.lru_cache(maxsize=256)
def _probe(name: str, param: str) -> tuple[tuple[tuple, str, int] | None, ...]:
    """For each int leaf of a preset's override `param`: the (index path, tensor, axis) that shows
    its value, or None where no single dimension does."""
    default = _defaults(name)[param]
    base = registry.get_spec(name).param_shapes()
    found = []
    for at, v in _leaves(default) or []:
        try:
            grown = registry.get_spec(name, **{param: _replaced(default, at, v + 1)}).param_shapes()
        except (SpecError, TypeError, ValueError):
            found.append(None)
            continue
        if set(grown) != set(base):
            found.append(None)
            continue
        found.append(next(((at, k, axis) for k, s in base.items() for axis, n in enumerate(s)
                           if n == v and grown[k][axis] == v + 1), None))
    return tuple(found)


def _read_overrides(name: str, base: ModelSpec, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The overrides of preset `name` that the file's shapes say, for a file with the preset's names."""
    defaults = _defaults(name)
    out = {}
    first = next((p for p, op in base.ops().items() if isinstance(op, (Conv, Linear))), None)
    if "in_channels" in defaults and first is not None:
        out["in_channels"] = shapes[f"{first}.weight"][1]
    last = next((k for k in reversed(list(base.param_shapes())) if k.endswith(".weight")), None)
    if "num_classes" in defaults and last is not None:
        out["num_classes"] = shapes[last][0]
    for param, default in defaults.items():
        if param in _READ or param in _NEVER or _leaves(default) is None:
            continue
        value = default
        for where in _probe(name, param):
            if where is not None:
                at, tensor, axis = where
                value = _replaced(value, at, shapes[tensor][axis])
        out[param] = value
    return out


def _some(names: list[str]) -> str:
    return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")


def _names_gap(expected, shapes) -> str:
    missing = [k for k in expected if k not in shapes]
    extra = [k for k in shapes if k not in expected]
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} of its tensors ({_some(missing)})")
    if extra:
        parts.append(f"has {len(extra)} it does not ({_some(extra)})")
    return " and ".join(parts)


def infer(shapes: dict[str, tuple[int, ...]], model: str | None = None) -> Inferred:
    """The preset (or `model`) whose structure fits `shapes`, and the overrides read from them."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    names = set(shapes)
    fits, near, far = [], [], []
    for name in [model] if model else registry.list_models():
        base = registry.get_spec(name)
        expected = base.param_shapes()
        if set(expected) != names:
            missing = set(expected) - names
            if missing and missing <= base.buffer_names() and names < set(expected):
                near.append(f"{name}: the file lacks its {len(missing)} BatchNorm running statistics (running_mean, "
                            f"running_var), which inference needs: save the whole state_dict, buffers included")
                continue
            overlap = len(names & set(expected)) / len(names | set(expected))
            far.append((overlap, f"{name}: the file {_names_gap(expected, shapes)}"))
            continue
        defaults = _defaults(name)
        overrides = _read_overrides(name, base, shapes)
        changed = {k: v for k, v in overrides.items() if v != defaults[k]}
        hint = f" ({', '.join(f'{k}={v!r}' for k, v in changed.items())} read from the shapes)" if changed else ""
        try:
            spec = registry.get_spec(name, **overrides)
        except SpecError as e:
            near.append(f"{name}{hint}: {e}")
            continue
        got = spec.param_shapes()
        if got == shapes:
            fits.append((len(changed), Inferred(spec, changed)))
        else:
            k = next(k for k in got if got[k] != shapes[k])
            near.append(f"{name}{hint}: {k} should be {got[k]}, the file has {shapes[k]}")
    if fits:
        return min(fits, key=lambda f: f[0])[1]  # the first best, in registry order
    held = f"{', '.join(list(shapes)[:6])}{' ...' if len(shapes) > 6 else ''}"
    if not near:
        closest = [reason for _, reason in sorted(far, key=lambda f: -f[0])[:2]]
        raise ConversionError(
            f"no registered model has these tensor names, so no spec can be inferred (closest: "
            f"{'; '.join(closest)}); the file holds {len(shapes)} tensors: {held}. A zoo model's names are "
            f"listed by `zoo summary MODEL`; another project's need a key map (zoo._registry.register_keymap)"[:900])
    first = near[0].split(" ", 1)[0].rstrip(":")
    raise ConversionError(
        ("the tensors fit no registered model: " + "; ".join(r[:240] for r in near[:4])
         + f". Name the model and the overrides that describe the file (e.g. zoo convert {first} --set "
           f"num_classes=100 ...; `zoo summary {first} --set ...` shows the shapes they give)")[:1200])


def infer_spec(shapes: dict[str, tuple[int, ...]], model: str | None = None) -> ModelSpec:
    """`infer(shapes, model).spec`: the spec a set of canonical tensor shapes fits."""
    return infer(shapes, model).spec


def resolve_spec(ckpt: Checkpoint, model: str | None = None, overrides: dict | None = None,
                 spec: ModelSpec | None = None) -> tuple[ModelSpec, str]:
    """The spec to use for a checkpoint, and where it came from (said in reports)."""
    if spec is not None:
        return spec, "given"
    if overrides:
        if not model:
            raise ConversionError("overrides need the model they apply to (e.g. zoo convert nin --set ...)")
        return registry.get_spec(model, **overrides), f"{model} with {overrides}"
    if ckpt.spec is not None:
        if model and ckpt.spec.name != model:
            raise ConversionError(f"the file holds a {ckpt.spec.name} model, not a {model}")
        return ckpt.spec, ckpt.spec_origin
    shapes = {k: tuple(a.shape) for k, a in ckpt.weights.items()}
    found = infer(shapes, model)
    return found.spec, f"inferred from the tensor shapes: {found.describe()}"
