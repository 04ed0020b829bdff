"""Hugging Face folders (config.json + model.safetensors in timm's names) and `hf-hub:` ids read from a local
hub cache that each test writes (nothing can be downloaded here, and the zoo never downloads).

The folders here are the zoo's own (`zoo convert ... --to hf`); tests/test_timm.py reads those timm writes
and gives the zoo's to timm.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY, random_weights, run

import zoo
from zoo import _registry, conversion, reference
from zoo.cli import main
from zoo.io import io_hf, io_safetensors, keymaps

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def resnet18_folder(tmp_path_factory):
    """resnet18 with 10 classes and revealing weights, written by `zoo convert --to hf` from a canonical file."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("hf")
    spec = zoo.get_spec("resnet18", num_classes=10)
    weights = random_weights(spec, 0)
    io_safetensors.write(weights, spec, root / "r18.safetensors")
    assert main(["convert", str(root / "r18.safetensors"), str(root / "r18"), "--to", "hf"]) == 0
    return root / "r18", spec, weights


def hub_cache(root, repo: str, folder) -> str:
    """A Hugging Face hub cache holding `folder` as repository `repo` (ORG/NAME) at revision main, laid out as
    huggingface_hub lays it out: files in blobs/ named by their hash, snapshots/REVISION/NAME links to them."""
    org, name = repo.split("/")
    entry = root / f"models--{org}--{name}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(REVISION)
    (entry / "blobs").mkdir()
    snapshot = entry / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for p in folder.iterdir():
        data = p.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (entry / "blobs" / blob).write_bytes(data)
        (snapshot / p.name).symlink_to(f"../../blobs/{blob}")
    return str(root)


def test_a_written_folder_is_what_timm_reads(resnet18_folder):
    folder, spec, weights = resnet18_folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config == {"architecture": "resnet18", "num_classes": 10,
                      "pretrained_cfg": {"input_size": [3, 224, 224], "num_classes": 10, "fixed_input_size": False}}
    ckpt = conversion.read(folder)
    assert ckpt.format == "hf" and ckpt.model == "resnet18"
    assert "config.json names timm's 'resnet18' with 10 classes" in ckpt.notes[0]
    assert all(ckpt.weights[k].tobytes() == weights[k].tobytes() for k in weights) and set(ckpt.weights) == set(weights)


def test_hub_ids_load_from_the_local_cache_in_every_framework(resnet18_folder, tmp_path, monkeypatch, framework):
    constants = pytest.importorskip("huggingface_hub.constants")
    folder, spec, weights = resnet18_folder
    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub_cache(tmp_path, "timm/resnet18.zoo", folder))
    model = zoo.load("resnet18", framework, weights="hf-hub:timm/resnet18.zoo")
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    ref = reference.forward(spec, weights, x)
    err = float(np.abs(run(framework, model, x) - ref).max())
    assert err <= 1e-5 * max(1.0, float(np.abs(ref).max())), err


