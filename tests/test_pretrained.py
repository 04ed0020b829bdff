"""The shipped Fashion-MNIST weights: manifest, hash check, and identical predictions in every framework."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo import data, pretrained, reference

HAVE_DATA = (data.DEFAULT_DIR / data.FILES[("test", "images")][0]).exists()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Debian's dataset-fashion-mnist is not installed")


SHIPPED = sorted(pretrained.manifest())  # 'model.tag'
TRAINED_IN = {"nin.fashion_mnist": "flax", "resnet18_d2l.fashion_mnist": "torch"}


def _cfg(key: str = "nin.fashion_mnist"):
    return pretrained.resolve(*key.split("."))


def test_shipped():
    assert zoo.list_pretrained() == SHIPPED == sorted(TRAINED_IN)


@pytest.mark.parametrize("key", SHIPPED)
def test_manifest_entry(key):
    path, cfg = _cfg(key)
    assert (f"{cfg.model}.{cfg.tag}", cfg.trained_in, cfg.dataset) == (key, TRAINED_IN[key], "Fashion-MNIST")
    assert cfg.label_names == data.LABELS and cfg.num_classes == 10
    assert cfg.dataset_license.startswith("MIT")
    assert {"epochs", "peak_lr", "batch_size", "input_size", "label_smoothing"} <= set(cfg.recipe)
    assert cfg.recipe["input_size"] == cfg.input_size
    assert cfg.test_accuracy >= {"resnet18_d2l": 0.93}.get(cfg.model, 0.92)
    assert pretrained.sha256(path) == cfg.sha256


def test_unknown_tag():
    with pytest.raises(zoo.PretrainedError, match=r"no pretrained weights 'nin.imagenet'; shipped: nin.fashion_mnist"):
        zoo.load("nin", "torch", weights="imagenet")
    with pytest.raises(TypeError, match="pretrained weights fix the spec"):
        zoo.load("nin", "torch", weights="fashion_mnist", num_classes=3)


def test_unknown_model_is_named_before_its_weights(capsys):
    """`zoo predict ninn` says the model is unknown (with the close match), not that its weights are missing."""
    from zoo.cli import main

    with pytest.raises(zoo.UnknownModelError, match=r"unknown model 'ninn'\. Did you mean 'nin'\?"):
        zoo.load("ninn", "torch", weights="fashion_mnist")
    assert main(["predict", "ninn", "--weights", "fashion_mnist", "shirt.png"]) == 2
    assert capsys.readouterr().err == ("zoo: error: unknown model 'ninn'. Did you mean 'nin'? "
                                       f"Known models: {', '.join(zoo.list_models())}\n")


def test_hash_mismatch_is_refused(tmp_path, monkeypatch):
    path, cfg = _cfg()
    folder = tmp_path / "weights"
    shutil.copytree(path.parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    damaged = bytearray((folder / cfg.file).read_bytes())
    damaged[-1] ^= 1
    (folder / cfg.file).write_bytes(bytes(damaged))
    monkeypatch.setattr(pretrained, "_folder", lambda: folder)
    with pytest.raises(zoo.PretrainedError, match=r"has SHA-256 [0-9a-f]{64}, the manifest says .*reinstall"):
        zoo.load("nin", "torch", weights="fashion_mnist")


@pytest.mark.parametrize("key", SHIPPED)
def test_load_in_every_framework(framework, key):
    from zoo import conversion

    path, cfg = _cfg(key)
    model = zoo.load(cfg.model, framework, weights=cfg.tag)
    stored = conversion.read(path).weights
    got = zoo.get_weights(model)
    assert all(np.array_equal(got[k], stored[k]) for k in stored)
    assert zoo.spec_of(model) == zoo.get_spec(cfg.model, input_size=cfg.input_size)


def test_loads_from_any_directory(tmp_path):
    code = ("import zoo, numpy as np; m = zoo.load('nin', 'torch', weights='fashion_mnist'); "
            "print(sum(float(np.abs(v).sum()) > 0 for v in zoo.get_weights(m).values()))")
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "24"


def _test_set_reference(key: str = "nin.fashion_mnist"):
    """float64-reference logits for the whole test split (stored at release), and the labels."""
    _, cfg = _cfg(key)
    return pretrained.test_logits(cfg).astype(np.float64), data.load_fashion_mnist("test")[1]


@needs_data
@pytest.mark.parametrize("key", SHIPPED)
def test_stored_reference_is_the_reference(key):
    """The stored logits are what the float64 reference computes now, on a slice."""
    path, cfg = _cfg(key)
    from zoo import conversion

    images, _ = data.load_fashion_mnist("test")
    spec = zoo.get_spec(cfg.model, input_size=cfg.input_size)
    fresh = reference.forward(spec, conversion.read(path).weights,
                              data.preprocess(images[:200], cfg.input_size, cfg.mean, cfg.std))
    np.testing.assert_allclose(_test_set_reference(key)[0][:200], fresh, rtol=1e-6, atol=1e-6)


@needs_data
@pytest.mark.parametrize("key", SHIPPED)
def test_same_class_for_every_test_image(framework, key, record_error):
    """All 10,000 test images: each framework predicts the reference's class, and reports its accuracy."""
    from zoo.evaluate import logits

    _, cfg = _cfg(key)
    ref, labels = _test_set_reference(key)
    out = logits(zoo.load(cfg.model, framework, weights=cfg.tag), data.load_fashion_mnist("test")[0], cfg)
    record_error(f"{key} (10,000 test images)", framework, out, ref)
    disagree = np.flatnonzero(out.argmax(1) != ref.argmax(1))
    assert disagree.size == 0, f"{disagree.size} images classified differently, e.g. {disagree[:5]}"
    accuracy = float((out.argmax(1) == labels).mean())
    assert abs(accuracy - cfg.test_accuracy) <= 5e-4, (accuracy, cfg.test_accuracy)  # trained with jnp resizing
    print(f"\n{framework}: test accuracy {accuracy:.4f}, max |logit - reference| {np.abs(out - ref).max():.2e}")


