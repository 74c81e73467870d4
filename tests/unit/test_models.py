"""Tiny models and tokenizers, built offline: loadable as Hugging Face QA models, deterministic, matching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qadist.errors import UserError
from qadist.models import (
    build_tiny_model,
    load_qa_model,
    load_tokenizer,
    minilm_path,
    model_revision,
    tiny_config,
    tokenizer_fingerprint,
    train_albert_tokenizer,
)


def test_minilm_folder_is_packaged():
    folder = Path(minilm_path())
    assert (folder / "vocab.txt").exists() and (folder / "config.json").exists()


@pytest.mark.parametrize(
    "name,family,layers,hidden",
    [
        ("teacher_a", "bert", 2, 64),
        ("student", "bert", 1, 32),
        ("albert", "albert", 2, 64),
    ],
)
def test_tiny_models_load_and_answer(tiny_models, name, family, layers, hidden):
    model = load_qa_model(tiny_models[name]).eval()
    tok = load_tokenizer(tiny_models[name])
    assert model.config.model_type == family
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (layers, hidden)
    assert model.config.vocab_size == len(tok)
    enc = tok(["Who wrote it?"], ["Ada Lovelace wrote the first program."], return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc)
    assert out.start_logits.shape == out.end_logits.shape == enc["input_ids"].shape
    assert torch.isfinite(out.start_logits).all()
    # Saved with safetensors, and with the tokenizer beside the weights.
    files = {p.name for p in Path(tiny_models[name]).iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files


def test_ensemble_teachers_share_a_tokenizer_but_not_weights(tiny_models):
    fps = {n: tokenizer_fingerprint(load_tokenizer(tiny_models[n])) for n in tiny_models}
    assert fps["teacher_a"] == fps["teacher_b"] == fps["student"] != fps["albert"]
    a, b = load_qa_model(tiny_models["teacher_a"]), load_qa_model(tiny_models["teacher_b"])
    assert not torch.equal(a.qa_outputs.weight, b.qa_outputs.weight)


def test_same_seed_same_weights(tmp_path, bert_tokenizer):
    one = load_qa_model(
        build_tiny_model("bert", tmp_path / "one", seed=7, tokenizer=bert_tokenizer, num_layers=1, hidden=32)
    )
    two = load_qa_model(
        build_tiny_model("bert", tmp_path / "two", seed=7, tokenizer=bert_tokenizer, num_layers=1, hidden=32)
    )
    for (n1, p1), (n2, p2) in zip(one.state_dict().items(), two.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def char_class(ch: str) -> str:
    return "digit" if ch.isdigit() else "letter" if ch.isalpha() else "space" if ch.isspace() else "punct"


def test_albert_tokenizer_template_and_offsets(squad_pairs):
    tok = train_albert_tokenizer(sorted({p["context"] for p in squad_pairs[:300]}), vocab_size=2000)
    assert tok.is_fast
    context = "The Normans came from France in the 1960s (1965), didn't they?"
    enc = tok("Who came?", context, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
    assert enc.sequence_ids()[0] is None and set(enc["token_type_ids"]) == {0, 1}
    ctx = [(s, e) for (s, e), sid in zip(enc["offset_mapping"], enc.sequence_ids()) if sid == 1]
    # Offsets exclude the space before a word; like SentencePiece (split_by_unicode_script,
    # split_by_number) no piece mixes letters, digits and punctuation, so "France", "1960" and
    # "1965" end or start on token boundaries.
    assert all(e > s and not context[s].isspace() for s, e in ctx)
    for s, e in ctx:
        assert len({char_class(ch) for ch in context[s:e]}) == 1, context[s:e]
    starts, ends = {s for s, _ in ctx}, {e for _, e in ctx}
    for word in ("France", "1960", "1965"):
        assert context.index(word) in starts and context.index(word) + len(word) in ends


def test_tokenizer_fingerprint_is_stable(bert_tokenizer):
    assert tokenizer_fingerprint(bert_tokenizer) == tokenizer_fingerprint(load_tokenizer(minilm_path()))
    assert len(tokenizer_fingerprint(bert_tokenizer)) == 16


def test_model_revision_of_a_local_folder(tiny_models):
    assert model_revision(tiny_models["student"]) == "local"


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="missing-model: no such model folder"):
        load_tokenizer(str(tmp_path / "missing-model"))
    with pytest.raises(UserError, match="missing-model: no such model folder"):
        load_qa_model(str(tmp_path / "missing-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="cannot load a question-answering model"):
        load_qa_model(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="unknown tiny model family 'gpt'"):
        tiny_config("gpt", 100)