def test_the_cli_reads_hub_ids_as_a_user_types_them(resnet18_folder, tmp_path):
    pytest.importorskip("huggingface_hub")
    folder, _, _ = resnet18_folder
    env = {**os.environ, "HF_HUB_CACHE": hub_cache(tmp_path / "cache", "timm/resnet18.zoo", folder),
           "HF_HUB_OFFLINE": "0"}
    zoo_cli = [sys.executable, "-m", "zoo"]
    out = subprocess.run([*zoo_cli, "inspect", "hf-hub:timm/resnet18.zoo"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "hf format" in out.stdout and "fits: resnet18 (family resnet)" in out.stdout
    dst = tmp_path / "r18.onnx"
    out = subprocess.run([*zoo_cli, "convert", "resnet18", "hf-hub:timm/resnet18.zoo", str(dst)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "hf -> onnx" in out.stdout and "verified" in out.stdout and dst.is_file()
    missing = subprocess.run([*zoo_cli, "inspect", "hf-hub:timm/resnet50.a1_in1k"], env=env, capture_output=True,
                             text=True)
    assert missing.returncode == 2  # the CLI's status for a file it cannot read
    assert (f"hf-hub:timm/resnet50.a1_in1k is not in the local Hugging Face cache (looked in {env['HF_HUB_CACHE']}"
            in missing.stderr)
    assert "hf download timm/resnet50.a1_in1k config.json model.safetensors" in missing.stderr
    wrong = subprocess.run([*zoo_cli, "inspect", "hf-hub:resnet18"], env=env, capture_output=True, text=True)
    assert "is not a hub id: write hf-hub:ORG/NAME[@REVISION]" in wrong.stderr


def test_a_revision_not_in_the_cache_is_said(resnet18_folder, tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    folder, _, _ = resnet18_folder
    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub_cache(tmp_path, "timm/resnet18.zoo", folder))
    assert conversion.read(f"hf-hub:timm/resnet18.zoo@{REVISION}").model == "resnet18"
    with pytest.raises(conversion.ConversionError, match="--revision deadbeef"):
        conversion.read("hf-hub:timm/resnet18.zoo@deadbeef")


def test_the_weights_file_alone_is_read_as_its_folder(resnet18_folder, tmp_path):
    folder, _, _ = resnet18_folder
    ckpt = conversion.read(folder / "model.safetensors")  # as `zoo inspect .../snapshots/*/model.safetensors`
    assert ckpt.format == "hf" and ckpt.model == "resnet18"
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (copy / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000}))
    for path in (copy, copy / "model.safetensors"):  # both paths check what config.json says
        with pytest.raises(conversion.ConversionError, match="its config says num_classes 1000, its weights have 10"):
            zoo.load("resnet18", "torch", weights=path)


def test_a_zoo_file_beside_a_config_reads_by_itself(resnet18_folder, tmp_path):
    folder, spec, weights = resnet18_folder
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    io_safetensors.write(weights, spec, tmp_path / "model.safetensors")  # the zoo's own file, named as HF names it
    assert conversion.read(tmp_path / "model.safetensors").format == "safetensors"  # by itself: its metadata says
    with pytest.raises(conversion.ConversionError, match="is a zoo canonical file, not timm's weights; read it by "
                                                         "itself"):
        conversion.read(tmp_path)


def test_a_folder_of_another_architecture_says_which(resnet18_folder):
    folder, _, _ = resnet18_folder
    with pytest.raises(conversion.ConversionError, match="names the architecture 'resnet18', not 'resnet50': load "
                                                         "it as resnet18"):
        zoo.load("resnet50", "torch", weights=folder)


@pytest.mark.parametrize("config, message", [
    ("[1, 2]", "holds a JSON list; a config.json is an object"),
    ("{not json", "is not readable JSON"),
    ('{"architectures": ["ResNetForImageClassification"]}', "names no architecture .* transformers' folders"),
    ('{"architecture": "resnet18", "num_classes": "ten"}', "num_classes is 'ten'; it must be a whole number"),
    ("[" * 100_000 + "]" * 100_000, "is not readable JSON: RecursionError"),  # nested past Python's stack
])
def test_a_bad_config_is_refused_with_what_is_wrong(resnet18_folder, tmp_path, config, message):
    folder, _, _ = resnet18_folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(config)
    with pytest.raises(conversion.ConversionError, match=message):
        conversion.read(bad)


def test_a_folder_without_weights_says_what_it_holds(tmp_path):
    (tmp_path / "config.json").write_text('{"architecture": "resnet18"}')
    (tmp_path / "README.md").write_text("a model card")
    with pytest.raises(conversion.ConversionError, match=r"holds no model.safetensors or pytorch_model.bin .*"
                                                         r"README.md, config.json"):
        conversion.read(tmp_path)


def test_only_what_timm_can_build_is_written(tmp_path):
    nin = tmp_path / "nin.safetensors"
    spec = zoo.get_spec("nin")
    io_safetensors.write(random_weights(spec, 0), spec, nin)
    with pytest.raises(conversion.ConversionError, match=r"nin has no timm names in the zoo, so no Hugging Face "
                                                         r"folder can be written for it \(--to hf writes: "
                                                         r"convnext_small, convnext_tiny, densenet121"):
        conversion.convert(nin, tmp_path / "out", dst_format="hf")
    tiny = zoo.get_spec("resnet18", **TINY["resnet18"])
    io_safetensors.write(random_weights(tiny, 0), tiny, tmp_path / "tiny.safetensors")
    with pytest.raises(conversion.ConversionError, match="differs from the preset by more than num_classes and "
                                                         "in_channels"):
        conversion.convert(tmp_path / "tiny.safetensors", tmp_path / "out", dst_format="hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nin.safetensors", "tiny.safetensors"]  # nothing written


def test_force_replaces_only_a_previous_folder(resnet18_folder, tmp_path):
    folder, _, _ = resnet18_folder
    src = tmp_path / "r18.safetensors"
    conversion.convert(folder, src)
    out = tmp_path / "out"
    conversion.convert(src, out, dst_format="hf")
    conversion.convert(src, out, dst_format="hf", force=True)  # its own previous output: replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(conversion.ConversionError, match="is not a hf output"):
        conversion.convert(src, out, dst_format="hf", force=True)
    assert (out / "notes.txt").read_text() == "mine"


# every key map that writes a library's names writes names it reads back, for every model it names
WRITERS = [(k, m) for k in _registry.KEYMAPS if k.writes for m in k.models]


@pytest.mark.parametrize("keymap, model", WRITERS, ids=[f"{k.library}-{m}" for k, m in WRITERS])
def test_written_names_read_back_as_the_same_tensors(keymap, model):
    spec = zoo.get_spec(model, **TINY.get(model, {}))
    weights = random_weights(spec, 0)
    foreign = keymaps.to_foreign(keymap, weights, spec)
    back, used, _ = keymaps.to_canonical(foreign, model)
    assert used is None or used.models  # canonical already (ResNet, DenseNet) or renamed by a map
    assert set(back) == set(weights)
    assert all(back[k].shape == weights[k].shape and back[k].tobytes() == weights[k].tobytes() for k in weights)


def test_timm_vgg_heads_are_written_as_convolutions():
    spec = zoo.get_spec("vgg11", **TINY["vgg11"])
    weights = random_weights(spec, 0)
    foreign = keymaps.to_foreign(io_hf.write_keymap(zoo.get_spec("vgg11")), weights, spec)
    c = spec.ops()["features.18"].out_channels
    assert foreign["pre_logits.fc1.weight"].shape == (16, c, 7, 7)  # the 7x7 map after avgpool
    assert foreign["pre_logits.fc2.weight"].shape == (16, 16, 1, 1)
    assert foreign["head.fc.weight"].shape == weights["classifier.6.weight"].shape


def test_predict_preprocesses_as_the_folder_config_says(resnet18_folder, tmp_path):
    """`zoo predict MODEL --weights FOLDER images`: timm's eval transform from config.json's pretrained_cfg
    (shorter side to floor(size / crop_pct), centre crop, per-channel mean and std), its label names."""
    pytest.importorskip("PIL")
    from PIL import Image

    folder, spec, weights = resnet18_folder
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    (labelled / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    labels = [f"thing {i}" for i in range(10)]
    config = {"architecture": "resnet18", "num_classes": 10, "label_names": labels,
              "pretrained_cfg": {"input_size": [3, 64, 64], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                                 "crop_pct": 0.9, "interpolation": "bilinear"}}
    (labelled / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 121, 3), dtype=np.uint8))  # landscape, odd margins
    image.save(tmp_path / "photo.png")
    out = subprocess.run([sys.executable, "-m", "zoo", "predict", "resnet18", str(tmp_path / "photo.png"),
                          "--weights", str(labelled), "--top", "3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "resized (bilinear) to 71 on the shorter side, centre-cropped to 64x64" in out.stdout
    # the same by hand: 121 x 90 -> 95 x 71 (torchvision's Resize(71)), crop at (16, 4)
    small = np.asarray(image.resize((95, 71), Image.BILINEAR), np.float64)[4:68, 16:80] / 255.0
    x = ((small - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.3]).transpose(2, 0, 1)[None].astype(np.float32)
    z = reference.forward(spec, weights, x)[0]
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    expected = ", ".join(f"{labels[j]} {p[j]:.3f}" for j in np.argsort(-p)[:3])
    assert f"photo.png: {expected}" in out.stdout, out.stdout
    (labelled / "config.json").write_text(json.dumps({**config, "pretrained_cfg": {"std": [0.2, 0.0, 0.3]}}))
    bad = subprocess.run([sys.executable, "-m", "zoo", "predict", "resnet18", str(tmp_path / "photo.png"),
                          "--weights", str(labelled)], capture_output=True, text=True)
    assert bad.returncode == 2 and "pretrained_cfg.std is [0.2, 0.0, 0.3]; it must be 3 number(s), each > 0" \
        in bad.stderr


def test_an_architecture_the_zoo_lacks_is_refused_not_guessed(resnet18_folder, tmp_path):
    """timm's resnet18d (a deep stem) or tf_efficientnet_b0 (TensorFlow's padding) is another network than any
    preset: its folder is refused on both paths, not read by its tensors' shapes; naming the file's format reads
    the tensors alone, on purpose."""
    folder, _, _ = resnet18_folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (other / "config.json").write_text(json.dumps({"architecture": "tf_efficientnet_b0", "num_classes": 10}))
    for path in (other, other / "model.safetensors"):
        with pytest.raises(conversion.ConversionError, match=r"names timm's 'tf_efficientnet_b0', which is none of "
                                                             r"the zoo's presets .* --from safetensors"):
            zoo.load("resnet18", "torch", weights=path)
    assert conversion.read(other / "model.safetensors", "safetensors").format == "safetensors"
    out = subprocess.run([sys.executable, "-m", "zoo", "inspect", str(other / "model.safetensors"), "--format",
                          "safetensors"], capture_output=True, text=True)
    assert out.returncode == 0 and "fits: resnet18" in out.stdout, out.stderr
