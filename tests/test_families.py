"""The families of d2l's modern-CNN chapter (LeNet, AlexNet, VGG, GoogLeNet, ResNet, DenseNet), checked
against public facts: published parameter counts, torchvision's state_dict names, GoogLeNet's ceil-mode
shapes; tiny variants of every preset against the float64 reference; and each d2l key map against a
PyTorch module built the way the d2l book builds it (d2l-zh 2.0, PyTorch tabs), whose outputs the zoo
model must reproduce once the map has renamed its state_dict.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import zoo
from zoo import reference
from zoo._registry import KEYMAPS
from zoo.spec import BatchNorm, Dropout, Pool

torch = pytest.importorskip("torch")
nn = torch.nn
from zoo.frameworks import torch_model  # noqa: E402  (after the skip: it imports torch)

FAMILIES = ("lenet", "alexnet", "vgg", "googlenet", "inception", "resnet", "densenet")
# the ResNet family's later members (ResNet-101, ResNeXt, Wide ResNet) are test_modern_families.py's
LATER = ("resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2", "densenet161", "densenet169",
         "densenet201", "vgg13", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")  # test_modern_families
PRESETS = [n for n in zoo.list_models() if zoo.get_spec(n).family in FAMILIES and n not in LATER]

# torchvision's documented counts (torchvision.models docs, "Params" column); the d2l ones by hand.
PUBLISHED = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "googlenet": 6_624_904,
    # torchvision's 27,161,264 with aux_logits, less AuxLogits' 3,326,696 (test_inception_v3_keymap_drops_auxlogits)
    "inception_v3": 23_834_568,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "densenet121": 7_978_856,
    # convs 6*1*25+6 = 156, 16*6*25+16 = 2,416; dense 400*120+120 = 48,120, 120*84+84 = 10,164, 84*10+10 = 850
    "lenet": 61_706,
    "lenet_relu": 61_706,
    # convs 96*1*121+96 = 11,712, 256*96*25+256 = 614,656, 384*256*9+384 = 885,120, 384*384*9+384 = 1,327,488,
    # 256*384*9+256 = 884,992; dense 6400*4096+4096 = 26,218,496, 4096*4096+4096 = 16,781,312, 4096*10+10 = 40,970
    "alexnet_d2l": 46_764_746,
    # convs 16*9+16 = 160, 32*16*9+32 = 4,640, 64*32*9+64 = 18,496, 64*64*9+64 = 36,928, 128*64*9+128 = 73,856,
    # 3 x (128*128*9+128) = 442,752 (576,832 in all); dense 6272*4096+4096 = 25,694,208, 16,781,312, 40,970
    "vgg11_d2l": 43_093_322,
    # stem 64*49+64 = 3,200, 64*64+64 = 4,160, 192*64*9+192 = 110,784; an Inception block of input c is
    # c*(c1+c2r+c3r+c4) + 9*c2r*c2 + 25*c3r*c3 + all widths (biases): 163,696 + 388,736 + 376,176 + 449,160
    # + 510,104 + 605,376 + 868,352 + 1,043,456 + 1,444,080 = 5,849,136; fc 1024*10+10 = 10,250
    "googlenet_d2l": 5_977_530,
    # stem 64*49+64 + 2*64 = 3,328; stage 1: 2 x (2 x (64*64*9+64) + 4*64) = 148,224; stage 2: 128*64*9+128
    # + 128*128*9+128 + 128*64+128 (1x1) + 4*128 = 230,272, then 2*(128*128*9+128) + 4*128 = 295,680;
    # stage 3: 919,296 + 1,181,184; stage 4: 3,673,600 + 4,721,664; fc 512*10+10 = 5,130
    "resnet18_d2l": 11_178_378,
    # stem 3,200 + 128; block 1 (inputs 64, 96, 128, 160): BN 2*448 + convs 32*9*448 + 4*32 = 130,048;
    # transition 192 -> 96: 384 + 96*192+96 = 18,912; block 2 (96..192): 167,168; transition 224 -> 112:
    # 25,648; block 3 (112..208): 185,728; transition 240 -> 120: 29,400; block 4 (120..216): 195,008;
    # final BN 2*248 = 496; linear 248*10+10 = 2,490
    "densenet_d2l": 758_226,
}

# Tiny variants: (overrides, input side). The main session's agreement grid reuses them.
TINY = {
    "lenet": ({}, 28),
    "lenet_relu": ({}, 28),
    "alexnet": (dict(ratio=16, hidden=32), 64),
    "alexnet_d2l": (dict(ratio=16, hidden=32, input_size=96), 96),
    "vgg11": (dict(ratio=16, hidden=16), 32),
    "vgg16": (dict(ratio=16, hidden=16), 32),
    "vgg11_d2l": (dict(ratio=32, hidden=16, input_size=32), 32),
    "googlenet": (dict(ratio=16), 32),
    "googlenet_d2l": (dict(ratio=16), 32),
    "inception_v3": (dict(ratio=16), 75),
    "resnet18": (dict(width=4), 32),
    "resnet34": (dict(width=4), 32),
    "resnet50": (dict(width=4), 32),
    "resnet18_d2l": (dict(width=4), 32),
    "densenet121": (dict(growth_rate=4, num_init_features=8, bn_size=2), 32),
    "densenet_d2l": (dict(growth_rate=4, num_init_features=8), 32),
}


def bn_weights(spec, seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled kernels, non-zero biases and BatchNorm statistics far from the identity (so that a
    swapped or misnamed BatchNorm shows), yet tame enough for DenseNet's 120 BatchNorms in a row."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in spec.init_weights(seed).items():
        leaf = name.rpartition(".")[2]
        if leaf == "running_var":
            w = rng.uniform(0.5, 2.0, w.shape)
        elif leaf == "running_mean":
            w = rng.normal(0, 0.3, w.shape)
        elif leaf == "weight" and w.ndim == 1:
            w = rng.uniform(0.5, 1.5, w.shape)
        elif leaf == "bias":
            w = rng.normal(0, 0.1, w.shape)
        out[name] = np.asarray(w, np.float32)
    return out


# --------------------------------------------------------------------------- published facts

def test_every_preset_has_its_facts():
    assert sorted(PUBLISHED) == sorted(PRESETS) == sorted(TINY)


@pytest.mark.parametrize("preset", PRESETS)
def test_num_params(preset):
    assert zoo.get_spec(preset).num_params == PUBLISHED[preset]


@pytest.mark.parametrize("preset", PRESETS)
def test_spec_round_trips_json(preset):
    spec = zoo.get_spec(preset, **TINY[preset][0])
    assert zoo.ModelSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("preset, overrides, message", [
    ("lenet", dict(widths=(6, 16, 120)), "widths must be a sequence of 4"),
    ("alexnet", dict(ratio=0), "width ratio must be an int"),
    ("alexnet", dict(hidden=0), "hidden must be an int"),
    ("alexnet_d2l", dict(input_size=64), "input_size 64 is too small"),
    ("vgg11_d2l", dict(dropout=1.0), "dropout must be a float in"),
    ("googlenet", dict(ratio=2.5), "width ratio must be an int"),
    ("resnet18", dict(layers=(2, 2, 2)), "layers must be a sequence of 4"),
    ("resnet50", dict(width=0), "width must be an int"),
    ("densenet121", dict(block_config=()), "block_config must be 1 to 8"),
    ("densenet_d2l", dict(growth_rate=-1), "growth_rate must be an int"),
    ("lenet", dict(in_channels=0), "in_channels must be an int"),
])
def test_bad_overrides_say_which(preset, overrides, message):
    with pytest.raises(zoo.SpecError, match=re.escape(message)):
        zoo.get_spec(preset, **overrides)


# torchvision's state_dict, less one num_batches_tracked per BatchNorm: (key count, some keys and shapes).
# ResNet-18: 20 convs + 20 BN x 4 + fc 2 = 102 (122 with num_batches_tracked); ResNet-50: 53 convs + 53 BN x 4
# + 2 = 267 (320); DenseNet-121: 120 convs + 121 BN x 4 + 2 = 606 (727); GoogLeNet without aux heads:
# 57 BasicConv2d x 5 + 2 = 287 (344); Inception-v3 without AuxLogits: 94 BasicConv2d x 5 + 2 = 472 (566);
# VGG-16: 16 layers x 2 = 32; AlexNet: 8 layers x 2 = 16.
TORCHVISION_KEYS = {
    "resnet18": (102, {"conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,),
                       "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.1.bn2.bias": (64,),
                       "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer2.0.downsample.1.running_mean": (128,),
                       "layer4.1.conv2.weight": (512, 512, 3, 3), "fc.weight": (1000, 512), "fc.bias": (1000,)}),
    "resnet50": (267, {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                       "layer2.0.conv2.weight": (128, 128, 3, 3), "layer3.5.bn3.running_var": (1024,),
                       "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048)}),
    "densenet121": (606, {"features.conv0.weight": (64, 3, 7, 7), "features.norm0.running_mean": (64,),
                          "features.denseblock1.denselayer1.norm1.weight": (64,),
                          "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
                          "features.denseblock1.denselayer1.norm2.running_var": (128,),
                          "features.denseblock1.denselayer1.conv2.weight": (32, 128, 3, 3),
                          "features.transition1.conv.weight": (128, 256, 1, 1),
                          "features.denseblock4.denselayer16.conv2.weight": (32, 128, 3, 3),
                          "features.norm5.bias": (1024,), "classifier.weight": (1000, 1024)}),
    "googlenet": (287, {"conv1.conv.weight": (64, 3, 7, 7), "conv1.bn.running_var": (64,),
                        "conv3.conv.weight": (192, 64, 3, 3), "inception3a.branch1.conv.weight": (64, 192, 1, 1),
                        "inception3a.branch2.0.conv.weight": (96, 192, 1, 1),
                        "inception3a.branch2.1.bn.bias": (128,),
                        "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),  # torchvision's 3x3, not 5x5
                        "inception3a.branch4.1.conv.weight": (32, 192, 1, 1),
                        "inception5b.branch4.1.bn.running_mean": (128,), "fc.weight": (1000, 1024)}),
    "inception_v3": (472, {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_1a_3x3.bn.running_var": (32,),
                           "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3), "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
                           "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
                           "Mixed_5b.branch5x5_1.conv.weight": (48, 192, 1, 1),
                           "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
                           "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
                           "Mixed_5d.branch3x3dbl_3.bn.bias": (96,), "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
                           "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
                           "Mixed_6b.branch7x7_3.conv.weight": (192, 128, 7, 1),
                           "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                           "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
                           "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
                           "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
                           "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
                           "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
                           "Mixed_7c.branch3x3dbl_3b.bn.running_mean": (384,),
                           "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1), "fc.weight": (1000, 2048)}),
    "vgg16": (32, {"features.0.weight": (64, 3, 3, 3), "features.2.weight": (64, 64, 3, 3),
                   "features.28.bias": (512,), "classifier.0.weight": (4096, 25088),
                   "classifier.3.weight": (4096, 4096), "classifier.6.bias": (1000,)}),
    "alexnet": (16, {"features.0.weight": (64, 3, 11, 11), "features.3.weight": (192, 64, 5, 5),
                     "features.10.bias": (256,), "classifier.1.weight": (4096, 9216),
                     "classifier.4.weight": (4096, 4096), "classifier.6.weight": (1000, 4096)}),
}


@pytest.mark.parametrize("preset", sorted(TORCHVISION_KEYS))
def test_torchvision_names(preset):
    count, some = TORCHVISION_KEYS[preset]
    shapes = zoo.get_spec(preset).param_shapes()
    assert len(shapes) == count
    assert {k: shapes.get(k) for k in some} == some


def test_torchvision_details():
    """The settings that names and shapes do not show: strides, BatchNorm eps, pool modes."""
    ops = zoo.get_spec("resnet50").ops()
    assert ops["layer2.0.conv1"].stride == (1, 1) and ops["layer2.0.conv2"].stride == (2, 2)  # v1.5
    for preset, eps in (("googlenet", 0.001), ("inception_v3", 0.001), ("resnet18", 1e-5), ("densenet121", 1e-5),
                        ("densenet_d2l", 1e-5)):
        bns = [op for op in zoo.get_spec(preset).ops().values() if isinstance(op, BatchNorm)]
        assert bns and all(op.eps == eps and op.momentum == 0.1 for op in bns), preset
    g = {layer.path: layer.node for layer in zoo.get_spec("googlenet").layers()}
    assert g["inception3a.branch4.0"] == Pool("max", 3, 1, 1, ceil_mode=True)
    assert g["maxpool4"] == Pool("max", 2, 2, ceil_mode=True)


# torchvision's own comments in GoogLeNet._forward: N x 64 x 56 x 56 after maxpool1, and so on; floor
# pooling would give 55, 27, 13 and 6.
GOOGLENET_224 = {"conv1.relu": (64, 112, 112), "maxpool1": (64, 56, 56), "conv3.relu": (192, 56, 56),
                 "maxpool2": (192, 28, 28), "inception3b.concat": (480, 28, 28), "maxpool3": (480, 14, 14),
                 "inception4e.concat": (832, 14, 14), "maxpool4": (832, 7, 7), "inception5b.concat": (1024, 7, 7)}


def test_googlenet_ceil_mode_shapes():
    shapes = dict(zoo.get_spec("googlenet").layer_shapes((224, 224)))
    assert {k: shapes[k][1:] for k in GOOGLENET_224} == GOOGLENET_224
    # and the PyTorch model computes those shapes, at tiny widths
    model = zoo.load("googlenet", "torch", ratio=16)
    traced = dict(torch_model.trace(model, np.zeros((1, 3, 224, 224), np.float32)))
    assert {k: traced[k].shape[2:] for k in GOOGLENET_224} == {k: v[1:] for k, v in GOOGLENET_224.items()}


# torchvision's own comments in Inception3._forward (N x 32 x 149 x 149 after Conv2d_1a_3x3, and so on)
INCEPTION_299 = {"Conv2d_1a_3x3.relu": (32, 149, 149), "Conv2d_2a_3x3.relu": (32, 147, 147),
                 "Conv2d_2b_3x3.relu": (64, 147, 147), "maxpool1": (64, 73, 73), "Conv2d_3b_1x1.relu": (80, 73, 73),
                 "Conv2d_4a_3x3.relu": (192, 71, 71), "maxpool2": (192, 35, 35), "Mixed_5b.concat": (256, 35, 35),
                 "Mixed_5c.concat": (288, 35, 35), "Mixed_5d.concat": (288, 35, 35), "Mixed_6a.concat": (768, 17, 17),
                 "Mixed_6e.concat": (768, 17, 17), "Mixed_7a.concat": (1280, 8, 8), "Mixed_7b.concat": (2048, 8, 8),
                 "Mixed_7c.concat": (2048, 8, 8), "avgpool": (2048, 1, 1)}


def test_inception_v3_details():
    """The factorised convs' kernels and paddings, the pools, the concatenation order and the shapes at 299."""
    spec = zoo.get_spec("inception_v3")
    ops = spec.ops()
    for path, kernel, padding in (("Mixed_6b.branch7x7_2", (1, 7), (0, 3)), ("Mixed_6b.branch7x7_3", (7, 1), (3, 0)),
                                  ("Mixed_6c.branch7x7dbl_2", (7, 1), (3, 0)),
                                  ("Mixed_6d.branch7x7dbl_5", (1, 7), (0, 3)),
                                  ("Mixed_7a.branch7x7x3_2", (1, 7), (0, 3)),
                                  ("Mixed_7b.branch3x3_2a", (1, 3), (0, 1)), ("Mixed_7b.branch3x3_2b", (3, 1), (1, 0)),
                                  ("Mixed_7c.branch3x3dbl_3a", (1, 3), (0, 1)),
                                  ("Mixed_7c.branch3x3dbl_3b", (3, 1), (1, 0))):
        conv = ops[f"{path}.conv"]
        assert (conv.kernel_size, conv.padding, conv.stride, conv.bias) == (kernel, padding, (1, 1), False), path
    assert ops["Mixed_6a.branch3x3.conv"].stride == (2, 2) and ops["Mixed_7a.branch7x7x3_4.conv"].stride == (2, 2)
    layers = {layer.path: layer.node for layer in spec.layers()}
    for block in ("Mixed_5b", "Mixed_6e", "Mixed_7c"):  # F.avg_pool2d(x, 3, stride=1, padding=1)
        assert layers[f"{block}.avg_pool"] == Pool("avg", 3, 1, 1, count_include_pad=True), block
    assert layers["Mixed_6a.max_pool"] == layers["maxpool1"] == layers["Mixed_7a.max_pool"] == Pool("max", 3, 2)
    assert layers["dropout"] == Dropout(0.5)
    # the branches concatenate in torchvision's order (the pool last): their first convs, in the walk's order
    firsts = {block: [p.split(".")[1] for p in layers if p.startswith(f"{block}.") and p.endswith("_1.conv")
                      or p in (f"{block}.branch1x1.conv", f"{block}.branch3x3.conv", f"{block}.branch_pool.conv")]
              for block in ("Mixed_5b", "Mixed_6a", "Mixed_6b", "Mixed_7a", "Mixed_7b")}
    assert firsts == {"Mixed_5b": ["branch1x1", "branch5x5_1", "branch3x3dbl_1", "branch_pool"],
                      "Mixed_6a": ["branch3x3", "branch3x3dbl_1"],
                      "Mixed_6b": ["branch1x1", "branch7x7_1", "branch7x7dbl_1", "branch_pool"],
                      "Mixed_7a": ["branch3x3_1", "branch7x7x3_1"],
                      "Mixed_7b": ["branch1x1", "branch3x3_1", "branch3x3dbl_1", "branch_pool"]}
    assert [p for p in layers if p.startswith("Mixed_6a.")][-2:] == ["Mixed_6a.max_pool", "Mixed_6a.concat"]
    shapes = dict(spec.layer_shapes((299, 299)))
    assert {k: shapes[k][1:] for k in INCEPTION_299} == INCEPTION_299
    assert spec.min_input_size == 75 and zoo.get_spec("inception_v3", ratio=16).min_input_size == 75


