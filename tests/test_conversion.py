"""Weight conversion: every (source, destination) format pair for every preset, compared by numbers."""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZES, TINY, random_weights, run
from op_specs import every_op
from op_specs import revealing_weights as bn_weights

import zoo
from zoo import conversion, reference
from zoo.conversion import FORMATS, ConversionError
from zoo.io.checkpoint import Checkpoint
from zoo.io.formats import function
from zoo.io.infer import infer

_NEEDS = {"torch": ["torch"], "safetensors": ["safetensors", "torch"], "flax": ["flax", "orbax"],
          "keras": ["keras", "h5py"], "keras_archive": ["keras"], "onnx": ["onnx", "onnxruntime"]}
_SUFFIX = {"torch": "model.pt", "safetensors": "model.safetensors", "flax": "ckpt", "keras": "model.weights.h5",
           "keras_archive": "model.keras", "onnx": "model.onnx"}


def _needs(*formats: str) -> None:
    """Skip, naming what is missing, unless every package these formats (and their frameworks) need is here."""
    packages = {p for f in formats for p in _NEEDS[f]}
    if any(FORMATS[f].framework == "keras" for f in formats):
        packages.add(os.environ.get("KERAS_BACKEND", "tensorflow"))
    missing = sorted(p for p in packages if importlib.util.find_spec(p) is None)
    if missing:
        pytest.skip(f"{', '.join(formats)}: {', '.join(missing)} not installed")


def _formats():
    """The format axis; Keras formats carry the keras mark, so the Keras sessions run them on every backend
    (and the ONNX format the onnx mark)."""
    marks = {"keras": [pytest.mark.keras], "onnx": [pytest.mark.onnx]}
    return [pytest.param(f, marks=marks.get(FORMATS[f].framework, []), id=f) for f in FORMATS
            if FORMATS[f].every_model]  # the hf format (timm's families only): tests/test_hf.py


def _write(fmt: str, weights, spec, path):
    function(FORMATS[fmt], "writer")(weights, spec, path)
    return path


