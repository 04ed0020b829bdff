"""Weight conversion between PyTorch, Flax NNX, Keras and ONNX files, through the zoo's canonical form.

    >>> from zoo import conversion
    >>> print(conversion.convert('model.pt', 'model.weights.h5'))     # verified by running both
    >>> conversion.inspect('model.pt')

Each format has one reader and one writer to canonical weights (zoo/io/io_*.py, below both
the zoo and this package); any format converts to any other through them. Installed, this folder is
the subpackage zoo.conversion (pyproject.toml's package-dir); zoo/__init__.py makes it so in a checkout too.
"""

from zoo.conversion.convert import Report, convert, inspect
from zoo.io import load, read
from zoo.io.checkpoint import Checkpoint, ConversionError
from zoo.io.formats import FORMATS, detect
from zoo.io.infer import infer, infer_spec, resolve_spec

__all__ = ["FORMATS", "Checkpoint", "ConversionError", "Report", "convert", "detect", "infer", "infer_spec",
           "inspect", "load", "read", "resolve_spec"]
