"""The QA task of `qadist distill` and `qadist finetune` (a task of `qadist.train.loop`, see `task.py`).

A `AutoModelForQuestionAnswering` student on windows padded to the micro-batch's longest, the
distillation loss of DESIGN.md (`losses.DistillationLoss`; fine-tuning is a_kd = 0 on gold windows),
each term normalised by its window count over the whole accumulation group, and SQuAD 2.0 EM/F1 on
the evaluation file after each epoch and at the end (rank 0).
"""

from __future__ import annotations

from typing import Any

import torch

from qadist.train.batches import MODEL_INPUTS, collate_windows, group_counts
from qadist.train.checkpoint import unwrap
from qadist.train.losses import DistillationLoss
from qadist.train.task import TaskSpec, WorkerContext

EVAL_BATCH = 64


def qa_spec(loss: dict[str, float], windows: dict[str, int], eval_file: str | None) -> TaskSpec:
    """The driver's description of a QA run: the loss weights, and the evaluation file with its windows."""
    return TaskSpec(
        "qa",
        {"loss": loss, "eval": {"file": eval_file, "batch_size": EVAL_BATCH, **windows} if eval_file else None},
    )


def evaluate_model(
    model: torch.nn.Module, tokenizer: Any, pairs: list[dict], eval_cfg: dict, device: torch.device
) -> dict[str, float]:
    """SQuAD 2.0 EM/F1 of the model on labelled pairs, with the shared windows and post-processing."""
    from qadist.config import AnswerSettings
    from qadist.inference import predict_pairs
    from qadist.squad.io import gold_answers
    from qadist.squad.metrics import squad_v2_metrics

    settings = AnswerSettings(**{k: eval_cfg[k] for k in ("max_seq_len", "doc_stride", "max_query_len", "batch_size")})
    inner = unwrap(model)
    inner.eval()
    try:
        predictions, na_probs = predict_pairs(pairs, inner, tokenizer, settings, device)
    finally:
        inner.train()
    metrics = squad_v2_metrics(gold_answers(pairs, eval_cfg["file"]), predictions, na_probs)
    return {f"eval/{k}": float(v) for k, v in metrics.items()}


class QATask:
    """Distillation / fine-tuning of an extractive-QA student. Without a `ctx` (tests, benchmarks) it
    is the loss step alone: `group_counts`, `forward`, `loss`, `step_stats`."""

    stat_keys = ("loss", "kd_loss", "hard_loss", "grad_norm")

    def __init__(self, loss_fn: DistillationLoss, ctx: WorkerContext | None = None, eval_cfg: dict | None = None):
        self.loss_fn, self.ctx, self.eval_cfg = loss_fn, ctx, eval_cfg
        self.eval_pairs: list[dict] | None = None

    @classmethod
    def from_settings(cls, settings: dict[str, Any], ctx: WorkerContext) -> QATask:
        loss = settings["loss"]
        return cls(DistillationLoss(loss["temperature"], loss["alpha_kd"], loss["alpha_hard"]), ctx, settings["eval"])

    def load_model(self, folder: str) -> torch.nn.Module:
        from qadist.models import load_qa_model

        # fp32 master weights whatever dtype the checkpoint was saved in (autocast does the rest).
        return load_qa_model(folder, trust_remote_code=self.ctx.train["trust_remote_code"], dtype=torch.float32)

    def setup(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        """The evaluation pairs, on rank 0 (it alone evaluates)."""
        from qadist.squad.io import read_pairs

        if self.eval_cfg and self.ctx.rank == 0:
            self.eval_pairs = read_pairs(self.eval_cfg["file"], strict=True)[0]

    def collate(self, raw: dict[str, Any], epoch: int, index: int) -> dict[str, torch.Tensor]:
        return collate_windows(raw, self.ctx.tokenizer.pad_token_id)

    def group_counts(self, group: list[dict[str, torch.Tensor]]) -> dict[str, int]:
        """Windows with soft labels and with gold labels over the group (from the CPU batches)."""
        n_kd, n_hard = group_counts(group)
        return {"kd": n_kd, "hard": n_hard}

    def forward(self, model: torch.nn.Module, mb: dict[str, torch.Tensor]) -> Any:
        return model(**{k: mb[k] for k in MODEL_INPUTS if k in mb})

    def loss(
        self, out: Any, mb: dict[str, torch.Tensor], counts: dict[str, int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The group-normalised loss, and the KL and CE terms summed over this micro-batch's windows."""
        res = self.loss_fn(
            out.start_logits,
            out.end_logits,
            mb["attention_mask"],
            mb["teacher_start"],
            mb["teacher_end"],
            mb["has_teacher"],
            mb["start_positions"],
            mb["end_positions"],
            n_kd=counts["kd"],
            n_hard=counts["hard"],
        )
        return res.loss, [res.kd_sum, res.hard_sum]

    def step_stats(self, loss: float, sums: list[float], grad_norm: float, counts: dict[str, int]) -> dict[str, float]:
        kd_sum, hard_sum = sums
        return {
            "loss": loss,
            "kd_loss": kd_sum / max(counts["kd"], 1),
            "hard_loss": hard_sum / max(counts["hard"], 1),
            "grad_norm": grad_norm,
            "kd_windows": counts["kd"],
            "gold_windows": counts["hard"],
        }

    def evaluate(self, model: torch.nn.Module, step: int, epoch_end: bool, done: bool) -> dict[str, float]:
        """SQuAD EM/F1 on the evaluation file after each epoch and at the end (rank 0)."""
        if self.eval_pairs is None or not (epoch_end or done):
            return {}
        metrics = evaluate_model(model, self.ctx.tokenizer, self.eval_pairs, self.eval_cfg, self.ctx.device)
        self.ctx.log(f"step {step}: eval exact {metrics['eval/exact']:.2f} f1 {metrics['eval/f1']:.2f}")
        return metrics

    def state(self) -> dict[str, Any]:
        return {}
