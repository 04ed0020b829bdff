"""The Flax NNX backend against the float64 reference: every op in inference and in training mode,
canonical weights, traces and Orbax files. `pytest -s` prints the worst errors."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.flax
pytest.importorskip("flax", reason="flax: flax not installed (pip install '.[flax]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from op_specs import every_op, flatten_spec  # noqa: E402
from op_specs import revealing_weights as weights_for  # noqa: E402

import zoo  # noqa: E402
from zoo import reference  # noqa: E402
from zoo.frameworks import flax_model  # noqa: E402
from zoo.io.checkpoint import digest  # noqa: E402
from zoo.spec import AdaptivePool, BatchNorm, Dropout, Pool, nchw_to_nhwc_columns  # noqa: E402

# name -> (spec, input (H, W), batch)
CASES = {
    "every_op": (every_op(), (23, 17), 3),
    "flatten": (flatten_spec(), (11, 7), 2),
    "nin": (zoo.get_spec("nin", widths=(8, 16, 16)), (96, 96), 2),
}


def _case(name: str, seed: int = 0, kind: str = "testing"):
    """(spec, weights, NCHW input). 'testing' weights show BatchNorm mistakes, but in eval mode they blow every_op's
    activations up to 1e4-1e6, which saturates its last sigmoid: its logits are then the same for every input,
    and only the layer by layer comparison (the trace) sees the layers before. 'init' weights keep them near 1."""
    spec, size, batch = CASES[name]
    weights = weights_for(spec, seed) if kind == "testing" else spec.init_weights(seed)
    x = np.random.default_rng(seed + 1).standard_normal((batch, spec.in_channels, *size)).astype(np.float32)
    return spec, weights, x


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _error(got, ref) -> tuple[float, float]:
    """(worst absolute error, the tolerance: 1e-5 of the reference's scale, at least 1e-5)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max()), 1e-5 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("kind", ["testing", "init"])
@pytest.mark.parametrize("name", CASES)
def test_inference_agrees_with_reference(name, kind):
    spec, weights, x = _case(name, kind=kind)
    model = flax_model.build(spec, weights)
    ref = reference.forward(spec, weights, x)
    err, tol = _error(flax_model.predict(model, _nhwc(x)), ref)
    eager, _ = _error(model(jnp.asarray(_nhwc(x))), ref)  # the same module, not jitted
    print(f"\n{name} eval ({kind} weights): worst error {err:.2e} (jit), {eager:.2e} (eager); tolerance {tol:.1e}")
    assert err <= tol and eager <= tol


@pytest.mark.parametrize("name", CASES)
def test_train_forward_agrees_with_reference(name):
    """Batch statistics normalise; the running ones move as PyTorch's do; the model is left in eval mode."""
    spec, weights, x = _case(name)
    model = flax_model.build(spec, weights)
    updates = {}
    ref = reference.forward(spec, weights, x, train=True, updates=updates)
    err, tol = _error(flax_model.train_forward(model, _nhwc(x)), ref)
    new = flax_model.get_weights(model)
    stats = [(k, *_error(new[k], v)) for k, v in updates.items()]
    worst = max(stats, key=lambda s: s[1] / s[2], default=("-", 0.0, 1.0))
    print(f"\n{name} train: logits {err:.2e} (tolerance {tol:.1e}); running statistics worst {worst[1]:.2e} "
          f"({worst[0]}) of {len(stats)}")
    assert err <= tol
    assert all(e <= t for _, e, t in stats), stats
    assert set(updates) == spec.buffer_names()
    assert all(np.array_equal(new[k], weights[k]) for k in new if k not in updates)  # parameters untouched
    if updates:
        assert any(not np.allclose(new[k], weights[k], atol=1e-3) for k in updates)  # the statistics did move
    # eval mode again, on the new statistics
    after = reference.forward(spec, {**weights, **updates}, x)
    err, tol = _error(flax_model.predict(model, _nhwc(x)), after)
    assert err <= tol, err
    for layer in spec.layers():
        if isinstance(layer.node, (BatchNorm, Dropout)):
            module = model.layer(layer.path)
            assert getattr(module, "use_running_average", None) or module.deterministic, layer.path


def _worst_layer(model, spec, weights, x) -> tuple[str, float]:
    """The layer whose output is furthest from the reference's, and its error in units of the tolerance."""
    ref = []
    reference.forward(spec, weights, x, trace=ref)
    ratios = [(p, _error(a, r)) for (p, a), (_, r) in zip(flax_model.trace(model, _nhwc(x)), ref)]
    return max(((p, e / t) for p, (e, t) in ratios), key=lambda r: r[1])


def test_batchnorm_uses_the_spec_eps_not_flax_default():
    """every_op's BatchNorms have eps 1e-3 and 1e-2 and running variances of 1e-4: Flax's default 1e-5 shows."""
    spec, weights, x = _case("every_op")
    model = flax_model.build(spec, weights)
    right = _worst_layer(model, spec, weights, x)
    for path, op in spec.ops().items():
        if isinstance(op, BatchNorm):
            model.layer(path).eps = nnx.BatchNorm(1, rngs=nnx.Rngs(0)).epsilon  # what a default would give
    wrong = _worst_layer(model, spec, weights, x)
    print(f"\nspec eps: worst layer {right[0]} at {right[1]:.2g} x the tolerance; "
          f"Flax's default eps: {wrong[0]} at {wrong[1]:.2g} x")
    assert right[1] <= 1 < 100 < wrong[1]


def test_batchnorm_training_is_two_pass():
    """Activations 10 away from 0 with spread 1: E[x^2] - E[x]^2 in float32 misses by 2e-4, the two-pass
    variance by 6e-6 (tolerance 4e-5); the running variance by 6e-5 and 3e-7 (tolerance 1e-5)."""
    op = BatchNorm(4, eps=1e-5, momentum=0.5)
    x = (10 + np.random.default_rng(0).standard_normal((8, 4, 9, 7))).astype(np.float32)
    start = {"weight": np.array([1.0, 0.5, 2.0, 1.0]), "bias": np.array([0.0, 0.1, -0.2, 0.3]),
             "running_mean": np.zeros(4), "running_var": np.ones(4)}
    updates = {}
    ref = reference.batch_norm(x.astype(np.float64), start, op, True, updates, "bn")
    bn = flax_model.TorchBatchNorm(op)
    bn.scale.set_value(jnp.asarray(start["weight"], jnp.float32))
    bn.bias.set_value(jnp.asarray(start["bias"], jnp.float32))
    bn.use_running_average = False
    err, tol = _error(np.asarray(bn(jnp.asarray(_nhwc(x)))).transpose(0, 3, 1, 2), ref)
    mean, mean_tol = _error(bn.mean[...], updates["bn.running_mean"])
    var, var_tol = _error(bn.var[...], updates["bn.running_var"])
    print(f"\nBatchNorm on offset data: output {err:.1e}, running mean {mean:.1e}, running var {var:.1e}")
    assert err <= tol and mean <= mean_tol and var <= var_tol


def test_flatten_permutes_the_linear_columns():
    """The canonical fc weight follows NCHW flattening; Flax flattens (H, W, C). Without the permutation
    the logits would be wrong, and a plain transpose is what a missing permutation would store."""
    spec, weights, x = _case("flatten")
    model = flax_model.build(spec, weights)
    ref = reference.forward(spec, weights, x)
    kernel = np.asarray(model.fc.kernel.get_value())
    np.testing.assert_array_equal(kernel, nchw_to_nhwc_columns(weights["fc.weight"], (4, 9, 5)).T)
    err, tol = _error(flax_model.predict(model, _nhwc(x)), ref)
    plain = flax_model.build(spec, weights)
    plain.fc.kernel.set_value(jnp.asarray(weights["fc.weight"].T))
    wrong, _ = _error(flax_model.predict(plain, _nhwc(x)), ref)
    print(f"\nflatten: permuted {err:.2e}, plain transpose {wrong:.2e}; tolerance {tol:.1e}")
    assert err <= tol < 100 * tol < wrong
    np.testing.assert_array_equal(flax_model.get_weights(model)["fc.weight"], weights["fc.weight"])


def test_flatten_refuses_a_map_its_linear_was_not_ordered_for():
    """11x7 and 7x11 inputs give the linear layer the same number of features, but only the nominal
    map's order is the one its (H, W, C) columns were permuted for."""
    spec, weights, _ = _case("flatten")
    model = flax_model.build(spec, weights)
    x = np.zeros((1, 7, 11, 3), np.float32)
    with pytest.raises(ValueError, match=r"gets a \(4, 5, 9\) map; the linear layer after it takes the nominal "
                                         r"input's \(4, 9, 5\)"):
        spec.check_input(x.shape, "NHWC")  # the spec refuses it, for every framework
    with pytest.raises(ValueError, match=r"\(4, 5, 9\) map"):
        flax_model.predict(model, x)


@pytest.mark.parametrize("name", CASES)
def test_weights_round_trip_bit_for_bit(name):
    spec, weights, _ = _case(name, seed=3)
    model = flax_model.build(spec, weights_for(spec, seed=4))
    flax_model.set_weights(model, weights)
    got = flax_model.get_weights(model)
    assert list(got) == list(spec.param_shapes())  # canonical order, BatchNorm statistics included
    for k, v in weights.items():
        assert got[k].dtype == np.float32 and got[k].flags.c_contiguous, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    got[next(iter(got))][...] = 7.0  # a copy: the model keeps its weights
    assert not np.any(flax_model.get_weights(model)[next(iter(got))] == 7.0)


def test_state_paths_mirror_canonical_names():
    """NiN's Flax paths are those of the NiN-only module before the generic one (its Orbax files still read)."""
    spec, weights, _ = _case("nin")
    paths = {path for path, _ in nnx.to_flat_state(nnx.state(flax_model.build(spec, weights)))}
    assert ("blocks", "0", "conv0", "kernel") in paths and ("blocks", "3", "conv2", "bias") in paths
    assert len(paths) == len(weights)
    model = flax_model.build(spec, weights)
    assert model.blocks[3].conv2.bias is model.blocks["3"].conv2.bias  # indexed as the NiN-only module's nnx.List
    spec, weights, _ = _case("every_op")
    state = nnx.state(flax_model.build(spec, weights))
    flat = {".".join(p): type(v).__name__ for p, v in nnx.to_flat_state(state)}
    assert flat["res.downsample.1.mean"] == "BatchStat" and flat["res.downsample.1.scale"] == "Param"
    assert flat["dense.grow.conv.kernel"] == "Param" and "dense.grow.conv.bias" not in flat
    assert not nnx.state(flax_model.build(spec, weights), nnx.RngState)  # dropout keys come with each call


@pytest.mark.parametrize("name", CASES)
def test_trace_rows_match_the_spec_and_the_reference(name):
    spec, weights, x = _case(name)
    model = flax_model.build(spec, weights)
    rows = flax_model.trace(model, _nhwc(x))
    ref = []
    reference.forward(spec, weights, x, trace=ref)
    assert [p for p, _ in rows] == [layer.path for layer in spec.layers()]
    assert [(p, a.shape) for p, a in rows] == spec.layer_shapes(x.shape[2:], batch=x.shape[0])
    errors = [(p, *_error(a, r)) for (p, a), (_, r) in zip(rows, ref)]
    worst = max(errors, key=lambda e: e[1] / e[2])
    print(f"\n{name} trace: worst layer {worst[0]}, error {worst[1]:.2e} (tolerance {worst[2]:.1e})")
    assert all(isinstance(a, np.ndarray) for _, a in rows)
    assert all(e <= t for _, e, t in errors), errors


POOLS = list(dict.fromkeys([layer.node for layer in every_op().layers() if isinstance(layer.node, (Pool, AdaptivePool))]
                           + [Pool("max", 3, 2, 1, ceil_mode=True), Pool("max", (2, 3), (2, 1), (1, 0)),
                              Pool("avg", 3, 2, 1, ceil_mode=True, count_include_pad=False),
                              Pool("avg", 3, 2, 1, ceil_mode=True, count_include_pad=True),
                              Pool("avg", 2, 3, 0, ceil_mode=True), AdaptivePool((4, 3)), AdaptivePool(1),
                              AdaptivePool((5, 1))]))


@pytest.mark.parametrize("op", POOLS, ids=repr)
def test_pools_match_reference_with_nan_eager_and_jitted(op):
    """NaN in gives NaN out exactly where the reference has it, and every other value agrees, with or without jit."""
    x = np.random.default_rng(5).standard_normal((2, 3, 11, 8)).astype(np.float32)
    x[0, 1, 4, 3] = np.nan
    x[1, 2, 10, 7] = np.nan  # the corner that ceil_mode's extra windows reach
    fn = (lambda a: flax_model.pool2d(a, op)) if isinstance(op, Pool) else (lambda a: flax_model.adaptive_pool2d(a, op))
    ref = reference.pool2d(x.astype(np.float64), op) if isinstance(op, Pool) else \
        reference.adaptive_pool2d(x.astype(np.float64), op)
    for run in (fn, jax.jit(fn)):
        got = np.asarray(run(jnp.asarray(_nhwc(x)))).transpose(0, 3, 1, 2)
        assert got.shape == ref.shape
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert np.isnan(ref).any()


def test_nan_input_gives_nan_logits():
    spec, weights, x = _case("every_op")
    x[0, 0, 5, 5] = np.nan
    y = flax_model.predict(flax_model.build(spec, weights), _nhwc(x))
    assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()


def test_dropout_in_training_takes_keys_per_call():
    spec, weights, x = _case("nin")  # no BatchNorm: training calls change no state
    ref = flax_model.predict(flax_model.build(spec, weights), _nhwc(x))
    model = flax_model.build(spec, weights)
    model.train()
    a = model(jnp.asarray(_nhwc(x)), rngs=nnx.Rngs(dropout=1))
    b = model(jnp.asarray(_nhwc(x)), rngs=nnx.Rngs(dropout=1))
    c = model(jnp.asarray(_nhwc(x)), rngs=nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(a, b)  # the same key, the same mask
    assert not np.allclose(a, c) and not np.allclose(a, ref)
    np.testing.assert_array_equal(flax_model.predict(model, _nhwc(x)), ref)  # predict is inference in any mode


def test_gradients_flow_through_every_op():
    """Training differentiates every op under jit, as its steps do (reduce_window's gradient under jit
    needs a Python scalar as the initial value: jnp.array(-inf) fails there, and only there)."""
    spec, weights, x = _case("every_op", kind="init")
    model = flax_model.build(spec, weights)
    model.train()

    def loss(m):
        return m(jnp.asarray(_nhwc(x)), rngs=nnx.Rngs(dropout=0)).sum()

    grads = nnx.jit(nnx.grad(loss))(model)
    flat = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
    assert len(flat) == len(weights) - len(spec.buffer_names())  # parameters only
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in flat.values()), flat.keys()


@pytest.mark.parametrize("name", CASES)
def test_empty_batch(name):
    spec, weights, x = _case(name)
    model = flax_model.build(spec, weights)
    empty = _nhwc(x[:0])
    assert flax_model.predict(model, empty).shape == (0, spec.num_classes)
    assert [a.shape for _, a in flax_model.trace(model, empty)] == [s for _, s in spec.layer_shapes(x.shape[2:], 0)]


def test_input_checks():
    spec, weights, x = _case("every_op")
    model = flax_model.build(spec, weights)
    with pytest.raises(ValueError, match="looks like NCHW"):
        flax_model.predict(model, x)
    with pytest.raises(ValueError, match="looks like NCHW"):
        flax_model.trace(model, x)
    with pytest.raises(ValueError, match="too small"):
        flax_model.train_forward(model, np.zeros((2, 1, 1, 2), np.float32))


def _v1_nin_json() -> str:
    """The spec JSON that multizoo 0.1 wrote beside NiN weights (before the zoo had families)."""
    import json

    max_3s2 = {"count_include_pad": True, "kind": "max", "padding": 0, "size": 3, "stride": 2}

    def stage(widths, k, s, p, pool, dropout):
        return {"block": {"kernel_size": k, "padding": p, "stride": s, "widths": widths}, "dropout": dropout,
                "pool": max_3s2 if pool else None}

    return json.dumps({"in_channels": 1, "input_size": [96, 96], "name": "nin", "num_classes": 10, "stages": [
        stage([8] * 3, 11, 4, 0, True, 0.0), stage([16] * 3, 5, 1, 2, True, 0.0),
        stage([16] * 3, 3, 1, 1, True, 0.5), stage([10] * 3, 3, 1, 1, False, 0.0)]})


@pytest.mark.parametrize("name", ["every_op", "flatten"])
def test_orbax_round_trip_with_batchnorm_statistics(name, tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from zoo.io import io_flax

    spec, weights, _ = _case(name)
    io_flax.write(weights, spec, tmp_path / "ckpt")
    ckpt = io_flax.read(tmp_path / "ckpt")
    assert ckpt.spec == spec and "format version 2, SHA-256 of its tensors and spec checked" in ckpt.notes
    assert set(ckpt.weights) == set(weights)
    for k, v in weights.items():
        assert ckpt.weights[k].dtype == np.float32, k
        np.testing.assert_array_equal(ckpt.weights[k], v, err_msg=k)
    # a Flax user restores it into the model as the module docstring says
    import orbax.checkpoint as ocp

    model = flax_model.build(spec, weights_for(spec, seed=9))
    with ocp.StandardCheckpointer() as ck:
        nnx.update(model, ck.restore(tmp_path / "ckpt", nnx.state(model, (nnx.Param, nnx.BatchStat))))
    got = flax_model.get_weights(model)
    assert all(np.array_equal(got[k], v) for k, v in weights.items())


def test_orbax_reads_nin_checkpoints_of_the_nin_only_module(tmp_path):
    """Parameters only, at blocks.N.convJ.kernel / .bias, with multizoo 0.1's spec JSON: as that code wrote them."""
    import orbax.checkpoint as ocp

    from zoo.io import io_flax

    spec, weights, x = _case("nin")
    tree = {}
    for name, a in weights.items():
        *parts, leaf = name.replace(".weight", ".kernel").split(".")
        node = tree
        for part in parts:
            node = node.setdefault(part, {})
        node[leaf] = {"value": jnp.asarray(a.transpose(2, 3, 1, 0) if a.ndim == 4 else a)}
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ck:
        ck.save(tmp_path / "old", args=ocp.args.StandardSave(tree),
                custom_metadata={"zoo_spec": _v1_nin_json(), "zoo_sha256": digest(weights, version="1")})
    ckpt = io_flax.read(tmp_path / "old")
    assert ckpt.spec == zoo.get_spec("nin", widths=(8, 16, 16), input_size=96)
    for k, v in weights.items():
        np.testing.assert_array_equal(ckpt.weights[k], v, err_msg=k)
    err, tol = _error(flax_model.predict(flax_model.build(ckpt.spec, ckpt.weights), _nhwc(x)),
                      reference.forward(spec, weights, x))
    assert err <= tol


def wide_spec(branches: int) -> zoo.ModelSpec:
    """`branches` parallel one-conv branches, concatenated: the widest tree for its node count."""
    from zoo.spec import Conv, Flatten, Linear, ModelSpec, Parallel, Seq

    par = Parallel("concat", *[(f"b{i}", Seq(("conv", Conv(1, 1, 1)))) for i in range(branches)])
    body = Seq(("par", par), ("pool", AdaptivePool(1)), ("flat", Flatten()), ("fc", Linear(branches, 10)))
    return ModelSpec(name="wide", family="wide", in_channels=1, num_classes=10, body=body, input_size=8)


def test_build_makes_its_modules_without_tracing(monkeypatch):
    """build() made its modules under nnx.eval_shape, whose trace cost grew with every module made: quadratic,
    400 one-conv branches took 6.4 s and 1500 about 90 s. It makes them eagerly, as shapes, then sets the weights."""

    def no_trace(*args, **kwargs):
        raise AssertionError("build traced the model's construction")

    monkeypatch.setattr(nnx, "eval_shape", no_trace)
    monkeypatch.setattr(jax, "eval_shape", no_trace)
    spec = wide_spec(12)
    weights = weights_for(spec, 0)
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    model = flax_model.build(spec, weights)
    assert all(isinstance(v.get_value(), jax.Array) for v in flax_model._variables(model).values())
    err, tol = _error(flax_model.predict(model, _nhwc(x)), reference.forward(spec, weights, x))
    assert err <= tol


@pytest.mark.parametrize("size, stride, pad, hw", [((3, 3), (2, 2), 1, (9, 8)), ((2, 3), (1, 2), 0, (5, 7))])
def test_max_pool_gradient_goes_to_the_first_maximum(size, stride, pad, hw):
    """jax_ops.max_pool's own gradient (shifted views, no select-and-scatter): on a map with ties, each window's
    gradient reaches exactly one cell, its first maximum in row-major order, as PyTorch's does; elsewhere
    the same as XLA's gradient of reduce_window."""
    from jax import lax

    from zoo.frameworks.jax_ops import max_pool

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    x[0, :4, :4, :] = 1.5  # a block of ties
    pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    y = max_pool(jnp.asarray(x), size, stride, pads)
    want = lax.reduce_window(jnp.asarray(x), -jnp.inf, lax.max, (1, *size, 1), (1, *stride, 1), pads)
    assert np.array_equal(np.asarray(y), np.asarray(want))
    g = rng.standard_normal(y.shape).astype(np.float32)
    got = np.asarray(jax.grad(lambda a: (max_pool(a, size, stride, pads) * g).sum())(jnp.asarray(x)))
    # by hand: each window's gradient to its first maximum
    xp = np.pad(x, pads, constant_values=-np.inf)
    hand = np.zeros_like(xp)
    for b in range(y.shape[0]):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                for c in range(y.shape[3]):
                    win = xp[b, i * stride[0]:i * stride[0] + size[0], j * stride[1]:j * stride[1] + size[1], c]
                    r, s = np.unravel_index(np.argmax(win), win.shape)  # argmax: the first maximum
                    hand[b, i * stride[0] + r, j * stride[1] + s, c] += g[b, i, j, c]
    hand = hand[:, pad:pad + hw[0], pad:pad + hw[1]]
    assert np.abs(got - hand).max() <= 1e-6 and np.abs(hand[0, :4, :4]).sum() > 0
