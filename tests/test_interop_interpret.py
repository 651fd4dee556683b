"""`vlprompt interpret`: the nearest vocabulary words of learned vectors (CoOp's interpret_prompt.py)."""

from __future__ import annotations

import torch

from vlprompt.interop.interpret import format_interpretation, interpret_method
from vlprompt.methods import build_method


def _word_vector(backbone, word):
    ids = backbone.tokenize([word])[0]
    return backbone.embed_tokens(ids[1:2][None])[0, 0].detach()  # the token after <start_of_text>


def test_context_set_to_word_embeddings_reads_back_as_those_words(tiny_vit):
    method = build_method("coop", tiny_vit, ["cat", "dog"], {"n_ctx": 3, "class_specific": True})
    words = [["photo", "of", "dog"], ["red", "small", "car"]]
    with torch.no_grad():
        for c, row in enumerate(words):
            for i, word in enumerate(row):
                method.ctx[c, i] = _word_vector(tiny_vit, word)
    found = interpret_method(method, top_k=2)
    assert [f["vector"] for f in found[:4]] == [
        "ctx[class cat][0]",
        "ctx[class cat][1]",
        "ctx[class cat][2]",
        "ctx[class dog][0]",
    ]
    assert [f["nearest"][0]["word"] for f in found] == [w for row in words for w in row]
    assert all(f["nearest"][0]["distance"] == 0.0 and f["nearest"][1]["distance"] > 0 for f in found)
    assert "'photo' (0.000)" in format_interpretation(found)


def test_lasp_groups_and_csp_primitives(tiny_vit):
    lasp = build_method(
        "lasp", tiny_vit, ["cat", "dog"], {"n_ctx": 2, "ctx_init": "", "groups": 2, "templates": ["a {}.", "the {}."]}
    )
    assert [f["vector"] for f in interpret_method(lasp, 1)] == [
        "ctx[group 0][0]", "ctx[group 0][1]", "ctx[group 1][0]", "ctx[group 1][1]"
    ]  # fmt: skip
    from vlprompt.methods import PairLabels

    csp = build_method("csp", tiny_vit, PairLabels.create(["red", "wet"], ["apple", "car"], [[0, 0], [1, 1]]), {})
    found = interpret_method(csp, 1)
    assert [f["vector"] for f in found] == ["vocab[red]", "vocab[wet]", "vocab[apple]", "vocab[car]"]
    assert [f["nearest"][0]["word"] for f in found] == ["red", "wet", "apple", "car"]  # initialised from the words
