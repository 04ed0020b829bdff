"""The model registry: plain dicts of preset functions, filled by a decorator."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

_PRESETS: dict[str, Callable[..., Any]] = {}


class UnknownModelError(KeyError):
    """A model name that no preset is registered under."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a preset: a function of keyword-only overrides that returns a spec."""
    if fn.__name__ in _PRESETS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _PRESETS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names, sorted; `pattern` takes shell wildcards; `pretrained=True` keeps the models
    that ship trained weights (`zoo.list_pretrained()` names them with their tags).

    >>> list_models('nin*')
    ['nin', 'nin_cifar10', 'nin_imagenet']
    >>> list_models(pretrained=True)
    ['nin', 'resnet18_d2l']
    """
    names = sorted(n for n in _PRESETS if fnmatch.fnmatchcase(n, pattern))
    if pretrained:
        from zoo.pretrained import manifest  # the manifest names registered models: imported when asked

        shipped = {cfg.model for cfg in manifest().values()}
        names = [n for n in names if n in shipped]
    return names


def _preset(name: str) -> Callable[..., Any]:
    if name not in _PRESETS:
        known = list_models()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(known)}")
    return _PRESETS[name]


def preset_overrides(name: str) -> list[str]:
    """The keyword overrides a registered preset accepts."""
    return list(inspect.signature(_preset(name)).parameters)


def get_spec(name, **overrides):
    """The spec of a registered model, with validated overrides.

    >>> get_spec('nin', num_classes=100).num_classes
    100
    """
    if not isinstance(name, str):  # already a spec
        if overrides:
            raise TypeError("overrides apply to a model name, not to a spec; use dataclasses.replace")
        return name
    preset = _preset(name)
    accepted = preset_overrides(name)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(f"{name} takes no override {', '.join(map(repr, unknown))}; "
                        f"it accepts: {', '.join(accepted)}")
    return preset(**overrides)


# --------------------------------------------------------------------------- foreign key maps (data)

@dataclasses.dataclass(frozen=True)
class KeyMap:
    """How another project's state_dict names map to a family's canonical names: data, not code.

    Each foreign key is renamed by the first rule whose pattern matches it whole
    (`re.fullmatch`, then `match.expand(replacement)`); keys matching a `drop` pattern are
    left out on purpose (and said so). A map applies to a file when every key is renamed or dropped.
    Where a tensor's layout differs too, `reshape` names a layout hook (zoo.io.keymaps.LAYOUT_HOOKS) for
    the foreign keys its pattern matches whole; each reshaping is said in the read's notes. A map with
    `writes` also writes those names (the inverse renames, and `write_reshape`'s hooks).
    """

    name: str  # said in reports, e.g. "d2l ResNet-18 (nn.Sequential: 0.0.weight, 1.0.conv1.weight, ...)"
    models: tuple[str, ...]  # the presets whose specs the renamed weights fit
    rules: tuple[tuple[str, str], ...]  # (pattern, replacement)
    drop: tuple[str, ...] = ()
    reshape: tuple[tuple[str, str], ...] = ()  # (pattern of foreign keys, layout hook's name)
    # Writing that project's names (a Hugging Face folder, `--to hf`): the library whose names they are
    # ("timm"), rules renaming canonical names to them, and the layout hooks (WRITE_HOOKS) for canonical keys.
    library: str = ""
    writes: tuple[tuple[str, str], ...] = ()  # (pattern of canonical keys, replacement)
    write_reshape: tuple[tuple[str, str], ...] = ()  # (pattern of canonical keys, write hook's name)
    architectures: tuple[tuple[str, str], ...] = ()  # (preset, the library's name for it) where the two differ


KEYMAPS: list[KeyMap] = []


def register_keymap(keymap: KeyMap) -> KeyMap:
    if any(k.name == keymap.name for k in KEYMAPS):
        raise ValueError(f"key map {keymap.name!r} is registered twice")
    KEYMAPS.append(keymap)
    return keymap
