"""The worker side of `qadist pretrain`: the training loop of `qadist.train.loop` with a masked-LM task.

Everything about the run is the QA loop's (streaming, gradient accumulation, AdamW and schedule,
autocast, DDP, checkpoints every `checkpoint_every` steps, resume at the saved step and batch);
what differs is the model class (`AutoModelForMaskedLM`), the batches (token sequences masked by
transformers' `DataCollatorForLanguageModeling`) and the loss (cross-entropy over the masked tokens).

Masking is seeded per micro-batch (seed, rank, epoch, index in the epoch), so a resumed run masks
the rest of its epoch exactly as an uninterrupted one would. The held-out sequences are masked once,
with a fixed seed, so the loss before training and after each epoch is measured on the same masks.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from qadist.inference import to_device
from qadist.train.domain_masking import choose_tokens
from qadist.train.loop import WorkerTrainer

EVAL_MASK_SEED = 0  # the held-out masks: the same for every run, so runs compare


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


class MaskedLMTrainer(WorkerTrainer):
    STAT_KEYS = ("loss", "grad_norm", "masked_tokens")

    def load_model(self, folder: str) -> torch.nn.Module:
        from qadist.models import load_masked_lm

        return load_masked_lm(folder, trust_remote_code=self.train["trust_remote_code"])

    def setup_task(self) -> None:
        task = self.config["task"]
        # The held-out masks are random whatever the training masking, so every run's loss compares.
        random_masks = mask_collator(self.tokenizer, task["mask_prob"], task["whole_word"])
        self.token_probs = None
        self.collator = random_masks
        if task.get("token_mask_prob") is not None:  # domain masking: tokens chosen by their own probability
            self.token_probs = torch.tensor(task["token_mask_prob"], dtype=torch.float32)
            self.collator = mask_collator(self.tokenizer, 1.0, whole_word=False)
        self.heldout = None
        if self.rank == 0:  # it alone evaluates
            self.heldout = masked_batch(
                task["heldout"],
                random_masks,
                self.tokenizer.pad_token_id,
                torch.Generator().manual_seed(EVAL_MASK_SEED),
            )
            self.eval_batch_size = task["eval_batch_size"]
            if "heldout_before" not in self.state:
                self.state["heldout_before"] = self.heldout_loss()
                self.log(f"held-out masked-LM loss before training: {self.state['heldout_before']:.4f}")

    def collate(self, raw: dict[str, Any], index: int) -> dict[str, torch.Tensor]:
        seed = [self.train["seed"], self.rank, self.epoch, index]
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        return masked_batch(raw, self.collator, self.tokenizer.pad_token_id, generator, self.token_probs)

    def train_step(self, group: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches of masked sequences."""
        model, device = self.model, self.device
        model.train()
        n_masked = sum(int((mb["labels"] != -100).sum()) for mb in group)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)  # on the device: one host sync per step (loop.train_step)
        for i, mb in enumerate(group):
            mb = to_device(mb, device)
            last = i == len(group) - 1
            with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
                with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
                loss = masked_lm_loss(logits, mb["labels"], n_masked)
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.train["max_grad_norm"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        loss_sum, grad_norm = torch.stack([loss_sum, grad_norm.detach().float()]).tolist()
        return {"loss": loss_sum, "grad_norm": grad_norm, "masked_tokens": n_masked}

    @torch.inference_mode()
    def heldout_loss(self) -> float:
        """Mean cross-entropy over the held-out sequences' masked tokens (their fixed masks)."""
        from qadist.train.checkpoint import unwrap

        model = unwrap(self.model)
        model.eval()
        total, count = 0.0, 0
        held = self.heldout
        for i in range(0, held["input_ids"].shape[0], self.eval_batch_size):
            part = {k: v[i : i + self.eval_batch_size].to(self.device) for k, v in held.items()}
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            n = int((part["labels"] != -100).sum())
            total += float(masked_lm_loss(logits, part["labels"], 1))
            count += n
        model.train()
        return total / max(count, 1)

    def evaluate(self, epoch_end: bool, done: bool) -> dict[str, float]:
        if self.heldout is None:
            return {}
        metrics = {"eval/mlm_loss_before": self.state["heldout_before"]}
        if epoch_end or done:
            metrics["eval/mlm_loss"] = self.heldout_loss()
            self.log(f"step {self.step}: held-out masked-LM loss {metrics['eval/mlm_loss']:.4f}")
        return metrics

    def task_state(self) -> dict[str, Any]:
        return {"heldout_before": self.state.get("heldout_before")}


def pretrain_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point for `qadist pretrain`."""
    MaskedLMTrainer(config).run()
