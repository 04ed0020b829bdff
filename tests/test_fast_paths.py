"""The fast default paths compute the same function, and `zoo bench` measures what it says.

Speed itself is never asserted here (that is `zoo bench`'s job); these tests pin down what
the fast paths must not break: outputs, the caller's tensors, weight updates, memory.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
from conftest import label, random_weights

import zoo
from zoo.reference import forward as reference


def test_flops_match_a_hand_count():
    # d2l NiN at 224x224, from the seed post's shapes: (out H*W, out C, in C, kernel)
    convs = [(54 * 54, 96, 1, 11), (54 * 54, 96, 96, 1), (54 * 54, 96, 96, 1),
             (26 * 26, 256, 96, 5), (26 * 26, 256, 256, 1), (26 * 26, 256, 256, 1),
             (12 * 12, 384, 256, 3), (12 * 12, 384, 384, 1), (12 * 12, 384, 384, 1),
             (5 * 5, 10, 384, 3), (5 * 5, 10, 10, 1), (5 * 5, 10, 10, 1)]
    assert zoo.get_spec("nin").flops() == sum(2 * hw * co * ci * k * k for hw, co, ci, k in convs) == 1_524_594_704
    assert zoo.get_spec("nin").flops((96, 96)) == 215_999_120


def test_min_input_size_is_computed_once():
    spec = zoo.get_spec("nin")
    assert spec.min_input_size == 67 and "min_input_size" in vars(spec)  # cached on the instance
    assert spec == zoo.get_spec("nin") and hash(spec) == hash(zoo.get_spec("nin"))  # not part of equality
    assert "min_input_size" not in spec.to_dict()


@pytest.mark.torch
@pytest.mark.parametrize("preset, shape", [("nin", (2, 1, 80, 72)), ("nin_cifar10", (2, 3, 32, 32))])
def test_torch_channels_last_inside_ncwh_outside(preset, shape):
    import torch

    spec = zoo.get_spec(preset)
    weights = random_weights(spec, 1)
    model = zoo.load(preset, "torch", weights=weights)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.ndim == 4)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    before = x.clone()
    with torch.inference_mode():
        out = model(x)
        out_strided = model(x.transpose(2, 3).contiguous().transpose(2, 3))  # a non-contiguous NCHW view
    assert torch.equal(x, before), "the in-place ReLUs wrote into the caller's input"
    ref = reference(spec, weights, x.numpy().astype(np.float64))
    assert out.shape == ref.shape and np.abs(out.numpy() - ref).max() <= 1e-5 * max(1, np.abs(ref).max())
    assert torch.allclose(out, out_strided, atol=1e-6)


@pytest.mark.torch
def test_torch_get_weights_are_contiguous_copies():
    model = zoo.load("nin_cifar10", "torch", weights=random_weights(zoo.get_spec("nin_cifar10"), 2))  # biases != 0
    w = zoo.get_weights(model)
    assert all(a.flags["C_CONTIGUOUS"] and a.flags["OWNDATA"] for a in w.values())
    w["blocks.0.conv0.weight"][:] = 0
    w["blocks.0.conv0.bias"][:] = 0
    assert np.abs(zoo.get_weights(model)["blocks.0.conv0.weight"]).max() > 0
    assert np.abs(zoo.get_weights(model)["blocks.0.conv0.bias"]).max() > 0


@pytest.mark.flax
def test_flax_predict_sees_weight_updates_and_lets_models_go():
    from zoo.frameworks import flax_model

    spec = zoo.get_spec("nin_cifar10")
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
    model = zoo.load("nin_cifar10", "flax", seed=0)
    zoo.predict(model, x)  # compiles, and caches the model's split
    # set_weights, then an in-place update of one Variable, as an optimizer makes
    new = random_weights(spec, 5)
    zoo.set_weights(model, new)
    ref = reference(spec, new, x.transpose(0, 3, 1, 2).astype(np.float64))
    after_set = zoo.predict(model, x)
    assert np.abs(after_set - ref).max() <= 1e-5 * max(1, np.abs(ref).max())
    model.blocks[2].conv2.bias[...] = model.blocks[2].conv2.bias[...] + 1.0
    assert np.abs(zoo.predict(model, x) - after_set).max() > 0.5
    # another input shape retraces; the cache holds no model alive
    assert zoo.predict(model, x[:1, :21, :21]).shape == (1, 10)
    del model
    gc.collect()
    assert len(flax_model._split) == 0


@pytest.mark.keras
def test_keras_predict_follows_shapes_and_weights():
    spec = zoo.get_spec("nin_cifar10")
    model = zoo.load("nin_cifar10", "keras", seed=0)
    rng = np.random.default_rng(0)
    for shape in [(1, 32, 32, 3), (3, 21, 25, 3), (1, 32, 32, 3)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        out = zoo.predict(model, x)
        ref = reference(spec, zoo.get_weights(model), x.transpose(0, 3, 1, 2).astype(np.float64))
        assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-5 * max(1, np.abs(ref).max())
    new = random_weights(spec, 7)
    zoo.set_weights(model, new)
    ref = reference(spec, new, x.transpose(0, 3, 1, 2).astype(np.float64))
    assert np.abs(zoo.predict(model, x) - ref).max() <= 1e-5 * max(1, np.abs(ref).max())


# Fast alternatives only: torch.compile takes half a minute per shape on two cores. ONNX: all of
# them (OpenVINO's too, where it is installed); each builds in well under a second.
QUICK = {"torch": ["eager"], "flax": ["split"], "keras": ["predict_on_batch", "XLA"], "onnx": None}


def test_bench_runs_every_alternative_and_they_agree(framework, tmp_path):
    from zoo.bench import REFERENCE

    out = tmp_path / "bench.json"
    only = ["--only", *QUICK[framework]] if QUICK[framework] else []
    cmd = [sys.executable, "-m", "zoo.cli", "bench", "nin_cifar10", "--frameworks", framework,
           "--cases", "2x32", "1x21", "--rounds", "2", "--min-time", "0.01", *only, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["results"][0]
    assert result["target"] == framework and result["matmul_gflops"] > 0
    names = list(result["cases"][0]["rows"])
    assert names[0] == "zoo.predict(model, x)" and len(names) >= 2, names
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if framework == "onnx" and importlib.util.find_spec("openvino") is not None:
        assert sum("OpenVINO" in name for name in names) == 3, names
    # every framework is timed against onnxruntime on the same weights: onnx's own default, or an extra row
    assert result["onnxruntime_row"] == (None if not has_ort else names[0] if framework == "onnx" else REFERENCE)
    assert (REFERENCE in names) == (has_ort and framework != "onnx"), names
    if has_ort:
        assert "Against onnxruntime" in proc.stdout
    for case in result["cases"]:
        assert case["flops"] == zoo.get_spec("nin_cifar10").flops((case["size"],) * 2) * case["batch"]
        for name, row in case["rows"].items():
            assert "error" not in row, f"{label(framework)} {name}: {row.get('error')}"
            # every way of running the model computes the default's logits
            assert row["max_abs_diff"] < 1e-4, f"{label(framework)} {name} differs by {row['max_abs_diff']:.2e}"
            assert row["images_per_s"] > 0 and row["gflops"] > 0 and row["vs_default"] > 0
            assert row["vs_onnxruntime"] > 0 if has_ort else row["vs_onnxruntime"] is None
            low, high = row["vs_default_interval"]
            assert low <= row["vs_default"] <= high and len(row["times"]) == len(row["cpu_times"]) == 2
            assert "cpu_seconds" in row  # recorded beside the wall time (its size is the bench's, not a test's)
    first = result["first"]
    assert first["bare_import_s"] > 0 and first["load_s"] > 0 and first["first_predict_s"] > 0
    for name in names:
        assert name in proc.stdout  # the printed table has a row per alternative


def test_the_onnxruntime_reference_runs_in_a_process_of_its_own():
    """Its thread pool never shares the framework's process: measuring torch imports no onnxruntime there,
    and the reference row still comes back, with the guest's own times and the same logits."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    code = ("import json, sys; from zoo.bench import REFERENCE, measure\n"
            "res = measure('torch', 'lenet', [(2, 28)], rounds=2, min_time=0.01, only=['eager'])\n"
            "row = res['cases'][0]['rows'][REFERENCE]\n"
            "print(json.dumps(['onnxruntime' in sys.modules, row['max_abs_diff'], len(row['times'])]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported, diff, rounds = json.loads(proc.stdout.splitlines()[-1])
    assert not imported and diff < 1e-4 and rounds == 2


