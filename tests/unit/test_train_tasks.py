"""The one training loop and its tasks (qadist/train/loop.py, task.py, qa.py, masked_lm.py)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import torch

from qadist.train.batches import plan_steps
from qadist.train.loop import TASKS, build_optimizer, build_scheduler, optimizer_step
from qadist.train.masked_lm import MaskedLMTask, mask_collator, masked_batch, masked_lm_loss, masked_lm_spec
from qadist.train.qa import qa_spec
from qadist.train.task import Task

CPU = torch.device("cpu")


def test_every_spec_names_a_task_that_gives_what_the_loop_asks():
    members = {name for name, _ in inspect.getmembers(Task) if not name.startswith("_")} | {"stat_keys"}
    for spec in (
        qa_spec({"temperature": 2.0, "alpha_kd": 1.0, "alpha_hard": 0.0}, {}, None),
        masked_lm_spec(0.15, False, {}, 8),
    ):
        task_cls = TASKS[spec.kind].__self__  # a classmethod: from_settings
        assert members <= set(dir(task_cls)), members - set(dir(task_cls))


def test_a_masked_lm_step_over_micro_batches_is_the_step_over_their_union(bert_tokenizer, tiny_models):
    """The loop's optimizer step with the masked-LM task: two micro-batches of two sequences report
    the loss of one batch of four (the task normalises by the group's masked tokens)."""
    from qadist.models import load_masked_lm

    texts = ["the quick brown fox", "jumps over the lazy dog today", "a b c", "qadist trains small students"]
    enc = bert_tokenizer(texts, return_special_tokens_mask=True)
    rows = {"input_ids": enc["input_ids"], "special_tokens_mask": enc["special_tokens_mask"]}
    collator = mask_collator(bert_tokenizer, 0.5, whole_word=False)
    pad = bert_tokenizer.pad_token_id
    batch = masked_batch(rows, collator, pad, torch.Generator().manual_seed(0))
    halves = [{k: v[i : i + 2] for k, v in batch.items()} for i in (0, 2)]
    model = load_masked_lm(tiny_models["student"])
    model.eval()  # no dropout: the two losses compare
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = float(masked_lm_loss(logits, batch["labels"], int((batch["labels"] != -100).sum())))
    task = MaskedLMTask({}, SimpleNamespace())
    optimizer = build_optimizer(model, 0.0, 0.0)
    scheduler = build_scheduler(optimizer, plan_steps(4, 1, 2, 2, 1.0, 0.0))
    model.train = lambda mode=True: model  # keep eval mode through the step (no dropout)
    stats = optimizer_step(
        model, halves, task, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), 1.0, CPU
    )
    assert stats["masked_tokens"] == int((batch["labels"] != -100).sum())
    assert abs(stats["loss"] - expected) < 1e-4 and stats["grad_norm"] > 0