def test_progress_bar_only_when_asked(capsys):
    """logits() is quiet by default; progress=True draws a tqdm bar on stderr (not a terminal here)."""
    pytest.importorskip("torch")
    from zoo.evaluate import logits

    _, cfg = _cfg()
    model = zoo.load("nin", "torch", weights="fashion_mnist")
    images = np.zeros((12, 28, 28), np.uint8)
    quiet = logits(model, images, cfg, batch=5)
    assert capsys.readouterr() == ("", "")
    np.testing.assert_array_equal(logits(model, images, cfg, batch=5, progress=True), quiet)
    out, err = capsys.readouterr()
    assert out == "" and "evaluate: 100%" in err and "12/12" in err and "img/s" in err, err


@needs_data
def test_evaluate_and_predict_commands(tmp_path, capsys):
    pytest.importorskip("torch")
    pil = pytest.importorskip("PIL.Image", reason="predict: Pillow not installed (pip install '.[data]')")
    from zoo.cli import main

    _, cfg = _cfg()
    assert main(["evaluate", "nin", "--weights", "fashion_mnist", "--framework", "torch"]) == 0
    out, err = capsys.readouterr()
    assert "evaluate: 100%" in err and "10000/10000" in err  # the progress bar, on stderr
    assert out.startswith("nin fashion_mnist in torch: test accuracy 0.9")
    images, labels = data.load_fashion_mnist("test")
    ref, _ = _test_set_reference()
    picks = [int(i) for i in np.flatnonzero(ref.argmax(1) == labels)[:3]]
    paths = []
    for i in picks:
        paths.append(str(tmp_path / f"{i}.png"))
        pil.fromarray(images[i]).save(paths[-1])
    inverted = str(tmp_path / "inverted.jpg")  # dark on light, as a product photo: inverted back by 'auto'
    pil.fromarray(255 - images[picks[0]]).save(inverted, quality=95)
    assert main(["predict", "nin", "--weights", "fashion_mnist", *paths, inverted]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("nin fashion_mnist knows Fashion-MNIST") and len(lines) == 5  # no image flagged
    for line, i in zip(lines[1:], picks + picks[:1]):
        top = line.split(": ", 1)[1].split(", ")
        assert top[0].rsplit(" ", 1)[0] == cfg.label_names[labels[i]], line
        assert len(top) == 3 and sum(float(t.rsplit(" ", 1)[1]) for t in top) <= 1.0 + 1e-6
    assert main(["predict", "nin", "--weights", "fashion_mnist", str(tmp_path / "missing.png")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_release_writes_into_the_checkout_and_refuses_to_overwrite(tmp_path, monkeypatch):
    """release: the checkout's weights/ by default, never the shipped tag without force=True; on 40 test images."""
    path, cfg = _cfg()
    checkout = tmp_path / "checkout"  # a project root, as a clone has it
    (checkout / "zoo").mkdir(parents=True)
    (checkout / "weights").mkdir()
    (checkout / "pyproject.toml").write_text("")
    monkeypatch.setattr(pretrained, "_PACKAGE", checkout / "zoo")
    assert pretrained.checkout_folder() == checkout / "weights"
    monkeypatch.undo()

    def no_data(*args, **kwargs):
        raise AssertionError("release read the data set before refusing")

    monkeypatch.setattr(data, "load_fashion_mnist", no_data)
    shipped = {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file()}
    with pytest.raises(zoo.PretrainedError, match=r"^nin 'fashion_mnist' is already released \(.*"
                                                  r"nin-fashion_mnist\.safetensors, .*nin-fashion_mnist\.test-logits"
                                                  r"\.npy, the entry 'nin\.fashion_mnist' of .*manifest\.json\): "
                                                  r"choose another tag, or pass force=True to replace it$"):
        pretrained.release(path, "nin", "fashion_mnist", folder=path.parent)  # where the shipped weights are
    assert {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file()} == shipped

    monkeypatch.setattr(pretrained, "_PACKAGE", tmp_path / "site-packages" / "zoo")  # a non-editable install
    assert pretrained.checkout_folder() is None
    with pytest.raises(zoo.PretrainedError, match=r"without a checkout: pass folder=, the weights/ folder"):
        pretrained.release(path, "nin", "v2")

    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(data, "load_fashion_mnist", lambda split: (images, np.zeros(40, np.uint8)))
    got = pretrained.release(path, "nin", "v2", folder=tmp_path)
    assert (tmp_path / "nin-v2.safetensors").read_bytes() == path.read_bytes() and got.sha256 == cfg.sha256
    assert np.load(tmp_path / got.test_logits).shape == (40, 10)
    with pytest.raises(zoo.PretrainedError, match="already released"):
        pretrained.release(path, "nin", "v2", folder=tmp_path)
    pretrained.release(path, "nin", "v2", folder=tmp_path, force=True)
    assert list(json.loads((tmp_path / "manifest.json").read_text())) == ["nin.v2"]


def _run_weights(tmp_path, **changes):
    """The shipped NiN weights as a `zoo train` run writes them, its pretrained entry changed by `changes`."""
    import dataclasses

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path, cfg = _cfg()
    with safe_open(str(path), "np") as f:
        meta = dict(f.metadata())
    entry = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("model", "tag", "file", "sha256")}
    meta["pretrained"] = json.dumps({**entry, **changes})
    out = tmp_path / "weights.safetensors"
    save_file(load_file(str(path)), str(out), metadata=meta)
    return out


@pytest.mark.parametrize("changes, message", [
    (dict(std=0), r"std must be a number in \(0, 1\], got 0$"),
    (dict(mean=float("nan")), r"mean must be a number in \[0, 1\] \(of pixels scaled to \[0, 1\]\), got nan$"),
    (dict(input_size=0), r"input_size must be an integer in \[1, 16384\], got 0$"),
    (dict(input_size=100_000), r"input_size must be an integer in \[1, 16384\], got 100000$"),
    (dict(input_size="28"), r"input_size must be an integer in \[1, 16384\], got '28'$"),
    (dict(label_names=["a", "b", "c"]), r"has 3 label_names for 10 classes \(num_classes\): one name per class$"),
    (dict(fit="squash"), r"fit must be 'pad' or 'crop', got 'squash'$"),
])
def test_a_runs_entry_is_checked_field_by_field(tmp_path, changes, message):
    """Before: probabilities of nan, a ZeroDivisionError, a 74.5 GiB allocation, a TypeError or an IndexError."""
    path = _run_weights(tmp_path, **changes)
    with pytest.raises(zoo.PretrainedError, match=f"^{path}: the pretrained entry's {message}|^{path}: .*{message}"):
        pretrained.cfg_for("nin", str(path))
    assert pretrained.cfg_for("nin", str(_run_weights(tmp_path))).std == 0.353  # unchanged, it reads


def test_a_manifest_entry_is_checked(tmp_path, monkeypatch):
    shipped = json.loads((pretrained._folder() / pretrained.MANIFEST).read_text())
    bad = {"nin.fashion_mnist": {**shipped["nin.fashion_mnist"], "std": 0.0}}
    (tmp_path / pretrained.MANIFEST).write_text(json.dumps(bad))
    monkeypatch.setattr(pretrained, "_folder", lambda: tmp_path)
    with pytest.raises(zoo.PretrainedError, match=r"entry 'nin.fashion_mnist': the pretrained entry's std must be"):
        pretrained.manifest()
    (tmp_path / pretrained.MANIFEST).write_text(json.dumps({"nin.x": {**shipped["nin.fashion_mnist"], "stdd": 1}}))
    with pytest.raises(zoo.PretrainedError, match=r"the pretrained entry has unknown fields \['stdd'\]$"):
        pretrained.manifest()


def test_predict_refuses_before_its_banner_and_goes_on_past_a_bad_image(tmp_path, capsys):
    pytest.importorskip("torch")
    pil = pytest.importorskip("PIL.Image", reason="predict: Pillow not installed (pip install '.[data]')")
    from zoo.cli import main

    good = str(tmp_path / "good.png")
    pil.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    (tmp_path / "notes.txt").write_text("notes")
    for argv in (["nin", "--weights", str(tmp_path / "notes.txt")], ["resnet18", "--weights", "fashion_mnist"],
                 ["nin", "--weights", "fashion_mnist", "--top", "0"]):
        assert main(["predict", *argv, good]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("zoo: error: ") and err.count("\n") == 1, (argv, out, err)
    assert "--top must be at least 1, got 0" in err
    missing = str(tmp_path / "missing.png")
    assert main(["predict", "nin", "--weights", "fashion_mnist", missing, good, "--top", "1"]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("nin fashion_mnist knows") and lines[1].startswith(f"{good}: ") and len(lines) >= 2
    assert err.splitlines() == [f"zoo: error: cannot read {missing}: it does not exist",
                                "zoo: error: 1 of 2 images could not be read"]