# --------------------------------------------------------------------------- agreement

@pytest.mark.torch
@pytest.mark.parametrize("preset", PRESETS)
def test_tiny_agrees_with_reference(preset, record_error):
    overrides, side = TINY[preset]
    spec = zoo.get_spec(preset, **overrides)
    weights = bn_weights(spec, seed=1)
    model = zoo.load(spec, "torch", weights=weights)
    x = np.random.default_rng(2).normal(size=(2, spec.in_channels, side, side)).astype(np.float32)
    out = zoo.predict(model, x)
    ref = reference.forward(spec, weights, x)
    err = float(np.abs(out - ref).max())
    print(f"{preset}: {spec.num_params:,} params at {side}x{side}, worst error {err:.2e} (max |ref| "
          f"{np.abs(ref).max():.3g})")
    record_error(preset, "torch", out, ref)


# --------------------------------------------------------------------------- d2l key maps

def keymap(name_start: str):
    (km,) = [k for k in KEYMAPS if k.name.startswith(name_start)]
    return km


def rename(km, state: dict) -> dict[str, np.ndarray]:
    """The KeyMap rules as its docstring states them: drop what a drop pattern matches, else rename by
    the first rule whose pattern matches the whole key; a key that nothing matches fails the test."""
    out = {}
    for key, value in state.items():
        if any(re.fullmatch(p, key) for p in km.drop):
            continue
        for pattern, replacement in km.rules:
            m = re.fullmatch(pattern, key)
            if m:
                assert m.expand(replacement) not in out, f"{km.name}: two keys renamed to {m.expand(replacement)}"
                out[m.expand(replacement)] = value.detach().numpy() if hasattr(value, "detach") else value
                break
        else:
            raise AssertionError(f"{km.name}: no rule renames {key!r}")
    return out


