"""Which spec a set of canonical tensors fits: the file's own, an explicit one, or one inferred from shapes.

Inference tries each registered preset (or the named model) whose canonical names are the file's.
The shapes give the overrides a preset takes: `in_channels` from the first conv or linear layer,
`num_classes` from the last weight, and every other integer override (a width, a width ratio,
NiN's tuple of `widths`, the input size of a network whose linear layer takes a fixed size) from
the tensor dimensions it sets. Which dimensions those are, the preset itself says: built with the
override changed, some dimensions change; the value that gives the file's dimensions is then
found by solving (a linear guess, else a bisection: a dimension grows or shrinks with its
override). A real override (a width multiplier) is solved on an interval: the values that give every
size form one, found by two bisections, and the shortest decimal in it is reported. A preset whose
names differ from the file's, with the same first and last layers, may differ in depth: each
override that renames layers (a stage's block count, a depth multiplier) is solved on the names first.
Strides, padding, pooling and dropout come from the preset. The candidate must then give the file's
shapes exactly; a preset that fits at its defaults is preferred.

Not read: overrides that set a width only together with another, where the other order of solving
is needed (ResNeXt's groups with its width per group when the base width changes too), a RegNet's
w_0, w_a, w_m, a quantised rule that many values map to one network, and a ViT's head count (`UNSEEN`),
which no shape shows: assumed the preset's only at the preset's widths. Those files need the overrides
named (zoo convert MODEL --set ...); the error says so.

    >>> infer_spec({'blocks.0.conv0.weight': (8, 1, 11, 11), ...}).name
    'nin'
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any

from zoo import _registry as registry  # get_spec, list_models: the registry alone, not zoo.api
from zoo.io import keymaps
from zoo.io.checkpoint import Checkpoint, ConversionError
from zoo.spec import MAX_WIDTH, Conv, Linear, ModelSpec, SpecError, is_int

_READ = ("in_channels", "num_classes")
# Overrides that no tensor shape shows: a file at the preset's widths is read with the preset's value (a
# torchvision ViT-B/16 has 12 heads); at other widths inference stops and asks for them.
UNSEEN = ("num_heads",)  # overrides read straight from the first and last layers' tensors
_SCAN = 64  # values tried after the bisection, where several give the first dimension (ratios, input sizes)


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


@functools.lru_cache(maxsize=256)
def _default(name: str) -> ModelSpec:
    """A preset at its defaults (specs are immutable: built once per process)."""
    return registry.get_spec(name)


def _leaves(value: Any, at: tuple = ()) -> list[tuple[tuple, int]] | None:
    """(index path, value) of each int in an int or a nested tuple of ints; None if it is neither."""
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


def _tunable(overrides: dict[str, Any]) -> list[tuple[str, tuple]]:
    """(param, index path) of each leaf inference may solve: every int of an override (a width, a depth, a
    tuple of them) and every positive float (a width or depth multiplier), in_channels and num_classes aside."""
    out = []
    for param, value in overrides.items():
        if param in _READ:
            continue
        if isinstance(value, float) and math.isfinite(value) and value > 0:
            out.append((param, ()))
        else:
            out += [(param, at) for at, _ in (_leaves(value) or [])]
    return out


def _nice(lo: float, ok) -> float:
    """The shortest decimal at or above `lo` that `ok` accepts (0.25, not 0.2500000037), else `lo`: a real
    override is known only to an interval, and the report shows the value."""
    for k in range(10):
        c = math.ceil(lo * 10 ** k - 1e-9) / 10 ** k
        if c >= lo and ok(c):
            return c
    return lo


def _names(name: str, overrides: dict[str, Any]) -> set[str] | None:
    try:
        return set(registry.get_spec(name, **overrides).param_shapes())
    except (SpecError, TypeError, ValueError):
        return None


def _solve_names(name: str, names: set[str]) -> dict[str, Any] | None:
    """The preset's defaults with its depths changed so that its tensor names are `names`, or None.

    A leaf renames layers when a smaller or larger value of it gives other names (a stage's block count,
    a depth multiplier). The file's names that a preset lacks can only fall as such a leaf grows, so the
    leaf's value is the smallest one that leaves no more of them missing than a larger one does: found
    by bisection, each leaf on its own (another leaf's stage keeps its missing names whatever this one is).
    """
    out = dict(_defaults(name))
    for _ in range(2):  # a second pass, for a leaf whose names depend on another's
        for param, at in _tunable(out):
            value = _solve_depth(name, names, out, param, at)
            if value is not None:
                out = {**out, param: _replaced(out[param], at, value)}
        if _names(name, out) == names:
            return out
    return None


def _solve_depth(name: str, names: set[str], out: dict[str, Any], param: str, at: tuple) -> Any:
    """`_solve_names` for one leaf: its value, or None where names do not show it (a width, a rate)."""
    v0 = _leaf(out[param], at)
    real = isinstance(v0, float)

    def names_at(v):
        return _names(name, {**out, param: _replaced(out[param], at, v)})

    def missing(v):
        got = names_at(v)
        return math.inf if got is None else len(names - got)

    here = _names(name, out)
    lo = v0 / 64 if real else 1
    if here is None or all(n is None or n == here for n in (names_at(lo), names_at(v0 * 2))):
        return None  # no valid value shows other names (an input size is merely invalid when too small)
    hi, floor = v0, missing(v0)
    while hi < (64 * v0 if real else 1024):  # grow until a larger value finds no more of the file's names
        more = missing(hi * 2)
        if not more < floor:
            break
        hi, floor = hi * 2, more
    while (hi - lo > 1e-7 * v0) if real else (lo < hi):
        mid = (lo + hi) / 2 if real else (lo + hi) // 2
        if missing(mid) <= floor:
            hi = mid
        else:
            lo = mid if real else mid + 1
    if real:
        at_hi = names_at(hi)
        hi = _nice(hi, lambda c: names_at(c) == at_hi)
    return hi


def _replaced(value: Any, at: tuple, new: int) -> Any:
    if not at:
        return new
    items = list(value)
    items[at[0]] = _replaced(items[at[0]], at[1:], new)
    return type(value)(items) if isinstance(value, tuple) else items


def _leaf(value: Any, at: tuple) -> int:
    for i in at:
        value = value[i]
    return value


class _Solver:
    """Solves one preset's integer overrides for a file's shapes, one int at a time."""

    def __init__(self, name: str, shapes: dict[str, tuple[int, ...]]):
        self.name, self.shapes = name, shapes

    def shapes_with(self, overrides: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        """The preset's shapes with these overrides; None when they make no valid spec or other names."""
        try:
            got = registry.get_spec(self.name, **overrides).param_shapes()
        except (SpecError, TypeError, ValueError):
            return None
        return got if got.keys() == self.shapes.keys() else None

    def moved(self, overrides: dict[str, Any], param: str, at: tuple) -> tuple[int, dict, dict, list] | None:
        """(the value tried, shapes before, shapes after, the (tensor, axis) that changed) for leaf `at`
        of `param`, or None where no dimension shows it (a rate, a depth that renames layers)."""
        base = self.shapes_with(overrides)
        v0 = _leaf(overrides[param], at)
        if base is None:
            return None
        # up first; down where up is invalid (a group width that larger no longer divides the widths)
        steps = ((v0 * 1.25, v0 * 2, v0 * 0.8, v0 / 2) if isinstance(v0, float)
                 else (v0 + 1, 2 * v0, *((v0 - 1, v0 // 2) if v0 > 1 else ())))
        for step in steps:  # an input size may need more than one more pixel to show
            after = self.shapes_with({**overrides, param: _replaced(overrides[param], at, step)})
            if after is not None:
                changed = [(k, axis) for k, s in base.items() for axis, n in enumerate(s) if after[k][axis] != n]
                if changed:
                    return step, base, after, changed
        return None

    def solve(self, overrides: dict[str, Any], param: str, at: tuple, dims: list) -> int | None:
        """The value of leaf `at` of `param` that gives the file's sizes at `dims` (tensor, axis), others as in
        `overrides`: a linear guess, else a bisection on the first of them (a size grows or shrinks with
        its override), then the values that give that one size too (several may: ratios, input sizes)."""
        def sizes(v: int) -> list[int] | None:
            got = self.shapes_with({**overrides, param: _replaced(overrides[param], at, v)})
            return None if got is None else [got[k][axis] for k, axis in dims]

        v0 = _leaf(overrides[param], at)
        found = self.moved(overrides, param, at)
        if found is None:
            return None
        step, base, after = found[:3]
        # a size that this step moves first: the bisection follows it (a group width capped by a stage's width
        # moves only the wider stages)
        dims = sorted(dims, key=lambda d: base[d[0]][d[1]] == after[d[0]][d[1]])
        want = [self.shapes[k][axis] for k, axis in dims]
        if sizes(v0) == want:
            return v0
        if isinstance(v0, float):
            up = 1 if step > v0 else -1
            return self._solve_real(sizes, v0, want, [up * (after[k][a] - base[k][a]) for k, a in dims])
        (k0, a0) = dims[0]
        d0, d1 = base[k0][a0], after[k0][a0]
        if d1 == d0:
            return None
        if (want[0] - d0) * (step - v0) % (d1 - d0) == 0:  # a width that grows linearly with its override
            guess = v0 + (want[0] - d0) * (step - v0) // (d1 - d0)
            if guess >= 1 and sizes(guess) == want:
                return guess
        grows = (d1 > d0) == (step > v0)
        lo, hi = 1, MAX_WIDTH  # the smallest v whose first size reaches want[0]
        while lo < hi:
            mid = (lo + hi) // 2
            got = sizes(mid)
            # no valid spec: below v0 (which is valid), too small (an input that vanishes); above, too large
            if got is None and mid < v0 or got is not None and not (got[0] >= want[0] if grows else
                                                                    got[0] <= want[0]):
                lo = mid + 1
            else:
                hi = mid
        for v in range(lo, min(lo + _SCAN, MAX_WIDTH + 1)):
            got = sizes(v)
            if got == want:
                return v
            if got is None or got[0] != want[0]:
                break
        return None

    @staticmethod
    def _solve_real(sizes, v0: float, want: list[int], signs: list[int]) -> float | None:
        """A real override (a width multiplier) that gives `want`: each size is a non-decreasing (or, by its
        sign, non-increasing) step function of it, so the values that give them all form one interval
        [a, b), a the least value at which every size has reached its own and b the least at which any has
        passed it; two bisections find them, and the shortest decimal inside is the answer."""
        def state(v: float) -> tuple[bool, bool]:  # (every size reached, some size passed)
            got = sizes(v)
            if got is None:  # no valid spec: below v0 too small (nothing reached), above too large
                return (False, False) if v < v0 else (True, True)
            gaps = [s * (g - w) for s, g, w in zip(signs, got, want) if s]
            return all(d >= 0 for d in gaps), any(d > 0 for d in gaps)

        def least(which: int) -> float:
            lo, hi = v0 / 1024, v0 * 1024
            if state(hi)[which] is False or state(lo)[which]:
                return math.nan
            while hi - lo > 1e-7 * v0:
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if state(mid)[which] else (mid, hi)
            return hi

        a, b = least(0), least(1)
        if not a < b:  # NaN too: no value gives every size
            return None
        value = _nice(a, lambda c: c < b and sizes(c) == want)
        return value if sizes(value) == want else None


def _read_overrides(name: str, base: ModelSpec, shapes: dict[str, tuple[int, ...]],
                    start: dict[str, Any] | None = None) -> dict[str, Any]:
    """The overrides of preset `name` that the file's shapes say, for a file with the preset's names.

    Each integer (a leaf of an override) is solved on the dimensions that it alone sets, when it has
    any (NiN's widths, DenseNet's growth rate, a width ratio), before those whose dimensions depend on
    others too (DenseNet's bottleneck factor times the growth rate; the input size, which sets a fixed
    linear layer's width together with the ratio); those are solved on all their dimensions, the others
    known by then.
    """
    defaults = dict(start or _defaults(name))  # the depths, where the names needed others, solved already
    out = dict(defaults)
    first = next((p for p, op in base.ops().items() if isinstance(op, (Conv, Linear))), None)
    if "in_channels" in defaults and first is not None:
        out["in_channels"] = shapes[f"{first}.weight"][1]
    last = next((k for k in reversed(list(base.param_shapes())) if k.endswith(".weight")), None)
    if "num_classes" in defaults and last is not None:
        out["num_classes"] = shapes[last][0]
    solver = _Solver(name, shapes)
    if solver.shapes_with(out) == shapes:
        return out
    leaves = _tunable(defaults)
    shown = {}
    for param, at in leaves:
        found = solver.moved(out, param, at)
        if found is not None:
            shown[(param, at)] = found[3]
    own = {leaf: [d for d in dims if not any(d in other for o, other in shown.items() if o != leaf)]
           for leaf, dims in shown.items()}
    order = [leaf for leaf in shown if own[leaf]] + [leaf for leaf in shown if not own[leaf]]
    for _ in range(2):  # a second pass, for an override solved before one that its dimensions depend on
        for param, at in order:
            value = solver.solve(out, param, at, own[(param, at)] or shown[(param, at)])
            if value is not None:
                out[param] = _replaced(out[param], at, value)
        if solver.shapes_with(out) == shapes:
            break
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


def _prefix_hint(names: list[str], model: str | None) -> str:
    """Where every name starts with one component that keeps them from a model's names (a wrapper's
    attribute, e.g. 'net.', that no key map strips), which model's names they are without it; else ''."""
    heads = {n.split(".", 1)[0] for n in names}
    if len(heads) != 1 or not all("." in n for n in names):
        return ""
    prefix = heads.pop() + "."
    renamed, keymap, _ = keymaps.to_canonical(dict.fromkeys(n[len(prefix):] for n in names), model)
    fits = next((m for m in ([model] if model else registry.list_models())
                 if set(_default(m).param_shapes()) == set(renamed)), None)
    if fits is None:
        return ""
    via = f", as the key map {keymap.name!r} renames them" if keymap else ""
    return (f"every key starts with {prefix!r}; without it they are {fits}'s names{via}: save the state_dict "
            f"again without the prefix")


def infer(shapes: dict[str, tuple[int, ...]], model: str | None = None) -> Inferred:
    """The preset (or `model`) whose structure fits `shapes`, and the overrides read from them."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    names = set(shapes)
    fits, near, far = [], [], []
    for name in [model] if model else registry.list_models():
        base = _default(name)
        expected = base.param_shapes()
        start = None
        if set(expected) != names:
            missing = set(expected) - names
            if missing and missing <= base.buffer_names() and names < set(expected):
                near.append(f"{name}: the file lacks its {len(missing)} BatchNorm running statistics (running_mean, "
                            f"running_var), which inference needs: save the whole state_dict, buffers included")
                continue
            # the same first and last layers: perhaps the same network with other depths (blocks per stage)
            ends = [k for k in expected if k.endswith(".weight")]
            same_ends = {ends[0], ends[-1]} <= names
            start = _solve_names(name, names) if same_ends else None
            if start is None and same_ends and (model or len(names & set(expected)) > len(names) // 2):
                near.append(f"{name}: its first and last layers, other blocks between (the file "
                            f"{_names_gap(expected, shapes)}), and no depth overrides give those names")
                continue
            if start is None:
                overlap = len(names & set(expected)) / len(names | set(expected))
                far.append((overlap, f"{name}: the file {_names_gap(expected, shapes)}"))
                continue
            base = registry.get_spec(name, **start)
        defaults = _defaults(name)
        overrides = _read_overrides(name, base, shapes, start)
        changed = {k: v for k, v in overrides.items() if v != defaults[k]}
        hint = f" ({', '.join(f'{k}={v!r}' for k, v in changed.items())} read from the shapes)" if changed else ""
        unseen = [k for k in UNSEEN if k in defaults]
        if unseen and set(changed) - set(_READ):
            near.append(f"{name}{hint}: {', '.join(unseen)} cannot be read from tensor shapes (an attention's "
                        f"tensors are [3D, D] whatever its head count), and at other widths than the preset's the "
                        f"preset's {', '.join(f'{k}={defaults[k]!r}' for k in unseen)} need not be the file's")
            continue
        try:
            spec = registry.get_spec(name, **overrides)
        except (ValueError, TypeError) as e:  # SpecError, or a preset's own check
            near.append(f"{name}{hint}: {e}")
            continue
        got = spec.param_shapes()
        if got == shapes:
            fits.append((len(changed), Inferred(spec, changed)))
        else:
            k = next(k for k in got if got[k] != shapes[k])
            near.append(f"{name}{hint}: {k} should be {got[k]}, the file has {shapes[k]}")
    if fits:
        best = min(rank for rank, _ in fits)
        found = [f for rank, f in fits if rank == best]
        other = next((f for f in found[1:] if f.spec.layers() != found[0].spec.layers()), None)
        if other is not None:  # e.g. two presets that differ in an activation: shapes cannot tell them apart
            a, b = found[0].spec, other.spec
            at = next((x, y) for x, y in zip(a.layers(), b.layers()) if x != y)
            also = ", ".join(f.spec.name for f in found if f.spec.name not in (a.name, b.name))
            raise ConversionError(
                f"the tensor shapes fit {a.name} and {b.name} alike{f' (so do {also})' if also else ''}, "
                f"which differ where shapes do not show "
                f"({at[0].path}: {at[0].node} in {a.name}, {at[1].node} in {b.name}): name the model "
                f"(zoo convert {b.name} IN OUT, zoo.load({b.name!r}, ..., weights=...))")
        return found[0]  # the first best, in registry order
    held = f"{', '.join(list(shapes)[:6])}{' ...' if len(shapes) > 6 else ''}"
    if not near:
        ranked = sorted(far, key=lambda f: -f[0])
        whose = f"these are not {model}'s tensor names" if model else "no registered model has these tensor names"
        hint = _prefix_hint(list(shapes), model)
        if hint:
            why = hint
        elif ranked and ranked[0][0] > 0:
            why = f"closest: {'; '.join(reason for _, reason in ranked[:2])}"
        else:
            why = f"none of them is one of {model}'s" if model else "none of them is any model's"
        raise ConversionError(
            f"{whose}, so no spec can be inferred ({why}); the file holds {len(shapes)} tensors: {held}"[:900]
            + ". A zoo model's tensors are named after the layers `zoo summary MODEL` lists (LAYER.weight, "
              "LAYER.bias, LAYER.running_mean, ...). torchvision's, timm's and the d2l book's names read for the "
              "families that have them (docs/formats.md); another project's need a key map: renaming rules, and a "
              "layout hook (zoo.io.keymaps.LAYOUT_HOOKS) for a tensor stored in another shape, declared with "
              "register_keymap in the model's family file")
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
    model = model or ckpt.model  # a Hugging Face folder's config.json names its architecture
    spec, origin = _resolve(ckpt, model, overrides)
    wrong = {k: (v, getattr(spec, k)) for k, v in ckpt.expected.items() if getattr(spec, k) != v}
    if wrong:
        raise ConversionError("the file contradicts itself: " + "; ".join(
            f"its config says {k} {said}, its weights have {has}" for k, (said, has) in wrong.items())
            + ". Fix the config (or the weights) and read it again")
    return spec, origin


def _resolve(ckpt: Checkpoint, model: str | None, overrides: dict | None) -> tuple[ModelSpec, str]:
    if overrides:
        if not model:
            raise ConversionError("overrides need the model they apply to (e.g. zoo convert nin --set ...)")
        return registry.get_spec(model, **overrides), f"{model} with {overrides}"
    if ckpt.spec is not None:
        if model and ckpt.spec.name != model:
            raise ConversionError(f"the file holds a {ckpt.spec.name} model, not a {model}")
        return ckpt.spec, ckpt.spec_origin
    shapes = {k: tuple(a.shape) for k, a in ckpt.weights.items()}
    try:
        found = infer(shapes, model)
    except ConversionError as e:
        if not ckpt.hint:
            raise
        raise ConversionError(f"{str(e).rstrip('.')}. {ckpt.hint}") from None
    if model and set(found.overrides) - {"num_classes", "in_channels"}:  # not a fine-tuned head alone
        _say_a_closer_preset(shapes, found)
    return found.spec, f"inferred from the tensor shapes: {found.describe()}"


def _say_a_closer_preset(shapes: dict[str, tuple[int, ...]], found: Inferred) -> None:
    """Warn when the file fits the named model only with overrides that another preset needs fewer of (a
    ResNet-101 loaded as resnet50 with layers=(3, 4, 23, 3)): the same network either way, but not the one
    the user named."""
    closest = found
    for name in registry.list_models():  # the family's other presets: building every preset would take seconds
        if name == found.spec.name or _default(name).family != found.spec.family:
            continue
        try:
            other = infer(shapes, name)
        except ConversionError:
            continue
        if len(other.overrides) < len(closest.overrides):
            closest = other
    if closest is not found:
        warnings.warn(f"the file is {closest.describe()}: it fits {found.describe()}, which computes the same, "
                      f"and is read so; name {closest.spec.name!r} to read it as what it is", stacklevel=2)
