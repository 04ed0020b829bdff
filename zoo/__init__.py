"""A model zoo whose architectures are defined once, as specs, and built in PyTorch, Flax NNX and Keras 3.

    >>> import zoo                                  # imports no framework
    >>> zoo.list_models('resnet*')
    ['resnet18', 'resnet18_d2l', 'resnet34', 'resnet50']
    >>> model = zoo.load('resnet18', framework='flax', num_classes=10, in_channels=1)   # NHWC, inference mode
    >>> weights = zoo.get_weights(model)            # canonical: PyTorch names and layout, float32
    >>> model = zoo.load('nin', 'keras', weights='fashion_mnist')   # trained weights, shipped

Every model is a `ModelSpec` (zoo/spec.py: layer ops composed in sequences and parallel
branches), written once per family in zoo/families/; each framework builds any spec from one
op table (zoo/frameworks/*_model.py). Frameworks are imported only when a model of theirs is
asked for.
"""

from pathlib import Path as _Path

from zoo import families as _families  # noqa: F401  (registers every preset)
from zoo._frameworks import FRAMEWORKS, FrameworkNotInstalled
from zoo._registry import UnknownModelError, get_spec, list_models
from zoo.api import WeightsError, check_weights, get_weights, load, predict, set_weights, spec_of, summary
from zoo.diff import diff
from zoo.pretrained import PretrainedError, list_pretrained
from zoo.spec import ModelSpec, SpecError, init_weights

# Installed, conversion/ and weights/ are the subpackages zoo.conversion and zoo.weights (pyproject.toml's
# package-dir). In a checkout run without installing (PYTHONPATH=the checkout) they sit beside zoo/, not in
# it: zoo's search path then takes the checkout's root too, so that `zoo.conversion` and `zoo.weights` are
# those folders in both cases.
_ROOT = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "conversion").is_dir() and (_ROOT / "conversion" / "__init__.py").is_file():
    __path__.append(str(_ROOT))

__version__ = "0.1.0"  # the distribution's version too (pyproject.toml reads it from here)

__all__ = [
    "FRAMEWORKS", "FrameworkNotInstalled", "UnknownModelError", "SpecError", "WeightsError",
    "ModelSpec",
    "list_models", "get_spec", "load", "get_weights", "set_weights", "check_weights", "spec_of",
    "predict", "summary", "diff", "init_weights", "list_pretrained", "PretrainedError",
]
