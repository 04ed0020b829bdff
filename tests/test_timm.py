"""timm's own checkpoints read as timm writes them, checked against timm's own forward.

timm is a test dependency only, installed without its dependencies (`pip install --no-deps timm` plus
pyyaml and huggingface_hub: noxfile.py); its import reaches for torchvision, which cannot be imported
here, so tests/timm_shim.py gives it placeholder modules (no model code). The models are timm's with
random weights and perturbed BatchNorm statistics (no download is possible), saved with torch.save. The
reference is timm's own forward in float64 (`model.double()`): timm's float32 forward is itself up to 8e-5 from
it on the perturbed MobileNets, which would leave a float32-to-float32 comparison measuring two roundings.

timm's ResNet and DenseNet keep torchvision's names; its VGG builds the head as convolutions, which the
key map `TIMM_VGG` (zoo/families/vgg.py) reads as torchvision's linear layers through a layout hook. Its
VisionTransformer and ConvNeXt are torchvision's networks under other names (zoo/families/vit.py, convnext.py),
a ConvNeXt's layer scale a vector: an independent implementation of attention, LayerNorm over channels, GELU,
the class token and the position embedding, against which the zoo's float64 reference is checked.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import run

import zoo
from zoo import conversion, reference
from zoo.cli import main
from zoo.io import keymaps

torch = pytest.importorskip("torch")
if importlib.util.find_spec("timm") is None:  # nox installs it (noxfile.py: TIMM); a bare venv may not
    pytest.skip("timm is not installed (pip install --no-deps timm pyyaml huggingface_hub)", allow_module_level=True)
from timm_shim import import_timm  # noqa: E402

timm = import_timm()


def _perturbed(model):
    """BatchNorm statistics and affine parameters that no mistake survives (means off 0, variances off 1). The
    scales stay at most 1: above it (up to 1.5) they compound through MobileNetV2's 17 linear projections, and
    float32 itself, timm's forward included, is 1e-5 of the output's scale away from float64 there."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


def _tiny_vgg(batch_norm: bool):
    """timm's VGG-11 at a sixteenth of its conv widths, 10 classes (its head stays 4096 wide: timm's
    num_features)."""
    from timm.models.vgg import VGG

    cfg = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
    norm = torch.nn.BatchNorm2d if batch_norm else None
    return VGG(cfg, num_classes=10, norm_layer=norm)


# (zoo preset, timm model builder, input size): the zoo's tiny variant is found from the file's shapes
CASES = {
    "vgg11": (lambda: _tiny_vgg(False), 224),  # 224: the 7x7 map on which timm's conv head is a linear layer
    "vgg11_bn": (lambda: _tiny_vgg(True), 224),
    "resnet18": (lambda: timm.create_model("resnet18", num_classes=10), 64),
    "densenet121": (lambda: timm.create_model("densenet121", num_classes=10), 64),
    "efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", num_classes=10), 64),
    "mobilenet_v2": (lambda: timm.create_model("mobilenetv2_100", num_classes=10), 64),
    "mobilenetv3_large_100": (lambda: timm.create_model("mobilenetv3_large_100", num_classes=10), 64),
    "mobilenetv3_small_100": (lambda: timm.create_model("mobilenetv3_small_100", num_classes=10), 64),
    "regnet_y_400mf": (lambda: timm.create_model("regnety_004", num_classes=10), 64),
    "inception_v3": (lambda: timm.create_model("inception_v3", num_classes=10), 107),
    "vit_b_16": (lambda: _tiny_vit(), 32),
    "convnext_tiny": (lambda: _tiny_convnext(), 37),
}
# What shapes do not show, named as a user names it (zoo convert vit_b_16 --set num_heads=2 ...)
NAMED = {"vit_b_16": dict(hidden_dim=16, num_heads=2, mlp_dim=24, num_layers=2, input_size=32, num_classes=10)}