def randomise_batchnorms(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


# The d2l book's structures (d2l-zh 2.0, PyTorch tabs), written here from its description, with the
# zoo presets' width overrides so that tests stay small.

def d2l_lenet(act: type, pool: type) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), act(), pool(2, 2), nn.Conv2d(6, 16, 5), act(), pool(2, 2),
                         nn.Flatten(), nn.Linear(400, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, 10))


def _flat(convs: nn.Module, side: int) -> int:
    with torch.no_grad():
        return convs(torch.zeros(1, 1, side, side)).flatten(1).shape[1]


def d2l_alexnet(ratio: int, hidden: int, side: int) -> nn.Module:
    c = [n // ratio for n in (96, 256, 384, 384, 256)]
    convs = [nn.Conv2d(1, c[0], 11, 4, 1), nn.ReLU(), nn.MaxPool2d(3, 2),
             nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
             nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(), nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(),
             nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten()]
    flat = _flat(nn.Sequential(*convs), side)
    return nn.Sequential(*convs, nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 10))


def d2l_vgg(ratio: int, hidden: int, side: int) -> nn.Module:
    blocks, c_in = [], 1
    for convs, c in ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)):
        layers = []
        for _ in range(convs):
            layers += [nn.Conv2d(c_in, c // ratio, 3, padding=1), nn.ReLU()]
            c_in = c // ratio
        blocks.append(nn.Sequential(*layers, nn.MaxPool2d(2, 2)))
    flat = _flat(nn.Sequential(*blocks, nn.Flatten()), side)
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 10))