# --------------------------------------------------------------------------- the bench's statistics, on synthetic
# timings: per-round times of a default A (1 ms a call) and an alternative B twice as fast, as the rounds would
# record them on a quiet machine (1% jitter), with one slow round, on a drifting machine, and on a noisy one.

def _rounds(kind: str, n: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    a, b = 1e-3 * (1 + 0.01 * rng.standard_normal(n)), 0.5e-3 * (1 + 0.01 * rng.standard_normal(n))
    if kind == "one slow round":  # another process took the machine for round 3, while B ran
        b[3] *= 3.0
    elif kind == "drifting":  # the machine slows by 15% a round (throttling), both alternatives alike
        a, b = a * 1.15 ** np.arange(n), b * 1.15 ** np.arange(n)
    elif kind == "noisy":  # B's own times scatter by a factor of two from round to round
        b *= rng.uniform(0.7, 1.4, n)
    return list(a), list(b)


@pytest.mark.parametrize("kind", ["quiet", "one slow round", "drifting"])
def test_a_steady_ratio_survives_a_slow_round_and_a_drift(kind):
    """The ratio is the median of per-round ratios, and steadiness comes from its interval: one slow round and
    a drifting machine leave it 2.0 and steady, though they spread the raw times far past the old 25% guard."""
    from zoo.bench import UNSTABLE_SPREAD, ratio_stats, steady

    a, b = _rounds(kind)
    ratio, low, high = ratio_stats(a, b)
    assert abs(ratio - 2.0) < 0.03 and low <= ratio <= high and steady((ratio, low, high)), (ratio, low, high)
    if kind != "quiet":
        assert max(b) / min(b) - 1 > UNSTABLE_SPREAD  # what the spread guard refused


def test_a_noisy_ratio_is_marked_unsteady_and_not_printed():
    from zoo.bench import format_results, ratio_stats, steady, summarise

    a, b = _rounds("noisy")
    stats = ratio_stats(a, b)
    assert not steady(stats) and stats[2] - stats[1] > 0.2 * stats[0]
    rows = {"zoo.predict(model, x)": {"times": a, "cpu_times": a, "max_abs_diff": 0.0, "first_call_s": 0.1},
            "fast path": {"times": b, "cpu_times": [2 * t for t in b], "max_abs_diff": 0.0, "first_call_s": 0.1}}
    for row in rows.values():
        summarise(row, 1, 10**9, a, None)
    fast = rows["fast path"]  # synthetic timings: the CPU median is kept beside the wall median, as given
    assert fast["cpu_seconds"] == statistics.median(fast["cpu_times"]) and fast["seconds"] == statistics.median(b)
    result = {"target": "torch", "framework": "torch", "describe": "test", "matmul_gflops": 1.0, "model": "nin",
              "onnxruntime_row": None, "cases": [{"batch": 1, "size": 224, "flops": 10**9, "rows": rows}]}
    table = format_results([result], "test machine")
    assert "x? (unsteady [" in table and "90% interval of the per-round ratios is wider than 20%" in table
    assert f"x{stats[0]:.2f}" not in table


def test_the_intervals_are_deterministic_and_bracket_the_median():
    from zoo.bench import ratio_stats

    a, b = _rounds("quiet", seed=3)
    assert ratio_stats(a, b) == ratio_stats(a, b)
    r, lo, hi = ratio_stats([1.0] * 5, [0.5] * 5)
    assert r == lo == hi == 2.0


def test_a_variant_sets_its_environment_after_the_users(monkeypatch):
    from zoo.bench import VARIANTS, _target

    assert _target("keras[jax]@xla-onednn") == ("keras", {"KERAS_BACKEND": "jax",
                                                        "XLA_FLAGS": VARIANTS["xla-onednn"][1]["XLA_FLAGS"]})
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert _target("flax@xla-xnnpack") == ("flax", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false "
                                                                 "--xla_cpu_use_xnnpack=true"})
    assert _target("torch@omp-passive") == ("torch", {"OMP_WAIT_POLICY": "PASSIVE"})


