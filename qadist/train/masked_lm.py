"""The masked-LM task of `qadist pretrain` (a task of `qadist.train.loop`, see `task.py`).

Everything about the run is the loop's, as for distillation (streaming, gradient accumulation,
AdamW and schedule, autocast, DDP, checkpoints every `checkpoint_every` steps, resume at the saved
step and batch); what differs is the model class (`AutoModelForMaskedLM`), the batches (token sequences masked by
transformers' `DataCollatorForLanguageModeling`) and the loss (cross-entropy over the masked tokens).

Masking is seeded per micro-batch (seed, rank, epoch, index in the epoch), so a resumed run masks
the rest of its epoch exactly as an uninterrupted one would. The held-out sequences are masked once,
with a fixed seed, so the loss before training and after each epoch is measured on the same masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qadist.train.checkpoint import unwrap
from qadist.train.domain_masking import choose_tokens
from qadist.train.head_warmup import freeze_all_but_head
from qadist.train.task import TaskSpec, WorkerContext

EVAL_MASK_SEED = 0  # the held-out masks: the same for every run, so runs compare


def masked_lm_spec(
    mask_prob: float,
    whole_word: bool,
    heldout: dict[str, list],
    eval_batch_size: int,
    token_mask_prob: list[float] | None = None,
    head_only: bool = False,
) -> TaskSpec:
    """The driver's description of a masked-LM run (`token_mask_prob`: domain masking's per-token odds;
    `head_only`: the head warm-up, `qadist.train.head_warmup`)."""
    return TaskSpec(
        "masked_lm",
        {
            "mask_prob": mask_prob,
            "whole_word": whole_word,
            "heldout": heldout,
            "eval_batch_size": eval_batch_size,
            "token_mask_prob": token_mask_prob,
            "head_only": head_only,
        },
    )


def mask_collator(tokenizer: Any, mask_prob: float, whole_word: bool) -> Any:
    """transformers' masking: 80% of the chosen tokens become [MASK], 10% a random token, 10% stay
    (whole-word masking: every token of a chosen word, all [MASK])."""
    import warnings

    from transformers import DataCollatorForLanguageModeling

    with warnings.catch_warnings():  # "random replacement is not supported with whole word masking": known
        warnings.simplefilter("ignore", UserWarning)
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mask_prob, whole_word_mask=whole_word)


def pad_sequences(batch: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Sequence rows (numpy from Ray Data, or lists) -> input_ids, attention_mask, special_tokens_mask
    [B, L] long, padded to the longest (padding counts as special: never masked), and, when the rows
    carry `offsets` (flat [start, end, ...] per token), offset_mapping [B, L, 2]."""
    ids = list(batch["input_ids"])
    n, longest = len(ids), max(len(x) for x in ids)
    out = {
        "input_ids": torch.full((n, longest), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, longest), dtype=torch.long),
        "special_tokens_mask": torch.ones((n, longest), dtype=torch.long),
    }
    offsets = batch.get("offsets")
    if offsets is not None:
        out["offset_mapping"] = torch.zeros((n, longest, 2), dtype=torch.long)
    for row, seq in enumerate(ids):
        length = len(seq)
        out["input_ids"][row, :length] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        out["attention_mask"][row, :length] = 1
        out["special_tokens_mask"][row, :length] = torch.from_numpy(
            np.asarray(batch["special_tokens_mask"][row], dtype=np.int64)
        )
        if offsets is not None:
            out["offset_mapping"][row, :length] = torch.from_numpy(np.asarray(offsets[row], dtype=np.int64)).view(-1, 2)
    return out