def _randomised(model):
    """Every parameter moved off its initial value (timm starts layer scales at 1e-6, class tokens at 0)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _tiny_vit():
    """timm's VisionTransformer (vit_base_patch16_224's class) with 2 heads of 8 features, 2 blocks, 32x32 input."""
    from timm.models.vision_transformer import VisionTransformer

    return _randomised(VisionTransformer(img_size=32, patch_size=16, embed_dim=16, depth=2, num_heads=2,
                                         mlp_ratio=1.5, num_classes=10))


def _tiny_convnext():
    from timm.models.convnext import ConvNeXt

    return _randomised(ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 16, 24), num_classes=10))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case's timm model saved as timm's training script saves a state_dict, and its output."""
    out = {}
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    for preset, (build, size) in CASES.items():
        torch.manual_seed(0)
        model = _perturbed(build())
        path = tmp_path_factory.mktemp(preset) / f"timm_{preset}.pth"
        torch.save(model.state_dict(), path)
        xi = np.ascontiguousarray(x[:, :, :size, :size])
        out[preset] = path, xi, timm_float64(model, xi)
    return out


def timm_float64(model, x: np.ndarray) -> np.ndarray:
    """timm's forward of `model` in float64, on a copy (the model itself stays float32)."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()


@pytest.mark.parametrize("preset", list(CASES))
def test_timm_networks_are_the_zoos_in_float64(preset, saved):
    """timm's network and the zoo's, both in float64 from the file's float32 weights: the same function (names,
    layouts and architecture all right) differs by float64 rounding alone. The frameworks' float32 agreement
    with that reference is the agreement grid's (tests/test_agreement.py), and below for one model a family."""
    path, x, ref = saved[preset]
    spec, weights, _ = conversion.load(path, preset, NAMED.get(preset))
    err, scale = float(np.abs(reference.forward(spec, weights, x) - ref).max()), float(np.abs(ref).max())
    assert err <= 1e-9 * max(1.0, scale), f"{preset}: the zoo's float64 network is {err:.3e} from timm's ({scale:.3g})"


# one timm model of each family, loaded in every framework (the others: float64 above, and torch below)
EVERY_FRAMEWORK = ["vgg11_bn", "resnet18", "densenet121", "efficientnet_b0", "mobilenetv3_small_100",
                   "regnet_y_400mf", "vit_b_16", "convnext_tiny"]


@pytest.mark.parametrize("preset", EVERY_FRAMEWORK)
def test_timm_checkpoints_agree_with_timm_in_every_framework(preset, framework, saved, record_error):
    path, x, ref = saved[preset]
    model = zoo.load(preset, framework, weights=path, **NAMED.get(preset, {}))
    record_error(f"timm .pth:{preset}", framework, run(framework, model, x), ref)  # the suite's table lists it


@pytest.mark.torch
@pytest.mark.parametrize("preset", [p for p in CASES if p not in EVERY_FRAMEWORK])
def test_the_other_timm_checkpoints_agree_in_torch(preset, saved, record_error):
    path, x, ref = saved[preset]
    record_error(f"timm .pth:{preset}", "torch", run("torch", zoo.load(preset, "torch", weights=path), x), ref)


def test_timm_vgg_head_is_reshaped_and_said(saved, tmp_path, capsys):
    path, x, ref = saved["vgg11_bn"]
    ckpt = conversion.read(path)
    notes = " ".join(ckpt.notes)
    assert "timm VGG" in notes and "pre_logits.fc1.weight [4096, 32, 7, 7] -> [4096, 1568] (conv_as_linear)" in notes
    assert "num_batches_tracked" in notes  # dropped, and said so
    assert ckpt.weights["classifier.0.weight"].shape == (4096, 1568)
    assert main(["convert", "vgg11_bn", str(path), str(tmp_path / "vgg.onnx")]) == 0  # named, shapes inferred
    printed = capsys.readouterr().out
    assert "reshaped 2 tensor(s)" in printed and "verified" in printed
    out = run("onnx", zoo.load("vgg11_bn", "onnx", weights=tmp_path / "vgg.onnx"), x)
    assert float(np.abs(out - ref).max()) <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_a_layout_hook_refuses_a_tensor_of_another_rank(saved, tmp_path):
    path, _, _ = saved["vgg11"]
    weights = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    weights["pre_logits.fc1.weight"] = weights["pre_logits.fc1.weight"].reshape(4096, -1)  # already flat
    with pytest.raises(keymaps.LayoutError, match=r"pre_logits.fc1.weight has shape \[4096, 1568\]; the hook "
                                                  r"conv_as_linear reads a 4-D conv kernel"):
        keymaps.to_canonical(weights, "vgg11")
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp_path / "flat.pth")
    with pytest.raises(conversion.ConversionError, match="conv_as_linear reads a 4-D conv kernel"):
        zoo.load("vgg11", "torch", weights=tmp_path / "flat.pth")


