"""Foreign checkpoints: other projects' parameter names, renamed to canonical ones by the registered
key maps (`zoo._registry.KEYMAPS`, data that the family files declare). Layouts are PyTorch's in all
of them; where another project stores a tensor in another shape (timm's VGG head: its linear layers
are convolutions, [4096, 512, 7, 7] for torchvision's [4096, 25088]), the map names a layout hook
from LAYOUT_HOOKS for those keys, and the read says what was reshaped.

A map applies to a file when each of its keys matches one of its `drop` patterns (left out on
purpose) or is renamed by a rule (the first whose pattern matches the whole key), and no two keys
get the same name. When
several maps apply, the one whose renamed keys are exactly the canonical names of one of its models
wins; the spec check that follows the renaming reports anything else.

    >>> weights, keymap, dropped = to_canonical({'net.0.0.weight': w, ...})
    >>> keymap.name
    'd2l NiN class (seed post, keys net.N.M.*)'
"""

from __future__ import annotations

import functools
import re

import numpy as np

from zoo import _registry
from zoo._registry import KeyMap

# ----------------------------------------------------------------------------- wrappers' prefixes

# What wraps a model in training puts before every key; a model's own names never start so.
PREFIXES = {
    "module.": "DataParallel or DistributedDataParallel",
    "model.": "a Lightning module's or a training script's model attribute",
    "_orig_mod.": "torch.compile",
}


