"""What every reader returns and every writer takes: canonical weights, and the spec when known."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo._checks import negative_variances, nonfinite_tensors
from zoo.spec import ModelSpec

# Of the zoo's metadata (safetensors, .onnx, .weights.h5, Orbax). Version 2's digest covers the spec and the
# version besides the tensors; version 1's (multizoo before it, and the shipped weights, whose whole files the
# manifest's hashes cover) covers the tensors only, and still reads.
FORMAT_VERSION = "2"
READ_VERSIONS = ("1", "2")


class ConversionError(ValueError):
    """A file that cannot be converted as asked. The message says why and what to do."""


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]  # canonical names and layout (OIHW), dtype as stored
    format: str  # name in zoo.io.formats.FORMATS
    spec: ModelSpec | None = None  # set when the file carries one (or the reader had to infer it)
    spec_origin: str = "the file's metadata"
    notes: list[str] = field(default_factory=list)  # how it was read: key maps applied, inference
    hint: str = ""  # said when no spec fits, e.g. how to export the file again
    model: str | None = None  # the preset the file names itself (a Hugging Face folder's config.json)
    expected: dict = field(default_factory=dict)  # what the file says its spec has, e.g. {"num_classes": 10}

    @property
    def dtype(self) -> str:
        dtypes = sorted({str(a.dtype) for a in self.weights.values()})
        return dtypes[0] if len(dtypes) == 1 else "mixed (" + ", ".join(dtypes) + ")"

    @property
    def num_params(self) -> int:
        return int(sum(a.size for a in self.weights.values()))


# torch's BatchNorm counts the batches it has seen; the count matters only with momentum=None (a
# cumulative average), and the zoo's momentum is always a number, so the counters are not canonical.
COUNTER = "num_batches_tracked"


def is_counter(name: str) -> bool:
    return name == COUNTER or name.endswith("." + COUNTER)


def counters_note(n: int) -> str:
    return (f"dropped {n} {COUNTER} counter{'s' if n != 1 else ''}: the zoo's BatchNorm momentum is fixed, "
            f"so they change no output")


def check_finite(weights: dict[str, np.ndarray], allow_nonfinite: bool = False) -> None:
    if allow_nonfinite:
        return
    bad = nonfinite_tensors(weights)
    if bad:
        raise ConversionError(f"NaN or Inf in {len(bad)} tensor(s): {', '.join(bad)}; "
                              f"refused (pass --allow-nonfinite / allow_nonfinite=True to convert them anyway)")


def check_variances(path, spec: ModelSpec, weights: dict[str, np.ndarray]) -> None:
    """Refuse a file whose BatchNorm running variances are negative (its model would compute NaN)."""
    bad = negative_variances(spec, weights)
    if bad:
        raise ConversionError(f"{path}: negative BatchNorm running variance in {len(bad)} tensor(s): "
                              f"{', '.join(bad)}; a variance is never negative (the model would compute NaN): "
                              f"the file is damaged, or its tensors are not what their names say")


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False, is_previous=None):
    """Yield a temporary path beside `path`; move it to `path` only when the block completes.

    A crash, Ctrl-C or SIGTERM leaves no half-written `path` behind: the temporary is removed,
    and an existing `path` (with force) is replaced only at the very end. Without force the
    final move refuses to replace anything that appeared meanwhile. With force, `path` is
    replaced only when `is_previous(path)` says it is a previous output of the same format
    (never a folder of other files). Stale temporaries of dead zoo processes are removed.
    """
    path = Path(path)
    check_output_path(path)
    if path.exists() or path.is_symlink():
        if not force:
            raise ConversionError(f"{path} exists; refusing to overwrite it (pass --force / force=True)")
        if is_previous is not None and not is_previous(path):
            what = "a folder" if path.is_dir() else "a file"
            raise ConversionError(f"{path} is {what} that is not a previous output of this format; refusing to "
                                  f"replace it even with --force: remove it yourself or choose another output name")
    remove_stale_temporaries(path.parent)
    suffix = next((s for s in SUFFIXES if path.name.endswith(s)), "")
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.partial{suffix}")
    try:
        with _sigterm_as_interrupt():
            yield tmp
            if not (tmp.exists() or tmp.is_symlink()):
                raise ConversionError(f"the writer left no output at {tmp}")
            _move(tmp, path, force)
    finally:
        _remove(tmp)
        for p in path.parent.glob(f"{tmp.name}*"):  # e.g. Orbax's own temporaries beside it
            _remove(p)


TMP_PREFIX = ".zoo-"  # temporaries: .zoo-PID-RANDOM.partial[SUFFIX], .zoo-PID-RANDOM.old
SUFFIXES = (".weights.h5", ".safetensors", ".keras", ".onnx", ".pth", ".pt")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that every cleanup runs as on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Interrupted("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def check_output_path(path: Path) -> None:
    """Refuse, before any work, an output name or folder that cannot be written."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ConversionError(f"{str(path)!r} names a folder, not an output file; add a file name")
    try:
        os.fsencode(path)
        str(path).encode("utf-8")
    except UnicodeError:
        raise ConversionError(f"{str(path)!r} is not a valid UTF-8 file name; rename the output") from None
    if len(os.fsencode(path.name)) > 255:
        raise ConversionError(f"the output name is {len(os.fsencode(path.name))} bytes long; "
                              f"file names are limited to 255")
    parent = path.parent
    if not parent.exists():
        blocker = next((p for p in [parent, *parent.parents] if p.exists() or p.is_symlink()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConversionError(f"cannot write {path}: {blocker} is a file, not a folder")
        raise ConversionError(f"the output folder {parent} does not exist")
    if not parent.is_dir():
        raise ConversionError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConversionError(f"cannot write {path}: the folder {parent} is not writable")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A PID names a process on this machine only: on a folder shared between machines, another
# machine's live writer has a PID unknown here. Its temporary is young, so only old ones go.
STALE_AFTER_S = 600


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove `.zoo-PID-...` temporaries whose process is gone (killed before it could clean up)
    and that are older than STALE_AFTER_S."""
    removed = []
    try:
        entries = list(Path(folder).glob(f"{TMP_PREFIX}*"))
    except OSError:
        return removed
    for p in entries:
        m = re.fullmatch(rf"{re.escape(TMP_PREFIX)}(\d+)-[0-9a-f]{{8}}\.(partial|old).*", p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))) and _age(p) > STALE_AFTER_S:
            _remove(p)
            removed.append(p)
    return removed


def _age(p: Path) -> float:
    """Seconds since `p` was last modified (0 when it cannot be read: then it stays)."""
    try:
        return time.time() - p.lstat().st_mtime
    except OSError:
        return 0.0


def _move(tmp: Path, path: Path, force: bool) -> None:
    """Put `tmp` at `path`; without force, never over something that appeared meanwhile."""
    exists = path.exists() or path.is_symlink()
    if not force or not exists:
        try:
            if tmp.is_dir():
                os.mkdir(path)  # exclusive: fails if anything appeared; then replace our own empty folder
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # exclusive too, unlike rename
                    os.unlink(tmp)
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links: claim the name exclusively, then replace
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    os.replace(tmp, path)
        except FileExistsError:
            raise ConversionError(f"{path} appeared while this conversion ran (another process wrote it?); "
                                  f"left it as it is; pass --force to replace it") from None
        return
    if path.is_dir() and not path.is_symlink():  # os.replace cannot put a file or folder over a folder
        old = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.old")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        if tmp.is_dir():
            path.unlink()
        os.replace(tmp, path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        for _ in range(5):  # a file written meanwhile makes rmtree's last rmdir fail: go again
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                break
    elif p.exists() or p.is_symlink():
        try:
            p.unlink()
        except OSError:
            pass


def read_json_object(path: Path, max_bytes: int, what: str, missing: str) -> dict:
    """A small JSON file holding an object (a config), every failure one ConversionError: `missing` when it is
    absent, else what was wrong (too large, not JSON, nested past the stack, not an object `what` is)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ConversionError(f"{path} is {size:,} bytes; {what} is far smaller: refused")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(missing) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise ConversionError(f"{path} is not readable JSON: {type(e).__name__}: {one_line(e, 200)}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a JSON {type(data).__name__}; {what} is an object")
    return data


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception as one line, all of its message (not just the first line), shortened to `limit` characters."""
    text = " ".join(str(e).split()) or "(no message)"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}"


DIGEST_KEY = "zoo_sha256"  # metadata key of `digest` in the zoo's safetensors, .onnx, .weights.h5 and Orbax files
VERSION_KEY = "zoo_format_version"  # FORMAT_VERSION in a .weights.h5's attributes and Orbax's custom metadata


def digest(weights: dict[str, np.ndarray], spec_text: str | None = None, version: str = FORMAT_VERSION) -> str:
    """SHA-256 of canonical weights (names, dtypes, shapes and values, in name order), and from format version 2 on
    of the format version and the spec's JSON as the file stores it (`spec_text`; None: the file stores none).

    Written beside the weights in formats without checksums of their own, so that a flipped
    byte in a tensor's data, or an edited spec, is caught instead of read as a different model.
    """
    h = hashlib.sha256()
    if version != "1":
        text = str(spec_text if spec_text is not None else "").encode("utf-8", "surrogatepass")
        h.update(f"multizoo format {version}|spec {len(text)}|".encode())
        h.update(text)
    for k in sorted(weights):
        a = np.ascontiguousarray(weights[k])
        h.update(f"{k}|{a.dtype.str if a.dtype.name != 'bfloat16' else 'bf16'}|{a.shape}|".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def check_version(path, version) -> str:
    """The zoo format version a file states, when this zoo reads it."""
    if version not in READ_VERSIONS:
        raise ConversionError(f"{path} has zoo format version {version!r}; this zoo reads versions "
                              f"{', '.join(READ_VERSIONS)}: upgrade multizoo")
    return version


def check_digest(path, weights: dict[str, np.ndarray], expected: str | None, spec_text: str | None = None,
                 version: str = "1") -> None:
    """Refuse weights (and, from version 2 on, a spec) whose digest differs from the one their file holds
    (None: the file holds none)."""
    if expected is None:
        return
    got = digest(weights, spec_text, version)
    if got != str(expected):
        what = "its tensors do not" if version == "1" else "its tensors and spec do not"
        raise ConversionError(f"{path}: {what} match the SHA-256 stored beside them ({got[:12]}... "
                              f"instead of {str(expected)[:12]}...): the file is damaged or was edited; copy or "
                              f"write it again")


def digest_note(version: str) -> str:
    return ("format version 1, SHA-256 of its tensors checked (version 1's does not cover the spec)" if version == "1"
            else f"format version {version}, SHA-256 of its tensors and spec checked")
