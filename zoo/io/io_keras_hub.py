"""keras-hub preset folders: `config.json` naming a keras_hub backbone, `model.weights.h5`, and for an image
classifier `task.json` with `task.weights.h5` (its head), as `save_to_preset` writes them.

Keras 3's weight files name layers by type and position (`layers/conv2d_12/vars/0`), not by keras-hub's names
(`stack0_block0_1_conv`), so the preset is read through keras_hub itself: its config builds the model (only the
classes below, checked before anything is deserialized), and each layer's weights are taken by its keras-hub
name in PyTorch's layout (kernels OIHW, dense [out, in]); the families' key maps (`library="keras_hub"`) rename
them. ResNet and VGG are read (VGG's head of convolutions, as timm's, through the `conv_as_linear` layout hook:
the same network at 224x224). A backbone whose network is not the zoo's (a pre-activation ResNet, keras-hub's
`_vd` blocks, another stem, its DenseNet's padding) is refused, saying what differs. Writing builds the
keras-hub model from the spec, sets its weights by the same names, and saves the preset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo import _registry
from zoo._frameworks import FrameworkNotInstalled
from zoo.io import keymaps
from zoo.io.checkpoint import Checkpoint, ConversionError, one_line, read_json_object
from zoo.spec import BatchNorm, Conv, ModelSpec, Pool

LIBRARY = "keras_hub"
CONFIG, TASK = "config.json", "task.json"
MAX_JSON_BYTES = 1 << 20
# the keras-hub classes read here, each with its zoo family: nothing else in a config is deserialized
BACKBONES = {"ResNetBackbone": "resnet", "VGGBackbone": "vgg"}
TASKS = {"ResNetImageClassifier": "resnet", "VGGImageClassifier": "vgg"}
INSTALL = ("pip install keras-hub (where its tensorflow-text dependency has no wheel: pip install --no-deps "
           "keras-hub regex tokenizers)")


def is_folder(path: Path) -> bool:
    """A folder whose config.json names a keras_hub class (a timm folder's names an `architecture`)."""
    try:
        return path.is_dir() and str(_json(path / CONFIG).get("module", "")).startswith("keras_hub.")
    except ConversionError:
        return False


def _json(path: Path) -> dict:
    return read_json_object(path, MAX_JSON_BYTES, "a keras-hub config", f"{path.parent} has no {path.name}")


# keras-hub's networks of the zoo's families that the zoo does not read, and why
NOT_READ = {
    "DenseNetBackbone": "its stem convolution pads 'same' (unevenly at even input sizes: 2 before and 3 after at "
                        "224x224), where torchvision's pads 3 on every side, so it is another network than the zoo's "
                        "densenet presets (5e-2 from timm's DenseNet-121 at 224x224, measured with both loaded alike)",
    "EfficientNetBackbone": "not read: whether it is torchvision's EfficientNet (its stem padding, its 'same' "
                            "padding of strided depthwise convs, its BatchNorm settings) has not been checked "
                            "against the zoo's efficientnet presets; timm's EfficientNet files are read",
    "MobileNetBackbone": "not read: whether it is torchvision's MobileNetV3 (its padding of strided depthwise convs, "
                         "its BatchNorm settings) has not been checked against the zoo's mobilenet presets; "
                         "timm's MobileNetV3 files are read",
}


def _check_class(path: Path, entry: dict, allowed: dict) -> str:
    module, name = entry.get("module"), entry.get("class_name")
    if name in NOT_READ:
        raise ConversionError(f"{path} is keras-hub's {name}: {NOT_READ[name]}")
    if not (isinstance(module, str) and module.startswith("keras_hub.src.models.") and name in allowed):
        raise ConversionError(f"{path} names {module}.{name}; the zoo reads keras-hub's {', '.join(allowed)} "
                              f"(the networks it has), nothing else is deserialized")
    family = allowed[name]
    for inner in _modules(entry):  # the backbone, preprocessor, dtype policy... inside: Keras' or the family's own
        if not (inner == "keras" or inner.startswith(("keras.", f"keras_hub.src.models.{family}."))):
            raise ConversionError(f"{path} names the module {inner!r} inside; a keras-hub {family} preset names "
                                  f"only keras and keras_hub.src.models.{family}: nothing else is deserialized")
    return family


def _modules(node) -> list[str]:
    """Every "module" a Keras config names, at any depth (a non-string one as its repr, which no check passes)."""
    if isinstance(node, dict):
        own = [node["module"] if isinstance(node["module"], str) else repr(node["module"])] if "module" in node else []
        return own + [m for v in node.values() for m in _modules(v)]
    if isinstance(node, list):
        return [m for v in node for m in _modules(v)]
    return []


def _check_resnet(path: Path, c: dict) -> None:
    """keras-hub's ResNet is torchvision's (v1.5: the stride on the 3x3) only with these settings."""
    wrong = []
    if c.get("use_pre_activation"):
        wrong.append("use_pre_activation=True (ResNetV2: BatchNorm before each conv)")
    if c.get("block_type") not in ("basic_block", "bottleneck_block"):
        wrong.append(f"block_type={c.get('block_type')!r} (the zoo's are basic_block and bottleneck_block)")
    if c.get("input_conv_kernel_sizes") != [7] or len(c.get("input_conv_filters") or []) != 1:
        wrong.append(f"a stem of {c.get('input_conv_kernel_sizes')} convs (torchvision's: one 7x7)")
    if c.get("stackwise_num_strides") != [1, 2, 2, 2]:
        wrong.append(f"stackwise_num_strides={c.get('stackwise_num_strides')} (torchvision's: [1, 2, 2, 2])")
    if wrong:
        raise ConversionError(f"{path}: keras-hub's ResNet here is not torchvision's: {'; '.join(wrong)}; no zoo "
                              f"preset computes it")


def _check_task(path: Path, family: str, c: dict) -> list[str]:
    """The head's settings that the zoo's network computes; returns what the read should say of it."""
    pooling = c.get("pooling", "avg")
    if family == "vgg" and pooling != "avg":
        raise ConversionError(f"{path}: pooling {pooling!r}; the zoo reads keras-hub's VGG head with pooling 'avg' "
                              f"(its default: 7x7 and 1x1 convolutions, as timm's), which is torchvision's "
                              f"classifier at 224x224"
                              + (" (a 'flatten' head orders its dense inputs (H, W, C), torchvision's (C, H, W): "
                                 "not read)" if pooling == "flatten" else ""))
    if pooling != "avg":
        raise ConversionError(f"{path}: pooling {pooling!r}; the zoo's {family} pools by average")
    notes = []
    if family == "vgg":
        notes.append("keras-hub's VGG head is convolutions (7x7 fc1, 1x1 fc2, global average pooling), read as "
                     "torchvision's linear classifier: the same network at 224x224 input only (at other sizes "
                     "keras-hub slides fc1 over the map; the zoo pools it to 7x7 first, as torchvision does)")
    if c.get("activation") not in (None, "linear"):
        notes.append(f"the task applies {c['activation']!r} to its outputs; the zoo's model gives the logits "
                     f"before it")
    return notes


# a family's backbone settings that make it another network (keras-hub's VGGBackbone, 3x3 convs padded 'same'
# and 2x2 max pools, is torchvision's features as it is: nothing to check)
CHECKS = {"resnet": _check_resnet}


def _keras_hub():
    try:
        import keras_hub
    except ImportError as e:
        raise FrameworkNotInstalled(f"a keras-hub preset is read through keras_hub, which is not installed: "
                                    f"{INSTALL}") from e
    return keras_hub


def _leaf_layers(model) -> list:
    """A keras-hub model's layers, those of the models inside it (the backbone, a Sequential head) in their place."""
    import keras

    return [leaf for layer in model.layers
            for leaf in (_leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])]


