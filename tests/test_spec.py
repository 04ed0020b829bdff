"""The spec and the registry, with no framework: presets, derived shapes, overrides, serialisation."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo import reference
from zoo.nin import ConvSpec, NiNSpec, PoolSpec


def test_import_zoo_imports_no_framework():
    code = "import sys, zoo; zoo.get_spec('nin'); zoo.summary('nin'); " \
           "print(sorted(m for m in ('torch', 'jax', 'flax', 'tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_registry():
    assert zoo.list_models() == ["nin", "nin_cifar10", "nin_imagenet"]
    assert zoo.list_models("nin_*") == ["nin_cifar10", "nin_imagenet"]
    assert zoo.list_models("resnet*") == []


def test_nin_matches_the_seed_post():
    """The d2l NiN: its parameter count and every stage's output shape at 224x224."""
    spec = zoo.get_spec("nin")
    assert (spec.in_channels, spec.num_classes, spec.input_size) == (1, 10, (224, 224))
    shapes = dict(spec.layer_shapes((224, 224), batch=4))
    assert shapes["blocks.0.relu2"] == (4, 96, 54, 54)
    assert shapes["pools.0"] == (4, 96, 26, 26)
    assert shapes["blocks.1.relu2"] == (4, 256, 26, 26)
    assert shapes["pools.1"] == (4, 256, 12, 12)
    assert shapes["blocks.2.relu2"] == (4, 384, 12, 12)
    assert shapes["pools.2"] == (4, 384, 5, 5)
    assert shapes["dropouts.2"] == (4, 384, 5, 5)
    assert shapes["blocks.3.relu2"] == (4, 10, 5, 5)
    assert shapes["global_pool"] == (4, 10, 1, 1)
    assert shapes["flatten"] == (4, 10)
    assert spec.num_params == 1_992_166  # as torch's sum(p.numel()) for the post's class
    assert spec.min_input_size == 67


def test_other_presets():
    c = zoo.get_spec("nin_cifar10")
    assert [s.block.widths for s in c.stages] == [(192, 160, 96), (192, 192, 192), (192, 192, 10)]
    assert [s.block.kernel_size for s in c.stages] == [5, 5, 3]
    assert [s.pool and s.pool.kind for s in c.stages] == ["max", "avg", None]
    assert [s.dropout for s in c.stages] == [0.5, 0.5, 0.0]
    assert c.stages[1].pool.count_include_pad is True
    assert dict(c.layer_shapes((32, 32)))["blocks.2.relu2"] == (1, 10, 7, 7)
    i = zoo.get_spec("nin_imagenet")
    assert (i.in_channels, i.num_classes) == (3, 1000)
    assert i.stages[-1].block.widths == (1024, 1024, 1000)
    assert zoo.get_spec("nin_imagenet", num_classes=5).stages[-1].block.widths == (1024, 1024, 5)


