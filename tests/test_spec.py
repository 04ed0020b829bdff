"""The spec and the registry, with no framework: presets, derived shapes, overrides, serialisation."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo import reference
from zoo.spec import MAX_NODES, MAX_SPEC_CHARS, Act, AdaptivePool, Conv, Flatten, Linear, ModelSpec, Parallel, Pool, Seq


def test_import_zoo_imports_no_framework():
    code = "import sys, zoo; zoo.get_spec('nin'); zoo.summary('nin'); " \
           "print(sorted(m for m in ('torch', 'jax', 'flax', 'tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_registry():
    models = zoo.list_models()
    assert {"nin", "nin_cifar10", "nin_imagenet"} <= set(models) and models == sorted(models)
    assert zoo.list_models("nin_*") == ["nin_cifar10", "nin_imagenet"]
    assert zoo.list_models("no_such*") == []


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


def _convs(spec):
    return {p: op for p, op in spec.ops().items() if isinstance(op, Conv)}


def test_other_presets():
    c = zoo.get_spec("nin_cifar10")
    convs = _convs(c)
    assert [convs[f"blocks.{b}.conv{j}"].out_channels for b in range(3) for j in range(3)] == \
        [192, 160, 96, 192, 192, 192, 192, 192, 10]
    assert [convs[f"blocks.{b}.conv0"].kernel_size for b in range(3)] == [(5, 5), (5, 5), (3, 3)]
    pools = {layer.path: layer.node for layer in c.layers() if isinstance(layer.node, Pool)}
    assert [p.kind for p in pools.values()] == ["max", "avg"] and pools["pools.1"].count_include_pad is True
    assert [layer.node.rate for layer in c.layers() if layer.path.startswith("dropouts")] == [0.5, 0.5]
    assert dict(c.layer_shapes((32, 32)))["blocks.2.relu2"] == (1, 10, 7, 7)
    i = zoo.get_spec("nin_imagenet")
    assert (i.in_channels, i.num_classes) == (3, 1000)
    assert [_convs(i)[f"blocks.3.conv{j}"].out_channels for j in range(3)] == [1024, 1024, 1000]
    assert _convs(zoo.get_spec("nin_imagenet", num_classes=5))["blocks.3.conv2"].out_channels == 5


def test_overrides():
    spec = zoo.get_spec("nin", num_classes=100, in_channels=3, widths=(8, 16, 32), input_size=96)
    assert spec.param_shapes()["blocks.3.conv2.weight"] == (100, 100, 1, 1)
    assert spec.param_shapes()["blocks.0.conv0.weight"] == (8, 3, 11, 11)
    assert spec.input_size == (96, 96)
    assert dataclasses.is_dataclass(spec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 3


@pytest.mark.parametrize("overrides, message", [
    (dict(num_classes=0), "num_classes must be an int in [1, 65536]"),
    (dict(num_classes=2.5), "num_classes must be an int in [1, 65536]"),
    (dict(in_channels=-1), "in_channels must be an int in [1, 65536]"),
    (dict(widths=(8, 8)), "widths must be a sequence of 3"),
    (dict(widths=(8, 0, 8)), "conv channels must be ints in [1, 65536]"),
    (dict(dropout=1.0), "dropout must be a float in [0, 1)"),
    (dict(input_size=32), "the input vanishes"),
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
    assert "Known models: " in str(e.value) and "nin_imagenet" in str(e.value)


def test_bad_pool_and_last_width():
    with pytest.raises(zoo.SpecError, match="pool kind"):
        Pool("median")
    with pytest.raises(zoo.SpecError, match=r"pool padding must be at most half the window"):
        Pool("max", 3, 2, padding=2)
    spec = zoo.get_spec("nin")
    with pytest.raises(zoo.SpecError, match=r"gives shape \(10,\) per image, not \(11,\)"):
        dataclasses.replace(spec, num_classes=11)


@pytest.mark.parametrize("name", zoo.list_models())
def test_json_round_trip(name):
    spec = zoo.get_spec(name)
    back = ModelSpec.from_json(spec.to_json())
    assert back == spec and back.param_shapes() == spec.param_shapes() and hash(back) == hash(spec)


def test_json_damage_is_a_spec_error():
    with pytest.raises(zoo.SpecError, match="not a spec dictionary"):
        ModelSpec.from_dict({"name": "nin", "body": {"seq": []}})
    with pytest.raises(zoo.SpecError, match="unknown layer op 'Eval'"):
        ModelSpec.from_dict({**zoo.get_spec("nin").to_dict(), "body": {"seq": [["x", {"op": "Eval"}]]}})
    deep = {"seq": []}
    for _ in range(100):
        deep = {"seq": [["a", deep]]}
    with pytest.raises(zoo.SpecError, match="too large"):
        ModelSpec.from_dict({**zoo.get_spec("nin").to_dict(), "body": deep})
    wide = {"seq": [[str(i), {"op": "Dropout", "rate": 0.0}] for i in range(6000)]}
    with pytest.raises(zoo.SpecError, match="too large"):
        ModelSpec.from_dict({**zoo.get_spec("nin").to_dict(), "body": wide})
    with pytest.raises(zoo.SpecError, match="Conv has no field"):
        ModelSpec.from_dict({**zoo.get_spec("nin").to_dict(), "body": {"seq": [["c", {"op": "Conv", "evil": 1}]]}})


def _spec(*children) -> ModelSpec:
    """`children`, then a pool to 1 x 1 and a linear layer to 10 classes, on 1-channel 8 x 8 images."""
    body = Seq(*children, ("pool", AdaptivePool(1)), ("flat", Flatten()), ("fc", Linear(1, 10)))
    return ModelSpec(name="t", family="t", in_channels=1, num_classes=10, body=body, input_size=8)


def test_layer_paths_are_unique_and_none_prefixes_another():
    relu = Act("relu")
    with pytest.raises(zoo.SpecError, match="layer paths must be unique; repeated: a$"):
        _spec(("a", relu), ("a", relu))
    with pytest.raises(zoo.SpecError, match=r"may not also prefix other layers' paths: a, a\.b$"):
        _spec(("a", relu), ("a", Seq(("b", relu), ("c", Seq(("d", relu))))), ("a.b.c", Seq(("e", relu))))
    _spec(("a", relu), ("ab", relu), ("a_b", relu), ("a0", Seq(("b", relu))), ("b", Seq(("a", relu))))


def _wide(branches: int) -> ModelSpec:
    par = Parallel("concat", *[(f"branch{i}", Seq(("conv", Conv(1, 1, 1)))) for i in range(branches)])
    body = Seq(("par", par), ("pool", AdaptivePool(1)), ("flat", Flatten()), ("fc", Linear(branches, 10)))
    return ModelSpec(name="wide", family="wide", in_channels=1, num_classes=10, body=body, input_size=8)


def test_json_limit_admits_every_tree_the_node_limit_does():
    """The widest tree of about MAX_NODES nodes reads back from its JSON; a longer text is refused by its length."""
    spec = _wide((MAX_NODES - 5) // 2)  # a Seq and a conv per branch
    text = spec.to_json()
    assert len(text) < MAX_SPEC_CHARS / 2 and ModelSpec.from_json(text) == spec
    with pytest.raises(zoo.SpecError, match="^the spec is not a JSON string of at most 1,000,000 characters$"):
        ModelSpec.from_json(" " * (MAX_SPEC_CHARS + 1))


def test_docs_state_the_spec_json_limit():
    """README.md said at most 100,000 characters while the code allowed 1,000,000 (MAX_SPEC_CHARS)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]
    stated = [(p.name, m) for p in pages if p.is_file()
              for m in re.findall(r"JSON of at most\s+([\d,]+)\s+characters", p.read_text())]
    assert stated and all(int(m.replace(",", "")) == MAX_SPEC_CHARS for _, m in stated), stated


