"""Vision transformers and ConvNeXt (issue 23): ViT-B/16, ViT-B/32, d2l's ViT, ConvNeXt-T and -S, and the ops they
need, checked against public facts (torchvision's published parameter counts and state_dict names) and at each trap
a port falls into, with test values that make the mistake visible and a meta test that shows they do.

The traps: LayerNorm's eps (torch 1e-5, Keras 1e-3, Flax 1e-6 by default; the spec says), GELU's erf against its
tanh approximation (jax.nn.gelu's default), the packed q/k/v projection's order, the heads' order within a
feature vector, the 1/sqrt(head_dim) scale, ConvNeXt's LayerNorm over the channels of an NCHW map against an
NHWC one, the tokens' row-by-row order, the class token first, and dropout and stochastic depth off in eval.
"""

from __future__ import annotations

import numpy as np
import pytest
from op_specs import revealing_weights, transformer_ops

import zoo
from zoo import reference
from zoo.spec import (
    GELU,
    AdaptivePool,
    ClassToken,
    DropPath,
    Flatten,
    LayerNorm,
    LayerScale,
    Linear,
    ModelSpec,
    PosEmbedding,
    SelfAttention,
    Seq,
    SpecError,
    TakeToken,
    Tokens,
)

TOL = 1e-5

# torchvision.models docs, "Params" column (num_classes=1000); d2l's ViT counted by hand below
PUBLISHED = {"vit_b_16": 86_567_656, "vit_b_32": 88_224_232, "convnext_tiny": 28_589_128,
             "convnext_small": 50_223_688}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_num_params_are_torchvisions(preset):
    assert zoo.get_spec(preset).num_params == PUBLISHED[preset]


def test_d2l_vit_params_by_hand():
    # patch conv 512*1*16*16 + 512; class token 512; position embedding 37*512 (6x6 patches of 96x96, + 1)
    # per block: 2 LayerNorms 2*1024; attention without biases 4*512*512; MLP 512*2048 + 2048 + 2048*512 + 512
    # head: LayerNorm 1024, Linear 512*10 + 10
    block = 2 * 1024 + 4 * 512 * 512 + 512 * 2048 + 2048 + 2048 * 512 + 512
    expected = 512 * 256 + 512 + 512 + 37 * 512 + 2 * block + 1024 + 5130
    assert zoo.get_spec("vit_d2l").num_params == expected == 6_457_866


TORCHVISION_KEYS = {
    "vit_b_16": {"conv_proj.weight": (768, 3, 16, 16), "conv_proj.bias": (768,), "class_token": (1, 1, 768),
                 "encoder.pos_embedding": (1, 197, 768),
                 "encoder.layers.encoder_layer_0.ln_1.weight": (768,),
                 "encoder.layers.encoder_layer_0.self_attention.in_proj_weight": (2304, 768),
                 "encoder.layers.encoder_layer_0.self_attention.in_proj_bias": (2304,),
                 "encoder.layers.encoder_layer_0.self_attention.out_proj.weight": (768, 768),
                 "encoder.layers.encoder_layer_11.mlp.0.weight": (3072, 768),
                 "encoder.layers.encoder_layer_11.mlp.3.weight": (768, 3072),
                 "encoder.layers.encoder_layer_11.ln_2.bias": (768,), "encoder.ln.weight": (768,),
                 "heads.head.weight": (1000, 768)},
    "vit_b_32": {"conv_proj.weight": (768, 3, 32, 32), "encoder.pos_embedding": (1, 50, 768)},
    "convnext_tiny": {"features.0.0.weight": (96, 3, 4, 4), "features.0.1.weight": (96,),
                      "features.1.0.block.0.weight": (96, 1, 7, 7), "features.1.0.block.2.weight": (96,),
                      "features.1.0.block.3.weight": (384, 96), "features.1.0.block.5.weight": (96, 384),
                      "features.1.0.layer_scale": (96, 1, 1), "features.2.0.weight": (96,),
                      "features.2.1.weight": (192, 96, 2, 2), "features.5.8.layer_scale": (384, 1, 1),
                      "features.7.2.block.5.bias": (768,), "classifier.0.weight": (768,),
                      "classifier.2.weight": (1000, 768)},
    "convnext_small": {"features.5.26.layer_scale": (384, 1, 1)},
}


@pytest.mark.parametrize("preset", sorted(TORCHVISION_KEYS))
def test_torchvision_names_and_shapes(preset):
    shapes = zoo.get_spec(preset).param_shapes()
    some = TORCHVISION_KEYS[preset]
    assert {k: shapes.get(k) for k in some} == some


