"""Every preset in every framework against the float64 NumPy reference, from the same canonical weights."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from conftest import SIZES, TINY, random_weights, run, to_device

import zoo
from zoo import reference
from zoo.nin import PoolSpec

MODELS = zoo.list_models()


def test_every_model_has_tiny_variant():
    assert sorted(TINY) == MODELS and sorted(SIZES) == MODELS


@functools.cache
def _tiny(preset: str):
    spec = zoo.get_spec(preset, **TINY[preset])
    return spec, random_weights(spec, seed=len(preset))


def _input(spec, batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, spec.in_channels, size, size)).astype(np.float32)


@pytest.mark.parametrize("preset", MODELS)
def test_tiny_grid(preset, framework, device, record_error):
    """Batches 1 and 3 at the minimum, an intermediate and the nominal input size."""
    spec, w = _tiny(preset)
    model = to_device(framework, zoo.load(spec, framework), device)
    zoo.set_weights(model, w)
    for size in (s or spec.min_input_size for s in SIZES[preset]):
        for batch in (1, 3):
            x = _input(spec, batch, size, seed=size + batch)
            record_error(preset, framework, run(framework, model, x), reference.forward(spec, w, x))


@pytest.mark.parametrize("preset", MODELS)
def test_full_size(preset, framework, device, record_error):
    """The real widths, at the nominal input size, batches 1 and 3."""
    spec = zoo.get_spec(preset)
    w = random_weights(spec, seed=1)
    model = to_device(framework, zoo.load(spec, framework), device)
    zoo.set_weights(model, w)
    for batch in (1, 3):
        x = _input(spec, batch, spec.input_size[0], seed=batch)
        record_error(preset, framework, run(framework, model, x), reference.forward(spec, w, x))


PADDED_POOLS = [PoolSpec("max", 3, 2, 1), PoolSpec("avg", 3, 2, 1, count_include_pad=True),
                PoolSpec("avg", 3, 2, 1, count_include_pad=False), PoolSpec("avg", 2, 1, 1, False)]


@pytest.mark.parametrize("pool", PADDED_POOLS, ids=lambda p: f"{p.kind}{p.size}s{p.stride}p{p.padding}"
                         f"{'incl' if p.count_include_pad else 'excl'}")
def test_padded_pooling(pool, framework, device, record_error):
    """Padded pools, where max pooling's -inf and average pooling's divisor matter."""
    spec, w = _tiny("nin_cifar10")
    stages = tuple(dataclasses.replace(s, pool=pool) if s.pool else s for s in spec.stages)
    spec = dataclasses.replace(spec, stages=stages)
    model = to_device(framework, zoo.load(spec, framework), device)
    zoo.set_weights(model, w)
    for size in (spec.min_input_size, 13):
        x = _input(spec, 2, size, seed=size) - 2.0  # mostly negative, so padding would win a max
        record_error("padded_pools", framework, run(framework, model, x), reference.forward(spec, w, x))


def test_same_seed_same_model(framework, device, record_error):
    """zoo.load with one seed gives the same parameters, hence outputs, in every framework."""
    spec = zoo.get_spec("nin", **TINY["nin"])
    model = to_device(framework, zoo.load("nin", framework, seed=7, **TINY["nin"]), device)
    expected = zoo.init_weights(spec, 7)
    got = zoo.get_weights(model)
    assert list(got) == list(expected)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    x = _input(spec, 2, 80)
    record_error("seeded_load", framework, run(framework, model, x), reference.forward(spec, expected, x))
    other = zoo.get_weights(zoo.load("nin", framework, seed=8, **TINY["nin"]))
    assert not np.array_equal(other["blocks.0.conv0.weight"], expected["blocks.0.conv0.weight"])


@pytest.mark.parametrize("preset", MODELS)
def test_weights_round_trip_exact(preset, framework):
    spec, w = _tiny(preset)
    model = zoo.load(spec, framework)
    zoo.set_weights(model, w)
    got = zoo.get_weights(model)
    assert list(got) == list(spec.param_shapes())
    for k in w:
        assert got[k].dtype == np.float32, k
        np.testing.assert_array_equal(got[k], w[k], err_msg=k)
    first = next(iter(got))
    got[first][...] = 0  # a copy: changing it leaves the model alone
    np.testing.assert_array_equal(zoo.get_weights(model)[first], w[first])


@pytest.mark.parametrize("preset", MODELS)
def test_layer_shapes_match_spec(preset, framework):
    """The framework's layers, run one by one, give the shapes the spec predicts (the summary's rows)."""
    spec, _ = _tiny(preset)
    model = zoo.load(spec, framework)
    size = SIZES[preset][1]
    mod = zoo._frameworks.adapter(framework)
    nhwc = zoo.FRAMEWORKS[framework].layout == "NHWC"
    got = mod.trace(model, np.zeros((2, size, size, spec.in_channels) if nhwc else (2, spec.in_channels, size, size),
                                    np.float32))
    expected = spec.layer_shapes((size, size), batch=2)
    if nhwc:
        expected = [(n, s if len(s) == 2 else (s[0], s[2], s[3], s[1])) for n, s in expected]
    assert got == expected
    ref_trace = []
    reference.forward(spec, zoo.init_weights(spec), np.zeros((2, spec.in_channels, size, size)), trace=ref_trace)
    assert ref_trace == spec.layer_shapes((size, size), batch=2)


def test_summary_rows_agree(framework, capsys):
    table = zoo.summary("nin", framework=framework, input_size=224)
    assert table in capsys.readouterr().out
    spec_rows = zoo.summary("nin", print_fn=lambda _: None).splitlines()
    rows = table.splitlines()
    assert len(rows) == len(spec_rows) == len(zoo.get_spec("nin").layers()) + 4
    # the post's shapes, in this framework's layout
    nchw = {"pools.0": (1, 96, 26, 26), "pools.1": (1, 256, 12, 12), "pools.2": (1, 384, 5, 5),
            "blocks.3.conv2": (1, 10, 5, 5), "global_pool": (1, 10, 1, 1), "flatten": (1, 10)}
    for name, s in nchw.items():
        if zoo.FRAMEWORKS[framework].layout == "NHWC" and len(s) == 4:
            s = (s[0], s[2], s[3], s[1])
        assert any(r.split()[0] == name and str(s) in r for r in rows), name
    assert "Total params: 1,992,166" in table
