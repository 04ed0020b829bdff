"""The file formats, each read and written through canonical weights: N adapters, not N x N converters."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zoo._frameworks import FRAMEWORKS, FrameworkNotInstalled, quiet_import
from zoo.io.checkpoint import ConversionError


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
    graph: str = ""  # class in `module` that runs the file's own graph (a format that holds one), else ""
    # function(path, spec, weights) in `module` refusing a file whose own graph computes another model than the
    # spec read from it (a format that holds a graph); a zoo file's reader compares its graph with the spec's
    check_graph: str = ""
    every_model: bool = True  # False: written only for some models (the hf format: those timm has), tested apart


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("torch", (".pt", ".pth"), "torch", "zoo.io.io_torch", "read", "write", False, "torch",
           "PyTorch state_dict (torch.save); read with weights_only=True"),
    Format("safetensors", (".safetensors",), "torch", "zoo.io.io_safetensors", "read", "write", False, "torch",
           "canonical safetensors: PyTorch names and layout, model and spec in the metadata"),
    Format("flax", (), "flax", "zoo.io.io_flax", "read", "write", True, "flax",
           "Flax NNX parameters as an Orbax checkpoint directory"),
    Format("keras", (".weights.h5",), "keras", "zoo.io.io_keras", "read_weights", "write_weights", True, "keras",
           "Keras weights (model.save_weights)"),
    Format("keras_archive", (".keras",), "keras", "zoo.io.io_keras", "read_archive", "write_archive", True,
           "keras", "whole Keras model archive (model.save)"),
    Format("onnx", (".onnx",), "onnx", "zoo.io.io_onnx", "read", "write", True, "onnx",
           "ONNX model: the zoo's graph, canonical weights as its initializers (torch.onnx.export's files read too)",
           graph="Graph", check_graph="check_graph"),
    Format("hf", (), "torch", "zoo.io.io_hf", "read", "write", False, "torch",
           "Hugging Face folder as timm writes it: config.json and model.safetensors (or pytorch_model.bin) in "
           "timm's names; hf-hub:ORG/NAME reads one from the local hub cache", every_model=False),
    Format("keras_hub", (), "keras", "zoo.io.io_keras_hub", "read", "write", True, "keras",
           "keras-hub preset folder (config.json, model.weights.h5, task.json, task.weights.h5), read and written "
           "through keras_hub", every_model=False),
)}
ALIASES = {"pt": "torch", "pytorch": "torch", "orbax": "flax", "h5": "keras", "timm": "hf", "huggingface": "hf",
           "keras-hub": "keras_hub"}


def known() -> str:
    folders = {"flax": "a directory", "hf": "a directory with config.json, or hf-hub:ORG/NAME",
               "keras_hub": "a keras-hub preset directory"}
    return "; ".join(f"{', '.join(f.suffixes) or folders[f.name]} ({f.name})" for f in FORMATS.values())


def detect(path: Path | str, explicit: str | None = None, writing: bool = False) -> Format:
    """The format named by `explicit` (a format or framework name), else by the path's suffix."""
    text = str(path)
    if explicit:
        name = ALIASES.get(explicit, explicit)
        if name == "keras" and text.endswith(".keras"):
            name = "keras_archive"
        if name not in FORMATS:
            raise ConversionError(f"unknown format {explicit!r}; known: {', '.join(FORMATS)} "
                                  f"(or a framework name: {', '.join(FRAMEWORKS)})")
        fmt = FORMATS[name]
        if fmt.name in ("keras", "keras_archive") and not text.endswith(fmt.suffixes):
            # Keras' save_weights/load_weights and save/load_model refuse any other name.
            wanted = Path(text).name + fmt.suffixes[0]
            raise ConversionError(f"{text}: a {fmt.name} file must be named *{fmt.suffixes[0]}, the only name Keras "
                                  f"{'writes' if writing else 'reads'}: "
                                  f"{'name the output' if writing else 'rename it to'} {wanted}")
        return fmt
    if text.startswith("hf-hub:"):
        return FORMATS["hf"]
    from zoo.io.io_hf import folder_of

    # a model.safetensors beside timm's config.json is read with it (--from safetensors reads the file alone)
    if not writing and folder_of(Path(text)) is not None:
        return FORMATS["hf"]
    for f in FORMATS.values():
        if any(text.endswith(s) for s in f.suffixes):
            return f
    p = Path(text)
    if p.is_dir() and (p / "config.json").is_file():  # an Orbax checkpoint has no config.json
        return FORMATS["keras_hub" if _names_keras_hub(p / "config.json") else "hf"]
    if p.is_dir() or text.endswith(("/", "\\")) or (writing and not p.exists() and p.suffix == ""):
        return FORMATS["flax"]
    raise ConversionError(f"cannot tell the format of {text} from its suffix {p.suffix!r}; known: {known()}. "
                          f"Rename it, or name the format: --from/--to with zoo convert, --format with zoo inspect, "
                          f"format= in Python")


