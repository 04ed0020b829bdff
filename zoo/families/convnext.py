"""ConvNeXt-T and ConvNeXt-S (Liu et al. 2022, "A ConvNet for the 2020s"), as torchvision builds them.

A patchify stem (4x4 conv, stride 4, then LayerNorm), four stages of ConvNeXt blocks, with a
LayerNorm and a 2x2 stride-2 conv between stages. A block: a depthwise 7x7 conv, LayerNorm over
the channels, a Linear to 4x the width, exact GELU, a Linear back, a learned per-channel layer
scale (initialised to 1e-6), stochastic depth, and the residual addition. Every LayerNorm has eps
1e-6. torchvision computes the block's LayerNorm and Linears channels last, through a permute; the
spec says "over the feature axis", which on an image is the channel axis in every layout.
Canonical names follow torchvision's state_dict:

    features.0.0 / .1                  the stem conv and its LayerNorm
    features.{2s+1}.{i}.block.0        block i of stage s: the depthwise conv
    features.{2s+1}.{i}.block.2/3/5    its LayerNorm and the two Linears (block.1, block.6: permutes)
    features.{2s+1}.{i}.layer_scale    its layer scale, a bare parameter [C, 1, 1]
    features.{2s+2}.0 / .1             the LayerNorm and conv between stages
    classifier.0 / classifier.2        LayerNorm, then (after Flatten) the Linear

    >>> zoo.get_spec('convnext_tiny').num_params
    28589128
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, conv_widths, module_renames, widths
from zoo.spec import (
    GELU,
    AdaptivePool,
    Conv,
    DropPath,
    Flatten,
    LayerNorm,
    LayerScale,
    Linear,
    ModelSpec,
    Parallel,
    Seq,
    is_int,
    require,
)

EPS = 1e-6


def block(dim: int, drop: float) -> Seq:
    """torchvision's CNBlock: out = x + stochastic_depth(layer_scale * block(x))."""
    body = Seq(("0", Conv(dim, dim, 7, 1, 3, groups=dim)), ("2", LayerNorm(dim, EPS)), ("3", Linear(dim, 4 * dim)),
               ("4", GELU("none")), ("5", Linear(4 * dim, dim)))
    branch = Seq(("block", body), ("layer_scale", LayerScale(dim)), ("stochastic_depth", DropPath(drop)))
    return Seq(("add", Parallel("add", ("", branch), ("", Seq()))))


def network(name: str, dims: Any, depths: Any, stochastic_depth: Any, in_channels: int, num_classes: int,
            input_size: Any) -> ModelSpec:
    check_counts(in_channels, num_classes)
    dims, depths = conv_widths(dims, 4, "dims"), widths(depths, 4, "depths")
    require(all(is_int(d) and 1 <= d <= 64 for d in depths), f"depths must be 4 ints in [1, 64], got {depths!r}")
    require(isinstance(stochastic_depth, (int, float)) and not isinstance(stochastic_depth, bool)
            and 0.0 <= stochastic_depth < 1.0, f"stochastic_depth must be a float in [0, 1), got {stochastic_depth!r}")
    total, k = sum(depths), 0
    children = [("features.0", Seq(("0", Conv(in_channels, dims[0], 4, 4, 0)), ("1", LayerNorm(dims[0], EPS))))]
    for s, (dim, depth) in enumerate(zip(dims, depths)):
        blocks = []
        for i in range(depth):  # the rate grows linearly over all blocks, from 0 to stochastic_depth
            blocks.append((str(i), block(dim, float(stochastic_depth) * k / max(total - 1, 1))))
            k += 1
        children.append((f"features.{2 * s + 1}", Seq(*blocks)))
        if s < 3:
            children.append((f"features.{2 * s + 2}", Seq(("0", LayerNorm(dim, EPS)),
                                                          ("1", Conv(dim, dims[s + 1], 2, 2, 0)))))
    children += [("avgpool", AdaptivePool(1)),
                 ("classifier", Seq(("0", LayerNorm(dims[3], EPS)), ("1", Flatten()),
                                    ("2", Linear(dims[3], num_classes))))]
    return ModelSpec(name=name, family="convnext", in_channels=in_channels, num_classes=num_classes,
                     body=Seq(*children), input_size=input_size)


