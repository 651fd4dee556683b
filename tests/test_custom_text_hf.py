"""open_clip CustomTextCLIP with a Hugging Face text tower (`HFTextEncoder`): tiny random BERT / RoBERTa / mT5
models and a WordPiece tokenizer saved to a tmp dir, open_clip configs pointing at it, weights loaded from a
file through `create_backbone`. The embedding path must equal open_clip's own ``encode_text``."""

from __future__ import annotations

import json
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from vlprompt.backbones import create_backbone  # noqa: E402
from vlprompt.backbones.custom_text import CustomTextClipBackbone  # noqa: E402
from vlprompt.backbones.open_clip_backbone import builds_custom_text  # noqa: E402
from vlprompt.errors import VLPromptError  # noqa: E402
from vlprompt.methods import build_method  # noqa: E402

PROMPTS = ["a photo of a dog.", "x", "a much longer prompt, with punctuation and many many words in it", ""]
WORDS = "[PAD] [UNK] [CLS] [SEP] a photo of dog cat bird x much longer prompt with punctuation and many words in it , .".split()
VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}

# name suffix -> (HF model folder, hf_pooler_type, hf_proj_type, embed_dim)
SUPPORTED = {
    "bert-mean-mlp": ("bert", "mean_pooler", "mlp", 24),
    "bert-cls-linear": ("bert", "cls_pooler", "linear", 24),  # BERT's pooler_output (dense + tanh on [CLS])
    "roberta-mean-linear": ("roberta", "mean_pooler", "linear", 24),
    "roberta-clslast-none": ("roberta", "cls_last_hidden_state_pooler", None, 32),  # identity projection
    "mt5-mean-mlp": ("mt5", "mean_pooler", "mlp", 24),  # encoder-decoder: open_clip keeps the encoder
    "mt5-nostart-mean-mlp": ("mt5-nostart", "mean_pooler", "mlp", 24),  # T5-style: "text </s>", no start token
}
REFUSED = {
    "bert-max-mlp": ("bert", "max_pooler", "mlp", 24),
}


def _name(key: str) -> str:
    return f"vlprompt-test-hfcustom-{key}"


def _tokenizer(start: bool):
    """Lower-casing WordPiece: ``[CLS] text [SEP] [PAD]...`` (or no [CLS], like T5's sentencepiece)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    backend = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    template = ("[CLS] " if start else "") + "$A [SEP]"
    backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def _hf_models() -> dict[str, object]:
    size = dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=40, pad_token_id=0)
    mt5 = transformers.MT5Config(vocab_size=len(WORDS), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=1,
                                 num_heads=2, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)
    return {
        "bert": transformers.BertModel(transformers.BertConfig(**size)),
        "roberta": transformers.RobertaModel(transformers.RobertaConfig(**size, bos_token_id=2, eos_token_id=3)),
        "mt5": transformers.MT5Model(mt5),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Registered configs; for each supported one the open_clip model and its weights file."""
    root = tmp_path_factory.mktemp("hf_custom")
    torch.manual_seed(0)
    for kind, model in _hf_models().items():
        model.save_pretrained(root / kind)
        _tokenizer(start=True).save_pretrained(root / kind)
    model.save_pretrained(root / "mt5-nostart")
    _tokenizer(start=False).save_pretrained(root / "mt5-nostart")
    configs = root / "configs"
    configs.mkdir()
    for key, (folder, pooler, proj, dim) in {**SUPPORTED, **REFUSED}.items():
        text_cfg = {"hf_model_name": str(root / folder), "hf_tokenizer_name": str(root / folder),
                    "hf_model_pretrained": True, "hf_pooler_type": pooler, "hf_proj_type": proj, "context_length": 16}
        (configs / f"{_name(key)}.json").write_text(json.dumps({"embed_dim": dim, "vision_cfg": VISION, "text_cfg": text_cfg}))
    open_clip.add_model_config(configs)
    built = {}
    logging.disable(logging.WARNING)  # open_clip / transformers load reports
    try:
        for key in SUPPORTED:
            torch.manual_seed(1)
            model = open_clip.create_model(_name(key)).eval()  # HF weights from the folder, projection random
            path = root / f"{key}.pt"
            torch.save(model.state_dict(), path)
            built[key] = (model, str(path))
    finally:
        logging.disable(logging.NOTSET)
    return built


@pytest.mark.parametrize("key", sorted(SUPPORTED))
def test_embedding_path_equals_encode_text(checkpoints, key):
    model, path = checkpoints[key]
    backbone = create_backbone(f"open_clip_custom:{_name(key)}", path)
    assert isinstance(backbone, CustomTextClipBackbone) and not backbone.causal
    assert backbone.shared_prefix_unsupported() is not None
    identity = backbone.identity
    assert (identity.width, identity.context_length, identity.embed_dim) == (32, 16, SUPPORTED[key][3])
    assert identity.weights_hash and identity.pretrained == path
    ids = backbone.tokenize(PROMPTS)
    assert ids.shape == (len(PROMPTS), 16)
    assert torch.equal(backbone.eot_index(ids), (ids != 0).sum(-1) - 1)
    with torch.no_grad():
        reference = model.encode_text(ids)  # the saved model, open_clip's own forward from the ids
        assert torch.equal(backbone.model.encode_text(ids), reference)
        for truncate in (True, False):
            ours = backbone.encode_text_embeds(backbone.embed_tokens(ids), backbone.eot_index(ids), truncate)
            assert ours.shape == reference.shape == (len(PROMPTS), SUPPORTED[key][3])
            assert (ours - reference).abs().max().item() < 1e-5


