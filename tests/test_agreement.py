"""Every preset in every framework against the float64 NumPy reference, from the same canonical weights.

Tiny variants (conftest.TINY: the same architecture with few channels) keep the grid fast;
one full-width model per family runs at its nominal input size.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import FULL_SIZE, SIZES, TINY, keras_backend, random_weights, run, to_device

import zoo
from zoo import reference

MODELS = zoo.list_models()


def test_every_model_has_tiny_variant():
    assert sorted(TINY) == MODELS and sorted(SIZES) == MODELS


@functools.cache
def _tiny(preset: str):
    spec = zoo.get_spec(preset, **TINY[preset])
    return spec, random_weights(spec, seed=len(preset))


def _input(spec, batch: int, size, seed: int = 0) -> np.ndarray:
    size = (size, size) if isinstance(size, int) else tuple(size)
    return np.random.default_rng(seed).standard_normal((batch, spec.in_channels, *size)).astype(np.float32)


def _sizes(spec, preset: str) -> list[int]:
    """conftest.SIZES: the minimum (None) and a larger size of the tiny variant, each checked to fit."""
    sizes = [s or spec.min_input_size for s in SIZES[preset]]
    for s in sizes:
        assert spec.fits((s, s)) is None, f"conftest.SIZES[{preset!r}]: {s}x{s} does not fit: {spec.fits((s, s))}"
    return sizes


@pytest.mark.parametrize("preset", MODELS)
def test_tiny_grid(preset, framework, device, record_error):
    """Batch 1 at the minimum input size, batch 3 at a larger one (batch 2 where only one size fits)."""
    spec, w = _tiny(preset)
    model = to_device(framework, zoo.load(spec, framework), device)
    zoo.set_weights(model, w)
    sizes = _sizes(spec, preset)
    for i, size in enumerate(sizes):
        batch = 2 if len(sizes) == 1 else 1 if i == 0 else 3
        x = _input(spec, batch, size, seed=batch)
        record_error(preset, framework, run(framework, model, x), reference.forward(spec, w, x))


@functools.cache
def _full(preset: str):
    spec = zoo.get_spec(preset)
    w = random_weights(spec, seed=1)
    x = _input(spec, 1, spec.input_size, seed=1)
    return spec, w, x, reference.forward(spec, w, x)


@pytest.mark.parametrize("preset", FULL_SIZE)
def test_full_size(preset, framework, device, record_error):
    """One full-width model per family at its nominal input size."""
    spec, w, x, ref = _full(preset)
    model = to_device(framework, zoo.load(spec, framework), device)
    zoo.set_weights(model, w)
    record_error(f"{preset} (full size)", framework, run(framework, model, x), ref)


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
    if framework == "keras" and keras_backend() != "tensorflow":  # the keras(backend=...) sessions
        pytest.skip("the Keras layers' shapes are Keras' own code, checked under TensorFlow in the tests "
                    "session; this backend's numbers are test_tiny_grid's and test_full_size's (run one by one, "
                    "JAX compiles each layer: about a third of this session's time)")
    spec, w = _tiny(preset)
    model = zoo.load(spec, framework, weights=w)
    size = (_sizes(spec, preset)[-1],) * 2
    x = _input(spec, 2, size)
    mod = zoo._frameworks.adapter(framework)
    nhwc = zoo.FRAMEWORKS[framework].layout == "NHWC"
    got = mod.trace(model, np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc else x)
    expected = spec.layer_shapes(size, batch=2)
    assert [(p, tuple(y.shape)) for p, y in got] == expected  # trace gives NCHW outputs in every framework
    ref_trace = []
    reference.forward(spec, w, x, trace=ref_trace)
    assert [(p, y.shape) for p, y in ref_trace] == expected
    # the last row is the output: the trace runs the same function as predict
    out = run(framework, model, x)
    assert np.abs(got[-1][1] - out).max() <= 1e-5 * max(1.0, float(np.abs(out).max()))


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
