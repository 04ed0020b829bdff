"""Bad input gets a clear error that says what was wrong and what to do."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import TINY

import zoo

TINY_NIN = TINY["nin"]


def test_unknown_model(framework):
    known = r"unknown model 'nim'\. Did you mean 'nin'\? Known models: alexnet, "
    with pytest.raises(zoo.UnknownModelError, match=known):
        zoo.load("nim", framework)


def test_unknown_framework():
    with pytest.raises(ValueError, match="unknown framework 'mxnet'; choose one of: torch, flax, keras, onnx"):
        zoo.load("nin", "mxnet")
    with pytest.raises(ValueError, match="unknown framework 'tf'"):
        zoo.summary("nin", framework="tf")


@pytest.mark.parametrize("fw, package", [("torch", "torch"), ("flax", "flax"), ("flax", "jax"), ("keras", "keras")])
def test_framework_not_installed(fw, package, monkeypatch):
    """A missing package is named, with the pip extra that installs it."""
    monkeypatch.setitem(sys.modules, package, None)  # makes `import <package>` fail
    monkeypatch.delitem(sys.modules, zoo.FRAMEWORKS[fw].module, raising=False)
    with pytest.raises(zoo.FrameworkNotInstalled) as e:
        zoo.load("nin", fw)
    msg = str(e.value)
    assert f"framework {fw!r} is not available: {package!r} is not installed" in msg
    assert f"pip install 'multizoo[{fw}]'" in msg


def _nchw_or_nhwc(fw: str, shape_nchw):
    b, c, h, w = shape_nchw
    return np.zeros(shape_nchw if zoo.FRAMEWORKS[fw].layout == "NCHW" else (b, h, w, c), np.float32)


def _call(fw: str, model, x):
    """Call the model the way its framework's users do."""
    if fw == "torch":
        import torch

        return model(torch.from_numpy(x))
    return model(x)


def test_wrong_channel_count(framework):
    model = zoo.load("nin", framework, **TINY_NIN)
    layout = zoo.FRAMEWORKS[framework].layout
    with pytest.raises(ValueError, match=rf"nin expects 1 input channel\(s\) in {layout} layout .* with 3"):
        _call(framework, model, _nchw_or_nhwc(framework, (2, 3, 96, 96)))
    with pytest.raises(ValueError, match="expects 1 input channel"):
        zoo.predict(model, _nchw_or_nhwc(framework, (2, 3, 96, 96)))


def test_too_small_input(framework):
    model = zoo.load("nin", framework, **TINY_NIN)
    with pytest.raises(ValueError, match=r"input 66x80 is too small for nin: the minimum is 67x67"):
        _call(framework, model, _nchw_or_nhwc(framework, (1, 1, 66, 80)))
    with pytest.raises(ValueError, match="the minimum is 67x67"):
        zoo.summary("nin", framework=framework, input_size=40)


def test_invalid_override(framework):
    with pytest.raises(zoo.SpecError, match=r"num_classes must be an int in \[1, 65536\], got 0"):
        zoo.load("nin", framework, num_classes=0)


def test_set_weights_lists_every_problem(framework):
    model = zoo.load("nin", framework, **TINY_NIN)
    before = zoo.get_weights(model)
    w = dict(before)
    del w["blocks.0.conv0.bias"], w["blocks.3.conv2.weight"]
    w["blocks.9.conv0.weight"] = np.zeros(3, np.float32)
    w["blocks.1.conv1.weight"] = np.zeros((16, 16, 3, 3), np.float32)
    w["blocks.2.conv1.bias"] = w["blocks.2.conv1.bias"].astype(np.float64)
    with pytest.raises(zoo.WeightsError) as e:
        zoo.set_weights(model, w)
    msg = str(e.value)
    assert "missing 2 tensor(s): blocks.0.conv0.bias, blocks.3.conv2.weight" in msg
    assert "unexpected 1 tensor(s): blocks.9.conv0.weight" in msg
    assert "blocks.1.conv1.weight: expected shape (16, 16, 1, 1), got (16, 16, 3, 3)" in msg
    assert "blocks.2.conv1.bias: expected float32, got float64" in msg
    after = zoo.get_weights(model)  # nothing was half-loaded
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_not_a_zoo_model():
    with pytest.raises(TypeError, match="is not a zoo model"):
        zoo.get_weights(object())
