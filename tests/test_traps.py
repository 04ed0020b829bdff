"""The traps of porting CNNs between frameworks, each with a test that would catch it.

BatchNorm: epsilon from the spec (never a framework's default), torch's momentum convention,
torch's unbiased running variance, running statistics in the canonical weights; flatten order
before a linear layer (NCHW vs NHWC); padding and pooling (explicit symmetric padding,
ceil_mode, count_include_pad). Each framework is compared with the float64 reference, and each
trap's "meta" test shows that the test values make the mistake visible: the mistaken reference
differs from the right one by far more than the tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import to_device
from op_specs import every_op, flatten_spec, revealing_weights

import zoo
from zoo import reference
from zoo._frameworks import adapter
from zoo.spec import Conv, Flatten, Linear, ModelSpec, Pool, Seq, nchw_to_nhwc_columns

TOL = 1e-5


def _x(spec: ModelSpec, batch: int = 4, seed: int = 0, size=None) -> np.ndarray:
    size = size or spec.input_size
    return np.random.default_rng(seed).standard_normal((batch, spec.in_channels, *size)).astype(np.float32)


def _own_layout(framework: str, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if zoo.FRAMEWORKS[framework].layout == "NHWC" else x


def _err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max())


def _with_bn(spec: ModelSpec, **fields) -> ModelSpec:
    """The spec with every BatchNorm's fields replaced (to build a mistaken reference)."""
    d = spec.to_dict()

    def visit(node):
        if node.get("op") == "BatchNorm":
            node.update(fields)
        for _, child in node.get("seq", []) + node.get("branches", []):
            visit(child)

    visit(d["body"])
    return ModelSpec.from_dict(json.loads(json.dumps(d)))


# --------------------------------------------------------------------------- BatchNorm

def test_meta_an_eps_mistake_shows():
    spec, w, x = every_op(), revealing_weights(every_op()), _x(every_op())
    right = reference.forward(spec, w, x)
    for eps in (1e-3, 1e-5, 1e-2):  # Keras' default, torch's/Flax's, and the spec's own other value
        wrong = reference.forward(_with_bn(spec, eps=eps), w, x)
        assert _err(wrong, right) > 100 * TOL * max(1, np.abs(right).max()), eps


def test_meta_momentum_and_variance_mistakes_show():
    spec, w, x = every_op(), revealing_weights(every_op()), _x(every_op())
    right, flipped = {}, {}
    reference.forward(spec, w, x, train=True, updates=right)
    reference.forward(_with_bn(spec, momentum=0.9), w, x, train=True, updates=flipped)  # 1 - 0.1: Keras' meaning
    worst = max(_err(flipped[k], right[k]) for k in right)
    assert worst > 1000 * TOL
    # a running variance updated with the biased batch variance (Keras' and Flax's own layers) is off by
    # m * var / (n - 1): for the stem's BatchNorm (momentum 0.3, n = 4 images x 23 x 16 cells)
    m, n = 0.3, 4 * 23 * 16
    assert dict(spec.layer_shapes(batch=4))["stem_bn"] == (4, 6, 23, 16)
    batch_unbiased = (right["stem_bn.running_var"] - (1 - m) * w["stem_bn.running_var"]) / m
    biased = (1 - m) * w["stem_bn.running_var"] + m * batch_unbiased * (n - 1) / n
    assert _err(biased, right["stem_bn.running_var"]) > 10 * TOL


def test_eval_mode_batchnorm(framework, device, record_error):
    spec = every_op()
    w = revealing_weights(spec)
    model = to_device(framework, zoo.load(spec, framework, weights=w), device)
    for batch, seed in ((1, 1), (4, 2)):
        x = _x(spec, batch, seed)
        record_error("traps/every_op eval", framework, zoo.predict(model, x, layout="NCHW"),
                     reference.forward(spec, w, x))


@pytest.mark.trains
def test_train_mode_batchnorm(framework, device, record_error):
    """One forward in training mode (dropout off): the same outputs and the same updated running
    statistics as the reference, which updates them as PyTorch does."""
    spec = every_op()
    w = revealing_weights(spec)
    model = to_device(framework, zoo.load(spec, framework, weights=w), device)
    x = _x(spec, 4, 3)
    updates = {}
    want = reference.forward(spec, w, x, train=True, updates=updates)
    got = adapter(framework).train_forward(model, _own_layout(framework, x))
    record_error("traps/every_op train", framework, got, want)
    after = zoo.get_weights(model)
    assert sorted(updates) == sorted(spec.buffer_names())
    for k, v in updates.items():
        record_error("traps/running stats", framework, after[k], v)
    for k in set(w) - set(updates):  # parameters do not move in a forward pass
        np.testing.assert_array_equal(after[k], w[k], err_msg=k)
    # back in inference mode: the new running statistics are what it now normalises with
    x2 = _x(spec, 2, 4)
    record_error("traps/every_op eval after train", framework, zoo.predict(model, x2, layout="NCHW"),
                 reference.forward(spec, {**w, **updates}, x2))