@pytest.mark.parametrize("args, message", [
    (["--frameworks", "tf"], "unknown framework 'tf'"),
    (["--frameworks", "keras[nonexistent_backend]"], "nonexistent_backend not installed"),
    (["--frameworks", "torch@xla-onednn"], "no variant 'xla-onednn' for torch; the variants: xla-onednn (flax/"),
    (["--frameworks", "flax@fast"], "no variant 'fast' for flax"),
    (["--cases", "1x32"], "nin does not take 32x32 input (its minimum is 67"),
    (["--json", "no/such/folder/out.json"], "its folder does not exist"),
    (["--rounds", "0"], "--rounds must be at least 1"),
])
def test_bench_refuses_bad_arguments_before_measuring(args, message, capsys):
    from zoo.cli import main

    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.torch
def test_torch_device_is_kept_and_forgotten_when_the_model_moves():
    """ZooModel.device is looked up once (next(parameters()) took 12-16 us of each LeNet call at batch 1), and
    looked up again after anything that can move the parameters: .to / .cuda / .cpu (all through _apply), and
    load_state_dict (assign=True replaces them)."""
    torch = pytest.importorskip("torch")
    model = zoo.load("lenet", "torch")
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    before = zoo.predict(model, x)
    assert model.device == torch.device("cpu") and model._where is not None
    model.to("meta")
    assert model.device == torch.device("meta")
    model.to_empty(device="cpu")
    assert model.device == torch.device("cpu")
    meta = {k: v.to("meta") for k, v in model.state_dict().items()}
    model.load_state_dict(meta, assign=True)
    assert model.device == torch.device("meta")
    fresh = zoo.load("lenet", "torch")
    model.load_state_dict(fresh.state_dict(), assign=True)
    assert model.device == torch.device("cpu") and np.array_equal(zoo.predict(model, x), before)