def test_torchvision_key_counts():
    """Every tensor of torchvision's state_dicts and no other: ViT-B/16 has 4 + 12 * 12 + 4 (conv_proj 2, class
    token, position embedding; 12 per block; encoder.ln 2, heads.head 2); ConvNeXt-T 4 (stem) + 18 * 9 (blocks:
    conv 2, LayerNorm 2, two Linears 4, layer scale 1) + 3 * 4 (downsampling) + 4 (head)."""
    assert len(zoo.get_spec("vit_b_16").param_shapes()) == 4 + 12 * 12 + 4
    assert len(zoo.get_spec("convnext_tiny").param_shapes()) == 4 + 18 * 9 + 3 * 4 + 4


def _ops(preset, kind):
    return [layer.node for layer in zoo.get_spec(preset).layers() if isinstance(layer.node, kind)]


def test_settings_per_family():
    """LayerNorm eps 1e-6 in torchvision's ViT and ConvNeXt, torch's 1e-5 in d2l's; exact GELU everywhere;
    ConvNeXt's stochastic depth from 0 to 0.1 (T) or 0.4 (S) over its blocks; layer scales start at 1e-6."""
    for preset, eps in (("vit_b_16", 1e-6), ("vit_b_32", 1e-6), ("convnext_tiny", 1e-6), ("convnext_small", 1e-6),
                        ("vit_d2l", 1e-5)):
        assert {op.eps for op in _ops(preset, LayerNorm)} == {eps}, preset
        assert {op.approximate for op in _ops(preset, GELU)} == {"none"}, preset
    for preset, top in (("convnext_tiny", 0.1), ("convnext_small", 0.4)):
        rates = [op.rate for op in _ops(preset, DropPath)]
        assert rates[0] == 0.0 and abs(rates[-1] - top) < 1e-12 and rates == sorted(rates)
    spec = zoo.get_spec("convnext_tiny")
    w = spec.init_weights(0)
    assert np.all(w["features.1.0.layer_scale"] == np.float32(1e-6))
    assert np.all(zoo.get_spec("vit_d2l").init_weights(0)["cls_token"] == 0)
    heads = {op.num_heads for op in _ops("vit_b_16", SelfAttention)}
    assert heads == {12} and {op.num_heads for op in _ops("vit_d2l", SelfAttention)} == {8}


def test_position_embedding_fixes_the_input_size():
    """torchvision interpolates the table for another size when it loads weights; the zoo refuses, saying
    which size fits, before any framework runs."""
    spec = zoo.get_spec("vit_b_16")
    assert spec.min_input_size == 224 and spec.fits((224, 224)) is None and spec.fits((239, 239)) is None
    assert "position embedding holds 197 tokens" in spec.fits((256, 256))
    with pytest.raises(ValueError, match=r"input 256x256 does not fit vit_b_16: its position embedding "
                                         r"\(encoder.pos_embedding\) holds a fixed number of tokens.*resize the "
                                         r"images to 224x224"):
        spec.check_input((1, 3, 256, 256), "NCHW")
    with pytest.raises(SpecError, match="multiple of the patch size 16"):
        zoo.get_spec("vit_b_16", input_size=200)
    assert zoo.get_spec("vit_b_16", input_size=384).param_shapes()["encoder.pos_embedding"] == (1, 577, 768)


def test_spec_json_round_trip():
    for preset in ("vit_b_16", "convnext_tiny", "vit_d2l"):
        spec = zoo.get_spec(preset)
        assert ModelSpec.from_json(spec.to_json()) == spec
    spec = transformer_ops()
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_the_ops_refuse_what_does_not_fit():
    with pytest.raises(SpecError, match="num_heads dividing dim"):
        SelfAttention(10, 3)
    with pytest.raises(SpecError, match="eps must be a float"):
        LayerNorm(4, 0)
    with pytest.raises(SpecError, match="approximate must be one of"):
        GELU("erf")
    with pytest.raises(TypeError):
        LayerNorm(4)  # no default eps: every framework's differs
    bad = Seq(("tokens", Tokens()), ("class_token", ClassToken(4)), ("pos", PosEmbedding(5, 4)), ("take", TakeToken()),
              ("fc", Linear(4, 2)))
    with pytest.raises(SpecError, match="pos .PosEmbedding.: its position embedding holds 5 tokens"):
        ModelSpec(name="t", family="test", in_channels=4, num_classes=2, body=bad, input_size=(3, 3))
    with pytest.raises(SpecError, match="scales 4 channels"):
        ModelSpec(name="t", family="test", in_channels=3, num_classes=3,
                  body=Seq(("ls", LayerScale(4)), ("p", AdaptivePool(1)), ("f", Flatten())), input_size=4)


# --------------------------------------------------------------------------- the traps, in every framework

def _case(scale: float = 1.0):
    spec = transformer_ops()
    w = revealing_weights(spec, seed=4)
    x = (scale * np.random.default_rng(5).standard_normal((3, 3, 12, 8))).astype(np.float32)
    return spec, w, x