class D2LInception(nn.Module):
    def __init__(self, c_in, c1, c2, c3, c4):
        super().__init__()
        self.p1_1 = nn.Conv2d(c_in, c1, 1)
        self.p2_1, self.p2_2 = nn.Conv2d(c_in, c2[0], 1), nn.Conv2d(c2[0], c2[1], 3, padding=1)
        self.p3_1, self.p3_2 = nn.Conv2d(c_in, c3[0], 1), nn.Conv2d(c3[0], c3[1], 5, padding=2)
        self.p4_1, self.p4_2 = nn.MaxPool2d(3, 1, 1), nn.Conv2d(c_in, c4, 1)

    def forward(self, x):
        relu = torch.relu
        return torch.cat((relu(self.p1_1(x)), relu(self.p2_2(relu(self.p2_1(x)))),
                          relu(self.p3_2(relu(self.p3_1(x)))), relu(self.p4_2(self.p4_1(x)))), 1)


def d2l_googlenet(ratio: int) -> nn.Module:
    s = lambda c: max(1, c // ratio)  # noqa: E731
    table = [(64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64),
             (192, (96, 208), (16, 48), 64), (160, (112, 224), (24, 64), 64), (128, (128, 256), (24, 64), 64),
             (112, (144, 288), (32, 64), 64), (256, (160, 320), (32, 128), 128),
             (256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128)]
    incs, c_in = [], s(192)
    for c1, c2, c3, c4 in table:
        incs.append(D2LInception(c_in, s(c1), (s(c2[0]), s(c2[1])), (s(c3[0]), s(c3[1])), s(c4)))
        c_in = s(c1) + s(c2[1]) + s(c3[1]) + s(c4)
    pool = lambda: nn.MaxPool2d(3, 2, 1)  # noqa: E731
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, s(64), 7, 2, 3), nn.ReLU(), pool()),
                         nn.Sequential(nn.Conv2d(s(64), s(64), 1), nn.ReLU(), nn.Conv2d(s(64), s(192), 3, padding=1),
                                       nn.ReLU(), pool()),
                         nn.Sequential(*incs[:2], pool()), nn.Sequential(*incs[2:7], pool()),
                         nn.Sequential(*incs[7:], nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()), nn.Linear(c_in, 10))


