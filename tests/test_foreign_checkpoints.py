"""Checkpoints as training scripts write them, and files that would compute NaN.

Training checkpoints wrap the state_dict ({'state_dict': ...} from Lightning, {'model': ...} and
{'model_state_dict': ...} beside the optimizer and the epoch) and prefix its keys ('module.' from
DataParallel, 'model.' from Lightning, '_orig_mod.' from torch.compile): each reads as the plain
state_dict would, through zoo.load and `zoo convert`, and says what it took and stripped. Negative
BatchNorm variances are refused by name, and verification never passes on NaN or Inf outputs.
"""

from __future__ import annotations

import argparse
import importlib

import numpy as np
import pytest
from conftest import random_weights

import zoo
from zoo import conversion
from zoo.cli import main
from zoo.conversion import ConversionError

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

SPEC = zoo.get_spec("nin", widths=(8, 8, 8))
WEIGHTS = random_weights(SPEC, 0)


def _tensors(weights, prefix: str = "") -> dict:
    return {prefix + k: torch.from_numpy(v.copy()) for k, v in weights.items()}


def _optimizer() -> dict:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()  # a momentum buffer in its state, as a real run's has
    return opt.state_dict()


# what each training script saves: the state_dict where it puts it, and what it puts beside
CHECKPOINTS = {
    "lightning": lambda: {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                          "state_dict": _tensors(WEIGHTS, "model."), "optimizer_states": [_optimizer()],
                          "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}},
    "timm": lambda: {"epoch": 9, "arch": "nin", "state_dict": _tensors(WEIGHTS), "optimizer": _optimizer(),
                     "version": 2, "args": argparse.Namespace(lr=0.1, model="nin"), "metric": 91.5},
    "tutorial": lambda: {"epoch": 5, "model_state_dict": _tensors(WEIGHTS), "optimizer_state_dict": _optimizer(),
                         "loss": torch.tensor(0.25)},
    "model": lambda: {"model": _tensors(WEIGHTS), "optimizer": _optimizer(), "epoch": 2},
    "ddp": lambda: _tensors(WEIGHTS, "module."),
    "compiled": lambda: _tensors(WEIGHTS, "_orig_mod."),
    "lightning_ddp": lambda: {"state_dict": _tensors(WEIGHTS, "model.module."), "epoch": 1},
    "model_ddp_compiled": lambda: {"model": _tensors(WEIGHTS, "module._orig_mod."), "epoch": 1},
    "tutorial_compiled": lambda: {"model_state_dict": _tensors(WEIGHTS, "_orig_mod."), "epoch": 1},
    "nested": lambda: {"model": {"state_dict": _tensors(WEIGHTS, "model.")}, "epoch": 1},
}
# (where the state_dict was, the prefix stripped)
EXPECTED = {"lightning": ("'state_dict'", "model."), "timm": ("'state_dict'", None),
            "tutorial": ("'model_state_dict'", None), "model": ("'model'", None), "ddp": (None, "module."),
            "compiled": (None, "_orig_mod."), "lightning_ddp": ("'state_dict'", "model.module."),
            "model_ddp_compiled": ("'model'", "module._orig_mod."), "tutorial_compiled": ("'model_state_dict'",
                                                                                         "_orig_mod."),
            "nested": ("['model']['state_dict']", "model.")}


def _same(weights) -> None:
    assert sorted(weights) == sorted(WEIGHTS)
    for k in WEIGHTS:
        np.testing.assert_array_equal(weights[k], WEIGHTS[k], err_msg=k)


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_training_checkpoints_read_as_their_state_dict(kind, tmp_path, capsys):
    path = tmp_path / f"{kind}.pt"
    torch.save(CHECKPOINTS[kind](), path)
    where, prefix = EXPECTED[kind]
    ckpt = conversion.read(path)
    _same(ckpt.weights)
    if where:
        assert f"took the state_dict under {where}" in ckpt.notes
    if prefix:
        assert any(n.startswith(f"stripped the prefix {prefix!r} shared by every key") for n in ckpt.notes)
    _same(zoo.get_weights(zoo.load("nin", "torch", weights=path)))
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and (where is None or f"took the state_dict under {where}" in out)
    assert prefix is None or f"stripped the prefix {prefix!r}" in out
    back = conversion.read(tmp_path / "out.safetensors")
    assert back.spec == SPEC
    _same(back.weights)


def test_the_other_entries_are_named_and_never_unpickled(tmp_path):
    """A checkpoint's entries beside the state_dict are read without running any of their code."""
    marker = tmp_path / "ran"

    class Evil:  # builtins.exec is no blocked module: only the placeholder keeps it from running
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    torch.save({"state_dict": _tensors(WEIGHTS), "args": Evil(), "epoch": 3}, tmp_path / "run.pt")
    ckpt = conversion.read(tmp_path / "run.pt")
    _same(ckpt.weights)
    assert not marker.exists()
    assert "left out the checkpoint's other entries: args, epoch" in ckpt.notes
    assert "read what it builds with the classes and functions it names (builtins.exec) as inert placeholders, " \
           "never unpickled: no tensor of the state_dict needs them" in ckpt.notes
    # in the state_dict itself, such an object is refused, and never built either
    torch.save({"state_dict": {**_tensors(WEIGHTS), "blocks.0.conv0.weight": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match=r"refused: it pickles Python objects other than tensors .*"
                                              r"\['state_dict'\]\['blocks.0.conv0.weight'\] is a pickled "
                                              r"builtins.exec object"):
        conversion.read(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU())
    torch.save(model, tmp_path / "model.pt")
    with pytest.raises(ConversionError, match=r"refused: it pickles a whole .* object \(torch.save\(model\)\?\), not "
                                              r"a state_dict.*torch.save\(model.state_dict\(\), path\)"):
        conversion.read(tmp_path / "model.pt")
    torch.save({"model": model, "epoch": 1}, tmp_path / "wrapped.pt")
    with pytest.raises(ConversionError, match=r"'model' \(a pickled .* object\), 'epoch' \(an int\)"):
        conversion.read(tmp_path / "wrapped.pt")


def test_prefixed_safetensors_read_as_plain(tmp_path, capsys):
    from safetensors.numpy import save_file

    save_file({f"module._orig_mod.{k}": v for k, v in WEIGHTS.items()}, str(tmp_path / "ddp.safetensors"))
    ckpt = conversion.read(tmp_path / "ddp.safetensors")
    _same(ckpt.weights)
    assert "stripped the prefix 'module._orig_mod.' shared by every key (written by DataParallel or " \
           "DistributedDataParallel, then torch.compile)" in ckpt.notes
    _same(zoo.get_weights(zoo.load("nin", "torch", weights=tmp_path / "ddp.safetensors")))
    assert main(["convert", str(tmp_path / "ddp.safetensors"), str(tmp_path / "out.pt")]) == 0
    assert "stripped the prefix 'module._orig_mod.'" in capsys.readouterr().out
    _same(conversion.read(tmp_path / "out.pt").weights)


def test_a_prefix_only_some_keys_share_is_kept(tmp_path):
    from safetensors.numpy import save_file

    save_file({**{f"module.{k}": v for k, v in WEIGHTS.items()}, "head.weight": np.zeros(3, np.float32)},
              str(tmp_path / "mixed.safetensors"))
    ckpt = conversion.read(tmp_path / "mixed.safetensors")
    assert "module.blocks.0.conv0.weight" in ckpt.weights and not any("stripped" in n for n in ckpt.notes)


def _two_candidates(path):
    ema = {k: v + 1 for k, v in WEIGHTS.items()}
    torch.save({"model": _tensors(WEIGHTS, "module."), "model_ema": _tensors(ema), "optimizer": _optimizer(),
                "epoch": 7, "args": argparse.Namespace(lr=1)}, path)
    return ema


def test_two_state_dicts_are_refused_with_the_option_that_picks_one(tmp_path, capsys):
    path = tmp_path / "ema.pt"
    ema = _two_candidates(path)
    msg = (r"holds 2 state_dicts, under 'model', 'model_ema' \(e.g. a model and its moving average\): pick one "
           r"with --state-dict-key model_ema \(zoo convert, zoo inspect\) or state_dict_key='model_ema'")
    with pytest.raises(ConversionError, match=msg):
        zoo.load("nin", "torch", weights=path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: ") and err.count("\n") == 1 and "--state-dict-key model_ema" in err
    assert not (tmp_path / "out.safetensors").exists()
    # the option picks one, in Python and on the command line
    got = zoo.get_weights(zoo.load("nin", "torch", weights=path, state_dict_key="model_ema"))
    assert all(np.array_equal(got[k], ema[k]) for k in WEIGHTS)
    _same(zoo.get_weights(zoo.load("nin", "torch", weights=path, state_dict_key="model")))
    assert main(["convert", "--state-dict-key", "model", str(path), str(tmp_path / "out.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "took the state_dict under 'model'" in out and "stripped the prefix 'module.'" in out
    assert "left out the checkpoint's other entries: model_ema, optimizer, epoch, args" in out
    _same(conversion.read(tmp_path / "out.safetensors").weights)
    report = conversion.convert(path, tmp_path / "ema.safetensors", state_dict_key="model_ema")
    assert "took the state_dict under 'model_ema'" in report.notes
    assert main(["inspect", str(path), "--state-dict-key", "model_ema"]) == 0
    assert "fits: nin" in capsys.readouterr().out


def test_the_option_says_what_it_cannot_pick(tmp_path):
    path = tmp_path / "ema.pt"
    _two_candidates(path)
    with pytest.raises(ConversionError, match=r"has no entry 'ema' \(--state-dict-key / state_dict_key\); its "
                                              r"entries: 'model' \(a dict of 24 entries, 24 of them tensors\), .*"
                                              r"'epoch' \(an int\), 'args' \(a pickled argparse.Namespace object\)"):
        conversion.read(path, state_dict_key="ema")
    with pytest.raises(ConversionError, match="entry 'epoch' holds an int, not a state_dict of named tensors"):
        conversion.read(path, state_dict_key="epoch")
    conversion.convert(path, tmp_path / "m.safetensors", state_dict_key="model")
    with pytest.raises(ConversionError, match="picks an entry of a PyTorch .pt checkpoint; .* is a safetensors file"):
        zoo.load("nin", "torch", weights=tmp_path / "m.safetensors", state_dict_key="model")
    with pytest.raises(TypeError, match="state_dict_key names an entry of a .pt weights file"):
        zoo.load("nin", "torch", weights=WEIGHTS, state_dict_key="model")


def test_an_unknown_wrapper_key_is_named_and_the_advice_works(tmp_path, capsys):
    path = tmp_path / "run.pt"
    torch.save({"weights": _tensors(WEIGHTS), "epoch": 2}, path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "its entries: 'weights' (a dict of 24 entries, 24 of them tensors), 'epoch' (an int): name the one " \
           "that holds the model's tensors with --state-dict-key weights" in err and err.count("\n") == 1
    assert main(["convert", str(path), str(tmp_path / "out.safetensors"), "--state-dict-key", "weights"]) == 0
    _same(conversion.read(tmp_path / "out.safetensors").weights)


# --------------------------------------------------------------------------- names that fit no model

def test_names_that_fit_no_model_get_honest_advice(tmp_path):
    from safetensors.numpy import save_file

    # a wrapper's attribute that no rule strips: the message says which model the names are without it
    save_file({f"net.{k}": v for k, v in WEIGHTS.items()}, str(tmp_path / "net.safetensors"))
    with pytest.raises(ConversionError, match=r"every key starts with 'net.'; without it they are nin's names: "
                                              r"save the state_dict again without the prefix"):
        conversion.convert(tmp_path / "net.safetensors", tmp_path / "out.safetensors")
    # names no model shares: no model is called the closest
    save_file({"encoder.proj.weight": np.zeros((3, 4), np.float32)}, str(tmp_path / "mlp.safetensors"))
    with pytest.raises(ConversionError) as e:
        conversion.convert(tmp_path / "mlp.safetensors", tmp_path / "out.safetensors")
    assert "closest" not in str(e.value) and "none of them is any model's" in str(e.value)
    assert "named after the layers `zoo summary MODEL` lists" in str(e.value)
    # what can work: a key map that renames, and reshapes through a layout hook where the layout differs
    assert "renaming rules, and a layout hook (zoo.io.keymaps.LAYOUT_HOOKS) for a tensor stored in another shape" \
        in str(e.value)
    with pytest.raises(ConversionError, match=r"these are not lenet's tensor names, .*none of them is one of lenet's"):
        conversion.convert(tmp_path / "mlp.safetensors", tmp_path / "out.safetensors", model="lenet")
    # names some model shares: that one is the closest
    save_file({"conv1.weight": np.zeros((6, 1, 5, 5), np.float32)}, str(tmp_path / "some.safetensors"))
    with pytest.raises(ConversionError, match=r"\(closest: lenet: the file lacks 9 of its tensors"):
        conversion.convert(tmp_path / "some.safetensors", tmp_path / "out.safetensors")


# --------------------------------------------------------------------------- NaN

BN_SPEC = zoo.get_spec("resnet18", width=4)


def _negative_variance():
    w = random_weights(BN_SPEC, 0)
    w["layer1.0.bn1.running_var"][:3] = [-0.5, -0.25, -1.0]
    return w


MESSAGE = (r"negative BatchNorm running variance in 1 tensor\(s\): layer1.0.bn1.running_var \(3 of 4 values, "
           r"minimum -1\); a variance is never negative")


def test_negative_running_variance_refused_by_name(tmp_path, capsys):
    """Before: the .pt loaded with NaN logits, and `zoo convert` wrote it, 'verified ... max abs error nan'."""
    path = tmp_path / "foreign.pt"
    torch.save(_tensors(_negative_variance()), path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: ") and err.count("\n") == 1
    assert f"{path}: negative BatchNorm running variance" in err
    assert "layer1.0.bn1.running_var (3 of 4 values, minimum -1)" in err
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ConversionError, match=MESSAGE):
        zoo.load("resnet18", "torch", weights=path)
    with pytest.raises(ConversionError, match=MESSAGE):
        conversion.convert(path, tmp_path / "out.pt", verify=False)
    assert "negative BatchNorm running variance in: layer1.0.bn1.running_var" in conversion.inspect(path)
    # the zoo's own files too, whose spec comes with them
    from zoo.io import io_safetensors, io_torch

    io_safetensors.write(_negative_variance(), BN_SPEC, tmp_path / "zoo.safetensors")
    io_torch.write(_negative_variance(), BN_SPEC, tmp_path / "zoo.pt")
    for p in (tmp_path / "zoo.safetensors", tmp_path / "zoo.pt"):
        with pytest.raises(ConversionError, match=MESSAGE):
            zoo.load("resnet18", "torch", weights=p)
        with pytest.raises(ConversionError, match=MESSAGE):
            conversion.convert(p, tmp_path / "out.weights.h5")
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out.weights.h5").exists()


def test_verification_fails_on_nan_outputs(tmp_path):
    """NaN weights, allowed on request, cannot be verified, and the message says so. Before: the read-back
    check took NaN for a difference ('tensors read back from the output differ')."""
    w = {k: v.copy() for k, v in WEIGHTS.items()}
    w["blocks.0.conv0.bias"][0] = np.nan
    from zoo.io import io_safetensors

    io_safetensors.write(w, SPEC, tmp_path / "nan.safetensors")
    with pytest.raises(ConversionError, match=r"verification failed: on the probe, the source gives \d+ and the "
                                              r"destination \d+ NaN or Inf output\(s\), which prove nothing; nothing "
                                              r"was written \(pass --no-verify"):
        conversion.convert(tmp_path / "nan.safetensors", tmp_path / "out.pt", allow_nonfinite=True)
    assert not (tmp_path / "out.pt").exists()
    conversion.convert(tmp_path / "nan.safetensors", tmp_path / "out.pt", allow_nonfinite=True, verify=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_verification_meets_nan_or_inf_on_one_side(bad, tmp_path, monkeypatch):
    """One side's logits NaN or Inf: NaN compares as nothing, and an Inf source made the tolerance Inf."""
    module = importlib.import_module("zoo.conversion.convert")  # the module; zoo.conversion.convert is the function
    from zoo.io import io_safetensors

    io_safetensors.write(WEIGHTS, SPEC, tmp_path / "a.safetensors")
    real, calls = module._run, []

    def run(framework, spec, weights, x):
        out, ran = real(framework, spec, weights, x)
        calls.append(ran)
        if len(calls) == (1 if bad == np.inf else 2):  # Inf in the source, NaN in the destination
            out = out.copy()
            out[0, 0] = bad
        return out, ran

    monkeypatch.setattr(module, "_run", run)
    with pytest.raises(ConversionError, match=r"verification failed: on the probe, the source gives "
                                              + (r"1 and the destination 0" if bad == np.inf else
                                                 r"0 and the destination 1")):
        conversion.convert(tmp_path / "a.safetensors", tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists()


def _shapes_only(spec) -> dict:
    """A checkpoint's tensors as the spec's shapes, without their memory (inference reads shapes alone)."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in spec.param_shapes().items()}


def test_another_preset_named_as_this_one_is_read_with_a_warning(capsys):
    """A ResNet-101 file given as resnet50 fits it only with layers=(3, 4, 23, 3): read so (the same network),
    with a warning that names the preset it is; a fine-tuned head alone (num_classes) warns of nothing."""
    import warnings

    from zoo.io import infer
    from zoo.io.checkpoint import Checkpoint

    ckpt = Checkpoint(_shapes_only(zoo.get_spec("resnet101", num_classes=10)), "safetensors")
    with pytest.warns(UserWarning, match=r"the file is resnet101 with num_classes=10: it fits resnet50 with .*"
                                         r"layers=\(3, 4, 23, 3\).*name 'resnet101' to read it as what it is"):
        spec, origin = infer.resolve_spec(ckpt, "resnet50")
    assert spec.name == "resnet50" and spec.num_params == zoo.get_spec("resnet101", num_classes=10).num_params
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert infer.resolve_spec(ckpt, "resnet101")[0].num_classes == 10
        fine_tuned = Checkpoint(_shapes_only(zoo.get_spec("resnet50", num_classes=10)), "safetensors")
        assert infer.resolve_spec(fine_tuned, "resnet50")[0].num_classes == 10
    from zoo.cli import _show_warning

    _show_warning(UserWarning("the file is resnet101"), UserWarning, infer.__file__, 1)
    assert capsys.readouterr().err == "zoo: warning: the file is resnet101\n"