def _layer_weights(layers) -> dict[str, np.ndarray]:
    """keras-hub's layers' weights by layer name, in PyTorch's layouts and names."""
    import keras

    out = {}
    for layer in layers:
        if isinstance(layer, keras.layers.Conv2D):
            out[f"{layer.name}.weight"] = np.asarray(layer.kernel).transpose(3, 2, 0, 1)
            if layer.use_bias:
                out[f"{layer.name}.bias"] = np.asarray(layer.bias)
        elif isinstance(layer, keras.layers.BatchNormalization):
            out.update({f"{layer.name}.weight": np.asarray(layer.gamma), f"{layer.name}.bias": np.asarray(layer.beta),
                        f"{layer.name}.running_mean": np.asarray(layer.moving_mean),
                        f"{layer.name}.running_var": np.asarray(layer.moving_variance)})
        elif isinstance(layer, keras.layers.Dense):
            out[f"{layer.name}.weight"] = np.asarray(layer.kernel).T
            out[f"{layer.name}.bias"] = np.asarray(layer.bias)
        elif layer.weights:
            raise ConversionError(f"keras-hub layer {layer.name} ({type(layer).__name__}) holds weights the zoo "
                                  f"does not read")
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def read(path: Path, spec: ModelSpec | None = None, model: str | None = None) -> Checkpoint:
    folder = Path(path)
    config = _json(folder / CONFIG)
    family = _check_class(folder / CONFIG, config, BACKBONES)
    if family in CHECKS:
        CHECKS[family](folder / CONFIG, config.get("config") or {})
    task = folder / TASK
    notes, task_name = [], None
    if task.is_file():
        task_config = _json(task)
        if _check_class(task, task_config, TASKS) != family:
            raise ConversionError(f"{task} names {task_config['class_name']} over a {config['class_name']}: "
                                  f"a preset's task and backbone are one network")
        task_name = task_config["class_name"]
        notes = _check_task(task, family, task_config.get("config") or {})
    keras_hub = _keras_hub()
    try:
        if task.is_file():
            layers = _leaf_layers(keras_hub.models.ImageClassifier.from_preset(str(folder), load_weights=True))
        else:
            layers = _leaf_layers(keras_hub.models.Backbone.from_preset(str(folder), load_weights=True))
    except ConversionError:
        raise
    except Exception as e:  # a missing or damaged weights file, a config keras-hub refuses
        raise ConversionError(f"{folder}: keras-hub cannot load this preset: {one_line(e)}") from None
    weights = _layer_weights(layers)
    what = config["class_name"] + (f" with its {task_name}" if task_name else "")
    ckpt = Checkpoint(weights, "keras_hub", notes=[f"keras-hub preset: {what} (keras-hub's layer names)", *notes])
    reshaped = []
    ckpt.weights, keymap, dropped = keymaps.to_canonical(ckpt.weights, model or (spec and spec.name), reshaped)
    if keymap is not None:
        ckpt.notes += keymaps.applied_notes(keymap, dropped, reshaped)
        if len(keymap.models) == 1:  # keras-hub's VGG-11 is torchvision's vgg11, not d2l's of the same shapes
            ckpt.model = keymap.models[0]
    if not task.is_file():
        ckpt.hint = ("a keras-hub backbone has no classifier head; the zoo's models have one: save the "
                     "ImageClassifier's preset (task.json, task.weights.h5)")
    return ckpt


