"""The ONNX framework itself: a graph built from the spec alone, what it holds, and how it runs.

Its agreement with the float64 reference is proven with the other frameworks' (the framework
axis of test_agreement.py, test_traps.py, test_diff.py, test_pretrained.py includes `onnx`).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo import reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from zoo.frameworks import onnx_model  # noqa: E402  (after the skip: it imports onnxruntime)

pytestmark = pytest.mark.onnx
TINY_NIN = dict(widths=(8, 16, 16))


def test_building_and_running_imports_no_other_framework():
    """No PyTorch (or JAX, TensorFlow, Keras) is needed to make and run an ONNX model."""
    code = ("import sys, numpy as np, zoo\n"
            "m = zoo.load('resnet18', framework='onnx', num_classes=10, width=4)\n"
            "zoo.predict(m, np.zeros((1, 3, 64, 64), np.float32))\n"
            "print(sorted(p for p in ('torch', 'jax', 'flax', 'tensorflow', 'keras') if p in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_graph_holds_the_canonical_weights_under_their_names():
    spec = zoo.get_spec("resnet18", width=4, num_classes=10)
    w = zoo.init_weights(spec, 3)
    proto = onnx_model.to_onnx(spec, w)
    onnx.checker.check_model(proto, full_check=True)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert set(spec.param_shapes()) <= set(inits)
    for k, v in w.items():
        assert inits[k].dtype == np.float32 and np.array_equal(inits[k], v), k
    assert {n.op_type for n in proto.graph.node} <= onnx_model.WRITTEN_OPS
    assert proto.opset_import[0].version == onnx_model.OPSET and proto.ir_version == onnx_model.IR_VERSION


def test_batch_is_dynamic_and_the_spatial_size_fixed():
    spec = zoo.get_spec("nin", **TINY_NIN)
    w = zoo.init_weights(spec, 1)
    proto = onnx_model.to_onnx(spec, w, (96, 96))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 96, 96]
    sess = onnx_model.session(proto)
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        x = rng.standard_normal((batch, 1, 96, 96)).astype(np.float32)
        out = sess.run(None, {onnx_model.INPUT: x})[0]
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out, reference.forward(spec, w, x), atol=1e-5, rtol=0)


def test_a_model_keeps_one_session_per_input_size_and_rebuilds_them_for_new_weights():
    model = zoo.load("nin", "onnx", **TINY_NIN)
    rng = np.random.default_rng(1)
    for size in (67, 96, 67):
        zoo.predict(model, rng.standard_normal((2, 1, size, size)).astype(np.float32))
    assert sorted(model._sessions) == [(67, 67), (96, 96)]
    with pytest.raises(ValueError, match="channel"):  # a shape seen before skips the check; a new one does not
        zoo.predict(model, np.zeros((2, 3, 67, 67), np.float32))
    w = zoo.init_weights(model.spec, 9)
    zoo.set_weights(model, w)
    assert not model._sessions
    x = rng.standard_normal((2, 1, 67, 67)).astype(np.float32)
    np.testing.assert_allclose(zoo.predict(model, x), reference.forward(model.spec, w, x), atol=1e-5, rtol=0)


def test_input_checks_come_before_onnxruntime():
    model = zoo.load("nin", "onnx", **TINY_NIN)
    with pytest.raises(ValueError, match="channel"):
        zoo.predict(model, np.zeros((1, 3, 96, 96), np.float32))
    with pytest.raises(ValueError, match="67"):
        zoo.predict(model, np.zeros((1, 1, 40, 40), np.float32))


def test_a_provider_that_does_not_start_is_refused_not_replaced_by_the_cpu():
    """onnxruntime falls back to the CPU, with a warning, when a provider is missing: a GPU test would
    then pass on the CPU. The zoo refuses instead."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the refusal needs a provider that is missing")
    model = zoo.load("nin", "onnx", **TINY_NIN)
    gpu = onnx_model.OnnxModel(model.spec, zoo.get_weights(model), providers=["CUDAExecutionProvider"])
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="could not start CUDAExecutionProvider"):
        gpu(np.zeros((1, 1, 96, 96), np.float32))


def test_adaptive_pool_bins_that_do_not_divide_the_input():
    """Slice + ReduceMean per bin (AlexNet's 6x6 pool on a 13x13 map is the case torchvision hits at 224)."""
    from op_specs import revealing_weights

    from zoo.spec import AdaptivePool, Conv, Flatten, Linear, ModelSpec, Seq

    spec = ModelSpec("adaptive", "test", 2, 3, Seq(("conv", Conv(2, 4, 3, padding=1)), ("pool", AdaptivePool((6, 5))),
                                                   ("flatten", Flatten()), ("fc", Linear(120, 3))), (13, 11))
    w = revealing_weights(spec, 0)
    x = np.random.default_rng(2).standard_normal((3, 2, 13, 11)).astype(np.float32)
    got = zoo.predict(zoo.load(spec, "onnx", weights=w), x)
    np.testing.assert_allclose(got, reference.forward(spec, w, x), atol=1e-5, rtol=0)
    ops = {n.op_type for n in onnx_model.to_onnx(spec, w).graph.node}
    assert {"Slice", "ReduceMean"} <= ops