@pytest.mark.onnx
def test_onnx_call_skips_only_the_python_checks_of_session_run():
    """OnnxModel's call uses the session's C++ run (InferenceSession.run's Python checks cannot fail for the
    zoo's own feed); where onnxruntime has no such attribute, the public run. Both give the same logits."""
    pytest.importorskip("onnxruntime")
    from zoo.frameworks import onnx_model

    model = zoo.load("lenet", "onnx")
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    sess = model.session((28, 28))
    public = sess.run([onnx_model.OUTPUT], {onnx_model.INPUT: x})[0]
    fast = onnx_model._fast_run(sess)
    assert fast is not sess.run and np.array_equal(fast([onnx_model.OUTPUT], {onnx_model.INPUT: x}, None)[0], public)

    class Renamed:  # an onnxruntime whose session keeps no `_sess`
        run = sess.run

    assert onnx_model._fast_run(Renamed()) == Renamed().run
    assert np.array_equal(zoo.predict(model, x), public)
    x[1, 0, 3, 3] = np.inf  # the NaN policy holds on the fast path
    assert np.isnan(zoo.predict(model, x)[1]).all() and np.isfinite(zoo.predict(model, x)[[0, 2]]).all()


@pytest.mark.torch
def test_torch_folds_batchnorm_in_inference_and_follows_every_weight_change():
    """zoo.predict runs each Conv + BatchNorm as one folded conv (FoldedConvBN); the result is the two
    modules' within float32 rounding, and the folded tensors follow in-place changes (an optimizer step, a
    `mul_`, set_weights) and replacements (load_state_dict with assign); with gradients on, the modules run
    and the BatchNorm's parameters get their gradients."""
    torch = pytest.importorskip("torch")
    from zoo.frameworks.torch_model import FoldedConvBN

    spec = zoo.get_spec("resnet18_d2l", input_size=32)
    model = zoo.load(spec, "torch", weights=random_weights(spec, 3))
    folds = [s for s in model._plan if isinstance(s, FoldedConvBN)]
    assert folds and folds[0].conv is model.conv1 and folds[0].bn is model.bn1
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)

    def unfolded():
        with torch.no_grad():
            y = torch.from_numpy(x)
            for step in model._plan:
                y = step.bn(step.conv(y)) if isinstance(step, FoldedConvBN) else step(y)
            return y.numpy()

    def close(a, b):
        return np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())

    ref = reference(spec, zoo.get_weights(model), x)
    got = zoo.predict(model, x)
    assert close(got, ref) and close(got, unfolded()) and folds[0]._key is not None
    with torch.no_grad():
        model.bn1.weight.mul_(3.0)  # in place, as an optimizer step
    assert close(zoo.predict(model, x), unfolded()) and not close(zoo.predict(model, x), got)
    zoo.set_weights(model, random_weights(spec, 4))
    assert close(zoo.predict(model, x), reference(spec, random_weights(spec, 4), x))
    state = {k: v.clone() for k, v in zoo.load(spec, "torch", weights=random_weights(spec, 5)).state_dict().items()}
    model.load_state_dict(state, assign=True)
    assert close(zoo.predict(model, x), reference(spec, random_weights(spec, 5), x))
    out = model(torch.from_numpy(x))  # gradients on: the modules, not the folded copy
    out.sum().backward()
    assert model.bn1.weight.grad is not None and np.abs(model.bn1.weight.grad.numpy()).max() > 0