def masked_batch(
    batch: dict[str, Any],
    collator: Any,
    pad_id: int,
    generator: torch.Generator,
    token_probs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sequence rows -> input_ids (masked), attention_mask, labels (-100 where not masked) [B, L].

    With `token_probs` (domain masking, a collator built with probability 1), each token is chosen
    with its own probability first; the collator then masks exactly the chosen ones."""
    padded = pad_sequences(batch, pad_id)
    collator.generator = generator
    never = padded["special_tokens_mask"]
    if token_probs is not None:
        never = (never.bool() | ~choose_tokens(padded["input_ids"], never, token_probs, generator)).long()
    inputs, labels = collator.torch_mask_tokens(
        padded["input_ids"], special_tokens_mask=never, offset_mapping=padded.get("offset_mapping")
    )
    return {"input_ids": inputs, "attention_mask": padded["attention_mask"], "labels": torch.as_tensor(labels)}


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, n_masked: int) -> torch.Tensor:
    """Cross-entropy summed over the masked tokens, divided by the group's masked-token count.

    logits [B, L, V], labels [B, L] (-100: not masked). Dividing by the count over the whole
    accumulation group (not per micro-batch) makes the summed gradients those of one batch."""
    loss = torch.nn.functional.cross_entropy(
        logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100, reduction="sum"
    )
    return loss / max(n_masked, 1)


class MaskedLMTask:
    """Masked-LM training (a task of `qadist.train.loop`, see `task.py`); `settings`: mask_prob,
    whole_word, token_mask_prob (domain masking, or None), heldout (sequence rows), eval_batch_size,
    head_only (train the masked-LM head alone, the base model frozen: the head warm-up)."""

    stat_keys = ("loss", "grad_norm", "masked_tokens")

    def __init__(self, settings: dict[str, Any], ctx: WorkerContext):
        self.settings, self.ctx = settings, ctx
        self.heldout: dict[str, torch.Tensor] | None = None
        self.before: float | None = None  # the held-out loss before training (rank 0)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], ctx: WorkerContext) -> MaskedLMTask:
        return cls(settings, ctx)

    def load_model(self, folder: str) -> torch.nn.Module:
        from qadist.models import load_masked_lm

        model = load_masked_lm(folder, trust_remote_code=self.ctx.train["trust_remote_code"])
        if self.settings.get("head_only"):  # the optimizer takes only the parameters that require grad
            trainable, frozen = freeze_all_but_head(model)
            self.ctx.log(f"head warm-up: {trainable:,} head parameters trained, {frozen:,} frozen")
        return model

    def setup(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        """The collators, and on rank 0 (it alone evaluates) the held-out batch and its loss before
        training (measured once: a resumed run keeps the checkpoint's)."""
        task, pad_id = self.settings, self.ctx.tokenizer.pad_token_id
        # The held-out masks are random whatever the training masking, so every run's loss compares.
        random_masks = mask_collator(self.ctx.tokenizer, task["mask_prob"], task["whole_word"])
        self.token_probs = None
        self.collator = random_masks
        if task.get("token_mask_prob") is not None:  # domain masking: tokens chosen by their own probability
            self.token_probs = torch.tensor(task["token_mask_prob"], dtype=torch.float32)
            self.collator = mask_collator(self.ctx.tokenizer, 1.0, whole_word=False)
        if self.ctx.rank != 0:
            return
        generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
        self.heldout = masked_batch(task["heldout"], random_masks, pad_id, generator)
        if "heldout_before" in state:
            self.before = state["heldout_before"]
        else:
            self.before = self.heldout_loss(model)
            self.ctx.log(f"held-out masked-LM loss before training: {self.before:.4f}")

    def collate(self, raw: dict[str, Any], epoch: int, index: int) -> dict[str, torch.Tensor]:
        seed = [self.ctx.train["seed"], self.ctx.rank, epoch, index]
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        return masked_batch(raw, self.collator, self.ctx.tokenizer.pad_token_id, generator, self.token_probs)

    def group_counts(self, group: list[dict[str, torch.Tensor]]) -> dict[str, int]:
        """The masked tokens of the group (from the CPU batches)."""
        return {"masked": sum(int((mb["labels"] != -100).sum()) for mb in group)}

    def forward(self, model: torch.nn.Module, mb: dict[str, torch.Tensor]) -> Any:
        return model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits

    def loss(
        self, out: Any, mb: dict[str, torch.Tensor], counts: dict[str, int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return masked_lm_loss(out, mb["labels"], counts["masked"]), []

    def step_stats(self, loss: float, sums: list[float], grad_norm: float, counts: dict[str, int]) -> dict[str, float]:
        return {"loss": loss, "grad_norm": grad_norm, "masked_tokens": counts["masked"]}

    @torch.inference_mode()
    def heldout_loss(self, model: torch.nn.Module) -> float:
        """Mean cross-entropy over the held-out sequences' masked tokens (their fixed masks)."""
        device, amp_dtype = self.ctx.device, self.ctx.amp_dtype
        model = unwrap(model)
        model.eval()
        total, count = 0.0, 0
        held, size = self.heldout, self.settings["eval_batch_size"]
        for i in range(0, held["input_ids"].shape[0], size):
            part = {k: v[i : i + size].to(device) for k, v in held.items()}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            n = int((part["labels"] != -100).sum())
            total += float(masked_lm_loss(logits, part["labels"], 1))
            count += n
        model.train()
        return total / max(count, 1)

    def evaluate(self, model: torch.nn.Module, step: int, epoch_end: bool, done: bool) -> dict[str, float]:
        """The held-out loss before training in every report; after each epoch and at the end, now's."""
        if self.heldout is None:
            return {}
        metrics = {"eval/mlm_loss_before": self.before}
        if epoch_end or done:
            metrics["eval/mlm_loss"] = self.heldout_loss(model)
            self.ctx.log(f"step {step}: held-out masked-LM loss {metrics['eval/mlm_loss']:.4f}")
        return metrics

    def state(self) -> dict[str, Any]:
        return {"heldout_before": self.before}
