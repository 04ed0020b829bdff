"""The CNNs of the last eight years (issue 21): MobileNetV2/V3, EfficientNet-B0..B3, RegNet, ResNeXt, Wide ResNet,
ResNet-101, SqueezeNet, and the ops they need, checked against public facts (torchvision's published parameter
counts and state_dict names, the settings names do not show) and at each trap a port falls into, with test
values that make the mistake visible and a meta test that shows they do.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from op_specs import modern_ops, revealing_weights

import zoo
from zoo import reference
from zoo._registry import KEYMAPS
from zoo.io.keymaps import rename
from zoo.spec import (
    Act,
    AdaptivePool,
    BatchNorm,
    Conv,
    DropPath,
    Flatten,
    Linear,
    ModelSpec,
    Parallel,
    Seq,
    SpecError,
    join_shapes,
    run,
)

# torchvision.models docs, "Params" column (num_classes=1000)
PUBLISHED = {
    "mobilenet_v2": 3_504_872, "mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "regnet_x_400mf": 5_495_976, "regnet_y_400mf": 4_344_144,
    "resnext50_32x4d": 25_028_904, "wide_resnet50_2": 68_883_240, "resnet101": 44_549_160,
    "squeezenet1_0": 1_248_424, "squeezenet1_1": 1_235_496,
    "resnet152": 60_192_808, "densenet161": 28_681_000, "densenet169": 14_149_480, "densenet201": 20_013_928,
    "vgg13": 133_047_848, "vgg19": 143_667_240, "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
}


def test_vgg_with_batchnorm_has_torchvisions_names_and_drops_its_counters():
    """torchvision's make_layers(batch_norm=True) numbers conv, BatchNorm, ReLU in one flat list: VGG-11-BN's
    second conv is features.4, and its checkpoints' num_batches_tracked counters are dropped by the key map."""
    from zoo.families.vgg import TORCHVISION_VGG_BN
    from zoo.io import keymaps

    shapes = zoo.get_spec("vgg11_bn").param_shapes()
    assert shapes["features.0.weight"] == (64, 3, 3, 3) and shapes["features.1.running_var"] == (64,)
    assert shapes["features.4.weight"] == (128, 64, 3, 3) and "features.3.weight" not in shapes
    assert len(shapes) == 8 * (2 + 4) + 6  # each conv: weight, bias; its BatchNorm: 4; three linears
    names = list(shapes) + [k.replace("running_var", "num_batches_tracked") for k in shapes if "running_var" in k]
    mapping, dropped = keymaps.rename(TORCHVISION_VGG_BN, names)
    assert set(mapping.values()) == set(shapes) and len(dropped) == 8
    assert keymaps.rename(TORCHVISION_VGG_BN, list(zoo.get_spec("resnet18").param_shapes())) is None


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_num_params_are_torchvisions(preset):
    assert zoo.get_spec(preset).num_params == PUBLISHED[preset]


def test_d2l_regnet_params_by_hand():
    # stem 32*1*9+32 + 2*32 = 384. Stage 1 (32 wide, 2 groups of 16: conv2 [32, 16, 3, 3]): first block 32*32+32
    # + 32*16*9+32 + 32*32+32 + 3 BN (192) + conv4 32*32+32 + bn4 64 = 8,064, then 3 blocks of 6,944. Stage 2
    # (80 wide, 5 groups): first block 32*80+80 + 80*16*9+80 + 80*80+80 + 480 + 32*80+80 + 160 = 24,000, then
    # 5 blocks of 80*80+80 + 11,600 + 6,480 + 480 = 25,040. fc 80*10+10 = 810
    assert zoo.get_spec("regnet_d2l").num_params == 384 + 8_064 + 3 * 6_944 + 24_000 + 5 * 25_040 + 810


