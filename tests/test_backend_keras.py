"""The Keras backend against the float64 reference, under whichever KERAS_BACKEND is set.

    for b in tensorflow jax torch; do KERAS_BACKEND=$b pytest -q tests/test_backend_keras.py; done

Tolerance: 1e-5 * max(1, max |reference|), per compared tensor (float32 against float64).
`every_op()` with `testing_weights` drives activations to ~1e6 (running variances of 1e-4), so
its logits saturate at head.5's sigmoid and hardly depend on anything before it: every layer's
output is compared (the trace), and the compiled predict step is checked again with weights
whose variances are moderate.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest
from op_specs import every_op, flatten_spec
from op_specs import revealing_weights as weights_for

import zoo
from zoo import reference
from zoo.spec import Act, AdaptivePool, BatchNorm, Flatten, Linear, ModelSpec, Parallel, Pool, Seq

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from zoo.frameworks import keras_model as km  # noqa: E402  (a bug of ours must fail, not skip)
from zoo.io import io_keras  # noqa: E402

pytestmark = pytest.mark.keras
BACKEND = keras.backend.backend()

def pools_spec() -> ModelSpec:
    """Pools straight on the (signed) input: max pooling's -inf padding shows only where values are
    negative, which every_op's ReLU before its max pool hides. Its Flatten feeds an activation, not a
    Linear, so it must flatten in (C, H, W) order itself; the last Flatten takes a vector."""
    body = Seq(("max", Pool("max", 3, 2, 1, ceil_mode=True)),
               ("avg", Pool("avg", 3, 2, 1, ceil_mode=True, count_include_pad=False)),
               ("avg2", Pool("avg", 2, 2, 1, ceil_mode=True)),
               ("adaptive", AdaptivePool((2, 3))), ("flatten", Flatten()), ("act", Act("sigmoid")),
               ("fc", Linear(2 * 2 * 3, 4)), ("flatten_again", Flatten()))
    return ModelSpec(name="pools", family="test", in_channels=2, num_classes=4, body=body, input_size=(13, 10))


SPECS = {
    "every_op": (every_op, (23, 17)),
    "pools": (pools_spec, (13, 10)),
    "flatten": (flatten_spec, (11, 7)),
    "nin_tiny": (lambda: zoo.get_spec("nin", widths=(8, 16, 16)), (96, 96)),
}


def _case(name: str, batch: int = 3, seed: int = 1):
    make, size = SPECS[name]
    spec = make()
    x = np.random.default_rng(seed).standard_normal((batch, spec.in_channels, *size)).astype(np.float32)
    return spec, weights_for(spec), x


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _err(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, tolerance) of a float32 result against the float64 reference."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max()) if ref.size else 0.0, 1e-5 * max(1.0, float(np.abs(ref).max(initial=0)))


def _report(what: str, errors: list[tuple[str, float, float]]) -> None:
    worst = max(errors, key=lambda e: e[1] / e[2])
    print(f"\nkeras[{BACKEND}] {what}: worst {worst[0]} err {worst[1]:.3g} (tol {worst[2]:.3g}, "
          f"ratio {worst[1] / worst[2]:.3f})")
    bad = [e for e in errors if not e[1] <= e[2]]  # NaN fails too
    assert not bad, f"over tolerance: {bad}"


def _moderate(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Testing weights with the tiny running variances lifted to 1, so that the logits depend on every layer."""
    return {k: np.maximum(v, 1.0) if k.endswith("running_var") else v for k, v in w.items()}


def _map_bn(node, **changes):
    """The tree with every BatchNorm's fields changed."""
    if isinstance(node, Seq):
        return Seq(*[(n, _map_bn(c, **changes)) for n, c in node.children])
    if isinstance(node, Parallel):
        return Parallel(node.join, *[(n, _map_bn(b, **changes)) for n, b in node.branches])
    if isinstance(node, BatchNorm):
        return dataclasses.replace(node, **{k: f(node) for k, f in changes.items()})
    return node