def test_plain_name_dispatches_to_custom_text(checkpoints):
    key = "bert-cls-linear"
    model, path = checkpoints[key]
    backbone = create_backbone(_name(key), path)
    assert isinstance(backbone, CustomTextClipBackbone) and backbone.identity.source == "open_clip_custom"
    ids = backbone.tokenize(PROMPTS)
    with torch.no_grad():
        assert (backbone.encode_text(ids) - model.encode_text(ids)).abs().max().item() < 1e-5
    # open_clip's own rule, on its shipped configs
    assert all(map(builds_custom_text, ["ViT-B-16-SigLIP", "roberta-ViT-B-32", "mt5-base-ViT-B-32", _name(key)]))
    assert not any(map(builds_custom_text, ["ViT-B-16", "coca_roberta-ViT-B-32", "vlprompt-test-vit"]))


@pytest.mark.parametrize("key", ["bert-mean-mlp", "mt5-nostart-mean-mlp"])
def test_coop_trains_through_the_hf_tower(checkpoints, key):
    _, path = checkpoints[key]
    backbone = create_backbone(f"open_clip_custom:{_name(key)}", path)
    names = ["dog", "cat", "bird"]
    coop = build_method("coop", backbone, names, {"ctx_init": "a photo of a"})
    with torch.no_grad():  # learned positions are real tokens of the padding mask: word init == the plain prompt
        reference = F.normalize(backbone.model.encode_text(backbone.tokenize([f"a photo of a {n}." for n in names])), dim=-1)
        assert (coop.class_features() - reference).abs().max().item() < 1e-5
    assert coop.prompts.shared_prefix_plan(**coop.context_vectors()) is None
    start = coop.ctx.detach().clone()
    features = F.normalize(torch.randn(6, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    batch = {"features": features, "labels": torch.tensor([0, 1, 2, 0, 1, 2])}
    optimizer = torch.optim.SGD([coop.ctx], lr=0.5)
    losses = []
    for _ in range(6):
        loss, _ = coop.loss(coop(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and not torch.equal(coop.ctx.detach(), start)
    assert coop.prompts.path_counts["shared"] == 0 and coop.prompts.path_counts["plain"] >= 6
    assert all(p.grad is None for p in backbone.parameters())


@pytest.mark.parametrize(("key", "match"), [("bert-max-mlp", "max_pooler")])
def test_refused_towers_say_why_in_one_line(checkpoints, key, match):
    with pytest.raises(VLPromptError, match=match) as error:
        create_backbone(f"open_clip_custom:{_name(key)}")
    assert "\n" not in str(error.value) and _name(key) in str(error.value)


def test_left_padded_ids_are_refused(checkpoints):
    _, path = checkpoints["bert-mean-mlp"]
    backbone = create_backbone(_name("bert-mean-mlp"), path)
    ids = backbone.tokenize(["a dog"])
    with pytest.raises(VLPromptError, match="right-padded"):
        backbone.eot_index(ids.roll(2, dims=-1))


def test_byte_level_bpe_prompts_read_as_whole_sentences(tmp_path):
    """RoBERTa's byte-level BPE puts the space into the word's token ("Ġdog"), and open_clip's tokenizer
    strips its input: a class name after the learned context must still get the in-sentence tokens,
    exactly the ids of CoOp's "X X X X dog." at every non-learned position."""
    from tokenizers import ByteLevelBPETokenizer, processors

    from vlprompt.prompts.assembler import PromptAssembler

    corpus = ["a photo of a dog.", "a photo of a cat.", "X X X X small bird.", "dog cat bird photo"] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    folder = tmp_path / "roberta-bpe"
    tokenizer.save_pretrained(folder)
    size = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=40, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    transformers.RobertaModel(transformers.RobertaConfig(**size)).save_pretrained(folder)
    name = "vlprompt-test-hfcustom-roberta-bpe"
    text_cfg = {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_model_pretrained": True,
                "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear", "context_length": 16}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / f"{name}.json").write_text(json.dumps({"embed_dim": 24, "vision_cfg": VISION, "text_cfg": text_cfg}))
    open_clip.add_model_config(tmp_path / "configs")
    logging.disable(logging.WARNING)
    try:
        backbone = create_backbone(name, None)
    finally:
        logging.disable(logging.NOTSET)
    classes = ["dog", "small bird"]
    whole = backbone.tokenize([f"X X X X {c}." for c in classes])
    assert whole[0, 5] != backbone.tokenize(["dog."])[0, 1]  # the stripped piece alone really differs
    assembler = PromptAssembler(backbone, "{ctx} {class}.", {"class": classes}, {"ctx": 4})
    learned = torch.zeros_like(whole, dtype=torch.bool)
    learned[:, 1:5] = True
    assert torch.equal(assembler.token_ids[~learned], whole[~learned])