class D2LResidual(nn.Module):
    def __init__(self, c_in, c, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c_in, c, 1, stride=strides) if use_1x1conv else None
        self.bn1, self.bn2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (self.conv3(x) if self.conv3 is not None else x))


def d2l_resnet18(w: int) -> nn.Module:
    def stage(c_in, c, first):
        return nn.Sequential(*[D2LResidual(c_in, c, True, 2) if i == 0 and not first else D2LResidual(c, c)
                               for i in range(2)])

    return nn.Sequential(nn.Sequential(nn.Conv2d(1, w, 7, 2, 3), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1)),
                         stage(w, w, True), stage(w, 2 * w, False), stage(2 * w, 4 * w, False),
                         stage(4 * w, 8 * w, False), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(8 * w, 10))


class D2LDenseBlock(nn.Module):
    def __init__(self, convs, c_in, growth):
        super().__init__()
        self.net = nn.Sequential(*[nn.Sequential(nn.BatchNorm2d(c_in + i * growth), nn.ReLU(),
                                                 nn.Conv2d(c_in + i * growth, growth, 3, padding=1))
                                   for i in range(convs)])

    def forward(self, x):
        for blk in self.net:
            x = torch.cat((x, blk(x)), 1)
        return x


def d2l_densenet(growth: int, init: int) -> nn.Module:
    blks, c = [], init
    for i in range(4):
        blks.append(D2LDenseBlock(4, c, growth))
        c += 4 * growth
        if i < 3:
            blks.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1), nn.AvgPool2d(2, 2)))
            c //= 2
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, init, 7, 2, 3), nn.BatchNorm2d(init), nn.ReLU(),
                                       nn.MaxPool2d(3, 2, 1)),
                         *blks, nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(c, 10))