# ----------------------------------------------------------------------------- Hugging Face folders

HF_CASES = ("resnet18", "densenet121", "mobilenetv3_small_100")


@pytest.fixture(scope="module")
def hf_saved(saved, tmp_path_factory):
    """The timm models of `saved` as timm's save_for_hf writes them: model.safetensors, and pytorch_model.bin."""
    from timm.models import save_for_hf

    out = {}
    for preset in HF_CASES:
        build, _ = CASES[preset]
        torch.manual_seed(0)
        model = _perturbed(build())
        for kind, safe in (("safetensors", True), ("bin", False)):
            folder = tmp_path_factory.mktemp(f"{preset}-{kind}")
            save_for_hf(model, folder, safe_serialization=safe)
            out[preset, kind] = folder
        # the folder's weights by themselves: a .safetensors as safetensors.torch.save_file(model.state_dict()) writes
        alone = tmp_path_factory.mktemp(f"{preset}-file") / f"timm_{preset}.safetensors"
        alone.write_bytes((out[preset, "safetensors"] / "model.safetensors").read_bytes())
        out[preset, "file"] = alone
    return out


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["safetensors", "bin", "file"])
@pytest.mark.parametrize("preset", HF_CASES)
def test_timm_hf_folders_agree_with_timm(preset, kind, saved, hf_saved, record_error):
    """Each way timm saves, read (in torch: what is read is framework-independent, as the next test shows)."""
    _, x, ref = saved[preset]
    path = hf_saved[preset, kind]
    if kind != "file":
        assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors" if kind == "safetensors"
                                                    else "pytorch_model.bin"}
    source = {"safetensors": "timm HF folder", "bin": "timm HF folder .bin", "file": "timm .safetensors"}[kind]
    record_error(f"{source}:{preset}", "torch", run("torch", zoo.load(preset, "torch", weights=path), x), ref)


def test_a_timm_hf_folder_agrees_with_timm_in_every_framework(framework, saved, hf_saved, record_error):
    _, x, ref = saved["resnet18"]
    model = zoo.load("resnet18", framework, weights=hf_saved["resnet18", "safetensors"])
    record_error("timm HF folder:resnet18", framework, run(framework, model, x), ref)


def test_a_timm_folder_in_the_hub_cache_loads_by_its_id(saved, hf_saved, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from test_hf import hub_cache

    _, x, ref = saved["resnet18"]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub_cache(tmp_path, "timm/resnet18.test",
                                                             hf_saved["resnet18", "safetensors"]))
    ckpt = conversion.read("hf-hub:timm/resnet18.test")  # zoo inspect hf-hub:timm/resnet18.test
    assert ckpt.model == "resnet18" and "config.json names timm's 'resnet18' with 10 classes" in ckpt.notes[0]
    out = run("onnx", zoo.load("resnet18", "onnx", weights="hf-hub:timm/resnet18.test"), x)
    assert float(np.abs(out - ref).max()) <= 1e-5 * max(1.0, float(np.abs(ref).max()))