@pytest.mark.torch
@pytest.mark.parametrize("conv", [dict(in_channels=6, out_channels=8, kernel_size=3, stride=2, padding=1),
                                  dict(in_channels=6, out_channels=12, kernel_size=3, padding=2, dilation=2, groups=6),
                                  dict(in_channels=6, out_channels=4, kernel_size=(3, 1), stride=2, dilation=2,
                                       padding=(2, 0), groups=2),
                                  dict(in_channels=6, out_channels=5, kernel_size=1)])
def test_keras_torch_conv_and_its_kernel_gradient_match_the_reference(conv):
    """keras_torch_ops.conv2d (Keras on PyTorch): NHWC in and out, the HWIO kernel read in channels_last order
    (`_KernelOHWI`, whose backward transposes the gradient back); dense, depthwise with a multiplier, grouped
    and dilated under strides, 1x1: the output and the kernel's gradient equal the float64 reference's."""
    torch = pytest.importorskip("torch")
    from zoo.frameworks.keras_torch_ops import conv2d
    from zoo.reference import conv2d as ref_conv
    from zoo.spec import Conv

    op = Conv(**conv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 9, 8))
    w = rng.standard_normal(op.params()["weight"])
    b = rng.standard_normal(op.out_channels)
    dy = rng.standard_normal(ref_conv(x, w, b, op).shape)
    kernel = torch.tensor(np.ascontiguousarray(w.transpose(2, 3, 1, 0)), dtype=torch.float32, requires_grad=True)
    xt = torch.tensor(x.transpose(0, 2, 3, 1), dtype=torch.float32)
    y = conv2d(xt, kernel, torch.tensor(b, dtype=torch.float32), op.stride, op.padding, op.dilation, op.groups)
    y.backward(torch.tensor(dy.transpose(0, 2, 3, 1), dtype=torch.float32))
    ref = ref_conv(x, w, b, op)
    assert np.abs(y.detach().numpy().transpose(0, 3, 1, 2) - ref).max() <= 1e-5 * np.abs(ref).max()
    # d(sum(y * dy)) / dw from the reference, tap by tap: the conv of x with dy, as the reference computes it
    eps = np.zeros_like(w)
    grad = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        eps[idx] = 1.0
        grad[idx] = (ref_conv(x, eps, None, op) * dy).sum()  # linear in w: exact, no finite difference
        eps[idx] = 0.0
    assert tuple(kernel.grad.shape) == tuple(kernel.shape)
    assert np.abs(kernel.grad.numpy() - grad.transpose(2, 3, 1, 0)).max() <= 1e-5 * np.abs(grad).max()


