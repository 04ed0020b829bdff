"""Test-only: import timm on a machine whose torchvision cannot be imported (its PyPI wheel here is a CUDA
build). timm's import reaches for a few torchvision names (transforms, InterpolationMode, a FrozenBatchNorm2d
class, dataset classes) that its model code, which these tests use, never calls. This module puts
placeholder modules with those names into sys.modules, and nothing else: no model code, no behaviour.
The placeholders raise if anything calls them, so a test that did reach torchvision would fail loudly.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"torchvision.{name} is a placeholder of tests/timm_shim.py: torchvision is not installed")
    return type(name.rsplit(".", 1)[-1], (), {"__init__": call, "__call__": call})


class InterpolationMode(enum.Enum):  # the names timm's data module reads at import
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _Placeholder(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _unavailable(f"{self.__name__}.{attr}")


def _install() -> None:
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
                 "torchvision.ops.misc", "torchvision.datasets", "torchvision.models",
                 "torchvision.models.feature_extraction", "torchvision.utils"):
        module = _Placeholder(name)
        module.__path__ = []  # a package, so that submodules import
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    sys.modules["torchvision"].__version__ = "0.0+placeholder"
    sys.modules["torchvision.transforms.functional"].InterpolationMode = InterpolationMode
    sys.modules["torchvision.transforms"].InterpolationMode = InterpolationMode


def import_timm():
    """timm, importing torchvision's placeholders only where torchvision itself does not import."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # not installed, or (here) a CUDA build whose operators are missing
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _install()
    return importlib.import_module("timm")
