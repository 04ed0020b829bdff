"""keras-hub presets (`save_to_preset` folders) read into every framework and written, against keras-hub's own
forward. keras-hub is a test dependency only, installed without its dependencies (`pip install --no-deps
keras-hub regex tokenizers`: noxfile.py), since tensorflow-text, which it requires, is not needed to build its
vision models. Models have random weights and perturbed BatchNorm statistics (nothing can be downloaded).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import random_weights, run

import zoo
from zoo import conversion, reference
from zoo.io import io_safetensors

pytestmark = pytest.mark.keras
if importlib.util.find_spec("keras_hub") is None:  # nox installs it (noxfile.py: KERAS_HUB)
    pytest.skip("keras-hub is not installed (pip install --no-deps keras-hub regex tokenizers)",
                allow_module_level=True)
keras_hub = pytest.importorskip("keras_hub")
keras = pytest.importorskip("keras")

RESNET18 = dict(input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
                stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
                use_pre_activation=False)


def _perturbed(model, seed: int = 0):
    """BatchNorm statistics off 0 and 1, scales in [0.5, 1] (as tests/test_timm.py perturbs timm's)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.0, n), rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n),
                               rng.uniform(0.5, 1.5, n)])
    return model


def _classifier(tmp_path, name: str, **backbone):
    keras.utils.set_random_seed(0)
    bb = _perturbed(keras_hub.models.ResNetBackbone(**{**RESNET18, **backbone}, image_shape=(None, None, 3)))
    task = keras_hub.models.ResNetImageClassifier(backbone=bb, num_classes=10, activation=None)
    task.save_to_preset(str(tmp_path / name))
    return task, tmp_path / name


@pytest.fixture(scope="module")
def resnet18_preset(tmp_path_factory):
    task, folder = _classifier(tmp_path_factory.mktemp("kh"), "resnet18")
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    return folder, x, np.asarray(task.predict(x.transpose(0, 2, 3, 1), verbose=0), np.float64)


def test_a_keras_hub_resnet_preset_agrees_in_every_framework(resnet18_preset, framework, record_error):
    folder, x, ref = resnet18_preset
    record_error("keras-hub preset:resnet18", framework, run(framework, zoo.load("resnet18", framework,
                                                                                  weights=folder), x), ref)


def test_what_the_read_says(resnet18_preset):
    folder, _, _ = resnet18_preset
    ckpt = conversion.read(folder)
    assert ckpt.format == "keras_hub" and ckpt.weights["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert ckpt.notes[0] == "keras-hub preset: ResNetBackbone with its ResNetImageClassifier (keras-hub's layer names)"
    assert "fits: resnet18 (family resnet)" in conversion.inspect(folder)


def test_a_keras_hub_bottleneck_resnet_is_resnet50(tmp_path):
    """The bottleneck's stride on its 3x3 (ResNet v1.5, as torchvision): the same network as the zoo's."""
    task, folder = _classifier(tmp_path, "r50", block_type="bottleneck_block", stackwise_num_blocks=[3, 4, 6, 3])
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    ref = np.asarray(task.predict(x.transpose(0, 2, 3, 1), verbose=0), np.float64)
    spec, weights, _ = conversion.load(folder)
    assert spec.name == "resnet50" and spec.num_classes == 10
    err = float(np.abs(reference.forward(spec, weights, x) - ref).max())
    assert err <= 1e-5 * max(1.0, float(np.abs(ref).max())), err


def test_zoo_weights_written_as_a_preset_are_what_keras_hub_computes(tmp_path):
    spec = zoo.get_spec("resnet18", num_classes=10)
    weights = random_weights(spec, 0)
    io_safetensors.write(weights, spec, tmp_path / "r18.safetensors")
    report = conversion.convert(tmp_path / "r18.safetensors", tmp_path / "preset", dst_format="keras_hub")
    assert report.dst_format == "keras_hub" and report.max_rel <= 1e-5  # verified: read back through keras-hub, run
    task = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "preset"))
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    out = np.asarray(task.predict(x.transpose(0, 2, 3, 1), verbose=0), np.float64)
    ref = reference.forward(spec, weights, x)
    assert float(np.abs(out - ref).max()) <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_another_network_is_refused_saying_what_differs(tmp_path):
    _, folder = _classifier(tmp_path, "v2", use_pre_activation=True)
    with pytest.raises(conversion.ConversionError, match=r"keras-hub's ResNet here is not torchvision's: "
                                                         r"use_pre_activation=True \(ResNetV2"):
        zoo.load("resnet18", "torch", weights=folder)