@register_model
def convnext_tiny(*, in_channels: int = 3, num_classes: int = 1000, dims: tuple = (96, 192, 384, 768),
                  depths: tuple = (3, 3, 9, 3), stochastic_depth: float = 0.1,
                  input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ConvNeXt-T (`torchvision.models.convnext_tiny`): 28,589,128 parameters, 224x224 RGB."""
    return network("convnext_tiny", dims, depths, stochastic_depth, in_channels, num_classes, input_size)


@register_model
def convnext_small(*, in_channels: int = 3, num_classes: int = 1000, dims: tuple = (96, 192, 384, 768),
                   depths: tuple = (3, 3, 27, 3), stochastic_depth: float = 0.4,
                   input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ConvNeXt-S (`torchvision.models.convnext_small`): 50,223,688 parameters, 224x224 RGB."""
    return network("convnext_small", dims, depths, stochastic_depth, in_channels, num_classes, input_size)


TORCHVISION_CONVNEXT = register_keymap(KeyMap(
    name="torchvision ConvNeXt (features.0.0.weight, features.1.0.block.0.weight, features.1.0.layer_scale, "
         "classifier.2.weight, ...)",
    models=("convnext_tiny", "convnext_small"),
    rules=((r"((?:features|classifier)\.[\w.]+)", r"\1"),)))

# timm's ConvNeXt (`convnext_tiny`, `convnext_small`: timm.models.convnext, conv_mlp=False) is torchvision's network
# under other names: stage s is `stages.{s}` (torchvision's features.{2s + 1}), its downsampling LayerNorm and conv
# `stages.{s}.downsample.0/1` (features.{2s}), a block's layer scale `gamma` a vector [C] (torchvision's [C, 1, 1]:
# the layout hook vector_as_scale), the head `head.norm` and `head.fc`.
_TIMM_CONVNEXT_MODULES = (
    [("stem.0", "features.0.0"), ("stem.1", "features.0.1"), ("head.norm", "classifier.0"), ("head.fc", "classifier.2")]
    + [(f"stages.{s}.downsample.{i}", f"features.{2 * s}.{i}") for s in (1, 2, 3) for i in (0, 1)]
    + [(f"stages.{s}.blocks.{{b}}.{a}", f"features.{2 * s + 1}.{{b}}.block.{c}") for s in range(4) for a, c in (
        ("conv_dw", "0"), ("norm", "2"), ("mlp.fc1", "3"), ("mlp.fc2", "5"))])
_rules, _writes = module_renames(_TIMM_CONVNEXT_MODULES)
TIMM_CONVNEXT = register_keymap(KeyMap(
    name="timm ConvNeXt (stem.0.weight, stages.0.blocks.0.conv_dw.weight, stages.0.blocks.0.gamma, head.fc.weight, "
         "...)",
    models=("convnext_tiny", "convnext_small"),
    rules=(*[(rf"stages\.{s}\.blocks\.(\d+)\.gamma", rf"features.{2 * s + 1}.\1.layer_scale") for s in range(4)],
           *_rules),
    reshape=((r"stages\.\d\.blocks\.\d+\.gamma", "vector_as_scale"),),
    library="timm",
    writes=(*[(rf"features\.{2 * s + 1}\.(\d+)\.layer_scale", rf"stages.{s}.blocks.\1.gamma") for s in range(4)],
            *_writes),
    write_reshape=((r"features\.\d\.\d+\.layer_scale", "scale_as_vector"),),
    architectures=(("convnext_tiny", "convnext_tiny"), ("convnext_small", "convnext_small"))))
