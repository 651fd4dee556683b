"""transformers CLIPModel / SiglipModel: saved by the test with `save_pretrained`, loaded through
`create_backbone("hf:<folder>")`; the embedding path must equal the model's own `get_text_features`."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from vlprompt.backbones import create_backbone  # noqa: E402
from vlprompt.errors import VLPromptError  # noqa: E402

PROMPTS = ["a photo of a dog.", "x", "a much longer prompt, with punctuation and many many words in it", ""]


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet (each byte alone and as a word end) + its two special tokens, last."""
    from open_clip.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def _tiny_clip(folder, eos_token_id: int = 2):
    """eos_token_id 2: the old OpenAI configs (pool at the largest id); else the first eos is pooled."""
    vocab = _byte_vocab()
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=40)
    if eos_token_id == 2:
        text.update(eos_token_id=2, bos_token_id=0, pad_token_id=1)
    else:
        text.update(eos_token_id=eos_token_id, bos_token_id=eos_token_id - 1, pad_token_id=eos_token_id)
    config = transformers.CLIPConfig(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def _tiny_siglip(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<pad>", "</s>", "<unk>"] + "a photo of dog x much longer prompt with punctuation and many words in it , .".split()
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(0)
    model = transformers.SiglipModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def _features(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value.pooler_output


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_clip")
    return folder, _tiny_clip(folder)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_siglip")
    return folder, _tiny_siglip(folder)


@pytest.mark.parametrize("truncate", [True, False])
def test_clip_embedding_path_equals_get_text_features(clip_dir, truncate):
    folder, model = clip_dir
    backbone = create_backbone(f"hf:{folder}")
    assert backbone.causal and backbone.identity.source == "hf" and backbone.identity.weights_hash
    ids = backbone.tokenize(PROMPTS)
    assert ids.shape == (len(PROMPTS), 40)
    assert torch.equal(backbone.eot_index(ids), ids.argmax(-1)) and int(backbone.eot_index(ids).min()) >= 1
    with torch.no_grad():
        reference = _features(model.get_text_features(input_ids=ids))
        ours = backbone.encode_text_embeds(backbone.embed_tokens(ids), backbone.eot_index(ids), truncate)
    assert ours.shape == reference.shape == (len(PROMPTS), 24)
    assert (ours - reference).abs().max().item() < 1e-5


def test_clip_new_style_eos_id_pools_first_eos(tmp_path):
    vocab = _byte_vocab()
    model = _tiny_clip(tmp_path, eos_token_id=vocab["<|endoftext|>"])
    backbone = create_backbone(f"hf:{tmp_path}")
    ids = backbone.tokenize(PROMPTS)
    expected = (ids == vocab["<|endoftext|>"]).int().argmax(-1)
    assert torch.equal(backbone.eot_index(ids), expected)
    with torch.no_grad():
        reference = _features(model.get_text_features(input_ids=ids))
        ours = backbone.encode_text(ids)
    assert (ours - reference).abs().max().item() < 1e-5


def test_clip_truncation_really_shortens(clip_dir, monkeypatch):
    folder, _ = clip_dir
    backbone = create_backbone(f"hf:{folder}")
    seen = []
    original = backbone.text_model.encoder.forward

    def spy(inputs_embeds, attention_mask=None, **kwargs):
        seen.append(inputs_embeds.shape[1])
        return original(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(backbone.text_model.encoder, "forward", spy)
    ids = backbone.tokenize(["a photo of a dog."])
    backbone.encode_text(ids, truncate=True)
    backbone.encode_text(ids, truncate=False)
    assert seen == [int(backbone.eot_index(ids)[0]) + 1, 40]


def test_clip_image_path_and_transform(clip_dir):
    from PIL import Image

    folder, model = clip_dir
    backbone = create_backbone(f"hf:{folder}")
    image = backbone.eval_transform(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert tuple(image.shape) == (3, 32, 32)
    with torch.no_grad():
        ours = backbone.encode_image(image[None])
        reference = _features(model.get_image_features(pixel_values=image[None]))
    assert torch.allclose(ours, reference, atol=1e-6) and ours.shape == (1, 24)
    assert backbone.image_tokens(image[None]).shape == (1, 17, 32)
    assert float(backbone.logit_scale.detach()) == pytest.approx(float(model.logit_scale.exp().detach()))
    assert backbone.shared_prefix_unsupported()


@pytest.mark.parametrize("truncate", [True, False])
def test_siglip_embedding_path_equals_get_text_features(siglip_dir, truncate):
    folder, model = siglip_dir
    backbone = create_backbone(f"hf:{folder}")
    assert not backbone.causal
    ids = backbone.tokenize(PROMPTS)
    assert ids.shape == (len(PROMPTS), 16)
    assert torch.equal(backbone.eot_index(ids), torch.full((len(PROMPTS),), 15))
    with torch.no_grad():
        reference = _features(model.get_text_features(input_ids=ids))
        ours = backbone.encode_text_embeds(backbone.embed_tokens(ids), backbone.eot_index(ids), truncate)
    assert (ours - reference).abs().max().item() < 1e-5


def test_soft_prompt_gradients_reach_the_context(clip_dir):
    """A few optimisation steps on learned context vectors through the HF text tower (CoOp's mechanics)."""
    folder, _ = clip_dir
    backbone = create_backbone(f"hf:{folder}")
    ids = backbone.tokenize(["x x x x dog.", "x x x x cat."])
    base = backbone.embed_tokens(ids).detach()
    ctx = torch.nn.Parameter(base[0, 1:5].clone())
    optimizer = torch.optim.SGD([ctx], lr=1.0)
    target = torch.tensor([0, 1])
    image_features = torch.nn.functional.normalize(torch.randn(2, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    losses = []
    for _ in range(5):
        embeds = torch.cat([base[:, :1], ctx.expand(2, -1, -1), base[:, 5:]], dim=1)
        text = torch.nn.functional.normalize(backbone.encode_text_embeds(embeds, backbone.eot_index(ids)), dim=-1)
        loss = torch.nn.functional.cross_entropy(20 * image_features @ text.T, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not p.requires_grad for p in backbone.parameters())


def test_offline_missing_weights_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"), raising=False)
    with pytest.raises(VLPromptError) as error:
        create_backbone("hf:vlprompt-test/no-such-model")
    message = str(error.value)
    assert "hf download vlprompt-test/no-such-model" in message and "empty-cache" in message
    assert "\n" not in message


def test_missing_local_folder_and_wrong_model_type(tmp_path):
    with pytest.raises(VLPromptError, match="config.json"):
        create_backbone(f"hf:{tmp_path / 'nowhere'}")
    transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(VLPromptError, match="supports clip, siglip"):
        create_backbone(f"hf:{tmp_path}")
