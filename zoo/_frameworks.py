"""The framework table and the lazy import of each framework's adapter module.

Every adapter module (zoo/frameworks/*_model.py) offers the same few functions:
    build(spec, weights) -> model          ready for inference, weights canonical
    get_weights(model) -> dict             canonical names, OIHW, float32 copies
    set_weights(model, weights)            weights already checked against the spec
    owns(model) -> bool                    is this one of this adapter's models?
    spec_of(model) -> ModelSpec
    predict(model, x) -> np.ndarray        x in the framework's own layout (LAYOUT)
    trace(model, x) -> [(path, output)]   the spec's layers, run one by one (outputs as numpy)
    train_forward(model, x) -> logits     training mode, dropout off: BatchNorm statistics updated
                                           (frameworks that train only: not ONNX, an inference runtime)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Framework:
    name: str
    module: str  # the zoo's adapter module
    packages: tuple[str, ...]  # top-level imports the adapter needs
    extra: str  # pip extra that installs them
    layout: str  # input layout of its models
    trains: bool = True  # has a training mode (train_forward); ONNX is inference only


FRAMEWORKS: dict[str, Framework] = {
    "torch": Framework("torch", "zoo.frameworks.torch_model", ("torch",), "torch", "NCHW"),
    "flax": Framework("flax", "zoo.frameworks.flax_model", ("jax", "flax"), "flax", "NHWC"),
    "keras": Framework("keras", "zoo.frameworks.keras_model", ("keras",), "keras", "NHWC"),
    "onnx": Framework("onnx", "zoo.frameworks.onnx_model", ("onnx", "onnxruntime"), "onnx", "NCHW",
                      trains=False),
}


class FrameworkNotInstalled(ImportError):
    """The framework asked for, or a package it needs, is not installed."""


def framework(name: str) -> Framework:
    if name not in FRAMEWORKS:
        raise ValueError(f"unknown framework {name!r}; choose one of: {', '.join(FRAMEWORKS)}")
    return FRAMEWORKS[name]


def adapter(name: str) -> ModuleType:
    """Import a framework's adapter, or say which pip extra installs what is missing."""
    fw = framework(name)
    try:
        return quiet_import(fw.module)
    except ImportError as e:
        missing = (getattr(e, "name", None) or "").split(".")[0]
        if missing == fw.module.split(".")[0]:  # a bug of ours, not a missing package
            raise
        detail = f"{missing!r} is not installed" if missing else f"importing it failed ({e})"
        if name == "keras" and missing in ("tensorflow", "jax", "torch"):
            backend = os.environ.get("KERAS_BACKEND", "tensorflow")
            detail += f" (Keras backend {backend!r}; set KERAS_BACKEND to change it)"
        raise FrameworkNotInstalled(
            f"framework {name!r} is not available: {detail}. "
            f"Install it with: pip install 'multizoo[{fw.extra}]' (from a checkout: pip install '.[{fw.extra}]')"
        ) from e


def quiet_import(module: str) -> ModuleType:
    """Import a zoo module that imports a framework, without the framework's start-up chatter.

    Unless ZOO_VERBOSE=1: TensorFlow's INFO lines are turned off (TF_CPP_MIN_LOG_LEVEL=1, where the user
    set no level: its "Memory patch applied" line split `zoo train`'s progress bar), and what the native
    libraries print while they load is held back, and shown only if the import fails.
    """
    if module in sys.modules:
        return sys.modules[module]
    if not _verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with _held_stderr():
        return importlib.import_module(module)


def _verbose() -> bool:
    return os.environ.get("ZOO_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def _held_stderr():
    """Hold back what the frameworks' native libraries print while they load.

    TensorFlow's C++ side logs to file descriptor 2 at import (absl's preamble, oneDNN and CPU-feature
    lines) and no Python setting or TF_CPP_MIN_LOG_LEVEL silences all of it. The output is shown when
    the import fails, or always with ZOO_VERBOSE=1.
    """
    if _verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 (an embedded interpreter): nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


# model class -> (framework, adapter): zoo.predict asks on every call, and asking each imported framework
# took 4 us, a tenth of LeNet's whole call on onnxruntime
_OWNERS: dict[type, tuple[Framework, ModuleType]] = {}


def adapter_for(model) -> tuple[Framework, ModuleType]:
    """The framework a model belongs to. Only frameworks already imported are asked."""
    known = _OWNERS.get(type(model))
    if known is not None:
        return known
    for fw in FRAMEWORKS.values():
        if all(p in sys.modules for p in fw.packages):
            mod = adapter(fw.name)
            if mod.owns(model):
                _OWNERS[type(model)] = fw, mod
                return fw, mod
    raise TypeError(f"{type(model).__module__}.{type(model).__qualname__} is not a zoo model; "
                    f"load one with zoo.load(name, framework)")
