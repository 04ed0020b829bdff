"""What every reader returns and every writer takes: canonical weights, and the spec when known."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo.nin import NiNSpec

FORMAT_VERSION = "1"  # of the zoo's canonical safetensors metadata


class ConversionError(ValueError):
    """A file that cannot be converted as asked. The message says why and what to do."""


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]  # canonical names and layout (OIHW), dtype as stored
    format: str  # name in conversion.formats.FORMATS
    spec: NiNSpec | None = None  # set when the file carries one (or the reader had to infer it)
    spec_origin: str = "the file's metadata"
    notes: list[str] = field(default_factory=list)  # how it was read: key maps applied, inference

    @property
    def dtype(self) -> str:
        dtypes = sorted({str(a.dtype) for a in self.weights.values()})
        return dtypes[0] if len(dtypes) == 1 else "mixed (" + ", ".join(dtypes) + ")"

    @property
    def num_params(self) -> int:
        return int(sum(a.size for a in self.weights.values()))


def check_finite(weights: dict[str, np.ndarray], allow_nonfinite: bool = False) -> None:
    if allow_nonfinite:
        return
    bad = [f"{k} ({int((~np.isfinite(a.astype(np.float32))).sum())} values)"
           for k, a in weights.items() if not np.isfinite(a.astype(np.float32)).all()]
    if bad:
        raise ConversionError(f"NaN or Inf in {len(bad)} tensor(s): {', '.join(bad)}; "
                              f"refused (pass --allow-nonfinite / allow_nonfinite=True to convert them anyway)")


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False):
    """Yield a temporary path beside `path`; rename it to `path` only when the block completes.

    A crash or Ctrl-C leaves no half-written `path` behind: the temporary is removed,
    and an existing `path` (with force) is replaced only at the very end.
    """
    path = Path(path)
    if path.exists() and not force:
        raise ConversionError(f"{path} exists; refusing to overwrite it (pass --force / force=True)")
    if not path.parent.exists():
        raise ConversionError(f"the output folder {path.parent} does not exist")
    name = path.name
    suffix = next((s for s in (".weights.h5", ".safetensors", ".keras", ".pth", ".pt") if name.endswith(s)), "")
    tmp = path.with_name(f".{name[: len(name) - len(suffix)]}.partial-{os.getpid()}{suffix}")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():  # os.replace cannot put a file or folder over a folder
            old = path.with_name(f".{name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            if tmp.is_dir() and path.exists():
                path.unlink()
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