def test_overrides():
    spec = zoo.get_spec("nin", num_classes=100, in_channels=3, widths=(8, 16, 32), input_size=96)
    assert spec.stages[-1].block.widths == (100, 100, 100)
    assert spec.param_shapes()["blocks.0.conv0.weight"] == (8, 3, 11, 11)
    assert spec.input_size == (96, 96)
    assert dataclasses.is_dataclass(spec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 3


@pytest.mark.parametrize("overrides, message", [
    (dict(num_classes=0), "num_classes must be an int >= 1"),
    (dict(num_classes=2.5), "num_classes must be an int >= 1"),
    (dict(in_channels=-1), "in_channels must be an int >= 1"),
    (dict(widths=(8, 8)), "widths must be a sequence of 3"),
    (dict(widths=(8, 0, 8)), "each an int >= 1"),
    (dict(dropout=1.0), "dropout must be a float in [0, 1)"),
    (dict(input_size=32), "below this spec's minimum of 67x67"),
])
def test_invalid_override(overrides, message):
    with pytest.raises(zoo.SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        zoo.get_spec("nin", **overrides)


def test_unknown_override_lists_accepted():
    with pytest.raises(TypeError, match="nin takes no override 'classes'; it accepts: in_channels, num_classes"):
        zoo.get_spec("nin", classes=3)


def test_unknown_model_lists_known_and_closest():
    with pytest.raises(zoo.UnknownModelError) as e:
        zoo.get_spec("nin_cifar")
    assert "Did you mean 'nin_cifar10'?" in str(e.value)
    assert "Known models: nin, nin_cifar10, nin_imagenet" in str(e.value)


def test_bad_pool_and_last_width():
    with pytest.raises(zoo.SpecError, match="pool kind"):
        PoolSpec("median")
    with pytest.raises(zoo.SpecError, match=r"padding must be an int in \[0, size // 2\]"):
        PoolSpec("max", 3, 2, padding=2)
    spec = zoo.get_spec("nin")
    with pytest.raises(zoo.SpecError, match=r"last block's last width \(10\) must equal num_classes \(11\)"):
        dataclasses.replace(spec, num_classes=11)


def test_json_round_trip():
    for name in zoo.list_models():
        spec = zoo.get_spec(name)
        assert NiNSpec.from_dict(__import__("json").loads(spec.to_json())) == spec
    with pytest.raises(zoo.SpecError, match="not a NiNSpec dictionary"):
        NiNSpec.from_dict({"name": "nin"})


@pytest.mark.parametrize("shape, message", [
    ((2, 3, 224, 224), "expects 1 input channel"),
    ((2, 1, 66, 224), "the minimum is 67x67"),
    ((1, 224, 224), "expects a 4-D NCHW input"),
])
def test_check_input(shape, message):
    with pytest.raises(ValueError, match=message):
        zoo.get_spec("nin").check_input(shape, "NCHW")


@pytest.mark.parametrize("name", zoo.list_models())
def test_min_input_size_is_tight(name):
    spec = zoo.get_spec(name)
    m = spec.min_input_size
    spec.layer_shapes((m, m))
    with pytest.raises(zoo.SpecError, match="too small"):
        spec.layer_shapes((m - 1, m - 1))


def test_init_weights_deterministic_and_he_scaled():
    spec = zoo.get_spec("nin")
    a, b = zoo.init_weights(spec, 0), zoo.init_weights(spec, 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert list(a) == list(spec.param_shapes())
    assert all(v.dtype == np.float32 for v in a.values())
    w = a["blocks.1.conv0.weight"]  # fan_in 96 * 5 * 5
    assert abs(w.std() - np.sqrt(2 / 2400)) < 0.02 * np.sqrt(2 / 2400)
    assert not np.array_equal(a["blocks.0.conv0.weight"], zoo.init_weights(spec, 1)["blocks.0.conv0.weight"])


def test_reference_conv_and_pools_by_hand():
    """The reference's building blocks against direct loops, on a small case."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    conv = ConvSpec(3, 4, 3, stride=2, padding=1)
    w, b = rng.standard_normal(conv.weight_shape), rng.standard_normal(4)
    got = reference.conv2d(x, w, b, conv)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((2, 4, 4, 3))
    for i in range(4):
        for j in range(3):
            patch = xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            want[:, :, i, j] = np.einsum("bchw,ochw->bo", patch, w) + b
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # corner window of a padded 3x3/2 pool covers 4 real pixels out of 9
    y = np.arange(16.0).reshape(1, 1, 4, 4) - 20
    corner = y[0, 0, :2, :2]
    assert reference.pool2d(y, PoolSpec("max", 3, 2, 1))[0, 0, 0, 0] == corner.max()
    assert reference.pool2d(y, PoolSpec("avg", 3, 2, 1, True))[0, 0, 0, 0] == corner.sum() / 9
    assert reference.pool2d(y, PoolSpec("avg", 3, 2, 1, False))[0, 0, 0, 0] == corner.sum() / 4