def strip_prefixes(weights: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Strip the wrappers' prefixes that every key shares, outermost first: (weights, prefixes stripped).

    >>> strip_prefixes({'module._orig_mod.conv1.weight': w})
    ({'conv1.weight': w}, ['module.', '_orig_mod.'])
    """
    stripped = []
    while weights:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) and len(k) > len(p) for k in weights)), None)
        if prefix is None:
            break
        weights = {k[len(prefix):]: v for k, v in weights.items()}
        stripped.append(prefix)
    return weights, stripped


def prefixes_note(stripped: list[str]) -> str:
    return (f"stripped the prefix {''.join(stripped)!r} shared by every key (written by "
            f"{', then '.join(PREFIXES[p] for p in stripped)})")


# ----------------------------------------------------------------------------- layout hooks

class LayoutError(ValueError):
    """A tensor that a key map's layout hook cannot take (its shape is not the one the hook reads)."""


def _conv_as_linear(name: str, w: np.ndarray) -> np.ndarray:
    """A convolution kernel [O, I, kh, kw] read as the linear layer [O, I * kh * kw] it computes on an
    input of exactly kh x kw (flattened channel-major, as torch.flatten orders an NCHW map). Exact: the
    same numbers in the same order, only the shape changes."""
    if w.ndim != 4:
        raise LayoutError(f"{name} has shape {list(w.shape)}; the hook conv_as_linear reads a 4-D conv kernel")
    return w.reshape(w.shape[0], -1)


def _vector_as_scale(name: str, w: np.ndarray) -> np.ndarray:
    """A per-channel scale stored as a vector [C] (timm's ConvNeXt `gamma`) as torchvision's [C, 1, 1]."""
    if w.ndim != 1:
        raise LayoutError(f"{name} has shape {list(w.shape)}; the hook vector_as_scale reads a vector [C]")
    return w.reshape(-1, 1, 1)


LAYOUT_HOOKS = {"conv_as_linear": _conv_as_linear, "vector_as_scale": _vector_as_scale}


def _linear_as_conv(name: str, w: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """conv_as_linear's inverse, for writing: a linear layer [O, C * h * w] as the convolution [O, C, h, w]
    that computes it on the C x h x w map it is given (`in_shape`; a vector of I features is I x 1 x 1)."""
    c, h, wd = in_shape if len(in_shape) == 3 else (in_shape[0], 1, 1)
    if w.ndim != 2 or w.shape[1] != c * h * wd:
        raise LayoutError(f"{name} has shape {list(w.shape)}; the hook linear_as_conv reads a linear layer "
                          f"of {c}x{h}x{wd} = {c * h * wd} inputs")
    return w.reshape(w.shape[0], c, h, wd)


def _scale_as_vector(name: str, w: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """vector_as_scale's inverse, for writing: [C, 1, 1] as [C]."""
    if w.ndim != 3 or w.shape[1:] != (1, 1):
        raise LayoutError(f"{name} has shape {list(w.shape)}; the hook scale_as_vector reads a scale [C, 1, 1]")
    return w.reshape(-1)


WRITE_HOOKS = {"linear_as_conv": _linear_as_conv, "scale_as_vector": _scale_as_vector}


def _reshaped(keymap: KeyMap, weights: dict) -> tuple[dict, list[str]]:
    """Apply the map's layout hooks to the foreign-named weights: (weights, what each hook did)."""
    hooks = [(re.compile(p), h) for p, h in keymap.reshape]
    out, said = dict(weights), []
    for name, w in weights.items():
        hook = next((h for p, h in hooks if p.fullmatch(name)), None)
        if hook is not None and isinstance(w, np.ndarray):  # names-only callers pass no arrays
            out[name] = LAYOUT_HOOKS[hook](name, w)
            said.append(f"{name} {list(w.shape)} -> {list(out[name].shape)} ({hook})")
    return out, said


# ----------------------------------------------------------------------------- applying the maps

def rename(keymap: KeyMap, names) -> tuple[dict[str, str], list[str]] | None:
    """(foreign name -> canonical name, names dropped) when `keymap` applies to all of `names`, else None."""
    rules = [(re.compile(p), r) for p, r in keymap.rules]
    drops = [re.compile(p) for p in keymap.drop]
    mapping, dropped = {}, []
    for name in names:
        if any(d.fullmatch(name) for d in drops):
            dropped.append(name)
            continue
        for pattern, replacement in rules:
            m = pattern.fullmatch(name)
            if m:
                mapping[name] = m.expand(replacement)
                break
        else:
            return None
    if len(set(mapping.values())) != len(mapping):  # two keys renamed alike: not this map's file
        return None
    return mapping, dropped


@functools.lru_cache(maxsize=256)
def _canonical_names(model: str) -> frozenset[str] | None:
    """The canonical tensor names of a preset at its defaults (None for an unknown model)."""
    try:
        return frozenset(_registry.get_spec(model).param_shapes())
    except (KeyError, ValueError, TypeError):
        return None


def _fits_by_name(names, models) -> bool:
    names = frozenset(names)
    return any(_canonical_names(m) == names for m in models)


def _input_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Each layer's input shape (without the batch) at the spec's nominal size; a Flatten passes its input's."""
    shapes, previous = {}, (spec.in_channels, *spec.input_size)
    for layer, (path, out) in zip(spec.layers(), spec.layer_shapes(spec.input_size)):
        shapes[path] = previous
        if type(layer.node).__name__ != "Flatten":
            previous = tuple(out[1:])
    return shapes


def to_foreign(keymap: KeyMap, weights: dict[str, np.ndarray], spec) -> dict[str, np.ndarray]:
    """Canonical weights in the map's foreign names and layouts (its `writes` and `write_reshape`)."""
    rules = [(re.compile(p), r) for p, r in keymap.writes]
    hooks = [(re.compile(p), h) for p, h in keymap.write_reshape]
    inputs = _input_shapes(spec) if hooks else {}
    out = {}
    for name, w in weights.items():
        m, replacement = next(((m, r) for p, r in rules if (m := p.fullmatch(name))), (None, None))
        if m is None:
            raise LayoutError(f"{keymap.name}: no rule writes {name}")
        hook = next((h for p, h in hooks if p.fullmatch(name)), None)
        if hook is not None:
            w = WRITE_HOOKS[hook](name, w, inputs[spec.tensor_keys()[name][0]])
        out[m.expand(replacement)] = w
    if len(out) != len(weights):
        raise LayoutError(f"{keymap.name}: two tensors are written under one name")
    return out


def applied_notes(keymap: KeyMap, dropped: list[str], reshaped: list[str]) -> list[str]:
    """What a read says of the key map it applied."""
    notes = [f"recognised foreign keys: {keymap.name}"]
    if reshaped:
        notes.append(f"reshaped {len(reshaped)} tensor(s) as that key map says: {'; '.join(reshaped)}")
    if dropped:
        notes.append(f"left out {len(dropped)} tensor(s) on purpose, as that key map says: "
                     f"{', '.join(dropped[:4])}{' ...' if len(dropped) > 4 else ''}")
    return notes


def to_canonical(weights: dict[str, np.ndarray], model: str | None = None, reshaped: list[str] | None = None
                 ) -> tuple[dict[str, np.ndarray], KeyMap | None, list[str]]:
    """Rename a foreign state_dict to canonical names: (weights, the map applied or None, keys dropped).

    Weights whose names already are a preset's canonical names pass unchanged, as do names that
    no map fits (the spec check that follows lists them). With `model`, only maps for it apply.
    The map's layout hooks reshape the tensors they name; `reshaped`, if given, gets a line for each.
    """
    names = list(weights)
    candidates = [k for k in _registry.KEYMAPS if model is None or model in k.models]
    if not candidates or _fits_by_name(names, [model] if model else _registry.list_models()):
        return weights, None, []
    applied = [(k, r) for k in candidates if (r := rename(k, names)) is not None]
    if not applied:
        return weights, None, []
    # the first map whose result is a preset's names exactly; else the first that applies
    keymap, (mapping, dropped) = next(((k, r) for k, r in applied if _fits_by_name(r[0].values(), k.models)),
                                      applied[0])
    weights, said = _reshaped(keymap, {k: weights[k] for k in names if k in mapping})
    if reshaped is not None:
        reshaped.extend(said)
    return {mapping[k]: w for k, w in weights.items()}, keymap, dropped