def _agrees(out, ref) -> float:
    return float(np.abs(out - ref).max() / max(1.0, np.abs(ref).max()))


def test_transformer_ops_agree(framework, record_error):
    """Every new op at once, in eval mode: its dropouts (0.4, 0.2) and stochastic depth (0.3) must do nothing."""
    spec, w, x = _case()
    model = zoo.load(spec, framework, weights=w)
    out = zoo.predict(model, x, layout="NCHW")
    record_error("transformer_ops", framework, out, reference.forward(spec, w, x))
    np.testing.assert_array_equal(zoo.predict(model, x, layout="NCHW"), out)  # no dropout drawn


def _attention_variant(order=(0, 1, 2), heads_last=False, scale=True, out_transposed=False):
    """reference.self_attention, or one of its mistakes."""
    def attention(x, w, op):
        b, n, d = x.shape
        h, hd = op.num_heads, op.head_dim
        qkv = x @ w["in_proj_weight"].T + (w["in_proj_bias"] if op.bias else 0)
        parts = [qkv[..., i * d:(i + 1) * d] for i in order]
        if heads_last:  # [D] -> [head_dim, heads]: the wrong split
            q, k, v = (p.reshape(b, n, hd, h).transpose(0, 3, 1, 2) for p in parts)
        else:
            q, k, v = (p.reshape(b, n, h, hd).transpose(0, 2, 1, 3) for p in parts)
        s = q @ k.transpose(0, 1, 3, 2) / (np.sqrt(hd) if scale else 1.0)
        y = (reference.softmax(s) @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
        wo = w["out_proj.weight"]
        y = y @ (wo if out_transposed else wo.T)
        return y + w["out_proj.bias"] if op.bias else y
    return attention


def _mistakes() -> dict:
    """mistake -> (the reference function it replaces, the mistaken function), built on the real functions."""
    gelu, layer_norm = reference.gelu, reference.layer_norm

    def gelu_swapped(x, approximate):
        return gelu(x, "none" if approximate == "tanh" else "tanh")

    def layer_norm_over_w(x, w, op):  # an NCHW image normalised over its last axis, as a channels-last port would
        if x.ndim != 4:
            return layer_norm(x, w, op)
        mean = x.mean(axis=-1, keepdims=True)
        var = np.square(x - mean).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + op.eps) * w["weight"][:, None, None] + w["bias"][:, None, None]

    def tokens_by_column(x):
        return x.transpose(0, 1, 3, 2).reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)

    def class_token_last(x, token):
        return np.concatenate([x, np.broadcast_to(token, (x.shape[0], 1, x.shape[2]))], axis=1)

    return {
        "q and k swapped in in_proj": ("self_attention", _attention_variant(order=(1, 0, 2))),
        "k and v swapped in in_proj": ("self_attention", _attention_variant(order=(0, 2, 1))),
        "heads split [head_dim, heads]": ("self_attention", _attention_variant(heads_last=True)),
        "no 1/sqrt(head_dim) scale": ("self_attention", _attention_variant(scale=False)),
        "out_proj not transposed": ("self_attention", _attention_variant(out_transposed=True)),
        "tanh GELU for erf, erf for tanh": ("gelu", gelu_swapped),
        "LayerNorm of an NCHW image over W": ("layer_norm", layer_norm_over_w),
        "tokens column by column": ("to_tokens", tokens_by_column),
        "class token last": ("prepend_token", class_token_last),
    }


MISTAKES = _mistakes()