def test_running_statistics_are_canonical_weights(framework):
    spec = every_op()
    w = revealing_weights(spec)
    got = zoo.get_weights(zoo.load(spec, framework, weights=w))
    assert list(got) == list(spec.param_shapes())
    assert {k for k in got if k.endswith(("running_mean", "running_var"))} == spec.buffer_names()
    for k in w:
        np.testing.assert_array_equal(got[k], w[k], err_msg=k)


# --------------------------------------------------------------------------- flatten order

def test_meta_flatten_order_shows():
    spec = flatten_spec()
    w = revealing_weights(spec)
    x = _x(spec)
    wrong = dict(w, **{"fc.weight": nchw_to_nhwc_columns(w["fc.weight"], (4, 9, 5))})
    right = reference.forward(spec, w, x)
    assert _err(reference.forward(spec, wrong, x), right) > 100 * TOL * max(1, np.abs(right).max())


def test_flatten_before_linear(framework, device, record_error):
    """Conv -> Flatten -> Linear on a non-square 4x9x5 map: only the right column order agrees."""
    spec = flatten_spec()
    w = revealing_weights(spec)
    model = to_device(framework, zoo.load(spec, framework, weights=w), device)
    x = _x(spec, 3, 5)
    record_error("traps/flatten", framework, zoo.predict(model, x, layout="NCHW"), reference.forward(spec, w, x))
    np.testing.assert_array_equal(zoo.get_weights(model)["fc.weight"], w["fc.weight"])


# --------------------------------------------------------------------------- padding and pooling

POOLS = [Pool("max", 3, 2, 1), Pool("max", 3, 2, 1, ceil_mode=True), Pool("max", 2, 2, 0, ceil_mode=True),
         Pool("avg", 3, 2, 1, count_include_pad=True), Pool("avg", 3, 2, 1, count_include_pad=False),
         Pool("avg", 2, 1, 1, count_include_pad=False), Pool("avg", 3, 2, 1, ceil_mode=True),
         Pool("avg", 3, 2, 1, ceil_mode=True, count_include_pad=False), Pool("max", (3, 2), (2, 1), (1, 0))]


def _pool_spec(pool: Pool, size=(10, 7)) -> ModelSpec:
    """A strided padded conv, the pool, and a linear head that sees every pooled cell."""
    conv = Conv(2, 3, 3, 2, 1)
    c, h, w = pool.out_shape(conv.out_shape((2, *size)))
    body = Seq(("conv", conv), ("pool", pool), ("flatten", Flatten()), ("fc", Linear(c * h * w, 4)))
    return ModelSpec(name="pool", family="test", in_channels=2, num_classes=4, body=body, input_size=size)


def _pool_id(p: Pool) -> str:
    return (f"{p.kind}{p.size[0]}x{p.size[1]}s{p.stride[0]}p{p.padding[0]}{'ceil' if p.ceil_mode else ''}"
            f"{'' if p.kind == 'max' else ('incl' if p.count_include_pad else 'excl')}")


@pytest.mark.parametrize("pool", POOLS, ids=_pool_id)
def test_padded_pooling(pool, framework, device, record_error):
    """Padded and ceil_mode pools, where max pooling's -inf and average pooling's divisor matter."""
    for size in ((10, 7), (11, 8)):  # odd and even: ceil_mode's extra window appears on one of them
        spec = _pool_spec(pool, size)
        w = revealing_weights(spec)
        model = to_device(framework, zoo.load(spec, framework, weights=w), device)
        x = _x(spec, 2, 7) - 2.0  # mostly negative, so padding would win a max
        record_error("traps/pools", framework, zoo.predict(model, x, layout="NCHW"), reference.forward(spec, w, x))


def test_meta_ceil_mode_changes_the_shapes():
    assert any(Pool("max", 3, 2, 1, ceil_mode=True).out_len(n, 0) != Pool("max", 3, 2, 1).out_len(n, 0)
               for n in (10, 11))


def test_onnx_says_it_has_no_training_mode():
    """The framework axis of `trains` tests leaves ONNX out; its adapter says why when asked anyway."""
    pytest.importorskip("onnxruntime")
    spec = every_op()
    model = zoo.load(spec, "onnx", weights=revealing_weights(spec))
    with pytest.raises(NotImplementedError, match="inference only.*train in torch, flax or keras"):
        adapter("onnx").train_forward(model, _x(spec, 2, 0))