# (preset, overrides, input side): full-size models, since timm builds a folder's model from its config.json
ROUND_TRIPS = [("resnet18", dict(num_classes=10), 64), ("densenet121", dict(num_classes=10), 64),
               ("efficientnet_b1", dict(num_classes=10), 64),
               ("mobilenet_v2", dict(num_classes=10), 64), ("mobilenetv3_large_100", dict(num_classes=10), 64),
               ("mobilenetv3_small_100", dict(num_classes=10, in_channels=1), 64),
               ("regnet_y_400mf", dict(num_classes=10), 64), ("inception_v3", dict(num_classes=10), 75)]


@pytest.mark.parametrize("preset, overrides, size", ROUND_TRIPS, ids=[c[0] for c in ROUND_TRIPS])
def test_zoo_folders_are_what_timm_builds_and_reads(preset, overrides, size, tmp_path):
    """zoo -> `zoo convert --to hf` -> timm.create_model('local-dir:...', pretrained=True) -> the same outputs."""
    from conftest import random_weights

    from zoo.io import io_safetensors

    spec = zoo.get_spec(preset, **overrides)
    weights = random_weights(spec, 0)
    io_safetensors.write(weights, spec, tmp_path / "zoo.safetensors")
    assert main(["convert", str(tmp_path / "zoo.safetensors"), str(tmp_path / "folder"), "--to", "hf"]) == 0
    model = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True).eval()
    x = np.random.default_rng(2).standard_normal((1, spec.in_channels, size, size)).astype(np.float32)
    out = timm_float64(model, x)  # the same network in float64: only the reference's own rounding differs
    ref = reference.forward(spec, weights, x)
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    # both in float64 from the same float32 weights: the same network differs by float64 rounding alone
    assert err <= 1e-9 * max(1.0, scale), f"{preset}: timm's model of the zoo's folder is {err:.3e} away ({scale:.3g})"



@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg11", "vgg11_bn"])
def test_vgg_weights_written_in_timms_names_are_timms_vgg(batch_norm, tmp_path):
    """The VGG key map's writing side (linear_as_conv for the head) into timm's own tiny VGG-11, loaded strictly:
    the same function in float64 at 224x224. (Its folders are written and read as the other families' are,
    above; a full-size VGG there took 35 s of CI for the same proof.)"""
    from conftest import random_weights

    from zoo.io import io_hf

    preset = "vgg11_bn" if batch_norm else "vgg11"
    timm_model = _tiny_vgg(batch_norm).eval()
    torch.save(timm_model.state_dict(), tmp_path / "tiny.pth")
    spec, _, _ = conversion.load(tmp_path / "tiny.pth", preset)  # the tiny variant, from timm's shapes
    weights = random_weights(spec, 0)
    foreign = keymaps.to_foreign(io_hf.write_keymap(zoo.get_spec(preset)), weights, spec)
    timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in foreign.items()}, strict=True)
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    out, ref = timm_float64(timm_model, x), reference.forward(spec, weights, x)
    assert float(np.abs(out - ref).max()) <= 1e-9 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("preset", ["vit_b_16", "convnext_tiny"])
def test_the_zoos_timm_names_load_strictly_into_timms_networks(preset, saved):
    """What `zoo convert ... --to hf` writes for these families (the timm key maps' writes and write hooks) is
    timm's state_dict exactly: a strict load_state_dict into a fresh timm network, whose forward is then timm's."""
    from zoo.families.convnext import TIMM_CONVNEXT
    from zoo.families.vit import TIMM_VIT

    path, x, ref = saved[preset]
    spec, weights, _ = conversion.load(path, preset, NAMED.get(preset))
    foreign = keymaps.to_foreign(TIMM_VIT if preset == "vit_b_16" else TIMM_CONVNEXT, weights, spec)
    fresh = CASES[preset][0]()
    fresh.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in foreign.items()}, strict=True)
    got = timm_float64(fresh.eval(), x)
    assert float(np.abs(got - ref).max()) <= 1e-12 * max(1.0, float(np.abs(ref).max()))