# --------------------------------------------------------------------------- (a) inference

@pytest.mark.parametrize("name", SPECS)
def test_inference_agrees_with_reference(name):
    spec, w, x = _case(name)
    model = km.build(spec, w)
    errors = [("logits", *_err(km.predict(model, _nhwc(x)), reference.forward(spec, w, x)))]
    ref_trace = []
    reference.forward(spec, w, x, trace=ref_trace)
    errors += [(path, *_err(got, ref)) for (path, got), (_, ref) in zip(km.trace(model, _nhwc(x)), ref_trace)]
    km.set_weights(model, _moderate(w))
    errors.append(("logits, moderate variances",
                   *_err(km.predict(model, _nhwc(x)), reference.forward(spec, _moderate(w), x))))
    _report(f"{name} eval", errors)


def test_other_sizes_and_batches_in_one_model():
    """Keras' TensorFlow predict step retraces with unknown H, W after two shapes: pools and adaptive
    pooling then compute their sizes as tensors, which must agree too."""
    spec, w, _ = _case("every_op")
    w = _moderate(w)
    model = km.build(spec, w)
    rng = np.random.default_rng(2)
    errors = []
    for b, h, wd in [(3, 23, 17), (2, 30, 19), (1, 16, 25), (4, 24, 18)]:
        x = rng.standard_normal((b, 2, h, wd)).astype(np.float32)
        errors.append((f"{b}x{h}x{wd}", *_err(km.predict(model, _nhwc(x)), reference.forward(spec, w, x))))
    _report("every_op at four sizes", errors)
    assert km.predict(model, np.zeros((0, 23, 17, 2), np.float32)).shape == (0, 5)


def test_nonfinite_image_gives_nan_logits_only_for_it():
    spec, w, x = _case("nin_tiny")
    x[0, 0, 40, 40] = np.nan
    x[1, 0, 3, 90] = np.inf
    out = km.predict(km.build(spec, w), _nhwc(x))
    assert np.isnan(out[:2]).all() and np.isfinite(out[2]).all()


# --------------------------------------------------------------------------- (b) training mode

@pytest.mark.parametrize("name", SPECS)
def test_train_forward_agrees_with_reference(name):
    spec, w, x = _case(name)
    model = km.build(spec, w)
    updates = {}
    ref = reference.forward(spec, w, x, train=True, updates=updates)
    errors = [("logits", *_err(km.train_forward(model, _nhwc(x)), ref))]
    after = km.get_weights(model)
    errors += [(k, *_err(after[k], v)) for k, v in updates.items()]
    assert set(updates) == spec.buffer_names()
    assert all(np.array_equal(after[k], w[k]) for k in w if k not in updates), "only the statistics change"
    # usable for inference afterwards: the new statistics, dropout and batch statistics off
    errors.append(("eval after", *_err(km.predict(model, _nhwc(x)), reference.forward(spec, after, x))))
    _report(f"{name} train", errors)


def test_train_forward_on_an_offset_input():
    """Images far from zero mean (as unnormalised pixels are): a one-pass variance (E[x^2] - E[x]^2)
    cancels catastrophically in float32 (measured: 3x the tolerance at offset 30), a two-pass one does not."""
    spec, w, x = _case("every_op")
    x = x + np.float32(30)
    model = km.build(spec, w)
    updates = {}
    ref = reference.forward(spec, w, x, train=True, updates=updates)
    errors = [("logits", *_err(km.train_forward(model, _nhwc(x)), ref))]
    after = km.get_weights(model)
    _report("every_op train, input offset 30", errors + [(k, *_err(after[k], v)) for k, v in updates.items()])


