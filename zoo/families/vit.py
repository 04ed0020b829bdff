"""Vision transformers: ViT-B/16 and ViT-B/32 (Dosovitskiy et al. 2021) as torchvision builds them,
and the small ViT of d2l's "Transformers for Vision" (96x96 Fashion-MNIST, patch 16).

A patch embedding (a conv with kernel and stride the patch size) turns the image into tokens; a
learned class token is prepended and a learned position embedding added; pre-norm encoder blocks
(LayerNorm, multi-head self-attention, residual; LayerNorm, MLP with exact GELU, residual); a final
LayerNorm; the class token's features into the head. torchvision's LayerNorms have eps 1e-6, d2l's
torch's default 1e-5. Canonical names follow torchvision's state_dict:

    conv_proj                                        the patch embedding
    class_token, encoder.pos_embedding               bare parameters [1, 1, D] and [1, N + 1, D]
    encoder.layers.encoder_layer_{i}.ln_1 / ln_2     the block's LayerNorms
    encoder.layers.encoder_layer_{i}.self_attention  in_proj_weight [3D, D], in_proj_bias, out_proj.weight/bias
    encoder.layers.encoder_layer_{i}.mlp.0 / mlp.3   the MLP's Linears
    encoder.ln, heads.head                           the last LayerNorm, the classifier

Only the nominal input size fits (the position embedding holds one token count): see spec.PosEmbedding.

    >>> zoo.get_spec('vit_b_16').num_params
    86567656
"""

from __future__ import annotations

from typing import Any

from zoo._registry import KeyMap, register_keymap, register_model
from zoo.families._common import check_counts, dropout_rate, module_renames, size_pair, width
from zoo.spec import (
    GELU,
    ClassToken,
    Conv,
    Dropout,
    LayerNorm,
    Linear,
    ModelSpec,
    Parallel,
    PosEmbedding,
    SelfAttention,
    Seq,
    TakeToken,
    Tokens,
    require,
)

IDENTITY = ("", Seq())


def encoder_block(dim: int, heads: int, mlp: int, dropout: float, eps: float, names: dict, bias: bool = True) -> Seq:
    """Pre-norm: x + attention(ln_1(x)), then y + mlp(ln_2(y)); `names` are the library's layer names."""
    attention = Seq((names["ln_1"], LayerNorm(dim, eps)), (names["attention"], SelfAttention(dim, heads, bias)),
                    *([("dropout", Dropout(dropout))] if names.get("dropout") else []))
    m = names["mlp"]
    mlp_layers = Seq((m[0], Linear(dim, mlp)), (m[1], GELU("none")), (m[2], Dropout(dropout)), (m[3], Linear(mlp, dim)),
                     (m[4], Dropout(dropout)))
    feed_forward = Seq((names["ln_2"], LayerNorm(dim, eps)), (names["mlp_name"], mlp_layers))
    return Seq(("add_1", Parallel("add", ("", attention), IDENTITY)),
               ("add_2", Parallel("add", ("", feed_forward), IDENTITY)))


TORCHVISION = {"ln_1": "ln_1", "attention": "self_attention", "dropout": True, "ln_2": "ln_2", "mlp_name": "mlp",
               "mlp": ("0", "1", "2", "3", "4")}


