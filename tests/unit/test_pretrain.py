"""`qadist pretrain`'s pure parts: the held-out split, documents -> token sequences, masking, the loss."""

from __future__ import annotations

import pytest
import torch

from qadist.errors import UserError
from qadist.train.masked_lm import mask_collator, masked_batch, masked_lm_loss, pad_sequences
from qadist.train.pretrain import document_sequences, held_out, split_documents

TEXTS = [
    "The X-T5 mirrorless camera has a 40 megapixel sensor and in-body stabilisation.",
    "Lens hoods reduce flare.",
]


def docs(n: int) -> list[dict]:
    return [{"id": f"doc-{i}", "text": f"page {i}", "source": "d.jsonl", "row": i + 1} for i in range(n)]


def test_the_held_out_share_is_chosen_by_id_and_roughly_the_share():
    many = docs(2000)
    train, heldout = split_documents(many, 0.1)
    assert 150 < len(heldout) < 250 and len(train) + len(heldout) == 2000
    assert {d["id"] for d in heldout} == {d["id"] for d in many if held_out(d["id"], 0.1)}
    again_train, again_heldout = split_documents(list(reversed(many)), 0.1)  # order does not matter
    assert {d["id"] for d in again_heldout} == {d["id"] for d in heldout}


def test_a_tiny_collection_still_holds_one_document_out_and_trains_on_the_rest():
    train, heldout = split_documents(docs(3), 0.01)
    assert len(heldout) == 1 and len(train) == 2
    with pytest.raises(UserError, match="at least 2 usable documents"):
        split_documents(docs(1), 0.5)


def test_sequences_carry_special_tokens_and_long_texts_are_cut_with_the_stride(bert_tokenizer):
    seqs = document_sequences(TEXTS, bert_tokenizer, 12, 4, with_offsets=False)
    assert seqs["doc"][0] == 0 and seqs["doc"][-1] == 1 and seqs["doc"].count(0) > 1
    for ids, special in zip(seqs["input_ids"], seqs["special_tokens_mask"]):
        assert len(ids) <= 12 and ids[0] == bert_tokenizer.cls_token_id and ids[-1] == bert_tokenizer.sep_token_id
        assert special[0] == special[-1] == 1 and sum(special) == 2
    first, second = seqs["input_ids"][0][1:-1], seqs["input_ids"][1][1:-1]
    assert first[-4:] == second[:4]  # consecutive sequences of a document share `doc_stride` tokens
    whole = bert_tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert seqs["tokens"][0] == 10 and set(whole) == {
        t for i, s in enumerate(seqs["input_ids"]) if seqs["doc"][i] == 0 for t in s[1:-1]
    }


def test_a_text_without_known_tokens_gives_one_row_with_no_tokens(bert_tokenizer):
    seqs = document_sequences(["\u200b\u200b", "camera"], bert_tokenizer, 16, 0, with_offsets=True)
    assert seqs["doc"] == [0, 1] and seqs["tokens"] == [0, 1]
    assert len(seqs["offsets"][1]) == 2 * len(seqs["input_ids"][1])


def test_masking_never_touches_special_or_padding_tokens_and_is_reproducible(bert_tokenizer):
    seqs = document_sequences(TEXTS * 8, bert_tokenizer, 24, 0, with_offsets=False)
    collator = mask_collator(bert_tokenizer, 0.3, whole_word=False)
    one = masked_batch(seqs, collator, bert_tokenizer.pad_token_id, torch.Generator().manual_seed(7))
    two = masked_batch(seqs, collator, bert_tokenizer.pad_token_id, torch.Generator().manual_seed(7))
    other = masked_batch(seqs, collator, bert_tokenizer.pad_token_id, torch.Generator().manual_seed(8))
    assert torch.equal(one["input_ids"], two["input_ids"]) and torch.equal(one["labels"], two["labels"])
    assert not torch.equal(one["labels"], other["labels"])
    padded = pad_sequences(seqs, bert_tokenizer.pad_token_id)
    masked = one["labels"] != -100
    assert not (masked & padded["special_tokens_mask"].bool()).any()
    assert torch.equal(one["labels"][masked], padded["input_ids"][masked])  # labels are the original tokens
    share = masked.sum() / (~padded["special_tokens_mask"].bool()).sum()
    assert 0.2 < share < 0.4
    replaced = one["input_ids"][masked] == bert_tokenizer.mask_token_id
    assert 0.6 < replaced.float().mean() < 0.95  # 80% [MASK], the rest random or kept