def test_keras_fit_updates_statistics_as_torch_would():
    """Keras' own training step (compiled; stateless on JAX) updates TorchBatchNorm's statistics by torch's rule."""
    spec, w, x = _case("every_op")
    model = km.build(spec, w)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    model.fit(_nhwc(x), np.zeros((3, 5), np.float32), batch_size=3, verbose=0, shuffle=False)
    updates = {}
    reference.forward(spec, w, x, train=True, updates=updates)
    after = km.get_weights(model)
    _report("every_op model.fit statistics", [(k, *_err(after[k], v)) for k, v in updates.items()])


# --------------------------------------------------------------------------- (c) weights

@pytest.mark.parametrize("name", SPECS)
def test_weights_round_trip_bit_for_bit(name):
    spec, w, _ = _case(name)
    model = km.build(spec, spec.init_weights(3))
    km.set_weights(model, w)
    got = km.get_weights(model)
    assert list(got) == list(spec.param_shapes())
    for k, v in w.items():
        assert got[k].dtype == np.float32 and got[k].flags.c_contiguous and np.array_equal(got[k], v), k


# --------------------------------------------------------------------------- (d) trace

@pytest.mark.parametrize("name", SPECS)
def test_trace_rows_are_the_spec_layers(name):
    spec, w, x = _case(name, batch=2)
    rows = km.trace(km.build(spec, w), _nhwc(x))
    assert [p for p, _ in rows] == [layer.path for layer in spec.layers()]
    assert [(p, a.shape) for p, a in rows] == spec.layer_shapes(x.shape[2:], batch=2)
    assert all(isinstance(a, np.ndarray) for _, a in rows)


# --------------------------------------------------------------------------- (e) files

def _equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", SPECS)
def test_weights_h5_and_archive_round_trip(name, tmp_path):
    spec, w, x = _case(name)
    model = km.build(spec, w)
    km.train_forward(model, _nhwc(x))  # statistics no initialiser would give
    w = km.get_weights(model)
    io_keras.write_weights(w, spec, tmp_path / "a.weights.h5")
    ckpt = io_keras.read_weights(tmp_path / "a.weights.h5")
    assert ckpt.spec == spec and _equal(ckpt.weights, w)
    io_keras.write_archive(w, spec, tmp_path / "a.keras")
    ckpt = io_keras.read_archive(tmp_path / "a.keras")
    assert ckpt.spec == spec and _equal(ckpt.weights, w)
    loaded = keras.saving.load_model(tmp_path / "a.keras", compile=False, safe_mode=True)
    assert type(loaded) is km.ZooModel and _equal(km.get_weights(loaded), w)
    np.testing.assert_array_equal(km.predict(loaded, _nhwc(x)), km.predict(model, _nhwc(x)))
    model.save_weights(tmp_path / "plain.weights.h5")  # Keras' own file: no spec beside it
    with h5py.File(tmp_path / "plain.weights.h5") as f:
        assert io_keras._guess_shapes(io_keras._h5_layers(f, "plain"), "plain") == spec.param_shapes()


def _swap_same_width_batchnorms(f: h5py.File) -> None:
    assert f["layers/torch_batch_norm_2/vars"].attrs["name"] == "res__bn1"
    assert f["layers/torch_batch_norm_3/vars"].attrs["name"] == "res__downsample__1"
    f["layers"].move("torch_batch_norm_2", "tmp")
    f["layers"].move("torch_batch_norm_3", "torch_batch_norm_2")
    f["layers"].move("tmp", "torch_batch_norm_3")


def test_weights_h5_is_read_by_layer_name_not_order(tmp_path):
    """Keras numbers a class's layers in creation order (torch_batch_norm, torch_batch_norm_1, ...) and reads
    them back by that number; the zoo's reader follows each group's layer name instead. Two BatchNorms of
    the same width swapped in the file: Keras reads them crossed, the zoo right."""
    spec, w, _ = _case("every_op")
    path = tmp_path / "a.weights.h5"
    io_keras.write_weights(w, spec, path)
    with h5py.File(path, "a") as f:
        _swap_same_width_batchnorms(f)
    assert _equal(io_keras.read_weights(path).weights, w)
    model = km.build(spec, spec.init_weights())
    model.load_weights(path)
    crossed = km.get_weights(model)
    assert np.array_equal(crossed["res.bn1.running_var"], w["res.downsample.1.running_var"])