def test_only_the_classes_the_zoo_reads_are_deserialized(resnet18_preset, tmp_path):
    folder, _, _ = resnet18_preset
    other = tmp_path / "other"
    other.mkdir()
    for p in folder.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "module": "keras_hub.src.models.bert.bert_backbone",
                                                   "class_name": "BertBackbone"}))
    with pytest.raises(conversion.ConversionError, match=r"names keras_hub.src.models.bert.bert_backbone.BertBackbone; "
                                                         r"the zoo reads keras-hub's ResNetBackbone"):
        conversion.read(other)
    (other / "config.json").write_text(json.dumps({**config, "class_name": "DenseNetBackbone"}))
    with pytest.raises(conversion.ConversionError, match="its stem convolution pads 'same'"):
        conversion.read(other)
    (other / "config.json").write_text(json.dumps(config))
    task = json.loads((other / "task.json").read_text())
    task["config"]["preprocessor"] = {"module": "os", "class_name": "system", "config": {"command": "true"}}
    (other / "task.json").write_text(json.dumps(task))
    with pytest.raises(conversion.ConversionError, match="names the module 'os' inside; a keras-hub resnet preset "
                                                         "names only keras and keras_hub.src.models.resnet"):
        conversion.read(other)


def test_a_backbone_alone_says_it_lacks_the_head(tmp_path):
    keras.utils.set_random_seed(0)
    keras_hub.models.ResNetBackbone(**RESNET18, image_shape=(None, None, 3)).save_to_preset(str(tmp_path / "bb"))
    with pytest.raises(conversion.ConversionError, match="a keras-hub backbone has no classifier head"):
        zoo.load("resnet18", "torch", weights=tmp_path / "bb")


def _vgg11(tmp_path, name: str = "vgg11", image_shape=(None, None, 3), **task):
    """keras-hub's VGG-11 at a sixteenth of its conv widths, a 32-wide head, 10 classes."""
    keras.utils.set_random_seed(0)
    bb = keras_hub.models.VGGBackbone(stackwise_num_repeats=[1, 1, 2, 2, 2], stackwise_num_filters=[4, 8, 16, 32, 32],
                                      image_shape=image_shape)
    model = keras_hub.models.VGGImageClassifier(backbone=bb, num_classes=10, activation=None,
                                                **{"pooling": "avg", "pooling_hidden_dim": 32, **task})
    model.save_to_preset(str(tmp_path / name))
    return model, tmp_path / name


@pytest.fixture(scope="module")
def vgg11_preset(tmp_path_factory):
    task, folder = _vgg11(tmp_path_factory.mktemp("kh"))
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)  # 224: the 7x7 map
    return folder, x, np.asarray(task.predict(x.transpose(0, 2, 3, 1), verbose=0), np.float64)


def test_a_keras_hub_vgg_preset_agrees_in_every_framework(vgg11_preset, framework, record_error):
    """Its head of convolutions (fc1 7x7, fc2 1x1, as timm's) read as torchvision's classifier, exact at 224."""
    folder, x, ref = vgg11_preset
    record_error("keras-hub preset:vgg11", framework, run(framework, zoo.load("vgg11", framework, weights=folder), x),
                 ref)


def test_a_keras_hub_vgg_read_says_its_head_is_reshaped(vgg11_preset):
    folder, _, _ = vgg11_preset
    ckpt = conversion.read(folder)
    assert ckpt.weights["classifier.0.weight"].shape == (32, 32 * 7 * 7)
    assert ckpt.weights["features.18.weight"].shape == (32, 32, 3, 3)  # block5_conv2: torchvision's numbering
    said = "\n".join(ckpt.notes)
    assert "the same network at 224x224 input only" in said and "fc1.weight [32, 32, 7, 7] -> [32, 1568]" in said


def test_zoo_vgg_weights_written_as_a_preset_are_what_keras_hub_computes(vgg11_preset, tmp_path):
    folder, x, _ = vgg11_preset
    spec, _, _ = conversion.load(folder)  # the tiny VGG-11, from the preset's shapes
    weights = random_weights(spec, 0)
    io_safetensors.write(weights, spec, tmp_path / "vgg.safetensors")
    report = conversion.convert(tmp_path / "vgg.safetensors", tmp_path / "preset", dst_format="keras_hub")
    assert report.max_rel <= 1e-5
    task = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "preset"))
    out = np.asarray(task.predict(x.transpose(0, 2, 3, 1), verbose=0), np.float64)
    ref = reference.forward(spec, weights, x)
    assert float(np.abs(out - ref).max()) <= 1e-5 * max(1.0, float(np.abs(ref).max()))
    with pytest.raises(conversion.ConversionError, match="vgg11_bn has no keras-hub preset"):
        bn = zoo.get_spec("vgg11_bn", ratio=16, hidden=32, num_classes=10)
        io_safetensors.write(random_weights(bn, 0), bn, tmp_path / "bn.safetensors")
        conversion.convert(tmp_path / "bn.safetensors", tmp_path / "bn", dst_format="keras_hub")


def test_a_keras_hub_vgg_flatten_head_is_refused_saying_why(tmp_path):
    _, folder = _vgg11(tmp_path, "flat", image_shape=(224, 224, 3), pooling="flatten")  # a fixed size: its Dense
    with pytest.raises(conversion.ConversionError, match=r"pooling 'flatten'.*orders its dense inputs \(H, W, C\)"):
        zoo.load("vgg11", "torch", weights=folder)