def test_meta_the_attention_variant_without_mistakes_is_the_reference():
    spec, w, x = _case()
    op = next(op for op in spec.ops().values() if isinstance(op, SelfAttention))
    t = np.random.default_rng(0).standard_normal((2, 7, 12))
    tensors = {k: np.asarray(v, np.float64) for k, v in
               ((key, w[name]) for name, (path, key) in spec.tensor_keys().items() if path == "layer0.attn")}
    np.testing.assert_allclose(_attention_variant()(t, tensors, op), reference.self_attention(t, tensors, op),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_meta_each_mistake_shows(mistake, monkeypatch):
    """Each mistake moves transformer_ops' output at least 10x past the tolerance that test_transformer_ops_agree
    holds every framework to."""
    name, fn = MISTAKES[mistake]
    spec, w, x = _case()
    right = reference.forward(spec, w, x)
    monkeypatch.setattr(reference, name, fn)
    wrong = reference.forward(spec, w, x)
    assert _agrees(wrong, right) > 10 * TOL, f"{mistake}: {_agrees(wrong, right):.2e}"


def _layer_norm_spec(where: str, eps: float) -> ModelSpec:
    """LayerNorm over an image's channels or over tokens, where the input's variance (2e-3 squared, 4e-6) is
    near every framework's default eps; the second Linear reads the normalised features undiminished."""
    if where == "image":
        body = Seq(("ln", LayerNorm(6, eps)), ("pool", AdaptivePool(1)), ("flatten", Flatten()), ("fc", Linear(6, 4)))
    else:
        body = Seq(("tokens", Tokens()), ("ln", LayerNorm(6, eps)), ("take", TakeToken(2)), ("fc", Linear(6, 4)))
    return ModelSpec(name=f"ln_{where}", family="test", in_channels=6, num_classes=4, body=body, input_size=(3, 5))


def _ln_case(where: str, eps: float):
    spec = _layer_norm_spec(where, eps)
    w = revealing_weights(spec, seed=2)
    x = (2e-3 * np.random.default_rng(3).standard_normal((2, 6, 3, 5))).astype(np.float32)
    return spec, w, x


@pytest.mark.parametrize("where", ["image", "tokens"])
def test_meta_a_layer_norm_eps_mistake_shows(where):
    spec, w, x = _ln_case(where, 1e-6)
    right = reference.forward(spec, w, x)
    for default in (1e-5, 1e-3):  # torch's and Keras' defaults (Flax's is 1e-6: shown by the eps 1e-5 case below)
        other = _layer_norm_spec(where, default)
        assert _agrees(reference.forward(other, w, x), right) > 100 * TOL, (where, default)
    spec5, _, _ = _ln_case(where, 1e-5)
    assert _agrees(reference.forward(_layer_norm_spec(where, 1e-6), w, x), reference.forward(spec5, w, x)) > 100 * TOL


@pytest.mark.parametrize("where", ["image", "tokens"])
@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_layer_norm_eps_is_the_specs(where, eps, framework, record_error):
    spec, w, x = _ln_case(where, eps)
    model = zoo.load(spec, framework, weights=w)
    record_error(f"LayerNorm eps {eps:g} on {where}", framework, zoo.predict(model, x, layout="NCHW"),
                 reference.forward(spec, w, x))


def _gelu_spec(approximate: str) -> ModelSpec:
    """GELU alone on one channel (NCHW and NHWC flatten alike), its inputs spread over [-3, 3]."""
    return ModelSpec(name="gelu", family="test", in_channels=1, num_classes=8 * 12,
                     body=Seq(("flatten", Flatten()), ("gelu", GELU(approximate))), input_size=(8, 12))


GELU_X = np.linspace(-3, 3, 96, dtype=np.float32).reshape(1, 1, 8, 12)


def test_meta_erf_and_tanh_gelu_differ_beyond_the_tolerance():
    exact = reference.forward(_gelu_spec("none"), {}, GELU_X)
    tanh = reference.forward(_gelu_spec("tanh"), {}, GELU_X)
    gap = _agrees(tanh, exact)
    assert 1e-4 < gap < 1e-3 and gap > 10 * TOL  # about 3e-4 over [-3, 3]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_the_specs(approximate, framework):
    spec = _gelu_spec(approximate)
    got = zoo.predict(zoo.load(spec, framework), GELU_X, layout="NCHW")
    want = reference.forward(spec, {}, GELU_X)
    assert np.abs(got - want).max() <= 1e-6, float(np.abs(got - want).max())


def test_a_torchvision_state_dict_is_inferred_at_the_presets_head_count():
    """At the preset's widths the file is the preset's (12 heads for ViT-B); a fine-tuned head is read from shapes."""
    from zoo.io.infer import infer

    for preset in ("vit_b_16", "vit_b_32", "convnext_tiny"):
        found = infer(zoo.get_spec(preset, num_classes=10).param_shapes())
        assert found.spec.name == preset and found.overrides == {"num_classes": 10}, found.describe()


# The attention alternative each framework's bench times beside the default: torch's plain matmuls against
# nn.MultiheadAttention's fused path, Flax's jax.nn.dot_product_attention against nnx.dot_product_attention's
# einsums, Keras' explicit scores against its ops.dot_product_attention.
ATTENTION_ROWS = {"torch": "attention as matmuls", "flax": "attention: jax.nn.dot_product_attention",
                  "keras": "attention as einsums (Keras' explicit scores)"}


@pytest.mark.parametrize("fw", sorted(ATTENTION_ROWS))
def test_bench_attention_alternative_is_the_same_function(fw, record_error):
    """What `zoo bench` times as the other attention computes the reference's logits on every new op."""
    bench = pytest.importorskip(f"zoo.frameworks.{fw}_bench")
    spec, w, x = _case()
    model = zoo.load(spec, fw, weights=w)
    alternatives = bench.alternatives(model)
    assert ATTENTION_ROWS[fw] in alternatives, sorted(alternatives)
    batch = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if bench.LAYOUT == "NHWC" else x
    out = np.asarray(alternatives[ATTENTION_ROWS[fw]](batch)())
    record_error(f"transformer_ops, {ATTENTION_ROWS[fw]}", fw, out, reference.forward(spec, w, x))