def _tokens(input_size: Any, patch: int) -> tuple[tuple[int, int], int]:
    h, w = size_pair(input_size)
    require(h % patch == 0 and w % patch == 0 and h >= patch and w >= patch,
            f"input_size {input_size!r} must be a multiple of the patch size {patch} (as torchvision requires)")
    return (h, w), (h // patch) * (w // patch)


def vision_transformer(name: str, patch: Any, num_layers: Any, num_heads: Any, hidden_dim: Any, mlp_dim: Any,
                       dropout: Any, in_channels: int, num_classes: int, input_size: Any) -> ModelSpec:
    check_counts(in_channels, num_classes)
    patch, d, m = width(patch, "patch_size"), width(hidden_dim, "hidden_dim"), width(mlp_dim, "mlp_dim")
    layers, heads = width(num_layers, "num_layers"), width(num_heads, "num_heads")
    require(layers <= 64 and d % heads == 0, f"num_heads ({heads}) must divide hidden_dim ({d}), num_layers <= 64")
    p = dropout_rate(dropout)
    size, n = _tokens(input_size, patch)
    blocks = [(f"encoder_layer_{i}", encoder_block(d, heads, m, p, 1e-6, TORCHVISION)) for i in range(layers)]
    body = Seq(("conv_proj", Conv(in_channels, d, patch, patch, 0)), ("tokens", Tokens()),
               ("class_token", ClassToken(d)),
               ("encoder", Seq(("pos_embedding", PosEmbedding(n + 1, d)), ("dropout", Dropout(p)),
                               ("layers", Seq(*blocks)), ("ln", LayerNorm(d, 1e-6)))),
               ("class_token_out", TakeToken(0)), ("heads", Seq(("head", Linear(d, num_classes)))))
    return ModelSpec(name=name, family="vit", in_channels=in_channels, num_classes=num_classes, body=body,
                     input_size=size)


@register_model
def vit_b_16(*, in_channels: int = 3, num_classes: int = 1000, patch_size: int = 16, num_layers: int = 12,
             num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072, dropout: float = 0.0,
             input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ViT-B/16 (`torchvision.models.vit_b_16`): 86,567,656 parameters, 224x224 RGB (197 tokens)."""
    return vision_transformer("vit_b_16", patch_size, num_layers, num_heads, hidden_dim, mlp_dim, dropout,
                              in_channels, num_classes, input_size)


@register_model
def vit_b_32(*, in_channels: int = 3, num_classes: int = 1000, patch_size: int = 32, num_layers: int = 12,
             num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072, dropout: float = 0.0,
             input_size: int | tuple[int, int] = 224) -> ModelSpec:
    """torchvision's ViT-B/32 (`torchvision.models.vit_b_32`): 88,224,232 parameters, 224x224 RGB (50 tokens)."""
    return vision_transformer("vit_b_32", patch_size, num_layers, num_heads, hidden_dim, mlp_dim, dropout,
                              in_channels, num_classes, input_size)


# d2l's ViT (d2l.ai, "Transformers for Vision"): its module names; its attention (d2l.MultiHeadAttention,
# W_q, W_k, W_v, W_o without biases) in torchvision's packed layout, as `attention.in_proj_weight`.
D2L = {"ln_1": "ln1", "attention": "attention", "ln_2": "ln2", "mlp_name": "mlp",
       "mlp": ("dense1", "gelu", "dropout1", "dense2", "dropout2")}


@register_model
def vit_d2l(*, in_channels: int = 1, num_classes: int = 10, patch_size: int = 16, num_blks: int = 2,
            num_heads: int = 8, num_hiddens: int = 512, mlp_num_hiddens: int = 2048, emb_dropout: float = 0.1,
            blk_dropout: float = 0.1, input_size: int | tuple[int, int] = 96) -> ModelSpec:
    """d2l's ViT for Fashion-MNIST resized to 96x96: patch 16 (37 tokens), 2 blocks of 512 features, 8 heads,
    an MLP of 2048, LayerNorm eps 1e-5, attention without biases; 6,457,866 parameters."""
    check_counts(in_channels, num_classes)
    patch, d, m = width(patch_size, "patch_size"), width(num_hiddens, "num_hiddens"), width(mlp_num_hiddens, "mlp")
    blks, heads = width(num_blks, "num_blks"), width(num_heads, "num_heads")
    require(blks <= 64 and d % heads == 0, f"num_heads ({heads}) must divide num_hiddens ({d}), num_blks <= 64")
    size, n = _tokens(input_size, patch)
    p = dropout_rate(blk_dropout)
    blocks = [(str(i), encoder_block(d, heads, m, p, 1e-5, D2L, bias=False)) for i in range(blks)]
    body = Seq(("patch_embedding.conv", Conv(in_channels, d, patch, patch, 0)), ("tokens", Tokens()),
               ("cls_token", ClassToken(d)), ("pos_embedding", PosEmbedding(n + 1, d)),
               ("dropout", Dropout(dropout_rate(emb_dropout))), ("blks", Seq(*blocks)),
               ("class_token_out", TakeToken(0)),
               ("head", Seq(("0", LayerNorm(d, 1e-5)), ("1", Linear(d, num_classes)))))
    return ModelSpec(name="vit_d2l", family="vit", in_channels=in_channels, num_classes=num_classes, body=body,
                     input_size=size)


TORCHVISION_VIT = register_keymap(KeyMap(
    name="torchvision ViT (conv_proj.weight, class_token, encoder.pos_embedding, "
         "encoder.layers.encoder_layer_0.self_attention.in_proj_weight, heads.head.weight, ...)",
    models=("vit_b_16", "vit_b_32"),
    # before torchvision 0.13 the MLP's Linears were mlp.linear_1 and mlp.linear_2 (its MLPBlock still renames them
    # when it loads such a file); the released ViT-B weights hold either
    rules=((r"(encoder\.layers\.encoder_layer_\d+\.mlp)\.linear_1\.(weight|bias)", r"\1.0.\2"),
           (r"(encoder\.layers\.encoder_layer_\d+\.mlp)\.linear_2\.(weight|bias)", r"\1.3.\2"),
           (r"((?:conv_proj|class_token|encoder|heads)\b[\w.]*)", r"\1"))))

# timm's VisionTransformer (`vit_base_patch16_224`, `vit_base_patch32_224`: timm.models.vision_transformer) is
# torchvision's network under other names: its packed `attn.qkv` is [3D, D] in the same q, k, v order and the same
# head-major split, its `pos_embed` holds the class token's row first, LayerNorm eps 1e-6, exact GELU.
_TIMM_VIT_MODULES = [(f"blocks.{{b}}.{a}", f"encoder.layers.encoder_layer_{{b}}.{c}") for a, c in (
    ("norm1", "ln_1"), ("attn.proj", "self_attention.out_proj"), ("norm2", "ln_2"), ("mlp.fc1", "mlp.0"),
    ("mlp.fc2", "mlp.3"))] + [("patch_embed.proj", "conv_proj"), ("norm", "encoder.ln"), ("head", "heads.head")]
_rules, _writes = module_renames(_TIMM_VIT_MODULES)
_TENSORS = [("cls_token", "class_token"), ("pos_embed", "encoder.pos_embedding"),
            (r"blocks\.(\d+)\.attn\.qkv\.weight", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_weight"),
            (r"blocks\.(\d+)\.attn\.qkv\.bias", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_bias")]
_WRITES = [("class_token", "cls_token"), (r"encoder\.pos_embedding", "pos_embed"),
           (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_weight", r"blocks.\1.attn.qkv.weight"),
           (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_bias", r"blocks.\1.attn.qkv.bias")]
TIMM_VIT = register_keymap(KeyMap(
    name="timm VisionTransformer (patch_embed.proj.weight, cls_token, pos_embed, blocks.0.attn.qkv.weight, "
         "head.weight, ...)",
    models=("vit_b_16", "vit_b_32"), rules=(*_TENSORS, *_rules), library="timm", writes=(*_WRITES, *_writes),
    architectures=(("vit_b_16", "vit_base_patch16_224"), ("vit_b_32", "vit_base_patch32_224"))))