def test_archive_whose_layers_keras_would_cross_is_refused(tmp_path):
    spec, w, _ = _case("every_op")
    km.build(spec, w).save(tmp_path / "a.keras")
    with zipfile.ZipFile(tmp_path / "a.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "a") as f:
        _swap_same_width_batchnorms(f)
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "b.keras", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(io_keras.ConversionError, match=r"Keras loads res.bn1.weight, .* from other layers than"):
        io_keras.read_archive(tmp_path / "b.keras")


def test_weights_h5_with_a_missing_or_foreign_layer_is_refused(tmp_path):
    spec, w, _ = _case("every_op")
    path = tmp_path / "a.weights.h5"
    io_keras.write_weights(w, spec, path)
    with h5py.File(path, "a") as f:
        f["layers/torch_batch_norm_2/vars"].attrs["name"] = "somewhere_else"
    with pytest.raises(io_keras.ConversionError, match=r"somewhere_else hold variables that every_op has no place"):
        io_keras.read_weights(path)


def test_files_of_multizoo_0_1_still_read(tmp_path):
    """multizoo 0.1 saved class NiN of module zoo.frameworks.keras_nin, its spec as 'stages', and named its
    layers with single underscores (blocks_0_conv0); the same NiN is built here and saved so."""
    spec, w, _ = _case("nin_tiny")
    km.build(spec, w).save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "a") as f:
        for group in f["layers"].values():
            group["vars"].attrs["name"] = group["vars"].attrs["name"].replace("__", "_")
    stages = [{"block": {"widths": [8] * 3, "kernel_size": 11, "stride": 4, "padding": 0}, "dropout": 0.0},
              {"block": {"widths": [16] * 3, "kernel_size": 5, "stride": 1, "padding": 2}, "dropout": 0.0},
              {"block": {"widths": [16] * 3, "kernel_size": 3, "stride": 1, "padding": 1}, "dropout": 0.5},
              {"block": {"widths": [10] * 3, "kernel_size": 3, "stride": 1, "padding": 1}, "pool": None}]
    for s in stages[:3]:
        s["pool"] = {"kind": "max", "size": 3, "stride": 2, "padding": 0, "count_include_pad": True}
    config = {"module": "zoo.frameworks.keras_nin", "class_name": "NiN", "registered_name": "zoo>NiN",
              "config": {"name": "nin", "spec": {"name": "nin", "in_channels": 1, "num_classes": 10,
                                                 "stages": stages, "input_size": [224, 224]}}}
    members.update({"config.json": json.dumps(config).encode(), "model.weights.h5": buffer.getvalue()})
    with zipfile.ZipFile(tmp_path / "old.keras", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    ckpt = io_keras.read_archive(tmp_path / "old.keras")
    assert ckpt.spec.param_shapes() == spec.param_shapes() and _equal(ckpt.weights, w), ckpt.notes
    assert "multizoo 0.1" in ckpt.notes[0]
    (tmp_path / "old.weights.h5").write_bytes(buffer.getvalue())  # its .weights.h5: the spec as an attribute
    with h5py.File(tmp_path / "old.weights.h5", "a") as f:
        f.attrs[io_keras.SPEC_ATTR] = json.dumps(config["config"]["spec"])
    ckpt = io_keras.read_weights(tmp_path / "old.weights.h5")
    assert ckpt.spec.param_shapes() == spec.param_shapes() and _equal(ckpt.weights, w)


def test_archive_of_another_class_is_refused(tmp_path):
    spec, w, _ = _case("flatten")
    km.build(spec, w).save(tmp_path / "a.keras")
    with zipfile.ZipFile(tmp_path / "a.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    config = json.loads(members["config.json"])
    config["registered_name"] = "zoo>Pool2D"
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "b.keras", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(io_keras.ConversionError, match=r"class ZooModel, not a zoo model"):
        io_keras.read_archive(tmp_path / "b.keras")


# --------------------------------------------------------------------------- (f) the data can tell

def test_flatten_permutation_matters():
    """flatten_spec's Linear reads a 4 x 9 x 5 map: with its rows in NCHW order (no permutation) the logits
    would be far off; the model, which permutes them, agrees."""
    spec, w, x = _case("flatten")
    model = km.build(spec, w)
    ref = reference.forward(spec, w, x)
    err, tol = _err(km.predict(model, _nhwc(x)), ref)
    assert err <= tol
    model.get_layer("fc").kernel.assign(w["fc.weight"].T)  # what a missing permutation would store
    assert _err(km.predict(model, _nhwc(x)), ref)[0] > 1000 * tol


def test_flatten_of_another_shape_is_refused():
    """(7, 11) fits flatten_spec's Linear (4*5*9 = 4*9*5 features) but flattens its map in another order."""
    spec, w, _ = _case("flatten")
    with pytest.raises(ValueError, match=r"layer flatten \(Flatten\) gets a \(4, 5, 9\) map; the linear layer "
                                         r"after it takes the nominal input's \(4, 9, 5\)"):
        km.predict(km.build(spec, w), np.zeros((1, 7, 11, 3), np.float32))


def test_eps_matters():
    """Keras' default eps (1e-3) instead of the spec's would move every_op's BatchNorm outputs far beyond
    tolerance (its tiny running variances); the model, with the spec's eps, agrees."""
    spec, w, x = _case("every_op")
    keras_eps = dataclasses.replace(spec, body=_map_bn(spec.body, eps=lambda bn: 1e-3))
    rows = dict(km.trace(km.build(spec, w), _nhwc(x)))
    right, wrong = [], []
    reference.forward(spec, w, x, trace=right)
    reference.forward(keras_eps, w, x, trace=wrong)
    right, wrong = dict(right), dict(wrong)
    for path in ("dense.grow.bn", "res.bn1", "res.downsample.1"):  # eps 1e-5, 1e-5, 1e-2 in the spec
        err, tol = _err(rows[path], right[path])
        assert err <= tol and np.abs(wrong[path] - right[path]).max() > 1000 * tol, path


def test_momentum_convention_matters():
    """Keras' momentum weighs the old statistics (moving * m + batch * (1 - m)); with it, the updated
    statistics would be far from torch's; the model's agree."""
    spec, w, x = _case("every_op")
    updates, keras_way = {}, {}
    reference.forward(spec, w, x, train=True, updates=updates)
    flipped = dataclasses.replace(spec, body=_map_bn(spec.body, momentum=lambda bn: 1.0 - bn.momentum))
    reference.forward(flipped, w, x, train=True, updates=keras_way)
    model = km.build(spec, w)
    km.train_forward(model, _nhwc(x))
    after = km.get_weights(model)
    for k in updates:
        err, tol = _err(after[k], updates[k])
        assert err <= tol, k
        assert np.abs(keras_way[k] - updates[k]).max() > 100 * tol, k


# --------------------------------------------------------------------------- names

def test_layer_names_are_one_to_one_and_refused_when_they_meet():
    spec = every_op()
    names = km.layer_names(spec)
    assert names["res.downsample.0"] == "res__downsample__0" and names["stem_bn"] == "stem_bn"
    assert len(set(names.values())) == len(names) and km.INPUT_NAME not in names.values()
    # the spec refuses the names that could meet: no '__', no leading or trailing '_'
    with pytest.raises(zoo.SpecError, match=r"got 'a__b'"):
        ModelSpec(name="clash", family="test", in_channels=1, num_classes=1, input_size=4,
                  body=Seq(("a", Seq(("b", BatchNorm(1)))), ("a__b", BatchNorm(1)), ("p", AdaptivePool(1)),
                           ("f", Flatten())))