def test_v1_json_still_reads():
    """The JSON that multizoo 0.1 wrote into weight files (a NiNSpec) reads as the same NiN."""
    v1 = {"in_channels": 1, "input_size": [75, 75], "name": "nin", "num_classes": 10, "stages": [
        {"block": {"kernel_size": k, "padding": p, "stride": s, "widths": [w] * 3}, "dropout": d,
         "pool": pool and {"count_include_pad": True, "kind": "max", "padding": 0, "size": 3, "stride": 2}}
        for k, p, s, w, d, pool in [(11, 0, 4, 96, 0.0, 1), (5, 2, 1, 256, 0.0, 1), (3, 1, 1, 384, 0.5, 1),
                                    (3, 1, 1, 10, 0.0, None)]]}
    assert ModelSpec.from_dict(v1) == zoo.get_spec("nin", input_size=75)


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
    if m > 1:
        with pytest.raises(zoo.SpecError, match="vanishes|features"):
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
    conv = Conv(3, 4, 3, stride=2, padding=1)
    w, b = rng.standard_normal(conv.params()["weight"]), rng.standard_normal(4)
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
    assert reference.pool2d(y, Pool("max", 3, 2, 1))[0, 0, 0, 0] == corner.max()
    assert reference.pool2d(y, Pool("avg", 3, 2, 1, count_include_pad=True))[0, 0, 0, 0] == corner.sum() / 9
    assert reference.pool2d(y, Pool("avg", 3, 2, 1, count_include_pad=False))[0, 0, 0, 0] == corner.sum() / 4