# a few of torchvision's state_dict keys and shapes per architecture (torchvision.models source, read with
# the zoo's `search`), and how many tensors its state_dict has without num_batches_tracked
TORCHVISION_KEYS = {
    "mobilenet_v2": {"features.0.0.weight": (32, 3, 3, 3), "features.1.conv.0.0.weight": (32, 1, 3, 3),
                     "features.1.conv.1.weight": (16, 32, 1, 1), "features.1.conv.2.running_var": (16,),
                     "features.2.conv.0.0.weight": (96, 16, 1, 1), "features.2.conv.1.0.weight": (96, 1, 3, 3),
                     "features.2.conv.2.weight": (24, 96, 1, 1), "features.2.conv.3.weight": (24,),
                     "features.18.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (1000, 1280)},
    "mobilenet_v3_large": {"features.0.0.weight": (16, 3, 3, 3), "features.1.block.0.0.weight": (16, 1, 3, 3),
                           "features.1.block.1.0.weight": (16, 16, 1, 1),
                           "features.4.block.2.fc1.weight": (24, 72, 1, 1), "features.4.block.2.fc2.bias": (72,),
                           "features.4.block.3.0.weight": (40, 72, 1, 1), "features.16.0.weight": (960, 160, 1, 1),
                           "classifier.0.weight": (1280, 960), "classifier.3.weight": (1000, 1280)},
    "mobilenet_v3_small": {"features.1.block.1.fc1.weight": (8, 16, 1, 1),
                           "features.1.block.2.0.weight": (16, 16, 1, 1), "features.12.0.weight": (576, 96, 1, 1),
                           "classifier.0.weight": (1024, 576)},
    "efficientnet_b0": {"features.0.0.weight": (32, 3, 3, 3), "features.1.0.block.0.0.weight": (32, 1, 3, 3),
                        "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
                        "features.1.0.block.2.0.weight": (16, 32, 1, 1),
                        "features.2.0.block.0.0.weight": (96, 16, 1, 1),
                        "features.2.0.block.2.fc1.weight": (4, 96, 1, 1),
                        "features.6.3.block.3.1.running_mean": (192,), "features.8.0.weight": (1280, 320, 1, 1),
                        "classifier.1.weight": (1000, 1280)},
    "regnet_y_400mf": {"stem.0.weight": (32, 3, 3, 3), "trunk_output.block1.block1_0.proj.0.weight": (48, 32, 1, 1),
                       "trunk_output.block1.block1_0.f.a.0.weight": (48, 32, 1, 1),
                       "trunk_output.block1.block1_0.f.b.0.weight": (48, 8, 3, 3),
                       "trunk_output.block1.block1_0.f.se.fc1.weight": (8, 48, 1, 1),
                       "trunk_output.block4.block4_5.f.c.1.weight": (440,), "fc.weight": (1000, 440)},
    "regnet_x_400mf": {"trunk_output.block1.block1_0.f.b.0.weight": (32, 16, 3, 3), "fc.weight": (1000, 400)},
    "resnext50_32x4d": {"layer1.0.conv1.weight": (128, 64, 1, 1), "layer1.0.conv2.weight": (128, 4, 3, 3),
                        "layer4.2.conv2.weight": (1024, 32, 3, 3), "layer4.2.conv3.weight": (2048, 1024, 1, 1)},
    "wide_resnet50_2": {"layer1.0.conv2.weight": (128, 128, 3, 3), "layer4.0.conv1.weight": (1024, 1024, 1, 1)},
    "squeezenet1_0": {"features.0.weight": (96, 3, 7, 7), "features.3.squeeze.weight": (16, 96, 1, 1),
                      "features.3.expand3x3.weight": (64, 16, 3, 3), "features.12.expand1x1.bias": (256,),
                      "classifier.1.weight": (1000, 512, 1, 1)},
    "squeezenet1_1": {"features.0.weight": (64, 3, 3, 3), "features.3.squeeze.weight": (16, 64, 1, 1),
                      "features.12.expand3x3.weight": (256, 64, 3, 3)},
}


@pytest.mark.parametrize("preset", sorted(TORCHVISION_KEYS))
def test_torchvision_names_and_shapes(preset):
    shapes = zoo.get_spec(preset).param_shapes()
    some = TORCHVISION_KEYS[preset]
    assert {k: shapes.get(k) for k in some} == some


def _ops(preset, kind):
    return {p: op for p, op in zoo.get_spec(preset).ops().items() if isinstance(op, kind)}


def test_batchnorm_eps_and_momentum_per_family():
    """MobileNetV3 sets eps 1e-3 and momentum 0.01 in every BatchNorm; the others keep PyTorch's 1e-5 and 0.1."""
    for preset, (eps, momentum) in (("mobilenet_v3_large", (1e-3, 0.01)), ("mobilenet_v3_small", (1e-3, 0.01)),
                                    ("mobilenet_v2", (1e-5, 0.1)), ("efficientnet_b0", (1e-5, 0.1)),
                                    ("regnet_y_400mf", (1e-5, 0.1))):
        bns = _ops(preset, BatchNorm).values()
        assert bns and {(op.eps, op.momentum) for op in bns} == {(eps, momentum)}, preset


def test_settings_names_do_not_show():
    layers = {layer.path: layer.node for layer in zoo.get_spec("mobilenet_v3_large").layers()}
    assert layers["features.4.block.2.scale_activation"] == Act("hardsigmoid")  # the SE gate
    assert layers["features.7.block.0.2"] == Act("hardswish") and layers["features.1.block.0.2"] == Act("relu")
    assert layers["features.4.block.1.0"].groups == 72 and layers["features.4.block.1.0"].padding == (2, 2)
    eff = {layer.path: layer.node for layer in zoo.get_spec("efficientnet_b0").layers()}
    rates = [op.rate for op in eff.values() if isinstance(op, DropPath)]
    # torchvision: 0.2 * block index / 16, on the blocks with a residual (a stage's first block has none, nor
    # the last block, 192 -> 320)
    assert rates == [0.2 * i / 16 for i in (2, 4, 6, 7, 9, 10, 12, 13, 14)]
    assert eff["features.2.1.block.2.scale_activation"] == Act("sigmoid") and eff["features.0.2"] == Act("silu")
    reg = {layer.path: layer.node for layer in zoo.get_spec("regnet_y_400mf").layers()}
    assert reg["trunk_output.block2.block2_0.f.b.0"].stride == (2, 2)  # the grouped 3x3 strides
    assert reg["trunk_output.block2.block2_0.f.se.fc1"].out_channels == 12  # a quarter of the block's input, 48
    sq = {layer.path: layer.node for layer in zoo.get_spec("squeezenet1_0").layers()}
    assert sq["features.2"].ceil_mode and sq["features.2"].size == (3, 3)
    assert dict(zoo.get_spec("squeezenet1_0").layer_shapes())["features.6"] == (1, 256, 27, 27)  # floor: 26


def test_regnet_widths_are_torchvisions():
    """BlockParams.from_init_params at float32, then the widths made divisible by the group width."""
    from zoo.families.regnet import stage_params

    assert stage_params(22, 24, 24.48, 2.54, 16) == [(32, 1, 16), (64, 2, 16), (160, 7, 16), (400, 12, 16)]
    assert stage_params(16, 48, 27.89, 2.09, 8) == [(48, 1, 8), (104, 3, 8), (208, 6, 8), (440, 6, 8)]


def test_torchvision_regnet_keymap_renames_the_dash():
    (km,) = [k for k in KEYMAPS if k.name.startswith("torchvision RegNet")]
    spec = zoo.get_spec("regnet_x_400mf")
    theirs = [re.sub(r"block(\d+)_(\d+)", r"block\1-\2", k) for k in spec.param_shapes()]
    theirs.append("stem.1.num_batches_tracked")
    assert "trunk_output.block1.block1-0.f.a.0.weight" in theirs
    mapping, dropped = rename(km, theirs)
    assert sorted(mapping.values()) == sorted(spec.param_shapes()) and dropped == ["stem.1.num_batches_tracked"]


# --------------------------------------------------------------------------- the ops' traps

def _one(body: Seq, c: int = 4, size=(7, 9)) -> ModelSpec:
    """`body` on a [c, *size] input, then global pooling and a linear layer to one logit."""
    c_out = run(body, (c, *size), lambda path, op, shape: op.out_shape(shape), join_shapes)[0]
    return ModelSpec(name="t", family="test", in_channels=c, num_classes=1, input_size=size,
                     body=Seq(("b", body), ("p", AdaptivePool(1)), ("f", Flatten()), ("fc", Linear(c_out, 1))))


def _run_all(spec, w, x, framework):
    model = zoo.load(spec, framework, weights=w)
    return zoo.predict(model, x, layout="NCHW")


def test_activations_over_minus5_to_5(framework):
    """Each activation on inputs spread over [-5, 5], against PyTorch's definitions in float64; the wrong
    hard sigmoid (Keras 2's and ONNX's default 0.2 x + 0.5) is 0.033 away there (the meta test below).
    One channel, so that NCHW and NHWC flatten alike."""
    x = np.linspace(-5, 5, 12 * 21, dtype=np.float32).reshape(1, 1, 12, 21)
    for kind in ("silu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "relu"):
        spec = ModelSpec(name="t", family="test", in_channels=1, num_classes=12 * 21,
                         body=Seq(("act", Act(kind)), ("flatten", Flatten())), input_size=(12, 21))
        got = _run_all(spec, {}, x, framework)
        want = reference.activation(x.astype(np.float64), kind).reshape(1, -1)
        assert np.abs(got - want).max() <= 1e-6, (kind, float(np.abs(got - want).max()))


def test_meta_wrong_hard_sigmoid_is_visible():
    x = np.linspace(-5, 5, 252)
    keras2 = np.clip(0.2 * x + 0.5, 0, 1)
    assert np.abs(keras2 - reference.activation(x, "hardsigmoid")).max() > 0.03


def _depthwise_spec(multiplier=3, c=4, dilation=1, stride=1, groups=None):
    return _one(Seq(("dw", Conv(c, c * multiplier, 3, stride, dilation, groups=groups or c, dilation=dilation))), c)


@pytest.mark.parametrize("case", ["multiplier3", "groups2_dilated_strided"])
def test_grouped_weights_in_every_framework(framework, case):
    """torch's [O, I/groups, kh, kw]; output channel o reads group o // (O/groups). A depthwise conv with a
    channel multiplier of 3, and 2 groups with dilation 2 and stride 2 (Keras refuses that pair itself)."""
    spec = _depthwise_spec(3) if case == "multiplier3" else _depthwise_spec(2, dilation=2, stride=2, groups=2)
    w = revealing_weights(spec, seed=3)
    x = np.random.default_rng(4).standard_normal((2, 4, 7, 9)).astype(np.float32)
    ref = reference.forward(spec, w, x)
    got = _run_all(spec, w, x, framework)
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_meta_multiplier_order_is_visible():
    """The other order of a multiplied depthwise conv's outputs (multiplier-major, channel c*... vs m*C + c),
    as a wrong layout hook would make it, changes the logits far beyond the tolerance."""
    spec = _depthwise_spec(3)
    w = revealing_weights(spec, seed=3)
    x = np.random.default_rng(4).standard_normal((2, 4, 7, 9))
    k = w["b.dw.weight"]  # [12, 1, 3, 3], channel c*3 + m
    wrong = dict(w, **{"b.dw.weight": k.reshape(4, 3, 1, 3, 3).transpose(1, 0, 2, 3, 4).reshape(12, 1, 3, 3)})
    assert np.abs(reference.forward(spec, wrong, x) - reference.forward(spec, w, x)).max() > 1e-2


def test_conv_groups_must_divide():
    with pytest.raises(SpecError, match="groups must be an int >= 1 that divides both"):
        Conv(6, 8, 3, groups=4)
    assert Conv(6, 12, 3, groups=6).params()["weight"] == (12, 1, 3, 3)


def test_json_of_older_models_is_unchanged():
    """groups and dilation are left out of a spec's JSON at their defaults: every earlier model's JSON, and
    the digest over it, is what earlier zoos wrote."""
    text = zoo.get_spec("resnet18").to_json()
    assert '"groups"' not in text and '"dilation"' not in text
    dw = Conv(4, 8, 3, groups=4, dilation=2)
    spec = _one(Seq(("c", dw)), 4)
    assert ModelSpec.from_json(spec.to_json()) == spec and '"groups": 4' in spec.to_json()


def test_se_gate_broadcasts_at_odd_sizes():
    gate = Seq(("pool", AdaptivePool(1)), ("fc", Conv(4, 4, 1)), ("act", Act("sigmoid")))
    spec = _one(Seq(("se", Parallel("mul", ("", Seq()), ("g", gate)))), 4, size=(7, 5))
    assert dict(spec.layer_shapes())["b.se"] == (1, 4, 7, 5)
    with pytest.raises(SpecError, match="branches to multiply"):
        _one(Seq(("se", Parallel("mul", ("", Seq()), ("g", Seq(("fc", Conv(4, 3, 1))))))), 4)


# --------------------------------------------------------------------------- stochastic depth

def test_drop_path_in_training_drops_whole_samples_and_scales():
    """torchvision's 'row' mode: each sample of a batch is kept (times 1 / (1 - p)) or zeroed as a whole."""
    torch = pytest.importorskip("torch")
    from zoo.frameworks.torch_model import StochasticDepth

    m = StochasticDepth(0.25).train()
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 5, 5)
    y = m(x)
    per_sample = y.reshape(4000, -1)
    assert np.isclose(per_sample.numpy()[:, :, None], [0.0, 1 / 0.75]).any(-1).all()
    assert bool((per_sample == per_sample[:, :1]).all())  # one decision per sample
    kept = float((per_sample[:, 0] > 0).float().mean())
    assert abs(kept - 0.75) < 0.03 and abs(float(y.mean()) - 1.0) < 0.04  # E[y] = x
    assert m.eval()(x) is x


def test_drop_path_flax_and_keras_are_per_sample():
    flax = pytest.importorskip("flax")
    from flax import nnx

    from zoo.frameworks import flax_model

    layer = flax_model._module(DropPath(0.25), nnx.Rngs(0))
    x = np.ones((2000, 5, 5, 3), np.float32)
    y = np.asarray(layer(x, rngs=nnx.Rngs(dropout=1)))
    per = y.reshape(2000, -1)
    assert (per == per[:, :1]).all() and np.isclose(per[:, :, None], [0.0, 1 / 0.75]).any(-1).all()
    assert abs((per[:, 0] > 0).mean() - 0.75) < 0.04
    assert flax is not None


def test_modern_ops_agree(framework, record_error):
    spec = modern_ops()
    w = revealing_weights(spec, seed=5)
    x = np.random.default_rng(6).standard_normal((3, 3, 21, 19)).astype(np.float32)
    ref = reference.forward(spec, w, x)
    got = _run_all(spec, w, x, framework)
    record_error("modern_ops", framework, got, ref)


def test_the_test_specs_hold_every_op_kind_and_join():
    """The op tables are isinstance chains: every op class, activation and join must be in every_op(),
    modern_ops() or transformer_ops(), which run in every framework and the reference (test_modern_ops_agree,
    test_transformers.test_transformer_ops_agree, test_diff and the conversion tests), so that a backend
    without an entry fails here, in CI."""
    from op_specs import every_op, transformer_ops

    from zoo.spec import ACTIVATIONS, JOINS, OPS, walk_layers

    nodes = [layer.node for spec in (every_op(), modern_ops(), transformer_ops()) for layer in walk_layers(spec.body)]
    assert {type(n).__name__ for n in nodes if not isinstance(n, Parallel)} == set(OPS)
    assert {n.kind for n in nodes if isinstance(n, Act)} == set(ACTIVATIONS)
    assert {n.join for n in nodes if isinstance(n, Parallel)} == set(JOINS)
    convs = [n for n in nodes if isinstance(n, Conv)]
    assert any(c.groups == c.in_channels and c.out_channels > c.in_channels for c in convs)  # a multiplier
    assert any(1 < c.groups < c.in_channels and c.dilation != (1, 1) and c.stride != (1, 1) for c in convs)


# --------------------------------------------------------------------------- small maps

SMALL_MAP_CASES = {  # (conv, input size): output maps of 2x2, 1x1, 2x1, a dilated and a strided one, no bias
    "3x3_on_2x2": (Conv(4, 6, 3, 1, 1), (2, 2)),
    "3x3_on_1x1": (Conv(4, 6, 3, 1, 1), (1, 1)),
    "strided_4x3_to_2x2": (Conv(4, 6, 3, 2, 1), (4, 3)),
    "dilated_no_bias": (Conv(4, 6, 3, 1, 2, bias=False, dilation=2), (2, 1)),
    "2x3_kernel_stride_2x1": (Conv(4, 6, (2, 3), (2, 1), (0, 1)), (3, 2)),
    "1x1_on_5x7": (Conv(4, 6, 1), (5, 7)),  # 1x1 convs at any size take the matmul form
    "1x1_strided_padded": (Conv(4, 6, 1, 2, 1, bias=False), (5, 7)),
}


@pytest.mark.parametrize("case", sorted(SMALL_MAP_CASES))
def test_convs_on_small_maps_in_every_framework(framework, case):
    """Dense convs whose output map is SMALL_MAP cells or fewer, and 1x1 convs: Flax and Keras on JAX run them
    as one matmul over the windows (XLA's CPU convolution is 10-30x slower on small maps), every tap kept."""
    conv, size = SMALL_MAP_CASES[case]
    spec = _one(Seq(("c", conv)), 4, size)
    w = revealing_weights(spec, seed=5)
    x = np.random.default_rng(6).standard_normal((3, 4, *size)).astype(np.float32)
    ref = reference.forward(spec, w, x)
    got = _run_all(spec, w, x, framework)
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), float(np.abs(got - ref).max())


def test_small_map_rule_takes_the_cases_it_is_for():
    """The matmul form is taken for each case above, and not for a 4x4 output map: else the test above
    would pass without running it."""
    pytest.importorskip("flax")
    from zoo.frameworks.flax_model import SMALL_MAP, small_map

    assert all(small_map(conv, size) for conv, size in SMALL_MAP_CASES.values() if conv.kernel_size != (1, 1))
    assert not small_map(Conv(4, 6, 3, 1, 1), (4, 4)) and SMALL_MAP == 4
    pytest.importorskip("keras")
    from zoo.frameworks.keras_model import SMALL_MAP as KERAS_SMALL_MAP
    from zoo.frameworks.keras_model import PaddedConv2D

    layer = PaddedConv2D(6, 3, 2, pad=1)  # the strided case above: a padded 6x5 map to 2x2
    assert KERAS_SMALL_MAP == SMALL_MAP and layer._small((3, 6, 5, 4))
    assert not PaddedConv2D(6, 3, 1, pad=1)._small((3, 6, 6, 4))
