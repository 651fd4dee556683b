"""DFSP's fusion against a hand-assembled reference of the released computation (Forest-art/DFSP):
weights written in the released module names and layouts, converted with `convert_released_state_dict`.

The reference is written here from the released code's operations, sequence-first as there: the text
tower run on context length 8 (padding state included), the decomposition by an explicit loop over
primitives, the position-major flattening of ``txt2img_transform_layer2``, QuickGELU blocks, and for
``img2txt`` the released reshape of the image-side tokens and the queries repeated once per image.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.config import ExperimentConfig
from vlprompt.czsl.data import CZSLDataset
from vlprompt.czsl.evaluate import EvalOptions, batch_scores
from vlprompt.czsl.synthetic import write_miniature
from vlprompt.engine.cache import FeatureCache
from vlprompt.methods import PairLabels, build_method
from vlprompt.methods.dfsp import DFSP, ImageToTextFusion, convert_released_state_dict
from vlprompt.runner import run_experiment
from vlprompt.zoo.checkpoint import load_prompt

ATTRS, OBJS = ["red", "wet", "old"], ["apple", "car"]
PAIRS = torch.tensor([[0, 0], [1, 1], [2, 0], [0, 1]])
L = 8  # the released configs' context_length


def _block(sd: dict, name: str, width: int, g: torch.Generator, cross: bool) -> None:
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    sd[f"{name}.attn.in_proj_weight"], sd[f"{name}.attn.in_proj_bias"] = r(3 * width, width), r(3 * width)
    sd[f"{name}.attn.out_proj.weight"], sd[f"{name}.attn.out_proj.bias"] = r(width, width), r(width)
    for ln in (("ln_x", "ln_y", "ln_2") if cross else ("ln_1", "ln_2")):
        sd[f"{name}.{ln}.weight"], sd[f"{name}.{ln}.bias"] = 1 + r(width), r(width)
    sd[f"{name}.mlp.c_fc.weight"], sd[f"{name}.mlp.c_fc.bias"] = r(4 * width, width), r(4 * width)
    sd[f"{name}.mlp.c_proj.weight"], sd[f"{name}.mlp.c_proj.bias"] = r(width, 4 * width), r(width)


def released_weights(n_prim: int, w_txt: int, w_img: int, n_img: int, fusion: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    sd = {"soft_att_obj": r(n_prim, w_txt), "soft_prompt": r(3, w_txt)}
    f = "fusion."
    if fusion == "txt2img":
        sd.update({f + "txt2img_transform_layer1.weight": r(w_img, w_txt), f + "txt2img_transform_layer1.bias": r(w_img),
                   f + "txt2img_transform_layer2.weight": r(n_img, L * n_prim), f + "txt2img_transform_layer2.bias": r(n_img)})
        _block(sd, f + "crossblock_img", w_img, g, True)
    else:
        sd.update({f + "img2txt_transform_layer1.weight": r(w_txt, w_img), f + "img2txt_transform_layer1.bias": r(w_txt),
                   f + "img2txt_transform_layer2.weight": r(L * n_prim, n_img),
                   f + "img2txt_transform_layer2.bias": r(L * n_prim),
                   f + "txt_fine_tune.weight": r(w_txt, w_txt), f + "txt_fine_tune.bias": r(w_txt)})
        _block(sd, f + "crossblock_txt", w_txt, g, True)
    _block(sd, f + "resblocks_img.0", w_img, g, False)
    _block(sd, f + "resblocks_txt.0", w_txt, g, False)
    sd["clip.logit_scale"] = torch.tensor(4.6)  # frozen CLIP weights are skipped by the converter
    return sd


# -- the released computation, sequence-first ------------------------------------------------------

def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"])


def _attn(q, kv, sd, name, heads=None):
    w = q.shape[-1]
    return F.multi_head_attention_forward(
        q, kv, kv, w, heads or max(1, w // 64), sd[name + ".in_proj_weight"], sd[name + ".in_proj_bias"], None, None, False,
        0.0, sd[name + ".out_proj.weight"], sd[name + ".out_proj.bias"], training=False, need_weights=False)[0]


def _mlp(x, sd, name):
    h = F.linear(x, sd[name + ".c_fc.weight"], sd[name + ".c_fc.bias"])
    return F.linear(h * torch.sigmoid(1.702 * h), sd[name + ".c_proj.weight"], sd[name + ".c_proj.bias"])


def _resblock(x, sd, name):
    x = x + _attn(_ln(x, sd, name + ".ln_1"), _ln(x, sd, name + ".ln_1"), sd, name + ".attn")
    return x + _mlp(_ln(x, sd, name + ".ln_2"), sd, name + ".mlp")


def _crossblock(x, y, sd, name, heads=None):
    x = x + _attn(_ln(x, sd, name + ".ln_x"), _ln(y, sd, name + ".ln_y"), sd, name + ".attn", heads)
    return x + _mlp(_ln(x, sd, name + ".ln_2"), sd, name + ".mlp")


def _decompose(x, pairs, n_attrs, n_objs):
    """[t, P, c] -> [t, A+O, c]: a loop over primitives, as released (every primitive has a pair here)."""
    att = torch.stack([x[:, (pairs[:, 0] == i).nonzero()[:, 0]].mean(-2) for i in range(n_attrs)], dim=1)
    obj = torch.stack([x[:, (pairs[:, 1] == i).nonzero()[:, 0]].mean(-2) for i in range(n_objs)], dim=1)
    return torch.cat([att, obj], dim=1)


def released_logits(backbone, sd, images, pairs, fusion, res_w=0.8):
    tower = backbone.text_tower
    f = "fusion."
    n_attrs, n_objs = len(ATTRS), len(OBJS)
    # the prompt "a photo of x x" at context length 8: [SOS] ctx ctx ctx attr obj [EOT] pad
    ids = backbone.tokenize(["a photo of x x"])[:, :L]
    eos = int(ids[0].argmax())
    tokens = backbone.embed_tokens(ids).float().repeat(len(pairs), 1, 1)
    tokens[:, eos - 2] = sd["soft_att_obj"][pairs[:, 0]]
    tokens[:, eos - 1] = sd["soft_att_obj"][pairs[:, 1] + n_attrs]
    tokens[:, 1:4] = sd["soft_prompt"]
    x = tokens + tower.positional_embedding[:L]
    states = tower.transformer(x, attn_mask=tower.attn_mask[:L, :L])  # [P, L, W] (open_clip: batch-first)

    def pool_text(s):  # [..., L, W] -> [..., D]
        return tower.ln_final(s)[..., eos, :] @ tower.projection

    text = pool_text(states)  # [P, D]
    img_states = backbone.image_token_states(images).float()  # [B, T, W]
    clip_img = backbone.pool_image_states(img_states).float()
    text_ft, img_lnd = states.transpose(0, 1), img_states.transpose(0, 1)  # LND
    b = len(images)
    if fusion == "txt2img":
        d = F.linear(_decompose(text_ft, pairs, n_attrs, n_objs), sd[f + "txt2img_transform_layer1.weight"],
                     sd[f + "txt2img_transform_layer1.bias"])  # [t, A+O, c]
        d = d.permute(2, 0, 1).reshape(d.shape[2], -1)  # 't l c -> c (t l)'
        y = F.linear(d, sd[f + "txt2img_transform_layer2.weight"], sd[f + "txt2img_transform_layer2.bias"])
        y = y.permute(1, 0).unsqueeze(1).repeat(1, b, 1)
        x_img = _resblock(_crossblock(img_lnd, y, sd, f + "crossblock_img"), sd, f + "resblocks_img.0")
        x_txt = _resblock(text_ft, sd, f + "resblocks_txt.0")  # [L, P, W]
        fused_txt = pool_text(x_txt.transpose(0, 1))  # [P, D]
        txt = F.normalize(res_w * text + (1 - res_w) * fused_txt, dim=-1)
        img = F.normalize(res_w * clip_img + (1 - res_w) * backbone.pool_image_states(x_img.transpose(0, 1)), dim=-1)
        return backbone.logit_scale * img @ txt.t()
    # img2txt
    n = n_attrs + n_objs
    x = F.linear(img_lnd, sd[f + "img2txt_transform_layer1.weight"], sd[f + "img2txt_transform_layer1.bias"])
    x = F.linear(x.permute(2, 1, 0), sd[f + "img2txt_transform_layer2.weight"], sd[f + "img2txt_transform_layer2.bias"])
    keys = x.permute(2, 1, 0).reshape(-1, n, x.shape[0])  # [L·B, A+O, W]
    queries = _decompose(text_ft, pairs, n_attrs, n_objs).repeat(b, 1, 1)  # [B·L, A+O, W]
    heads = max(1, img_lnd.shape[-1] // 64)  # released: CrossResidualAttentionBlock(width_txt, width_img // 64)
    z = _resblock(_crossblock(queries, keys, sd, f + "crossblock_txt", heads), sd, f + "resblocks_txt.0")
    z = F.linear(z[:, pairs[:, 0]] * z[:, pairs[:, 1] + n_attrs], sd[f + "txt_fine_tune.weight"], sd[f + "txt_fine_tune.bias"])
    z = z.reshape(b, L, -1, z.shape[-1]).permute(0, 2, 1, 3)  # [B, P, L, W]
    fused_txt = pool_text(z)  # [B, P, D]
    txt = F.normalize(res_w * text.repeat(b, 1, 1) + (1 - res_w) * fused_txt, dim=-1)
    x_img = _resblock(img_lnd, sd, f + "resblocks_img.0")
    img = F.normalize(res_w * clip_img + (1 - res_w) * backbone.pool_image_states(x_img.transpose(0, 1)), dim=-1)
    return (backbone.logit_scale * img.unsqueeze(1) @ txt.permute(0, 2, 1)).squeeze(1)


def _dfsp(backbone, sd, fusion, **config) -> DFSP:
    torch.manual_seed(0)
    method = build_method("dfsp", backbone, PairLabels.create(ATTRS, OBJS, PAIRS), {"fusion": fusion, **config})
    missing, unexpected = method.load_state_dict(convert_released_state_dict(sd, fusion), strict=False)
    assert not unexpected
    # released self-attention blocks have one input norm; vlprompt's shared block keeps an unused ln_y
    assert all(".ln_y." in k and ("self_blocks" in k or "txt_blocks" in k) for k in missing), missing
    return method.eval()


@pytest.mark.parametrize("fusion", ["txt2img", "img2txt"])
def test_dfsp_fusion_matches_the_released_computation(tiny_vit, fusion):
    w_txt, w_img = tiny_vit.identity.width, tiny_vit.image_token_states(torch.zeros(1, 3, *tiny_vit.image_size)).shape[2]
    n_img = tiny_vit.image_token_states(torch.zeros(1, 3, *tiny_vit.image_size)).shape[1]
    sd = released_weights(len(ATTRS) + len(OBJS), w_txt, w_img, n_img, fusion)
    images = torch.randn(3, 3, *tiny_vit.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = released_logits(tiny_vit, sd, images, PAIRS, fusion)
        dfsp = _dfsp(tiny_vit, sd, fusion)
        logits = dfsp({"images": images})
        torch.testing.assert_close(logits, ref, rtol=0, atol=2e-4)
        state = dfsp.prepare_eval(PAIRS)  # the evaluation path scores the same
        scores = (dfsp.eval_batch_scores({"images": images}, state) if dfsp.batch_scores else
                  dfsp.backbone.logit_scale * dfsp.eval_image_features({"images": images}, state)
                  @ dfsp.eval_text_features(state, slice(None)).t())
        torch.testing.assert_close(scores, ref, rtol=0, atol=2e-4)
        # the earlier settings are real alternatives: each changes the fused logits
        gelu = _dfsp(tiny_vit, sd, fusion, fusion_act="gelu")({"images": images})
        assert (gelu - ref).abs().max() > 1e-3
        if fusion == "txt2img":  # 7 positions: the released layer's first 7 position blocks
            cut = dict(sd, **{"fusion.txt2img_transform_layer2.weight":
                              sd["fusion.txt2img_transform_layer2.weight"][:, : 7 * (len(ATTRS) + len(OBJS))]})
            short = _dfsp(tiny_vit, cut, fusion, context_length=0)
            assert short.pair_token_states(PAIRS)[0].shape[1] == 7
            assert (short({"images": images}) - ref).abs().max() > 1e-3
        else:  # img2txt: the fused text is one function of the whole batch, as released
            alone = dfsp({"images": images[:1]})
            assert (alone - ref[:1]).abs().max() > 1e-4


def test_dfsp_text_blocks_option_and_old_prompt_names(tiny_vit):
    labels = PairLabels.create(ATTRS, OBJS, PAIRS)
    two = build_method("dfsp", tiny_vit, labels, {"sa_layers": 2})
    assert len(two.fusion.self_blocks) == 2 and len(two.fusion.txt_blocks) == 2  # released: SA_K on both sides
    one = build_method("dfsp", tiny_vit, labels, {"sa_layers": 2, "text_sa_layers": 1})
    assert len(one.fusion.txt_blocks) == 1
    old = {k.replace("fusion.txt_blocks.0.", "fusion.txt_block."): v for k, v in one.state_dict().items()}
    fresh = build_method("dfsp", tiny_vit, labels, {"sa_layers": 2, "text_sa_layers": 1})
    fresh.load_state_dict(old)  # prompts saved with the single txt_block still load
    assert torch.equal(fresh.fusion.txt_blocks[0].attn.in_proj_weight, one.fusion.txt_blocks[0].attn.in_proj_weight)
    with pytest.raises(Exception, match="context_length 5 must hold the prompt"):
        build_method("dfsp", tiny_vit, labels, {"context_length": 5})
    with pytest.raises(Exception, match="fusion_act 'relu' is not one of"):
        build_method("dfsp", tiny_vit, labels, {"fusion_act": "relu"})


def test_img2txt_trains_and_evaluates_per_batch(tiny_vit, tmp_path):
    """The released img2txt through the engine; evaluation scores each image batch (batch-level text)."""
    root = write_miniature(tmp_path / "mit", "mit-states")
    cfg = ExperimentConfig.from_dict({
        "task": "czsl", "dataset": {"name": "mini", "root": str(root)}, "method": {"name": "dfsp", "fusion": "img2txt"},
        "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 1, "batch_size": 4, "warmup_epochs": 0, "device": "cpu",
                  "progress": False},
        "protocol": {"select": "final"}, "eval": {"phases": ["test"], "worlds": ["closed"], "batch_size": 3},
        "output_dir": str(tmp_path / "run")})
    out = run_experiment(cfg, backbone=tiny_vit, cache=FeatureCache(tmp_path / "cache"))
    assert 0 <= out["metrics"]["closed/test"]["AUC"] <= 100
    method = load_prompt(tmp_path / "run" / "prompt.safetensors", tiny_vit).eval()
    assert method.batch_scores and method.config.fusion == "img2txt"
    ds = CZSLDataset.load(root, name="mini")
    state = method.prepare_eval(ds.all_pair_index)
    by3 = batch_scores(method, ds.items["test"], state, EvalOptions(batch_size=3))
    by1 = batch_scores(method, ds.items["test"], state, EvalOptions(batch_size=1))
    assert by3.shape == (len(ds.items["test"]), len(ds.all_pair_index))
    assert not torch.allclose(by3, by1)  # as released, the batch composition changes the fused text


def test_img2txt_cross_attention_uses_the_image_width_head_count():
    """Released ``crossblock_txt = CrossResidualAttentionBlock(width_txt, width_img // 64)``: ViT-L-14's
    768-wide text attends with 16 heads (1024 // 64), not 12."""
    fusion = ImageToTextFusion(3, 256, 1024, 768, 8, sa_layers=0)
    assert fusion.cross.attn.num_heads == 16
    assert ImageToTextFusion(3, 4, 768, 512, 8, sa_layers=0).cross.attn.num_heads == 8  # 12 does not divide 512