# map, preset, overrides, the d2l module, input side
D2L_CASES = {
    "lenet": ("d2l LeNet", "lenet", {}, lambda: d2l_lenet(nn.Sigmoid, nn.AvgPool2d), 28),
    "lenet_relu": ("d2l LeNet", "lenet_relu", {}, lambda: d2l_lenet(nn.ReLU, nn.MaxPool2d), 28),
    "alexnet": ("d2l AlexNet", "alexnet_d2l", dict(ratio=8, hidden=64, input_size=96),
                lambda: d2l_alexnet(8, 64, 96), 96),
    "vgg11": ("d2l VGG-11", "vgg11_d2l", dict(ratio=16, hidden=32, input_size=64), lambda: d2l_vgg(16, 32, 64), 64),
    "vgg11_full": ("d2l VGG-11", "vgg11_d2l", {}, lambda: d2l_vgg(4, 4096, 224), 224),
    "googlenet": ("d2l GoogLeNet", "googlenet_d2l", dict(ratio=8), lambda: d2l_googlenet(8), 96),
    "resnet18": ("d2l ResNet-18", "resnet18_d2l", dict(width=8), lambda: d2l_resnet18(8), 96),
    "densenet": ("d2l DenseNet", "densenet_d2l", {}, lambda: d2l_densenet(32, 64), 96),
    "densenet_tiny": ("d2l DenseNet", "densenet_d2l", dict(growth_rate=6, num_init_features=10),
                      lambda: d2l_densenet(6, 10), 64),
}


