"""`qadist pretrain`'s head warm-up: which models get it, what it trains, and how its steps are planned.

The warm-up's steps run through the real task and optimizer step (`MaskedLMTask` with `head_only`,
`build_optimizer`, `optimizer_step`) on a tiny BERT from a config, without Ray."""

from __future__ import annotations

import pytest
import torch

from qadist.config import PretrainConfig
from qadist.models import build_tiny_model, load_masked_lm, missing_masked_lm_head
from qadist.train.batches import plan_steps
from qadist.train.head_warmup import warmup_config
from qadist.train.loop import build_optimizer, optimizer_step
from qadist.train.masked_lm import MaskedLMTask, mask_collator
from qadist.train.pretrain import document_sequences
from qadist.train.task import WorkerContext

TEXTS = [
    "The X-T5 mirrorless camera has a 40 megapixel sensor and in-body stabilisation.",
    "Lens hoods reduce flare and protect the front element from knocks.",
    "Battery life is rated at 580 shots per charge with the rear screen on.",
] * 4


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory, bert_tokenizer) -> str:
    """A tiny BERT QA model (no masked-LM head), with MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-qa")
    return build_tiny_model("bert", folder, seed=5, tokenizer=bert_tokenizer, num_layers=1, hidden=32)


def trained(folder: str, tokenizer, head_only: bool, steps: int = 3) -> tuple[dict, torch.nn.Module]:
    """(the weights as loaded, the model after `steps` optimizer steps of the masked-LM task)."""
    ctx = WorkerContext(0, torch.device("cpu"), None, tokenizer, {"trust_remote_code": False, "seed": 0}, print)
    task = MaskedLMTask({"mask_prob": 0.3, "whole_word": False, "head_only": head_only}, ctx)
    task.collator, task.token_probs = mask_collator(tokenizer, 0.3, whole_word=False), None
    torch.manual_seed(0)
    model = task.load_model(folder)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, 1e-2, 0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    seqs = document_sequences(TEXTS, tokenizer, 32, 0, with_offsets=False)
    for step in range(steps):
        batch = task.collate(seqs, 0, step)
        optimizer_step(model, [batch], task, optimizer, scheduler, scaler, 1.0, torch.device("cpu"))
    return start, model


def test_the_warm_up_changes_the_head_and_leaves_the_encoder_bit_identical(tiny_qa, bert_tokenizer):
    start, model = trained(tiny_qa, bert_tokenizer, head_only=True)
    after = model.state_dict()
    base = model.base_model_prefix + "."
    encoder = [k for k in after if k.startswith(base)]
    head = [k for k in after if not k.startswith(base)]
    assert encoder and head
    assert all(torch.equal(start[k], after[k]) for k in encoder), [
        k for k in encoder if not torch.equal(start[k], after[k])
    ]
    # The decoder is tied to the word embeddings: frozen with them; the head's own weights move.
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    moved = {k for k in head if not torch.equal(start[k], after[k])}
    assert {"cls.predictions.transform.dense.weight", "cls.predictions.bias"} <= moved, moved


def test_without_the_warm_up_the_same_steps_move_the_encoder(tiny_qa, bert_tokenizer):
    start, model = trained(tiny_qa, bert_tokenizer, head_only=False)
    after = model.state_dict()
    assert not torch.equal(
        start["bert.encoder.layer.0.attention.self.query.weight"],
        after["bert.encoder.layer.0.attention.self.query.weight"],
    )
    assert not torch.equal(
        start["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"]
    )


def test_a_model_without_a_masked_lm_head_needs_the_warm_up_and_one_with_it_skips_it(tiny_qa, bert_tokenizer, tmp_path):
    missing = missing_masked_lm_head(tiny_qa)
    assert "cls.predictions.transform.dense.weight" in missing
    assert not any(k.startswith("bert.") for k in missing)  # the encoder is the checkpoint's
    with_head = tmp_path / "mlm"
    load_masked_lm(tiny_qa).save_pretrained(with_head)  # a masked LM, as `qadist pretrain` writes one
    bert_tokenizer.save_pretrained(with_head)
    assert missing_masked_lm_head(str(with_head)) == []


@pytest.mark.parametrize("sequences, workers, accum", [(589, 1, 1), (100, 2, 1), (1000, 1, 4), (5, 1, 1)])
def test_the_warm_up_runs_the_steps_asked_for_at_its_own_rate(sequences, workers, accum, tmp_path):
    cfg = PretrainConfig(
        documents="d.jsonl",
        model="m",
        out=str(tmp_path / "enc"),
        num_workers=workers,
        grad_accum=accum,
        head_warmup_steps=200,
    )
    warm = warmup_config(cfg, sequences)
    plan = plan_steps(sequences, workers, warm.batch_size, accum, warm.epochs, warm.warmup_ratio)
    assert plan.total_steps == 200
    assert warm.learning_rate == cfg.head_learning_rate != cfg.learning_rate
    assert warm.out == str(tmp_path / "enc" / "warmup") and cfg.out == str(tmp_path / "enc")


def test_the_encoder_default_is_gentler_than_the_heads():
    cfg = PretrainConfig(documents="d.jsonl", model="m", out="o")
    assert cfg.head_warmup_steps > 0 and cfg.head_learning_rate > cfg.learning_rate
