"""Weight conversion: every (source, destination) format pair for every preset, compared by numbers."""

from __future__ import annotations

import importlib.util
import os
import pickle

import numpy as np
import pytest
from conftest import TINY, random_weights, run

import conversion
import zoo
from conversion import FORMATS, ConversionError
from zoo.io.formats import function
from zoo import reference

_NEEDS = {"torch": ["torch"], "safetensors": ["safetensors", "torch"], "flax": ["flax", "orbax"],
          "keras": ["keras", "h5py"], "keras_archive": ["keras"]}
_SUFFIX = {"torch": "model.pt", "safetensors": "model.safetensors", "flax": "ckpt", "keras": "model.weights.h5",
           "keras_archive": "model.keras"}


def _needs(*formats: str) -> None:
    """Skip, naming what is missing, unless every package these formats (and their frameworks) need is here."""
    packages = {p for f in formats for p in _NEEDS[f]}
    if any(FORMATS[f].framework == "keras" for f in formats):
        packages.add(os.environ.get("KERAS_BACKEND", "tensorflow"))
    missing = sorted(p for p in packages if importlib.util.find_spec(p) is None)
    if missing:
        pytest.skip(f"{', '.join(formats)}: {', '.join(missing)} not installed")


def _formats():
    """The format axis; Keras formats carry the keras mark, so the Keras sessions run them on every backend."""
    return [pytest.param(f, marks=[pytest.mark.keras] if FORMATS[f].framework == "keras" else [], id=f)
            for f in FORMATS]


def _write(fmt: str, weights, spec, path):
    function(FORMATS[fmt], "writer")(weights, spec, path)
    return path


@pytest.mark.parametrize("dst", _formats())
@pytest.mark.parametrize("src", _formats())
@pytest.mark.parametrize("preset", zoo.list_models())
def test_every_pair(preset, src, dst, tmp_path, record_error):
    _needs(src, dst)
    spec = zoo.get_spec(preset, **TINY[preset])
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
    assert got == spec and origin == "inferred from the tensor shapes"
    with pytest.raises(ConversionError, match="the file holds a nin_cifar10 model, not a nin"):
        conversion.resolve_spec(conversion.read(_write("safetensors", random_weights(spec, 0), spec,
                                                       tmp_path / "meta.safetensors")), model="nin")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _needs("safetensors")
    from safetensors.numpy import save_file

    save_file({"fc.weight": np.zeros((3, 4), np.float32)}, tmp_path / "mlp.safetensors")
    with pytest.raises(ConversionError, match=r"no NiN tensors \(blocks.N.convJ.\*\) in the file.*fc.weight"):
        conversion.convert(tmp_path / "mlp.safetensors", tmp_path / "out.safetensors")
    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    w = random_weights(spec, 0)
    w["blocks.0.conv0.weight"] = np.zeros((8, 1, 7, 7), np.float32)  # no preset has a 7x7 first conv
    save_file(w, tmp_path / "odd.safetensors")
    with pytest.raises(ConversionError, match="fit no registered model: nin: block 0 has a 7x7 kernel, nin a 11x11"):
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
    with pytest.raises(ConversionError, match=r"cannot tell the format of .*model.bin from its suffix '.bin'; "
                                              r"known: .pt, .pth \(torch\); .safetensors"):
        conversion.convert(tmp_path / "model.bin", tmp_path / "out.pt")
    with pytest.raises(ConversionError, match="unknown format 'onnx'"):
        conversion.convert(tmp_path / "model.bin", tmp_path / "out.pt", src_format="onnx")


def test_half_precision_kept_or_cast_only_when_asked(tmp_path):
    _needs("torch", "keras")
    import torch

    spec = zoo.get_spec("nin", widths=(8, 8, 8))
    w = {k: torch.from_numpy(v).half() for k, v in random_weights(spec, 0).items()}
    torch.save(w, tmp_path / "half.pt")
    report = conversion.convert(tmp_path / "half.pt", tmp_path / "half.safetensors")
    assert report.dtype == "float16" and conversion.read(tmp_path / "half.safetensors").dtype == "float16"
    with pytest.raises(ConversionError, match="holds float16 weights and keras files hold float32: pass --dtype"):
        conversion.convert(tmp_path / "half.pt", tmp_path / "k.weights.h5")
    report = conversion.convert(tmp_path / "half.pt", tmp_path / "k.weights.h5", dtype="float32")
    assert "cast from float16 to float32, as asked" in str(report)
    bf = {k: v.to(torch.bfloat16) for k, v in w.items()}
    torch.save(bf, tmp_path / "bf16.pt")
    assert conversion.read(tmp_path / "bf16.pt").dtype == "bfloat16"
    with pytest.warns(UserWarning, match="holds bfloat16 weights; loading them as float32"):
        zoo.load("nin", "torch", weights=tmp_path / "bf16.pt")


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
    assert "safetensors format, 24 tensors" in out and "fits: nin" in out and "spec: the file's metadata" in out
