"""timm's own checkpoints read as timm writes them, checked against timm's own forward.

timm is a test dependency only, installed without its dependencies (`pip install --no-deps timm` plus
pyyaml and huggingface_hub: noxfile.py); its import reaches for torchvision, which cannot be imported
here, so tests/timm_shim.py gives it placeholder modules (no model code). The models are timm's with
random weights and perturbed BatchNorm statistics (no download is possible), saved with torch.save.

timm's ResNet and DenseNet keep torchvision's names; its VGG builds the head as convolutions, which the
key map `TIMM_VGG` (zoo/families/vgg.py) reads as torchvision's linear layers through a layout hook.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import run

import zoo
from zoo import conversion
from zoo.cli import main
from zoo.io import keymaps

torch = pytest.importorskip("torch")
if importlib.util.find_spec("timm") is None:  # nox installs it (noxfile.py: TIMM); a bare venv may not
    pytest.skip("timm is not installed (pip install --no-deps timm pyyaml huggingface_hub)", allow_module_level=True)
from timm_shim import import_timm  # noqa: E402

timm = import_timm()


def _perturbed(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
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
}


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
        with torch.no_grad():
            out[preset] = path, xi, model(torch.from_numpy(xi)).numpy().astype(np.float64)
    return out


@pytest.mark.parametrize("preset", list(CASES))
def test_timm_checkpoints_agree_with_timm_in_every_framework(preset, framework, saved):
    path, x, ref = saved[preset]
    model = zoo.load(preset, framework, weights=path)
    out = run(framework, model, x).astype(np.float64)
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    assert err <= 1e-5 * max(1.0, scale), f"{preset}/{framework}: {err:.3e} from timm's forward at scale {scale:.3g}"


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