@pytest.mark.torch
def test_keras_torch_batchnorm_trains_as_exactly_as_nchw():
    """keras_torch_ops.batch_norm in training on an NHWC tensor (channels_last underneath), mean 1, std 3:
    its output and the scale's gradient within float32 rounding of float64, where torch's own batch_norm on the
    channels_last view is measurably further (the reason for the NCHW copy); running statistics by torch's rule."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from zoo.frameworks.keras_torch_ops import batch_norm

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16, 16, 8)) * 3 + 1
    gamma, beta, dy = rng.uniform(0.5, 1.5, 8), rng.standard_normal(8), rng.standard_normal(x.shape)
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    xhat = (x - mean) / np.sqrt(var + 1e-5)
    ref_y, ref_dgamma = xhat * gamma + beta, (dy * xhat).sum((0, 1, 2))
    n = x.size // 8

    def run(fn):
        xt = torch.tensor(x, dtype=torch.float32)
        g = torch.tensor(gamma, dtype=torch.float32, requires_grad=True)
        y, rm, rv = fn(xt, g, torch.tensor(beta, dtype=torch.float32))
        y.backward(torch.tensor(dy, dtype=torch.float32))
        return (np.abs(y.detach().numpy() - ref_y).max() / np.abs(ref_y).max(),
                np.abs(g.grad.numpy() - ref_dgamma).max() / np.abs(ref_dgamma).max(), rm, rv)

    def torch_channels_last(xt, g, b):
        rm, rv = torch.zeros(8), torch.ones(8)
        return F.batch_norm(xt.permute(0, 3, 1, 2), rm, rv, g, b, True, 0.1, 1e-5).permute(0, 2, 3, 1), rm, rv

    y_err, g_err, rm, rv = run(lambda xt, g, b: batch_norm(xt, g, b, torch.zeros(8), torch.ones(8), True, 0.1, 1e-5))
    assert y_err <= 2e-7 and g_err <= 2e-7, (y_err, g_err)
    assert np.abs(rm.numpy() - 0.1 * mean).max() <= 1e-6
    assert np.abs(rv.numpy() - (0.9 + 0.1 * var * n / (n - 1))).max() <= 1e-6
    cl_y, cl_g, _, _ = run(torch_channels_last)
    assert cl_y > 2 * y_err and cl_g > 2 * g_err, (cl_y, y_err, cl_g, g_err)


@pytest.mark.torch
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_keras_torch_optimizer_steps_are_the_formulas(optimizer):
    """keras_torch_ops.sgd_step / adamw_step (Keras on PyTorch, every tensor at once in place) against the
    formulas of zoo.training in float64 over three steps, a zero gradient included; the gradients are not
    changed."""
    torch = pytest.importorskip("torch")
    from zoo.frameworks.keras_torch_ops import adamw_step, sgd_step

    rng = np.random.default_rng(1)
    shapes = [(3, 3, 4, 5), (5,)]
    w = [rng.standard_normal(s) for s in shapes]
    s1, s2 = [np.zeros(s) for s in shapes], [np.zeros(s) for s in shapes]
    tw, t1, t2 = ([torch.tensor(a, dtype=torch.float32) for a in arrays] for arrays in (w, s1, s2))
    lr, mom, decay, b1, b2, eps = 0.1, 0.9, 5e-4, 0.9, 0.999, 1e-8
    for step in (1, 2, 3):
        g = [rng.standard_normal(s) * (step != 2) for s in shapes]
        tg = [torch.tensor(a, dtype=torch.float32) for a in g]
        before = [t.clone() for t in tg]
        if optimizer == "sgd":
            sgd_step(tw, tg, t1, lr, mom, decay)
            for i in range(len(w)):
                gi = g[i] + decay * w[i]
                s1[i] = mom * s1[i] + gi
                w[i] = w[i] - lr * (gi + mom * s1[i])
        else:
            adamw_step(tw, tg, t1, t2, lr, step, decay, b1, b2, eps)
            for i in range(len(w)):
                w[i] = w[i] * (1 - lr * decay)
                s1[i] = b1 * s1[i] + (1 - b1) * g[i]
                s2[i] = b2 * s2[i] + (1 - b2) * g[i] ** 2
                w[i] = w[i] - lr * (s1[i] / (1 - b1 ** step)) / (np.sqrt(s2[i] / (1 - b2 ** step)) + eps)
        assert all(torch.equal(a, b) for a, b in zip(tg, before)), "the step changed the gradients"
        for a, ref in zip(tw, w):
            assert np.abs(a.numpy() - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())


# A 3x3 conv with padding 1 on [2, 8, 8, 3], and every_op's model, under the backend named: JAX's compiled input
# gradient (the shapes of its convolutions, whether a pad op is left), torch's calls into keras_torch_ops.
_KERAS_KERNELS = """
import json, sys
import numpy as np
import keras
sys.path.insert(0, "tests")
from op_specs import every_op, revealing_weights
from zoo.frameworks import keras_model as km
layer = km.PaddedConv2D(4, 3, pad=(1, 1), name="c")
layer.build((None, 8, 8, 3))
x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
if keras.backend.backend() == "jax":
    import jax
    hlo = jax.jit(jax.grad(lambda a: (layer(a) ** 2).sum())).lower(x).compile().as_text()
    out = {"convs": [l.split(" = ")[1].split(" ")[0] for l in hlo.splitlines() if " convolution(" in l],
           "pad": " pad(" in hlo}
else:
    from zoo.frameworks import keras_torch_ops
    calls = []
    def counted(name, fn):
        return lambda *a: calls.append(name) or fn(*a)
    for name in ("conv2d", "pool2d", "batch_norm"):
        setattr(keras_torch_ops, name, counted(name, getattr(keras_torch_ops, name)))
    spec = every_op()
    km.predict(km.build(spec, revealing_weights(spec)), np.zeros((2, 12, 12, spec.in_channels), np.float32))
    out = {"calls": sorted(set(calls))}
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_convs_take_each_backends_own_kernel(backend):
    """On JAX the padding is inside the convolution: the input's gradient is a convolution of the input's own
    size, not one over the padded map (10x10 here) whose result a pad op's gradient slices. On PyTorch every
    conv, pool and BatchNorm is keras_torch_ops'. (Their numbers: the keras sessions' agreement and training
    tests.) Each in a process of its own, KERAS_BACKEND set."""
    pytest.importorskip("keras")
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _KERAS_KERNELS], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    if backend == "jax":
        assert out["convs"] and all(s.startswith("f32[2,8,8,") for s in out["convs"]) and not out["pad"], out
    else:
        assert out["calls"] == ["batch_norm", "conv2d", "pool2d"], out
