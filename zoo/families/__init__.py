"""The model families: one file each, composing `zoo.spec` ops into registered presets.

Importing this package registers every preset. A family touches no framework module,
converter or reader: everything else walks the spec it returns.
"""

from zoo.families import (  # noqa: F401
    alexnet,
    convnext,
    densenet,
    efficientnet,
    googlenet,
    inception,
    lenet,
    mobilenet,
    nin,
    regnet,
    resnet,
    squeezenet,
    vgg,
    vit,
)