@pytest.mark.torch
@pytest.mark.parametrize("case", sorted(D2L_CASES))
def test_d2l_keymap(case):
    name, preset, overrides, build, side = D2L_CASES[case]
    km = keymap(name)
    assert preset in km.models
    torch.manual_seed(0)
    d2l = build().eval()
    randomise_batchnorms(d2l, seed=3)
    state = d2l.state_dict()
    weights = rename(km, state)
    spec = zoo.get_spec(preset, **overrides)
    assert set(weights) == set(spec.param_shapes())
    dropped = {k for k in state if any(re.fullmatch(p, k) for p in km.drop)}
    assert all(k.endswith(".num_batches_tracked") for k in dropped)
    model = zoo.load(spec, "torch", weights=weights)
    x = torch.randn(2, 1, side, side, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = d2l(x).numpy()
    got = zoo.predict(model, x.numpy())
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, scale), f"{case}: {np.abs(got - want).max():.3e}"


def test_d2l_lenet_map_refuses_the_reshape_layout():
    """Older d2l drafts put a Reshape module first (keys 1.weight, 4.weight, ...): not this map's layout."""
    shifted = {f"{i + 1}.{leaf}": np.zeros(1) for i in (0, 3, 7, 9, 11) for leaf in ("weight", "bias")}
    with pytest.raises(AssertionError, match="no rule renames '1.weight'"):
        rename(keymap("d2l LeNet"), shifted)


# --------------------------------------------------------------------------- torchvision key maps