# One model of each family (the torchvision architecture where there is one, for BatchNorm statistics and
# torchvision's names); each pair compiles both frameworks' models, so not every preset.
PAIR_PRESETS = ["lenet", "alexnet", "vgg11_d2l", "nin", "googlenet", "inception_v3", "resnet18", "densenet_d2l",
                "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "squeezenet1_1", "convnext_tiny", "vit_d2l"]
# Every format pair (6 x 6) for these: a flatten before a linear layer (lenet), NiN. The others go to and
# from the canonical safetensors in every format (11 pairs): a conversion is a reader and a writer through
# canonical weights, so that proves each format's adapter on each family. BatchNorm's statistics go through
# every pair in test_batchnorm_statistics_survive_every_pair. Each runs at its tiny variant's smallest input
# (conftest.SIZES): the weights' layouts are what a pair proves; ResNet-18's 46 pairs at 224 and
# Inception-v3's 15 at 299 took 3 of CI's minutes.
ALL_PAIRS = ["lenet", "nin"]


def _pairs():
    formats = _formats()
    hub = next(f for f in formats if f.values[0] == "safetensors")
    for preset in PAIR_PRESETS:
        for src in formats:
            for dst in formats:
                if preset in ALL_PAIRS or hub in (src, dst):
                    yield pytest.param(preset, src.values[0], dst.values[0], marks=[*src.marks, *dst.marks],
                                       id=f"{preset}-{src.id}-{dst.id}")


def test_pair_presets_cover_every_family():
    assert sorted({zoo.get_spec(p).family for p in PAIR_PRESETS}) == sorted({zoo.get_spec(m).family
                                                                            for m in zoo.list_models()})


@pytest.mark.parametrize("preset, src, dst", list(_pairs()))
def test_every_pair(preset, src, dst, tmp_path, record_error):
    _needs(src, dst)
    spec = zoo.get_spec(preset, **TINY[preset])
    spec = zoo.get_spec(preset, **{**TINY[preset], "input_size": SIZES[preset][0] or spec.min_input_size})
    w = random_weights(spec, seed=3)
    src_path = _write(src, w, spec, tmp_path / ("src_" + _SUFFIX[src]))
    dst_path = tmp_path / ("dst_" + _SUFFIX[dst])
    report = conversion.convert(src_path, dst_path)
    assert report.max_abs is not None and report.max_rel <= 1e-5  # convert() refuses worse itself
    assert dst_path.exists() and [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
    back = conversion.read(dst_path)
    assert list(sorted(back.weights)) == sorted(w)
    for k in w:  # transposes are exact
        np.testing.assert_array_equal(back.weights[k], w[k], err_msg=k)
    got_spec, _ = conversion.resolve_spec(back)
    assert got_spec.param_shapes() == spec.param_shapes() and got_spec.layers() == spec.layers()
    fw = FORMATS[dst].framework
    model = zoo.load(preset, fw, weights=dst_path)
    x = np.random.default_rng(0).standard_normal((2, spec.in_channels, *spec.input_size)).astype(np.float32)
    record_error(f"convert:{preset}", fw, run(fw, model, x), reference.forward(spec, w, x))


def test_round_trip_torch_flax_keras_torch_bit_identical(tmp_path):
    _needs("torch", "flax", "keras")
    spec = zoo.get_spec("nin")
    w = random_weights(spec, seed=5)
    a = _write("torch", w, spec, tmp_path / "a.pt")
    conversion.convert(a, tmp_path / "b")
    conversion.convert(tmp_path / "b", tmp_path / "c.weights.h5")
    conversion.convert(tmp_path / "c.weights.h5", tmp_path / "d.pt")
    import torch

    # the zoo's .pt holds {'state_dict': ..., 'zoo_spec': ...}
    first, last = (torch.load(p, weights_only=True)["state_dict"] for p in (a, tmp_path / "d.pt"))
    assert list(first) == list(last)
    assert all(torch.equal(first[k], last[k]) for k in first)


def _d2l_nin(num_classes: int = 10, sequential: bool = False):
    """The seed post's NiN class (typos fixed), written plainly as a user would have it."""
    from torch import nn

    def nin_block(i, o, kernel_size, stride, padding):
        return nn.Sequential(nn.Conv2d(i, o, kernel_size, stride, padding), nn.ReLU(),
                             nn.Conv2d(o, o, 1), nn.ReLU(), nn.Conv2d(o, o, 1), nn.ReLU())

    net = nn.Sequential(nin_block(1, 96, 11, 4, 0), nn.MaxPool2d(3, 2), nin_block(96, 256, 5, 1, 2), nn.MaxPool2d(3, 2),
                        nin_block(256, 384, 3, 1, 1), nn.MaxPool2d(3, 2), nn.Dropout(0.5),
                        nin_block(384, num_classes, 3, 1, 1), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1))
    if sequential:
        return net.eval()

    class NiN(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    return NiN().eval()


@pytest.mark.parametrize("dst", _formats())
@pytest.mark.parametrize("sequential", [False, True], ids=["seed_class", "d2l_sequential"])
def test_foreign_d2l_checkpoint(sequential, dst, tmp_path, record_error):
    _needs("torch", dst)
    import torch

    torch.manual_seed(0)
    d2l = _d2l_nin(num_classes=7, sequential=sequential)
    torch.save(d2l.state_dict(), tmp_path / "d2l.pt")
    assert ("net.0.0.weight" in d2l.state_dict()) != sequential
    report = conversion.convert(tmp_path / "d2l.pt", tmp_path / _SUFFIX[dst])
    assert "recognised foreign keys: d2l NiN" in str(report)
    assert report.spec.num_classes == 7 and report.spec.name == "nin"
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        want = d2l(x).numpy().astype(np.float64)
    fw = FORMATS[dst].framework
    model = zoo.load("nin", fw, weights=tmp_path / _SUFFIX[dst])
    record_error("convert:d2l", fw, run(fw, model, x.numpy()), want)


def test_spec_from_shapes_and_overrides(tmp_path):
    _needs("safetensors")
    spec = zoo.get_spec("nin_cifar10", in_channels=1, num_classes=4, widths=((8, 8, 8), (8, 8, 8), (8, 8)))
    from safetensors.numpy import save_file

    save_file(random_weights(spec, 0), tmp_path / "plain.safetensors")  # no metadata
    ckpt = conversion.read(tmp_path / "plain.safetensors")
    got, origin = conversion.resolve_spec(ckpt)
    assert got == spec
    assert origin == ("inferred from the tensor shapes: nin_cifar10 with in_channels=1, num_classes=4, "
                      "widths=((8, 8, 8), (8, 8, 8), (8, 8))")
    with pytest.raises(ConversionError, match="the file holds a nin_cifar10 model, not a nin"):
        conversion.resolve_spec(conversion.read(_write("safetensors", random_weights(spec, 0), spec,
                                                       tmp_path / "meta.safetensors")), model="nin")


# Tiny variants whose overrides the shapes do not give (infer.py's docstring says why); they get the error that
# says to name the overrides, and naming them works.
NOT_INFERRED = {
    "resnext50_32x4d": "groups and width_per_group set the bottleneck widths only together, with the base width",
    "regnet_x_400mf": "w_0, w_a and w_m are a quantised rule: many values give one network",
    "regnet_y_400mf": "w_0, w_a and w_m are a quantised rule: many values give one network",
    **{vit: "num_heads shows in no tensor's shape; at other widths than the preset's it is asked for"
       for vit in ("vit_b_16", "vit_b_32", "vit_d2l")},
}


@pytest.mark.parametrize("preset", sorted(NOT_INFERRED))
def test_overrides_inference_cannot_read_are_asked_for(preset):
    spec = zoo.get_spec(preset, **TINY[preset])
    with pytest.raises(ConversionError, match=rf"Name the model and the overrides .*zoo convert {preset} --set"):
        infer(spec.param_shapes(), preset)
    ckpt = Checkpoint(random_weights(spec, 0), "safetensors")
    got, origin = conversion.resolve_spec(ckpt, preset, dict(TINY[preset]))
    assert got == spec and origin.startswith(f"{preset} with ")


@pytest.mark.parametrize("preset", [m for m in zoo.list_models() if m not in NOT_INFERRED])
def test_inference_reads_every_override_back(preset):
    """The tiny variant of every preset is found again from its tensor shapes alone, with the overrides it
    was made with (widths, depths and width multipliers included), so a plain state_dict of any of them needs
    no metadata."""
    spec = zoo.get_spec(preset, **TINY[preset])
    found = infer(spec.param_shapes(), preset)
    assert found.spec.layers() == spec.layers() and found.spec.param_shapes() == spec.param_shapes()
    assert found.spec.in_channels == spec.in_channels and found.spec.num_classes == spec.num_classes
    if "input_size" not in TINY[preset]:
        assert found.spec == spec
    try:  # without naming the model: the same shapes, unless another preset has them too
        found = infer(spec.param_shapes())
    except ConversionError as e:
        assert re.search(r"the tensor shapes fit \w+ and \w+ alike", str(e)) and preset in str(e), e
    else:
        assert found.spec.param_shapes() == spec.param_shapes()


def test_inference_reads_a_width_multiplier_and_depths_at_full_size():
    """A MobileNetV2 at width 0.75 (one of its published widths) and a ResNet-50 with ResNet-101's depth
    pattern cut to (2, 3, 4, 2): the multiplier is read as the shortest decimal that gives every width."""
    for preset, overrides in [("mobilenet_v2", dict(width_mult=0.75, num_classes=10)),
                              ("resnet50", dict(layers=(2, 3, 4, 2)))]:
        spec = zoo.get_spec(preset, **overrides)
        found = infer(spec.param_shapes(), preset)
        assert found.spec == spec and found.overrides == overrides, found.describe()


def test_shapes_that_fit_two_presets_alike_are_refused():
    """LeNet with sigmoids and with ReLUs have the same tensors: inference names both, never guesses."""
    shapes = zoo.get_spec("lenet_relu").param_shapes()
    with pytest.raises(ConversionError, match=re.escape(
            "the tensor shapes fit lenet and lenet_relu alike, which differ where shapes do not show (act1: "
            "Act(kind='sigmoid') in lenet, Act(kind='relu') in lenet_relu): name the model")):
        infer(shapes)
    assert infer(shapes, "lenet_relu").spec == zoo.get_spec("lenet_relu")


def test_inference_prefers_a_preset_at_its_defaults():
    """nin's default shapes also fit nin_imagenet with other widths; the exact default fit wins."""
    found = infer(zoo.get_spec("nin").param_shapes())
    assert found.spec == zoo.get_spec("nin") and found.overrides == {} and found.describe() == "nin at its defaults"
    found = infer(zoo.get_spec("nin", num_classes=7).param_shapes())
    assert found.spec.name == "nin" and found.overrides == {"num_classes": 7}


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _needs("safetensors")
    from safetensors.numpy import save_file

    save_file({"fc.weight": np.zeros((3, 4), np.float32)}, tmp_path / "mlp.safetensors")
    with pytest.raises(ConversionError, match=r"no registered model has these tensor names, so no spec can be "
                                              r"inferred .*the file holds 1 tensors: fc.weight\. .*zoo summary MODEL"):
        conversion.convert(tmp_path / "mlp.safetensors", tmp_path / "out.safetensors")
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    w = random_weights(spec, 0)
    w["blocks.0.conv0.weight"] = np.zeros((8, 1, 7, 7), np.float32)  # no preset has a 7x7 first conv
    save_file(w, tmp_path / "odd.safetensors")
    # the preset whose names fit, the overrides read from the shapes, the tensor that still differs, and the fix
    expected = re.escape("fit no registered model: nin (widths=(8, 8, 8) read from the shapes): blocks.0.conv0.weight "
                         "should be (8, 1, 11, 11), the file has (8, 1, 7, 7)")
    with pytest.raises(ConversionError, match=expected + r".*Name the model and the overrides .*zoo convert nin --set"):
        conversion.convert(tmp_path / "odd.safetensors", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_extra_and_misshapen_tensors_all_listed(tmp_path):
    _needs("torch")
    import torch

    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    w = {k: torch.from_numpy(v) for k, v in random_weights(spec, 0).items()}
    del w["blocks.1.conv2.bias"], w["blocks.2.conv0.weight"]
    w["blocks.0.conv9.weight"] = torch.zeros(1)
    w["blocks.3.conv1.weight"] = torch.zeros(10, 10, 3, 3)
    torch.save(w, tmp_path / "bad.pt")
    with pytest.raises(zoo.WeightsError) as e:
        conversion.convert(tmp_path / "bad.pt", tmp_path / "out.pt", model="nin", overrides={"widths": (8, 8, 8)})
    msg = str(e.value)
    assert "missing 2 tensor(s): blocks.1.conv2.bias, blocks.2.conv0.weight" in msg
    assert "unexpected 1 tensor(s): blocks.0.conv9.weight" in msg
    assert "blocks.3.conv1.weight: expected shape (10, 10, 1, 1), got (10, 10, 3, 3)" in msg
    assert not (tmp_path / "out.pt").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    _needs("torch")
    import torch

    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    torch.save({"blocks.0.conv0.weight": exploit}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="refused: it pickles Python objects other than tensors"):
        conversion.convert(tmp_path / "evil.pt", tmp_path / "out.safetensors")
    assert not marker.exists()
    with open(tmp_path / "evil.pkl", "wb") as f:  # plain pickle with a .pt name: refused just the same
        pickle.dump(exploit, f)
    with pytest.raises(ConversionError):
        conversion.read(tmp_path / "evil.pkl", "torch")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", _formats())
def test_truncated_or_corrupt_file(fmt, tmp_path):
    _needs(fmt)
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    path = _write(fmt, random_weights(spec, 0), spec, tmp_path / _SUFFIX[fmt])
    if fmt == "flax":  # a checkpoint directory that lost its data
        for p in path.rglob("*"):
            if p.is_file() and "manifest" in p.name:
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConversionError, match="truncated|corrupt|incomplete"):
        conversion.convert(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_nonfinite_refused_unless_allowed(tmp_path):
    _needs("safetensors")
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    w = random_weights(spec, 0)
    w["blocks.1.conv0.weight"][0, 0, 0, 0] = np.nan
    w["blocks.2.conv1.bias"][1] = np.inf
    src = _write("safetensors", w, spec, tmp_path / "nan.safetensors")
    with pytest.raises(ConversionError, match=r"NaN or Inf in 2 tensor\(s\): blocks.1.conv0.weight \(1 values\)"):
        conversion.convert(src, tmp_path / "out.safetensors")
    conversion.convert(src, tmp_path / "out.safetensors", allow_nonfinite=True, verify=False)
    assert np.isnan(conversion.read(tmp_path / "out.safetensors").weights["blocks.1.conv0.weight"][0, 0, 0, 0])


def test_existing_output_refused_unless_forced(tmp_path):
    _needs("safetensors")
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    src = _write("safetensors", random_weights(spec, 0), spec, tmp_path / "a.safetensors")
    out = tmp_path / "b.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(ConversionError, match=r"b.safetensors exists; refusing to overwrite it \(pass --force"):
        conversion.convert(src, out)
    assert out.read_bytes() == b"precious"
    with pytest.raises(ConversionError, match=r"is not a safetensors output \(text, starting 'precious'\); "
                                              r"refusing to replace it even with --force"):
        conversion.convert(src, out, force=True)  # --force replaces a previous output only
    assert out.read_bytes() == b"precious"
    out.unlink()
    conversion.convert(src, out)
    conversion.convert(src, out, force=True)
    assert conversion.read(out).spec == spec


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_crash_mid_write_leaves_nothing(interrupt, tmp_path, monkeypatch):
    _needs("safetensors")
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    src = _write("safetensors", random_weights(spec, 0), spec, tmp_path / "a.safetensors")
    import zoo.io.io_safetensors as io

    def half_write(weights, spec, path):
        path.write_bytes(b"half a file")
        raise interrupt("killed mid-write")

    monkeypatch.setattr(io, "write", half_write)
    # a writer's own error is reported as a ConversionError naming the output
    with pytest.raises(KeyboardInterrupt if interrupt is KeyboardInterrupt else ConversionError,
                       match="killed mid-write"):
        conversion.convert(src, tmp_path / "b.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    _needs("torch")
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    src = _write("safetensors", random_weights(spec, 0), spec, tmp_path / "a.safetensors")
    import zoo.io.io_torch as io

    real = io.write
    monkeypatch.setattr(io, "write", lambda w, s, p: real({k: v * 1.001 for k, v in w.items()}, s, p))
    with pytest.raises(ConversionError, match="verification failed: tensors read back from the output differ"):
        conversion.convert(src, tmp_path / "b.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_unknown_suffix_lists_known(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"weights")  # a missing input is said first
    with pytest.raises(ConversionError, match=r"cannot tell the format of .*model.bin from its suffix '.bin'; "
                                              r"known: .pt, .pth \(torch\); .safetensors"):
        conversion.convert(tmp_path / "model.bin", tmp_path / "out.pt")
    with pytest.raises(ConversionError, match=r"unknown format 'tflite'; known: .*, onnx, hf, keras_hub \(or a "
                                              r"framework name: torch, flax, keras, onnx\)"):
        conversion.convert(tmp_path / "model.bin", tmp_path / "out.pt", src_format="tflite")


def test_half_precision_kept_or_cast_only_when_asked(tmp_path):
    _needs("torch", "safetensors")
    import torch

    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    w = {k: torch.from_numpy(v).half() for k, v in random_weights(spec, 0).items()}
    torch.save(w, tmp_path / "half.pt")
    report = conversion.convert(tmp_path / "half.pt", tmp_path / "half.safetensors")
    assert report.dtype == "float16" and conversion.read(tmp_path / "half.safetensors").dtype == "float16"
    report = conversion.convert(tmp_path / "half.pt", tmp_path / "single.pt", dtype="float32")
    assert "cast from float16 to float32, as asked" in str(report)
    assert conversion.read(tmp_path / "single.pt").dtype == "float32"
    bf = {k: v.to(torch.bfloat16) for k, v in w.items()}
    torch.save(bf, tmp_path / "bf16.pt")
    assert conversion.read(tmp_path / "bf16.pt").dtype == "bfloat16"
    with pytest.warns(UserWarning, match="holds bfloat16 weights; loading them as float32"):
        zoo.load("nin", "torch", weights=tmp_path / "bf16.pt")


@pytest.mark.keras
def test_half_precision_to_keras_needs_dtype(tmp_path):
    _needs("torch", "keras")
    import torch

    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    torch.save({k: torch.from_numpy(v).half() for k, v in random_weights(spec, 0).items()}, tmp_path / "half.pt")
    with pytest.raises(ConversionError, match="holds float16 weights and keras files hold float32: pass --dtype"):
        conversion.convert(tmp_path / "half.pt", tmp_path / "k.weights.h5")
    report = conversion.convert(tmp_path / "half.pt", tmp_path / "k.weights.h5", dtype="float32")
    assert "cast from float16 to float32, as asked" in str(report)


def test_cli_convert_and_inspect(tmp_path, capsys):
    _needs("torch", "safetensors")
    from zoo.cli import main

    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    src = _write("torch", random_weights(spec, 0), spec, tmp_path / "m.pt")
    assert main(["convert", "nin", str(src), str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "torch -> safetensors: nin" in out and "verified: torch (source) vs torch (destination)" in out
    assert main(["convert", "--from", "torch", "--to", "safetensors", "--no-verify", str(src),
                 str(tmp_path / "m2.safetensors")]) == 0
    assert "verified" not in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "m.safetensors")]) == 2
    assert "exists; refusing to overwrite" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "safetensors format, 24 tensors" in out and "spec: the file's metadata" in out
    assert f"fits: nin (family nin), {spec.num_params:,} parameters, 1 input channel(s), 10 classes" in out
    assert "input: nominal 224x224, any size from 67x67 up fits" in out and "BatchNorm" not in out


# --------------------------------------------------------------------------- BatchNorm statistics

@pytest.mark.parametrize("dst", _formats())
@pytest.mark.parametrize("src", _formats())
def test_batchnorm_statistics_survive_every_pair(src, dst, tmp_path, record_error):
    """A spec no preset describes, with every op and BatchNorm statistics that show an eps or variance
    mistake: its spec and every tensor, running_mean and running_var included, cross every format pair."""
    _needs(src, dst)
    spec = every_op()
    w = bn_weights(spec, seed=4)
    assert spec.buffer_names() <= set(w) and len(spec.buffer_names()) == 8
    src_path = _write(src, w, spec, tmp_path / ("src_" + _SUFFIX[src]))
    report = conversion.convert(src_path, tmp_path / ("dst_" + _SUFFIX[dst]))
    assert report.max_rel <= 1e-5 and report.spec == spec
    back = conversion.read(tmp_path / ("dst_" + _SUFFIX[dst]))
    assert back.spec == spec and sorted(back.weights) == sorted(w)
    for k in w:
        np.testing.assert_array_equal(back.weights[k], w[k], err_msg=k)
    fw = FORMATS[dst].framework
    x = np.random.default_rng(1).standard_normal((2, spec.in_channels, *spec.input_size)).astype(np.float32)
    model = zoo.load(spec, fw, weights=back.weights)
    record_error("convert:every_op", fw, run(fw, model, x), reference.forward(spec, w, x))


def _every_op_preset(*, in_channels: int = 2, num_classes: int = 5):
    return every_op(in_channels, num_classes)


@pytest.fixture
def every_op_registered(monkeypatch):
    """every_op() as a registered preset named 'every_op', for this test only."""
    from zoo import _registry

    _every_op_preset.__name__ = "every_op"
    monkeypatch.setitem(_registry._PRESETS, "every_op", _every_op_preset)
    return every_op()


def _torch_state_dict(spec, weights):
    """What `model.state_dict()` of a torch model of `spec` holds: the canonical tensors and, for each
    BatchNorm, torch's num_batches_tracked counter (as torchvision's checkpoints hold them)."""
    import torch

    model = zoo.load(spec, "torch", weights=weights)
    model.train()
    with torch.no_grad():  # counts one batch, so the counters are not all zero
        model(torch.zeros(2, spec.in_channels, *spec.input_size))
    model.eval()
    zoo.set_weights(model, weights)
    return model.state_dict()


def test_num_batches_tracked_dropped_with_a_note(tmp_path, every_op_registered):
    _needs("torch", "safetensors")
    import torch
    from safetensors.torch import save_file

    spec = every_op_registered
    w = bn_weights(spec, seed=2)
    state = _torch_state_dict(spec, w)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 4 and int(state[counters[0]]) == 1
    torch.save(state, tmp_path / "tv.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "tv.safetensors"))
    note = ("dropped 4 num_batches_tracked counters: the zoo's BatchNorm momentum is fixed, so they change no "
            "output")
    for name in ("tv.pt", "tv.safetensors"):
        ckpt = conversion.read(tmp_path / name)
        assert note in ckpt.notes, ckpt.notes
        assert sorted(ckpt.weights) == sorted(w)
        for k in w:
            np.testing.assert_array_equal(ckpt.weights[k], w[k], err_msg=k)
        assert note in conversion.inspect(tmp_path / name)
        # the spec is inferred from the shapes, the statistics come along, and the model gives the reference's logits
        model = zoo.load("every_op", "torch", weights=tmp_path / name)
        x = np.random.default_rng(0).standard_normal((2, 2, 23, 17)).astype(np.float32)
        np.testing.assert_allclose(zoo.predict(model, x), reference.forward(spec, w, x), rtol=1e-4, atol=1e-5)
    report = conversion.convert(tmp_path / "tv.pt", tmp_path / "zoo.pt")
    assert note in str(report) and report.spec_origin.startswith("inferred from the tensor shapes: every_op")


def test_pt_written_without_counters_loads_strictly_into_torch(tmp_path):
    """The decision: .pt files hold no num_batches_tracked, and torch's strict load_state_dict accepts them."""
    _needs("torch")
    import torch

    spec = every_op()
    w = bn_weights(spec, seed=3)
    _write("torch", w, spec, tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    assert sorted(state) == sorted(w) and not any("num_batches_tracked" in k for k in state)
    model = zoo.load(spec, "torch")
    assert any("num_batches_tracked" in k for k in model.state_dict())
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    np.testing.assert_array_equal(model.state_dict()["res.downsample.1.running_var"].numpy(),
                                  w["res.downsample.1.running_var"])


@pytest.mark.parametrize("counter", ["float", "matrix"])
def test_a_counter_that_is_not_one_integer_is_refused(counter, tmp_path):
    _needs("torch", "safetensors")
    import torch
    from safetensors.torch import save_file

    spec = every_op()
    state = {k: torch.from_numpy(v) for k, v in bn_weights(spec).items()}
    state["stem_bn.num_batches_tracked"] = torch.tensor(3.0) if counter == "float" else torch.zeros(4, 4,
                                                                                                  dtype=torch.int64)
    torch.save(state, tmp_path / "bad.pt")
    save_file(state, str(tmp_path / "bad.safetensors"))
    for name in ("bad.pt", "bad.safetensors"):
        with pytest.raises(ConversionError, match=r"tensor stem_bn.num_batches_tracked is .*; a BatchNorm counter "
                                                  r"is one integer"):
            conversion.read(tmp_path / name)


def test_inspect_says_the_statistics_are_there_or_missing(tmp_path, every_op_registered):
    _needs("safetensors")
    from safetensors.numpy import save_file

    spec = every_op_registered
    w = bn_weights(spec)
    save_file(w, str(tmp_path / "bn.safetensors"))
    out = conversion.inspect(tmp_path / "bn.safetensors")
    assert "fits: every_op (family test)" in out and "spec: inferred from the tensor shapes: every_op at its " \
                                                      "defaults" in out
    assert "BatchNorm running statistics: present (8 tensors, running_mean and running_var of 4 layers)" in out
    assert "input: nominal 23x17, any size from 2x2 up fits" in out  # its adaptive pool takes any size
    save_file({k: v for k, v in w.items() if "running" not in k}, str(tmp_path / "params_only.safetensors"))
    for model in (None, "every_op"):
        out = conversion.inspect(tmp_path / "params_only.safetensors", model=model)
        assert "fits no model: the tensors fit no registered model: every_op: the file lacks its 8 BatchNorm running " \
               "statistics (running_mean, running_var), which inference needs" in out, out
    # a file whose spec is known says the same
    _write("safetensors", {k: v for k, v in w.items() if "running" not in k}, spec, tmp_path / "meta.safetensors")
    out = conversion.inspect(tmp_path / "meta.safetensors")
    assert "fits no model: weights do not fit every_op" in out
    assert "the file lacks its 8 BatchNorm running statistics (running_mean, running_var)" in out, out


# --------------------------------------------------------------------------- key maps

@pytest.fixture
def keymaps(monkeypatch):
    """The registered key maps, restored after the test; returns a function that registers one more."""
    from zoo import _registry

    monkeypatch.setattr(_registry, "KEYMAPS", list(_registry.KEYMAPS))
    return _registry.register_keymap


def test_a_registered_keymap_renames_and_drops(tmp_path, keymaps):
    _needs("safetensors")
    from safetensors.numpy import save_file

    from zoo._registry import KeyMap

    keymaps(KeyMap("DataParallel NiN (module.*)", ("nin",), ((r"module\.(.*)", r"\1"),),
                   drop=(r"aux\..*",)))
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    w = random_weights(spec, 0)
    save_file({**{f"module.{k}": v for k, v in w.items()}, "aux.weight": np.zeros(3, np.float32),
               "aux.bias": np.zeros(3, np.float32)}, str(tmp_path / "dp.safetensors"))
    ckpt = conversion.read(tmp_path / "dp.safetensors")
    assert "recognised foreign keys: DataParallel NiN (module.*)" in ckpt.notes
    assert "left out 2 tensor(s) on purpose, as that key map says: aux.bias, aux.weight" in ckpt.notes
    assert sorted(ckpt.weights) == sorted(w) and all(np.array_equal(ckpt.weights[k], w[k]) for k in w)
    assert conversion.resolve_spec(ckpt)[0] == spec
    # a map applies only when it names every key: one more key, and the names are left for the spec check
    save_file({**{f"module.{k}": v for k, v in w.items()}, "head.weight": np.zeros(3, np.float32)},
              str(tmp_path / "more.safetensors"))
    ckpt = conversion.read(tmp_path / "more.safetensors")
    assert not any("recognised" in n for n in ckpt.notes) and "head.weight" in ckpt.weights
    with pytest.raises(zoo.WeightsError, match=r"unexpected 25 tensor\(s\): head.weight, module.blocks.0.conv0.bias"):
        conversion.load(tmp_path / "more.safetensors", "nin", {"widths": (8, 8, 8)})
    # naming another model leaves the map out
    assert not any("recognised" in n for n in conversion.read(tmp_path / "dp.safetensors", model="nin_cifar10").notes)


def test_of_two_maps_that_apply_the_one_giving_a_presets_names_wins(tmp_path, keymaps):
    from zoo._registry import KeyMap
    from zoo.io.keymaps import rename, to_canonical

    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    w = {f"model.{k}": v for k, v in random_weights(spec, 0).items()}
    keymaps(KeyMap("wrong: keeps the prefix's dot", ("nin",), ((r"model\.(.*)", r"x.\1"),)))
    keymaps(KeyMap("right", ("nin",), ((r"model\.(.*)", r"\1"),)))
    out, keymap, dropped = to_canonical(w)
    assert keymap.name == "right" and dropped == [] and set(out) == set(spec.param_shapes())
    # canonical names pass unchanged, even where a map would also apply
    keymaps(KeyMap("identity", ("nin",), ((r"(.*)", r"\1"),)))
    same, keymap, _ = to_canonical(random_weights(spec, 0))
    assert keymap is None and set(same) == set(spec.param_shapes())
    # two keys renamed to one name: the map does not apply
    collapsing = KeyMap("collapsing", ("nin",), ((r"model\.blocks\.(\d)\..*", r"blocks.\1"),))
    assert rename(collapsing, ["model.blocks.0.conv0.weight", "model.blocks.0.conv0.bias"]) is None
    assert rename(collapsing, ["model.blocks.0.conv0.weight", "model.blocks.1.conv0.bias"]) == \
        ({"model.blocks.0.conv0.weight": "blocks.0", "model.blocks.1.conv0.bias": "blocks.1"}, [])


# --------------------------------------------------------------------------- import layering

def test_loading_a_file_never_imports_conversion(tmp_path):
    """zoo.load(weights=file) reads through zoo.io alone: the conversion package stays unimported."""
    _needs("torch", "safetensors")
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    for fmt in ("torch", "safetensors"):
        _write(fmt, random_weights(spec, 0), spec, tmp_path / _SUFFIX[fmt])
    code = textwrap.dedent(f"""
        import sys
        import zoo
        for name in ({_SUFFIX['torch']!r}, {_SUFFIX['safetensors']!r}):
            model = zoo.load("nin", "torch", weights={str(tmp_path)!r} + "/" + name)
        print(sorted(m for m in sys.modules if m.partition(".")[0] == "conversion" or m.startswith("zoo.conversion")))
        print("zoo.io" in sys.modules)
    """)
    root = Path(__file__).parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["[]", "True"], r.stdout


def test_torchvision_checkpoints_end_to_end(tmp_path):
    """torchvision's files, as torch.save(model.state_dict()) writes them: ResNet's names are canonical once
    the counters are dropped; GoogLeNet's also hold the auxiliary heads, which its key map leaves out. The
    spec (a tiny variant) is inferred, and the model gives the reference's logits."""
    _needs("torch")
    import torch

    for preset, extra in [("resnet18", {}), ("googlenet", {"aux1.conv.conv.weight": (2, 3, 1, 1),
                                                           "aux1.fc2.bias": (5,), "aux2.fc1.weight": (4, 6)})]:
        if preset not in zoo.list_models():
            pytest.skip(f"{preset} is not registered")
        spec = zoo.get_spec(preset, **TINY[preset])
        w = random_weights(spec, 5)
        state = {k: torch.from_numpy(v) for k, v in w.items()}
        for k in spec.buffer_names():
            if k.endswith(".running_mean"):
                state[k.replace(".running_mean", ".num_batches_tracked")] = torch.tensor(100)
        state.update({k: torch.zeros(s) for k, s in extra.items()})
        path = tmp_path / f"{preset}.pth"
        torch.save(state, path)
        ckpt = conversion.read(path)
        n = len(spec.buffer_names()) // 2
        assert f"dropped {n} num_batches_tracked counters: the zoo's BatchNorm momentum is fixed, so they change " \
               f"no output" in ckpt.notes
        if extra:
            assert any(note.startswith("recognised foreign keys: torchvision GoogLeNet") for note in ckpt.notes)
            assert f"left out {len(extra)} tensor(s) on purpose, as that key map says: " \
                   f"{', '.join(extra)}" in ckpt.notes
        else:
            assert not any("recognised" in note for note in ckpt.notes)  # canonical names: no map needed
        got, origin = conversion.resolve_spec(ckpt)
        assert got == spec and origin.startswith(f"inferred from the tensor shapes: {preset} with"), origin
        model = zoo.load(preset, "torch", weights=path)
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(zoo.predict(model, x), reference.forward(spec, w, x), rtol=1e-4, atol=1e-4)
