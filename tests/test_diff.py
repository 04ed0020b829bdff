"""`zoo diff`: the first divergent layer is found where a tensor was changed, an exact conversion shows none,
for NiN, for the spec with every op, for BatchNorm, and for every registered model; and the command's exit codes."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from conftest import TINY, random_weights
from op_specs import every_op, transformer_ops
from op_specs import revealing_weights as bn_weights

import zoo
from zoo import cli
from zoo.io.formats import FORMATS, function
from zoo.spec import Act, AdaptivePool, BatchNorm, Conv, Flatten, Linear, ModelSpec, Parallel, Pool, Seq

NIN = dict(widths=(8, 16, 16))
diff_module = sys.modules["zoo.diff"]  # `zoo.diff` is the function


def _has(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


def bn_net(num_classes: int = 4) -> ModelSpec:
    """A small ResNet-like network: conv, BatchNorm, ReLU, a residual block with a projection, pooling, linear."""
    block = Parallel("add",
                     ("", Seq(("conv1", Conv(8, 12, 3, 2, 1, bias=False)), ("bn1", BatchNorm(12)), ("act", Act()),
                              ("conv2", Conv(12, 12, 3, 1, 1, bias=False)), ("bn2", BatchNorm(12)))),
                     ("downsample", Seq(("0", Conv(8, 12, 1, 2, 0, bias=False)), ("1", BatchNorm(12)))))
    body = Seq(("conv1", Conv(3, 8, 3, 1, 1, bias=False)), ("bn1", BatchNorm(8)), ("relu", Act()),
               ("maxpool", Pool("max", 3, 2, 1)), ("layer1", Seq(("0", Seq(("block", block), ("relu", Act()))))),
               ("avgpool", AdaptivePool(1)), ("flatten", Flatten()), ("fc", Linear(12, num_classes)))
    return ModelSpec(name="bn_net", family="test", in_channels=3, num_classes=num_classes, body=body, input_size=20)


SPECS = {"nin": lambda: zoo.get_spec("nin", input_size=67, **NIN), "every_op": every_op, "bn_net": bn_net,
         "transformer_ops": transformer_ops}
# (spec, the tensor changed, the layer that must be reported first)
PERTURBED = [
    ("nin", "blocks.2.conv1.weight", "blocks.2.conv1"),
    ("nin", "blocks.0.conv0.bias", "blocks.0.conv0"),
    ("every_op", "res.downsample.1.running_var", "res.downsample.1"),  # in the second branch of an addition
    ("every_op", "dense.grow.conv.weight", "dense.grow.conv"),
    ("every_op", "stem_bn.running_mean", "stem_bn"),
    ("every_op", "head.4.bias", "head.4"),
    ("bn_net", "layer1.0.bn2.weight", "layer1.0.bn2"),  # a Parallel's branches hang from its parent's path
    ("bn_net", "layer1.0.downsample.1.running_mean", "layer1.0.downsample.1"),
    ("bn_net", "fc.weight", "fc"),
    ("transformer_ops", "cn.layer_scale", "cn.layer_scale"),  # a tensor its layer's path names
    ("transformer_ops", "stem.1.weight", "stem.1"),  # LayerNorm over an image's channels
    ("transformer_ops", "class_token", "class_token"),
    ("transformer_ops", "layer0.attn.in_proj_weight", "layer0.attn"),  # attention, by its layer's name
    ("transformer_ops", "layer1.attn.out_proj.weight", "layer1.attn"),
    ("transformer_ops", "layer1.ln_1b.bias", "layer1.ln_1b"),  # LayerNorm over tokens
]


def _weights(spec):
    return bn_weights(spec, seed=1)


def _perturbed(w, name):
    """`w` with one tensor changed throughout, so that no dead ReLU hides the change."""
    w = dict(w)
    w[name] = (w[name] * 3.0 if "running_var" in name else w[name] * 1.5 + 0.1).astype(np.float32)
    return w


@pytest.mark.parametrize("which", list(SPECS))
def test_an_exact_run_shows_no_divergence(which, framework):
    spec = SPECS[which]()
    w = _weights(spec)
    rows = zoo.diff(spec, "reference", framework, weights=w)
    assert isinstance(rows, list) and [r.layer for r in rows] == [layer.path for layer in spec.layers()]
    assert rows.first is None and not rows.diverged, str(rows)
    assert all(r.max_abs <= r.tolerance for r in rows)
    assert [r.shape for r in rows] == [s for _, s in spec.layer_shapes(spec.input_size, 2)]  # NCHW, whatever the layout
    assert "no divergence: all" in str(rows)


@pytest.mark.parametrize("which, tensor, layer", PERTURBED, ids=[f"{s}:{t}" for s, t, _ in PERTURBED])
def test_the_first_divergent_layer_is_the_one_changed(which, tensor, layer, framework):
    """One framework's model gets one tensor changed with set_weights: the diff names that layer first, and
    every layer before it agrees."""
    spec = SPECS[which]()
    w = _weights(spec)
    model = zoo.load(spec, framework, weights=w)
    zoo.set_weights(model, _perturbed(w, tensor))
    rows = zoo.diff(spec, "reference", model, weights=w)
    assert rows.first is not None and rows.first.layer == layer, str(rows)
    at = [r.layer for r in rows].index(layer)
    assert not any(r.diverged for r in rows[:at])
    assert rows[-1].max_abs > 0  # the logits see it
    table = str(rows)
    assert f"first divergence: {layer} (" in table
    assert next(line for line in table.splitlines() if line.startswith(layer + " ")).endswith("<- first divergence")
    # the same against the framework's own unperturbed model, in either order
    other = zoo.diff(spec, model, framework, weights=w)
    assert other.first.layer == layer and other.a == f"{framework} model" and other.b == framework


@pytest.mark.parametrize("preset", zoo.list_models())
def test_every_registered_model(preset):
    """It walks spec.layers(), so a new family works the day it is registered."""
    pytest.importorskip("torch")
    spec = zoo.get_spec(preset, **TINY[preset])
    size = (spec.min_input_size,) * 2 if spec.fits((spec.min_input_size,) * 2) is None else spec.input_size
    rows = zoo.diff(preset, "torch", "reference", input_size=size, weights=random_weights(spec, 0),
                    overrides=TINY[preset])
    assert len(rows) == len(spec.layers()) and rows.first is None, str(rows)


def test_tolerance_is_the_callers():
    pytest.importorskip("torch")
    spec = SPECS["nin"]()
    w = _weights(spec)
    # float32 against float64 at a tolerance no float32 computation meets: the first conv already diverges
    assert zoo.diff(spec, "torch", "reference", weights=w, tol=1e-12).first.layer == "blocks.0.conv0"
    model = zoo.load(spec, "torch", weights=w)
    small = {k: v.copy() for k, v in w.items()}
    small["blocks.1.conv1.bias"][0] += 1e-4
    zoo.set_weights(model, small)
    assert zoo.diff(spec, "reference", model, weights=w).first.layer == "blocks.1.conv1"
    assert zoo.diff(spec, "reference", model, weights=w, tol=1e-2).first is None


def test_nan_and_shape_comparisons():
    compare = diff_module._compare
    a = np.array([1.0, np.nan, np.inf, 2.0])
    assert compare(a, a.copy()) == (0.0, 0.0)  # NaN where the other has NaN, and equal infinities, agree
    assert compare(a, np.array([1.0, 0.0, np.inf, 2.0]))[0] == np.inf  # NaN on one side only
    assert compare(a, np.array([1.0, np.nan, -np.inf, 2.5]))[0] == np.inf
    assert compare(np.ones((2, 3)), np.ones((3, 2))) == (np.inf, np.inf)
    err, rel = compare(np.array([4.0, -2.0]), np.array([4.0, -1.0]))
    assert (err, rel) == (1.0, 0.25)


def _write(fmt, weights, spec, path):
    function(FORMATS[fmt], "writer")(weights, spec, path)
    return path


def test_two_files_each_in_its_own_framework(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    spec = every_op()
    w = _weights(spec)
    a = _write("torch", w, spec, tmp_path / "a.pt")
    b = _write("safetensors", w, spec, tmp_path / "b.safetensors")
    rows = zoo.diff("every_op", a, b)
    assert rows.first is None and (rows.a, rows.b) == ("a.pt (torch)", "b.safetensors (torch)")
    assert all(r.max_abs == 0 for r in rows)  # the same weights in the same framework: bit-identical
    same = zoo.diff("every_op", a, b, runner="reference")
    assert same.a == "a.pt (float64 reference)" and all(r.max_abs == 0 for r in same)
    c = _write("safetensors", _perturbed(w, "res.conv1.weight"), spec, tmp_path / "c.safetensors")
    assert zoo.diff("every_op", a, c).first.layer == "res.conv1"
    assert zoo.diff("every_op", a, c, runner="reference").first.layer == "res.conv1"
    # a framework side runs the file side's weights, unless told otherwise
    assert zoo.diff("every_op", c, "reference").first is None
    assert zoo.diff("every_op", "reference", c, weights=w).first.layer == "res.conv1"


@pytest.mark.parametrize("fmt", [pytest.param("flax", marks=pytest.mark.flax),
                                 pytest.param("keras", marks=pytest.mark.keras),
                                 pytest.param("keras_archive", marks=pytest.mark.keras),
                                 pytest.param("onnx", marks=pytest.mark.onnx)])
def test_a_converted_file_against_its_source(fmt, tmp_path):
    """`zoo diff nin model.pt converted.weights.h5`: the conversion is exact, layer by layer."""
    pytest.importorskip("torch")
    if not _has(*{"flax": ("flax", "orbax"), "keras": ("keras", "h5py"), "keras_archive": ("keras",),
                  "onnx": ("onnx", "onnxruntime")}[fmt]):
        pytest.skip(f"{fmt} not installed")
    from zoo import conversion

    spec = zoo.get_spec("nin", input_size=67, **NIN)
    w = random_weights(spec, 2)
    src = _write("torch", w, spec, tmp_path / "model.pt")
    dst = tmp_path / {"flax": "converted", "keras": "converted.weights.h5", "keras_archive": "converted.keras",
                      "onnx": "converted.onnx"}[fmt]
    conversion.convert(src, dst)
    rows = zoo.diff("nin", src, dst)
    assert rows.first is None and rows.b.endswith(f"({FORMATS[fmt].framework})"), str(rows)
    assert cli.main(["diff", "nin", str(src), str(dst)]) == 0


def test_another_keras_backend_runs_in_a_process_of_its_own():
    """The machinery behind keras[BACKEND]: a side traced in a fresh process gives what it gives here."""
    pytest.importorskip("torch")
    spec = every_op()
    w = _weights(spec)
    x = np.random.default_rng(0).standard_normal((2, 2, 23, 17)).astype(np.float32)
    side = diff_module._Side("torch", "torch", {}, weights=w)
    here = diff_module._run(side, spec, x)
    there = diff_module._run_elsewhere(side, spec, x)
    assert [p for p, _ in there] == [p for p, _ in here] == [layer.path for layer in spec.layers()]
    for (path, a), (_, b) in zip(here, there):
        np.testing.assert_array_equal(a, b, err_msg=path)
    broken = diff_module._Side("flax-less", "no_such_framework", {}, weights=w)
    with pytest.raises(diff_module.SideFailed, match="flax-less: its process failed: ValueError: unknown framework"):
        diff_module._run_elsewhere(broken, spec, x)


@pytest.mark.keras
def test_keras_on_another_backend():
    if not _has("keras", "jax", "torch"):
        pytest.skip("keras, jax or torch not installed")
    backend = "jax" if diff_module._keras_backend_here() != "jax" else "torch"
    spec = SPECS["bn_net"]()
    rows = zoo.diff(spec, "reference", f"keras[{backend}]", weights=_weights(spec))
    assert rows.b == f"keras[{backend}]" and rows.first is None, str(rows)


def test_sides_that_are_not_comparable(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"B: 'nowhere.pt' is neither a framework \(torch, flax, keras, onnx, "
                                         r"keras\[BACKEND\], reference\) nor an existing weight file"):
        zoo.diff("nin", "torch", "nowhere.pt")
    with pytest.raises(ValueError, match=r"only keras takes a backend"):
        zoo.diff("nin", "torch[cuda]", "reference")
    spec = SPECS["nin"]()
    other = _write("torch", random_weights(bn_net(), 0), bn_net(), tmp_path / "bn.pt")
    with pytest.raises(ValueError, match=r"bn.pt \(torch\) holds a different model \(bn_net, 16 layers\) from the "
                                         r"one compared \(nin, 30 layers\)"):
        zoo.diff(spec, "reference", other)
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        zoo.diff(spec, "torch", "reference", batch=0)
    with pytest.raises(ValueError, match="input 5x5 is too small for nin"):
        zoo.diff(spec, "torch", "reference", input_size=5)


def test_cli_exit_codes_and_table(tmp_path, capsys):
    pytest.importorskip("torch")
    spec = SPECS["nin"]()
    w = random_weights(spec, 0)
    a = _write("torch", w, spec, tmp_path / "a.pt")
    b = _write("torch", _perturbed(w, "blocks.1.conv2.weight"), spec, tmp_path / "b.pt")
    assert cli.main(["diff", "nin", str(a), "reference", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nin: a.pt (torch) (a) vs float64 reference (b), input (1, 1, 67, 67) NCHW, seed 0")
    assert "no divergence" in out
    assert cli.main(["diff", "--runner", "reference", "nin", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "first divergence: blocks.1.conv2 (Conv 1x1/1 pad 0, 16->16)" in out
    assert cli.main(["diff", "nin", "torch", "reference", "--set", "widths=(8, 16, 16)", "--input-size", "67x71",
                     "--seed", "3"]) == 0
    assert "input (2, 1, 67, 71) NCHW, seed 3" in capsys.readouterr().out
    assert cli.main(["diff", "nin", "torch", "nowhere.pt"]) == 2
    assert capsys.readouterr().err.startswith("zoo: error: B: 'nowhere.pt' is neither a framework")


def test_diff_options_anywhere():
    args = cli.parse_args("diff --tol 1e-3 resnet18 torch --set num_classes=10 keras --input-size 96x128".split())
    assert (args.model, args.a, args.b, args.tol, args.set, args.input_size) == \
        ("resnet18", "torch", "keras", 1e-3, [("num_classes", 10)], (96, 128))
    args = cli.parse_args("diff nin model.pt converted.weights.h5 --runner reference --batch 1".split())
    assert (args.a, args.b, args.runner, args.batch, args.weights) == \
        ("model.pt", "converted.weights.h5", "reference", 1, None)
    with pytest.raises(SystemExit):
        cli.parse_args("diff nin torch flax --input-size 0".split())


def test_framework_sides_with_a_weights_file_or_tag(tmp_path):
    pytest.importorskip("torch")
    spec = SPECS["nin"]()
    w = random_weights(spec, 4)
    path = _write("torch", w, spec, tmp_path / "w.pt")
    rows = zoo.diff("nin", "torch", "reference", weights=path)
    assert rows.first is None and rows.input_shape == (2, 1, 67, 67)
    perturbed = _write("torch", _perturbed(w, "blocks.3.conv0.bias"), spec, tmp_path / "p.pt")
    assert zoo.diff("nin", perturbed, "reference", weights=path).first.layer == "blocks.3.conv0"
    with pytest.raises(ValueError, match=r"the weights .*w.pt are of another model \(nin\) than the one compared "
                                         r"\(bn_net\)"):
        zoo.diff(bn_net(), "torch", "reference", weights=path)
    from zoo import pretrained

    if "nin.fashion_mnist" in pretrained.manifest():
        rows = zoo.diff("nin", "torch", "reference", weights="fashion_mnist", batch=1, input_size=67)
        assert rows.first is None and len(rows) == 30


def test_channels_last_outputs_come_back_in_nchw():
    """What Flax and Keras trace: NHWC images, and flat features in (H, W, C) order up to the next linear
    layer. The diff compares them in NCHW: here a channels-last stand-in built from the torch model."""
    pytest.importorskip("torch")
    from zoo.frameworks import torch_model
    from zoo.spec import Dropout, Flatten

    spec = every_op()
    model = zoo.load(spec, "torch", weights=_weights(spec))
    x = np.random.default_rng(0).standard_normal((2, 2, 23, 17)).astype(np.float32)
    nchw = torch_model.trace(model, x)
    nodes = {layer.path: layer.node for layer in spec.layers()}

    class ChannelsLast:
        @staticmethod
        def trace(model, x_nhwc):
            out, image = [], None
            for path, y in torch_model.trace(model, np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))):
                if y.ndim == 4:
                    image, y = y, y.transpose(0, 2, 3, 1)
                elif isinstance(nodes[path], (Flatten, Dropout)) and image is not None:
                    y = image.transpose(0, 2, 3, 1).reshape(len(y), -1)  # flattened (H, W, C)
                else:
                    image = None
                out.append((path, y))
            return out

    traced = dict(ChannelsLast.trace(model, x.transpose(0, 2, 3, 1)))
    assert not np.array_equal(traced["head.2"], dict(nchw)["head.2"])  # the stand-in does reorder
    back = diff_module._model_trace(ChannelsLast, model, spec, x, "NHWC")
    assert [p for p, _ in back] == [p for p, _ in nchw]
    for (path, a), (_, b) in zip(back, nchw):
        np.testing.assert_array_equal(a, b, err_msg=path)
    # a flatten whose output is in neither order stays as it is, and shows as a divergence
    broken = {**traced, "head.2": traced["head.2"][:, ::-1]}
    ChannelsLast.trace = staticmethod(lambda model, x: list(broken.items()))
    back = dict(diff_module._model_trace(ChannelsLast, model, spec, x, "NHWC"))
    assert not np.array_equal(back["head.2"], dict(nchw)["head.2"])


@pytest.mark.onnx
@pytest.mark.parametrize("edit, layer", [("relu_to_sigmoid", "relu"), ("batchnorm_epsilon", "bn1"),
                                         ("mul_before_logits", "fc"), ("stride", "conv1")])
def test_an_onnx_side_is_the_files_own_graph(edit, layer, tmp_path):
    """`zoo diff resnet18 edited.onnx reference`: the .onnx side runs the file's graph (which zoo.load refuses,
    as it is not its spec's), not a model rebuilt from its spec, so the diff shows where the edit is."""
    if not _has("onnx", "onnxruntime"):
        pytest.skip("onnx not installed")
    import fuzz_cases
    import onnx

    spec = zoo.get_spec("resnet18", **TINY["resnet18"])
    path = _write("onnx", random_weights(spec, 0), spec, tmp_path / "m.onnx")
    assert zoo.diff("resnet18", path, "reference").first is None
    proto = onnx.load(str(path))
    fuzz_cases.ONNX_GRAPH_EDITS[edit](proto)
    onnx.save(proto, str(path))
    rows = zoo.diff("resnet18", path, "reference")
    assert rows.a == "m.onnx (onnx)" and rows.first is not None and rows.first.layer == layer, str(rows)
    assert cli.main(["diff", "resnet18", str(path), "reference"]) == 1