def with_batch_counts(spec) -> dict[str, np.ndarray]:
    """A torchvision-like state_dict: the canonical tensors plus one num_batches_tracked per BatchNorm."""
    state = {k: np.zeros(s, np.float32) for k, s in spec.param_shapes().items()}
    for k in list(state):
        if k.endswith(".running_var"):
            state[k.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    return state


@pytest.mark.parametrize("name, preset, extra", [
    ("torchvision and timm ResNet", "resnet18", {}),
    ("torchvision and timm ResNet", "resnet50", {}),
    ("torchvision and timm DenseNet", "densenet121", {}),
    # the training-only auxiliary heads of torchvision's GoogLeNet checkpoint
    ("torchvision GoogLeNet", "googlenet", {"aux1.conv.conv.weight": (128, 512, 1, 1), "aux1.conv.bn.weight": (128,),
                                            "aux1.fc1.weight": (1024, 2048), "aux2.fc2.bias": (1000,)}),
])
def test_torchvision_keymap(name, preset, extra):
    spec = zoo.get_spec(preset)
    state = {**with_batch_counts(spec), **{k: np.zeros(s, np.float32) for k, s in extra.items()}}
    renamed = rename(keymap(name), state)
    assert set(renamed) == set(spec.param_shapes())


# AuxLogits (InceptionAux(768, num_classes)): conv0 BasicConv2d(768, 128, 1), conv1 BasicConv2d(128, 768, 5), fc
AUX_LOGITS = {"AuxLogits.conv0.conv.weight": (128, 768, 1, 1), "AuxLogits.conv1.conv.weight": (768, 128, 5, 5),
              **{f"AuxLogits.conv{i}.bn.{t}": (c,) for i, c in ((0, 128), (1, 768))
                 for t in ("weight", "bias", "running_mean", "running_var")},
              "AuxLogits.fc.weight": (1000, 768), "AuxLogits.fc.bias": (1000,)}


def test_inception_v3_keymap_drops_auxlogits(tmp_path):
    """torchvision's checkpoint: its names are canonical, less AuxLogits.* and the num_batches_tracked counters
    (AuxLogits' own too); the file loads through the map, with the spec inferred, and gives the reference's logits."""
    aux_params = sum(int(np.prod(s)) for k, s in AUX_LOGITS.items() if "running" not in k)
    assert zoo.get_spec("inception_v3").num_params + aux_params == 27_161_264  # torchvision with aux_logits=True
    spec = zoo.get_spec("inception_v3")
    aux = {k: np.zeros(s, np.float32) for k, s in AUX_LOGITS.items()}
    aux.update({f"AuxLogits.conv{i}.bn.num_batches_tracked": np.zeros((), np.int64) for i in (0, 1)})
    assert set(rename(keymap("torchvision and timm Inception-v3"), {**with_batch_counts(spec), **aux})) \
        == set(spec.param_shapes())
    # end to end, at tiny widths: a torch.save'd state_dict as torchvision writes one
    tiny = zoo.get_spec("inception_v3", ratio=16)
    weights = bn_weights(tiny, seed=3)
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    state.update({k.replace("running_var", "num_batches_tracked"): torch.tensor(7) for k in weights
                  if k.endswith("running_var")})
    state.update({k: torch.zeros(s) for k, s in AUX_LOGITS.items()})
    torch.save(state, tmp_path / "inception_v3.pth")
    model = zoo.load("inception_v3", "torch", weights=tmp_path / "inception_v3.pth")
    assert model.spec == tiny
    x = np.random.default_rng(0).standard_normal((2, 3, 75, 75)).astype(np.float32)
    np.testing.assert_allclose(zoo.predict(model, x), reference.forward(tiny, weights, x), rtol=1e-4, atol=1e-4)


def test_torchvision_densenet_old_names():
    """torchvision's first DenseNet files name `denselayer1.norm.1.weight`; the map joins them as torchvision does."""
    spec = zoo.get_spec("densenet121")
    old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
           for k, v in with_batch_counts(spec).items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    assert set(rename(keymap("torchvision and timm DenseNet"), old)) == set(spec.param_shapes())


def test_torchvision_maps_refuse_other_models():
    """A map applies only where every key is renamed or dropped: ResNet's does not take DenseNet's keys."""
    with pytest.raises(AssertionError, match="no rule renames"):
        rename(keymap("torchvision and timm ResNet"), with_batch_counts(zoo.get_spec("densenet121")))