def _names_keras_hub(config: Path) -> bool:
    """Whether a folder's config.json names a keras_hub class (keras-hub's presets; timm's name an architecture)."""
    from zoo.io.io_keras_hub import is_folder

    return is_folder(config.parent)


def function(fmt: Format, which: str) -> Callable:
    """A format's reader or writer, importing its framework now."""
    try:
        module = quiet_import(fmt.module)
    except ImportError as e:
        missing = (getattr(e, "name", None) or "?").split(".")[0]
        if missing in ("conversion", "zoo"):
            raise
        raise FrameworkNotInstalled(
            f"the {fmt.name} format needs {missing!r}, which is not installed: "
            f"pip install 'multizoo[{fmt.extra}]' (from a checkout: pip install '.[{fmt.extra}]')") from e
    return getattr(module, getattr(fmt, which))


_MAGIC = ((b"PK\x03\x04", "a zip archive (a PyTorch .pt or a .keras archive?)"),
          (b"PK\x05\x06", "an empty zip archive"),
          (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .weights.h5?)"))


def sniff(path: Path) -> str:
    """What a file's first bytes look like, in words, for error messages."""
    path = Path(path)
    if path.is_dir():
        return "a folder"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head:
        return "empty (0 bytes)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "a safetensors file"
    if _looks_like_onnx(head):
        return "an ONNX model (protobuf)"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "a bare pickle (an old-style, non-zip PyTorch file?)"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return f"text, starting {head.decode('ascii')[:16]!r}"
    return f"{size:,} bytes of unknown content, starting {head[:8].hex(' ')}"


def _looks_like_onnx(head: bytes) -> bool:
    """A serialized ModelProto starts with its ir_version (field 1, a small varint), then the next field's tag
    (producer_name, producer_version, domain, model_version, doc_string, graph or opset_import)."""
    return len(head) >= 3 and head[0] == 0x08 and 3 <= head[1] <= 15 and head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32,
                                                                                     0x3A, 0x42)


def is_previous_output(fmt: Format, path: Path) -> bool:
    """Whether `path` holds what a writer of `fmt` writes: only such a thing may be replaced with --force."""
    path = Path(path)
    if path.is_symlink():
        return False
    if fmt.name == "flax":
        if not path.is_dir():
            return False
        names = {p.name for p in path.iterdir()}
        return "_CHECKPOINT_METADATA" in names and names <= ORBAX_NAMES
    if fmt.name == "hf":
        return path.is_dir() and {p.name for p in path.iterdir()} == {"config.json", "model.safetensors"}
    if fmt.name == "keras_hub":
        names = {p.name for p in path.iterdir()} if path.is_dir() else set()
        return {"config.json", "task.json", "model.weights.h5", "task.weights.h5", "metadata.json"} >= names >= {
            "config.json", "task.json"}
    if not path.is_file():
        return False
    what = sniff(path)
    return {"torch": what.startswith(("a zip", "a bare pickle")), "safetensors": what == "a safetensors file",
            "keras": what.startswith("an HDF5"), "keras_archive": what.startswith("a zip"),
            "onnx": what.startswith("an ONNX model")}[fmt.name]


# what an Orbax checkpoint folder written by zoo.io.io_flax holds
ORBAX_NAMES = {"_CHECKPOINT_METADATA", "_METADATA", "_sharding", "commit_success.txt", "d", "manifest.ocdbt",
               "ocdbt.process_0", "array_metadatas", "descriptor"}