def test_reference_ceil_mode_and_adaptive_pool_by_hand():
    """ceil_mode adds a last window that hangs over the bottom/right edge (PyTorch: only if it starts
    inside the input or the left padding); its extra cells never count in an average's divisor."""
    y = np.arange(25.0).reshape(1, 1, 5, 5)
    p = Pool("max", 2, 2, 0, ceil_mode=True)
    assert p.out_len(5, 0) == 3 and Pool("max", 2, 2, 0).out_len(5, 0) == 2
    np.testing.assert_array_equal(reference.pool2d(y, p)[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    a = reference.pool2d(y, Pool("avg", 2, 2, 0, ceil_mode=True))[0, 0]
    assert a[2, 2] == 24 and a[0, 2] == (4 + 9) / 2  # the overhanging windows average what they cover
    # size 2, stride 2, padding 1 on 5 cells: ceil gives 4 windows, but the 4th would start at padded
    # index 6 = n + p, in the right padding, so PyTorch drops it
    assert Pool("max", 2, 2, 1, ceil_mode=True).out_len(5, 0) == 3
    bins = reference.adaptive_pool2d(np.arange(7.0).reshape(1, 1, 1, 7), AdaptivePool((1, 3)))[0, 0, 0]
    np.testing.assert_allclose(bins, [np.mean([0, 1, 2]), np.mean([2, 3, 4]), np.mean([4, 5, 6])])


@pytest.mark.torch
def test_pool_sizes_equal_torch_for_every_small_case():
    """Pool.out_len against PyTorch itself, the definition, over every small size, window, stride and padding."""
    import torch

    checked = 0
    for k in range(1, 5):
        for st in range(1, 4):
            for p in range(0, k // 2 + 1):
                for n in range(1, 12):
                    for ceil in (False, True):
                        if n + 2 * p < k:
                            continue
                        got = Pool("max", k, st, p, ceil_mode=ceil).out_len(n, 0)
                        want = torch.nn.functional.max_pool2d(torch.zeros(1, 1, n, 1), (k, 1), (st, 1), (p, 0),
                                                              ceil_mode=ceil).shape[2]
                        assert got == want, (k, st, p, n, ceil)
                        checked += 1
    assert checked == 486