def write(weights: dict[str, np.ndarray], spec: ModelSpec, path: Path) -> None:
    keymap = next((k for k in _registry.KEYMAPS if k.library == LIBRARY and spec.name in k.models and k.writes),
                  None)
    if keymap is None:
        known = sorted({m for k in _registry.KEYMAPS if k.library == LIBRARY and k.writes for m in k.models})
        raise ConversionError(f"{spec.name} has no keras-hub preset in the zoo (--to keras_hub writes: "
                              f"{', '.join(known)}); write another format")
    keras_hub = _keras_hub()
    foreign = keymaps.to_foreign(keymap, weights, spec)
    if spec.family == "vgg":
        backbone = keras_hub.models.VGGBackbone(**vgg_config(spec))
        task = keras_hub.models.VGGImageClassifier(backbone=backbone, num_classes=spec.num_classes, pooling="avg",
                                                   pooling_hidden_dim=spec.ops()["classifier.0"].out_features,
                                                   activation=None)
    else:
        backbone = keras_hub.models.ResNetBackbone(**resnet_config(spec))
        task = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=spec.num_classes,
                                                      activation=None)
    for layer in _leaf_layers(task):
        mine = {k.split(".", 1)[1]: v for k, v in foreign.items() if k.split(".", 1)[0] == layer.name}
        if not mine:
            continue
        if "running_mean" in mine:
            layer.set_weights([mine["weight"], mine["bias"], mine["running_mean"], mine["running_var"]])
        elif mine["weight"].ndim == 4:
            layer.set_weights([mine["weight"].transpose(2, 3, 1, 0), *([mine["bias"]] if "bias" in mine else [])])
        else:
            layer.set_weights([mine["weight"].T, mine["bias"]])
    task.save_to_preset(str(path))


def vgg_config(spec: ModelSpec) -> dict:
    """keras-hub's VGGBackbone arguments for a zoo VGG spec without BatchNorm: the convs between max pools."""
    repeats, filters, convs = [], [], 0
    for layer in spec.layers():
        path, op = layer.path, layer.node
        if not path.startswith("features."):
            continue
        if isinstance(op, BatchNorm):
            raise ConversionError(f"{spec.name}: keras-hub's VGG has no BatchNorm")
        if isinstance(op, Conv):
            convs, width = convs + 1, op.out_channels
        elif isinstance(op, Pool):
            repeats, filters, convs = repeats + [convs], filters + [width], 0
    return {"stackwise_num_repeats": repeats, "stackwise_num_filters": filters,
            "image_shape": (None, None, spec.in_channels)}


def resnet_config(spec: ModelSpec) -> dict:
    """keras-hub's ResNetBackbone arguments for a zoo ResNet spec (torchvision's v1.5)."""
    ops = spec.ops()
    convs = [(p, op) for p, op in ops.items() if isinstance(op, Conv)]
    stages = [sorted({int(p.split(".")[1]) for p, _ in convs if p.startswith(f"layer{s}.")}) for s in range(1, 5)]
    bottleneck = any(p.endswith(".conv3") for p, _ in convs)
    widths = [ops[f"layer{s}.0.conv1"].out_channels for s in range(1, 5)]
    if any(ops.get(f"layer{s}.0.conv2") is None or ops[f"layer{s}.0.conv2"].groups != 1 for s in range(1, 5)):
        raise ConversionError(f"{spec.name}: keras-hub's ResNet has no grouped convolutions (ResNeXt)")
    if bottleneck and any(ops[f"layer{s}.0.conv3"].out_channels != 4 * widths[i] for i, s in enumerate(range(1, 5))):
        raise ConversionError(f"{spec.name}: keras-hub's bottleneck is 4x its width; this one is not (Wide ResNet)")
    return {"input_conv_filters": [ops["conv1"].out_channels], "input_conv_kernel_sizes": [7],
            "stackwise_num_filters": widths, "stackwise_num_blocks": [len(s) for s in stages],
            "stackwise_num_strides": [1, 2, 2, 2], "block_type": "bottleneck_block" if bottleneck else "basic_block",
            "use_pre_activation": False, "image_shape": (None, None, spec.in_channels)}