def test_whole_word_masking_masks_every_token_of_a_chosen_word(bert_tokenizer):
    text = "photographers love unbelievably stabilised telephotos " * 6
    seqs = document_sequences([text] * 6, bert_tokenizer, 64, 0, with_offsets=True)
    collator = mask_collator(bert_tokenizer, 0.3, whole_word=True)
    batch = masked_batch(seqs, collator, bert_tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    padded = pad_sequences(seqs, bert_tokenizer.pad_token_id)
    offsets = padded["offset_mapping"]
    for row in range(batch["labels"].shape[0]):
        masked = (batch["labels"][row] != -100).tolist()
        for i in range(1, len(masked)):
            continues_word = offsets[row, i, 0] == offsets[row, i - 1, 1] and offsets[row, i, 1] > 0
            if continues_word and padded["special_tokens_mask"][row, i - 1] == 0:
                assert masked[i] == masked[i - 1], (row, i)  # a word is masked whole or not at all
    assert any(batch["labels"].ne(-100).flatten().tolist())


def test_the_loss_over_an_accumulation_group_equals_the_loss_of_one_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11)
    labels = torch.full((4, 6), -100)
    labels[0, 1], labels[1, 2], labels[1, 3], labels[3, 5] = 3, 4, 5, 6
    n = int((labels != -100).sum())
    whole = masked_lm_loss(logits, labels, n)
    parts = masked_lm_loss(logits[:2], labels[:2], n) + masked_lm_loss(logits[2:], labels[2:], n)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    assert torch.allclose(whole, expected) and torch.allclose(parts, expected)
    assert masked_lm_loss(logits, torch.full((4, 6), -100), 0) == 0  # nothing masked: no NaN


def test_token_counts_give_each_tokens_occurrences_and_sequences():
    import pyarrow as pa

    from qadist.train.domain_masking import token_counts

    counts = token_counts(pa.table({"input_ids": [[1, 5, 5, 2], [1, 7, 2], [1, 5, 2]]}))
    got = {r["token"]: (r["occurrences"], r["sequences"]) for r in counts.to_pylist()}
    assert got == {1: (3, 3), 2: (3, 3), 5: (3, 2), 7: (1, 1)}


def test_domain_masking_favours_rare_tokens_and_keeps_the_masked_share():
    import numpy as np

    from qadist.train.domain_masking import domain_mask_probabilities

    tokens = np.array([0, 1, 2, 3, 4])  # 0 is special; 1 is in every sequence, 4 in one
    occurrences = np.array([200, 400, 100, 50, 5])
    sequences = np.array([100, 100, 40, 10, 1])
    probs = domain_mask_probabilities(tokens, occurrences, sequences, 100, 8, 0.15, frozenset({0}))
    assert probs[0] == 0 and probs[1] < probs[2] < probs[3] < probs[4]
    maskable = occurrences[1:]
    assert abs((probs[1:5] * maskable).sum() / maskable.sum() - 0.15) < 1e-4  # the share asked for
    assert probs[5] == probs[7] == np.float32(0.15)  # unseen tokens: the plain probability
    # A share so high that the rarest tokens clip at 1: the others make up the difference.
    high = domain_mask_probabilities(tokens, occurrences, sequences, 100, 8, 0.6, frozenset({0}))
    assert high[4] == 1.0 and abs((high[1:5] * maskable).sum() / maskable.sum() - 0.6) < 1e-4


def test_domain_masked_batches_mask_only_chosen_tokens_never_specials(bert_tokenizer):
    seqs = document_sequences(TEXTS * 8, bert_tokenizer, 24, 0, with_offsets=False)
    camera = bert_tokenizer.convert_tokens_to_ids("camera")
    probs = torch.zeros(len(bert_tokenizer))
    probs[camera] = 1.0
    probs[bert_tokenizer.cls_token_id] = 1.0  # a special is never masked, whatever its probability
    collator = mask_collator(bert_tokenizer, 1.0, whole_word=False)
    batch = masked_batch(seqs, collator, bert_tokenizer.pad_token_id, torch.Generator().manual_seed(0), probs)
    padded = pad_sequences(seqs, bert_tokenizer.pad_token_id)
    masked = batch["labels"] != -100
    assert torch.equal(masked, padded["input_ids"] == camera)


def test_domain_masking_and_whole_words_are_refused_together():
    from pydantic import ValidationError

    from qadist.config import PretrainConfig

    with pytest.raises(ValidationError, match="set whole_word false"):
        PretrainConfig(documents="d.jsonl", model="m", out="o", masking="domain", whole_word=True)
