"""Flax NNX state (parameters and BatchNorm statistics) as an Orbax checkpoint directory, with the
spec in its custom metadata.

A Flax user restores it into the zoo's model with
`nnx.update(model, ocp.StandardCheckpointer().restore(path, nnx.state(model, (nnx.Param, nnx.BatchStat))))`.
Checkpoints written before the zoo had BatchNorm hold parameters only, at the same paths: they still read.
Tensors map to canonical ones layer by layer as the spec says (flax_model.to_canonical); a checkpoint
without a spec is read by its Flax names, and its spec inferred where a Linear's column order needs it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from zoo.frameworks import flax_model
from zoo.io.checkpoint import (
    DIGEST_KEY,
    FORMAT_VERSION,
    VERSION_KEY,
    Checkpoint,
    ConversionError,
    check_digest,
    check_version,
    digest,
    digest_note,
    one_line,
)
from zoo.io.infer import infer_spec
from zoo.spec import ModelSpec, SpecError


def _closed_loop_error(kind, value, tb) -> bool:
    if kind is not RuntimeError or str(value) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


def _quiet_closed_loop_errors() -> None:
    """Stop tensorstore's late callbacks from printing tracebacks after a failed restore or save.

    When Orbax's restore or save fails (a damaged folder, a full disk), it closes its asyncio
    loop while some tensorstore operations are still pending; each then fails to schedule its
    callback and the error goes to sys.excepthook (reads) or sys.unraisablehook (writes), which
    print a traceback after the zoo has reported the real error in one line. Only that error,
    raised by asyncio's _check_closed, is dropped; every other goes to the hooks as before.
    """
    if getattr(sys.excepthook, "_zoo_quiet", False):
        return
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def except_hook(kind, value, tb):
        if not _closed_loop_error(kind, value, tb):
            excepthook(kind, value, tb)

    def unraisable_hook(args):
        if not _closed_loop_error(args.exc_type, args.exc_value, args.exc_traceback):
            unraisablehook(args)

    except_hook._zoo_quiet = True
    sys.excepthook, sys.unraisablehook = except_hook, unraisable_hook
    logging.getLogger("asyncio").addFilter(_orbax_write_left_behind)


def _orbax_write_left_behind(record: logging.LogRecord) -> bool:
    """Drop asyncio's late "Task exception was never retrieved" (with a traceback) of Orbax's other
    writes after one of them failed and the save raised; the zoo has reported that error in one line."""
    message = record.getMessage()
    return not (message.startswith("Task exception was never retrieved") and "orbax" in message)


_quiet_closed_loop_errors()


@contextlib.contextmanager
def _quiet_log():
    """Orbax logs a failure, with its traceback or a many-line TensorStore spec, before raising it;
    the zoo reports it in one line, so Orbax's (absl's) log is silenced meanwhile."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def _settle(folder: Path, quiet_s: float = 0.5, limit_s: float = 20.0) -> None:
    """Wait until nothing more is written under `folder` (at most `limit_s`).

    When one of Orbax's concurrent writes fails (a full disk), the save raises at once while
    tensorstore's other writes go on in its own threads, and they create files, and folders,
    after the caller has removed the temporary. Waiting until the tree has been still for
    `quiet_s` lets the caller's cleanup remove everything.
    """
    def snapshot():
        try:
            return sorted((str(p), p.lstat().st_size) for p in Path(folder).rglob("*"))
        except OSError:
            return None
    start, last, still_since = time.monotonic(), snapshot(), time.monotonic()
    while time.monotonic() - start < limit_s and time.monotonic() - still_since < quiet_s:
        time.sleep(0.05)
        now = snapshot()
        if now != last:
            last, still_since = now, time.monotonic()


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key.removesuffix(".value")] = np.asarray(v)
    return out


def read(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    path = Path(path).absolute()
    if not path.is_dir():
        raise ConversionError(f"{path} is not a directory; a Flax checkpoint is an Orbax checkpoint directory")
    try:
        with _quiet_log(), ocp.StandardCheckpointer() as ck:  # the error is reported once, below
            tree = ck.restore(path)
            custom = ck.metadata(path).custom_metadata or {}
    except Exception as e:  # orbax raises many kinds for a damaged or foreign directory
        raise ConversionError(f"{path} is not a readable Orbax checkpoint (incomplete or corrupt?): "
                              f"{one_line(e)}") from None
    if not isinstance(custom, dict):
        raise ConversionError(f"{path}: its custom metadata is a {type(custom).__name__}, not a dictionary; damaged")
    stored = None
    if "zoo_spec" in custom:
        try:
            stored = ModelSpec.from_json(custom["zoo_spec"])
        except SpecError as e:
            raise ConversionError(f"{path}: its zoo metadata holds no valid spec ({e})") from None
    try:
        native = _flatten(tree)
        # The linear layers after a Flatten have their columns in Flax's (H, W, C) order: putting them
        # back needs the spec (given, stored, or else inferred from the shapes, which the order does not change).
        layout_spec = spec or stored
        if layout_spec is None and any(k.endswith(".kernel") and a.ndim == 2 for k, a in native.items()):
            shapes = {k: tuple(a.shape) for k, a in flax_model.to_canonical(native).items()}
            layout_spec = infer_spec(shapes, model)
        weights = flax_model.to_canonical(native, layout_spec)
    except ConversionError:
        raise
    except KeyError as e:
        raise ConversionError(f"{path}: {e.args[0]}") from None
    except Exception as e:
        raise ConversionError(f"{path} holds no Flax zoo parameters: {one_line(e)}") from None
    bad = {k: str(a.dtype) for k, a in weights.items() if str(a.dtype) not in ("float32", "float16", "bfloat16",
                                                                                "float64")}
    if bad:
        raise ConversionError(f"{path}: tensors of non-float dtypes: {bad}"[:400])
    version = check_version(path, custom.get(VERSION_KEY, "1"))  # absent: written before version 2
    check_digest(path, weights, custom.get(DIGEST_KEY), custom.get("zoo_spec"), version)
    ckpt = Checkpoint(weights, "flax", spec=stored)
    if DIGEST_KEY in custom:
        ckpt.notes.append(digest_note(version))
    if stored is None and spec is None and layout_spec is not None:
        ckpt.spec, ckpt.spec_origin = layout_spec, "inferred from the tensor shapes (the checkpoint carries none)"
    return ckpt


def write(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    model = flax_model.build(spec, weights)
    # Synchronous: the asynchronous StandardCheckpointer's background threads kept the process alive
    # forever after a failed write (full disk, unwritable folder). Orbax logs a failure with its
    # traceback before raising it; the caller reports it in one line, so its log is silenced here.
    path = Path(path).absolute()
    with _quiet_log():
        try:
            with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ck:
                ck.save(path, args=ocp.args.StandardSave(nnx.state(model, (nnx.Param, nnx.BatchStat))),
                        custom_metadata={"zoo_spec": spec.to_json(), VERSION_KEY: FORMAT_VERSION,
                                         DIGEST_KEY: digest(weights, spec.to_json())})
        except BaseException:
            for folder in path.parent.glob(f"{path.name}*"):  # Orbax writes into PATH.orbax-checkpoint-tmp*
                _settle(folder)
            raise
