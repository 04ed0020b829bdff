"""The file formats, each read and written through canonical weights: N adapters, not N x N converters."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conversion.checkpoint import ConversionError
from zoo._frameworks import FrameworkNotInstalled


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]  # () for a directory
    framework: str  # whose model loads it: verification runs that framework
    module: str
    reader: str  # function names in `module`
    writer: str
    float32_only: bool  # written through a framework model, which holds float32
    extra: str  # pip extra that installs what `module` needs
    description: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("torch", (".pt", ".pth"), "torch", "conversion.io_torch", "read", "write", False, "torch",
           "PyTorch state_dict (torch.save); read with weights_only=True"),
    Format("safetensors", (".safetensors",), "torch", "conversion.io_safetensors", "read", "write", False, "torch",
           "canonical safetensors: PyTorch names and layout, model and spec in the metadata"),
    Format("flax", (), "flax", "conversion.io_flax", "read", "write", True, "flax",
           "Flax NNX parameters as an Orbax checkpoint directory"),
    Format("keras", (".weights.h5",), "keras", "conversion.io_keras", "read_weights", "write_weights", True, "keras",
           "Keras weights (model.save_weights)"),
    Format("keras_archive", (".keras",), "keras", "conversion.io_keras", "read_archive", "write_archive", True,
           "keras", "whole Keras model archive (model.save)"),
)}
ALIASES = {"pt": "torch", "pytorch": "torch", "orbax": "flax", "h5": "keras"}


def known() -> str:
    return "; ".join(f"{', '.join(f.suffixes) or 'a directory'} ({f.name})" for f in FORMATS.values())


def detect(path: Path | str, explicit: str | None = None, writing: bool = False) -> Format:
    """The format named by `explicit` (a format or framework name), else by the path's suffix."""
    text = str(path)
    if explicit:
        name = ALIASES.get(explicit, explicit)
        if name == "keras" and text.endswith(".keras"):
            name = "keras_archive"
        if name not in FORMATS:
            raise ConversionError(f"unknown format {explicit!r}; known: {', '.join(FORMATS)} "
                                  f"(or a framework name: torch, flax, keras)")
        return FORMATS[name]
    for f in FORMATS.values():
        if any(text.endswith(s) for s in f.suffixes):
            return f
    p = Path(text)
    if p.is_dir() or text.endswith(("/", "\\")) or (writing and not p.exists() and p.suffix == ""):
        return FORMATS["flax"]
    raise ConversionError(f"cannot tell the format of {text} from its suffix {p.suffix!r}; known: {known()}. "
                          f"Rename it, or name the format: --from/--to with zoo convert, --format with zoo inspect, "
                          f"format= in Python")


def function(fmt: Format, which: str) -> Callable:
    """A format's reader or writer, importing its framework now."""
    try:
        module = importlib.import_module(fmt.module)
    except ImportError as e:
        missing = (getattr(e, "name", None) or "?").split(".")[0]
        if missing in ("conversion", "zoo"):
            raise
        raise FrameworkNotInstalled(
            f"the {fmt.name} format needs {missing!r}, which is not installed: "
            f"pip install 'multizoo[{fmt.extra}]' (from a checkout: pip install '.[{fmt.extra}]')") from e
    return getattr(module, getattr(fmt, which))
