"""The demo's scoring and report: every model answers the test set, and the table, checks and plot.

Scoring goes through the code of `qadist predict` / `qadist evaluate` (`predict_pairs`, the SQuAD
2.0 metric); the teacher ensemble answers with the mean of its members' logits, as the label
stage combines them. Speed is measured per architecture (`demo/speed.py`): every row of one
architecture shows the same figures.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qadist import storage
from qadist.config import AnswerSettings
from qadist.inference import predict_pairs
from qadist.models import load_qa_model, load_tokenizer
from qadist.squad.io import gold_answers
from qadist.squad.metrics import squad_v2_metrics

log = logging.getLogger(__name__)


class MeanLogitsEnsemble(torch.nn.Module):
    """QA models sharing a tokenizer, answering with the mean of their start/end logits."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, **batch: torch.Tensor) -> Any:
        outs = [m(**batch) for m in self.members]
        from transformers.modeling_outputs import QuestionAnsweringModelOutput

        return QuestionAnsweringModelOutput(
            start_logits=torch.stack([o.start_logits for o in outs]).mean(0),
            end_logits=torch.stack([o.end_logits for o in outs]).mean(0),
        )


@dataclass
class Row:
    """One line of the results table."""

    model: str
    key: str
    layers: int
    labelled: int  # labelled examples this model was trained on directly
    labelled_note: str  # how labels reached it otherwise (through a teacher)
    paths: list[str]
    architecture: str = ""  # rows of one architecture share its speed figures
    settings: str = ""  # how it was trained (learning rate, epochs), printed beside it
    metrics: dict[str, float] = field(default_factory=dict)
    params: int = 0
    megabytes: float = 0.0
    latency_ms: float = 0.0  # batch 1
    answers_per_s: float = 0.0  # serving batch
    speed_vs_teacher: float = 0.0  # answers/s against a single teacher's
    flops_vs_teacher: float = 0.0  # a single teacher's forward FLOPs per window / this model's
    home_f1: float | None = None  # F1 on the other shops' held-out questions (the teachers' own domain)


def weights_megabytes(path: str) -> float:
    files = [f for f in Path(path).iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 1e6


def load_row_model(paths: list[str]) -> tuple[Any, Any, list[torch.nn.Module]]:
    """(model, tokenizer, members): one model, or the mean-logits ensemble of several."""
    tokenizer = load_tokenizer(paths[0])
    members = [load_qa_model(p).eval() for p in paths]
    return (members[0] if len(members) == 1 else MeanLogitsEnsemble(members).eval()), tokenizer, members


def score(row: Row, test_pairs: list[dict], test_uri: str, cfg: AnswerSettings, out: str) -> Row:
    """Predict the test set with the row's model(s) and compute the SQuAD 2.0 metrics."""
    model, tokenizer, members = load_row_model(row.paths)
    predictions, na_probs = predict_pairs(test_pairs, model, tokenizer, cfg, torch.device("cpu"), progress=False)
    row.metrics = squad_v2_metrics(gold_answers(test_pairs, test_uri), predictions, na_probs)
    row.params = sum(p.numel() for m in members for p in m.parameters())
    row.megabytes = sum(weights_megabytes(p) for p in row.paths)
    storage.write_bytes(
        storage.join(out, f"{row.key}.predictions.json"), json.dumps(predictions, indent=1).encode("utf-8")
    )
    storage.write_bytes(storage.join(out, f"{row.key}.na_probs.json"), json.dumps(na_probs).encode("utf-8"))
    storage.write_bytes(storage.join(out, f"{row.key}.metrics.json"), json.dumps(row.metrics, indent=2).encode("utf-8"))
    log.info("%s: F1 %.1f, EM %.1f", row.model, row.metrics["f1"], row.metrics["exact"])
    return row


def add_speed(
    rows: list[Row], test_pairs: list[dict], cfg: AnswerSettings, rounds: int = 3, latency_questions: int = 24
) -> dict[str, Any]:
    """Measure each architecture of the table once (with its first row's model) and give every row
    its architecture's figures; returns them by architecture, for results.json."""
    from dataclasses import asdict

    from qadist.demo.speed import measure

    first = {}
    for r in rows:
        first.setdefault(r.architecture, r)
    models = {arch: load_row_model(r.paths)[:2] for arch, r in first.items()}
    speeds = measure(models, test_pairs, cfg, latency_questions, rounds)
    teacher = speeds[rows[0].architecture]
    for r in rows:
        s = speeds[r.architecture]
        r.latency_ms, r.answers_per_s = s.latency_ms, s.answers_per_s
        r.speed_vs_teacher = s.answers_per_s / max(teacher.answers_per_s, 1e-9)
        r.flops_vs_teacher = teacher.flops_per_window / max(s.flops_per_window, 1e-9)
    return {arch: asdict(s) for arch, s in speeds.items()}


def checks(rows: dict[str, Row]) -> list[tuple[str, bool]]:
    """The claims the demo exists to show, each with whether this one run shows it (the tuning
    benchmark's 3 seeds say which are ties: docs/demo.md)."""
    f1 = {k: r.metrics["f1"] for k, r in rows.items()}
    student = rows["distilled"]
    found = [
        (
            "distilled student (no labels) within 3 F1 of the teacher ensemble "
            f"({f1['distilled']:.1f} vs {f1['ensemble']:.1f})",
            f1["distilled"] >= f1["ensemble"] - 3.0,
        ),
        (
            "distilled student (no labels) beats the student trained on the teachers' own labels "
            f"({f1['distilled']:.1f} vs {f1['ood_student']:.1f})",
            f1["distilled"] > f1["ood_student"],
        ),
    ]
    for key in sorted((k for k in rows if k.startswith("distilled_ft_")), key=lambda k: int(k.rsplit("_", 1)[1])):
        n = int(key.rsplit("_", 1)[1])
        found.append(
            (
                f"{n:,} store labels: distilled, then fine-tuned beats fine-tuned alone "
                f"({f1[key]:.1f} vs {f1[f'labels_only_{n}']:.1f})",
                f1[key] > f1[f"labels_only_{n}"],
            )
        )
    if "self_distilled" in rows:
        found.append(
            (
                "self-distillation beats its teacher "
                f"({f1['self_distilled']:.1f} vs teacher A's {f1['teacher_a']:.1f})",
                f1["self_distilled"] > f1["teacher_a"],
            )
        )
    if "pretrained_ensemble" in rows:
        found.append(
            (
                "pre-training the teachers on the store's pages helps them "
                f"(ensemble {f1['pretrained_ensemble']:.1f} vs {f1['ensemble']:.1f})",
                f1["pretrained_ensemble"] > f1["ensemble"],
            )
        )
    found += [
        (
            f"the student answers faster than the teacher ({student.speed_vs_teacher:.1f}x a single teacher)",
            student.speed_vs_teacher > 1.0,
        ),
        (
            f"the student's speed-up matches its FLOPs ratio within 2x ({student.speed_vs_teacher:.1f}x "
            f"faster, {student.flops_vs_teacher:.1f}x fewer FLOPs)",
            0.5 <= student.speed_vs_teacher / max(student.flops_vs_teacher, 1e-9) <= 2.0,
        ),
    ]
    return found


COLUMNS = (
    "model",
    "trained with",
    "layers",
    "store labels used",
    "EM",
    "F1",
    "F1 other shops",
    "HasAns F1",
    "NoAns F1",
    "params (M)",
    "size (MB)",
    "ms/question (batch 1)",
    "answers/s (batch 64)",
    "speed vs teacher",
    "FLOPs vs teacher",
)


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        m = r.metrics
        labelled = f"{r.labelled:,}" + (f" ({r.labelled_note})" if r.labelled_note else "")
        out.append(
            [
                r.model,
                r.settings,
                str(r.layers),
                labelled,
                f"{m['exact']:.1f}",
                f"{m['f1']:.1f}",
                "-" if r.home_f1 is None else f"{r.home_f1:.1f}",
                f"{m.get('HasAns_f1', 0.0):.1f}",
                f"{m.get('NoAns_f1', 0.0):.1f}",
                f"{r.params / 1e6:.1f}",
                f"{r.megabytes:.0f}",
                f"{r.latency_ms:.1f}",
                f"{r.answers_per_s:.0f}",
                f"{r.speed_vs_teacher:.1f}x",
                f"{1 / max(r.flops_vs_teacher, 1e-9):.2f}x",
            ]
        )
    return out


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines)


def console_table(rows: list[Row]) -> str:
    cells = [list(COLUMNS)] + table_rows(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    fmt = lambda c: "  ".join(x.ljust(w) if i in (0, 1, 3) else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths)))  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(c) for c in cells[1:]])


def plot_curve(curve: dict[str, dict[int, float]], lines: dict[str, float], path: str) -> None:
    """F1 against the number of store labels for each curve, evenly spaced (0 / 50 / 200 / 1,000), with
    horizontal reference lines named in the legend (PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({n for points in curve.values() for n in points})
    at = {n: i for i, n in enumerate(counts)}
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
    for (name, points), marker in zip(curve.items(), ("o", "s", "^", "D")):
        xs = sorted(points)
        ax.plot([at[x] for x in xs], [points[x] for x in xs], marker=marker, label=name)
    for (name, value), style in zip(lines.items(), ("--", ":", "-.")):
        ax.axhline(value, linestyle=style, color="grey", linewidth=1, label=f"{name} ({value:.1f})")
    ax.set_xticks(range(len(counts)), [f"{n:,}" for n in counts])
    ax.set_xlabel("camera-store gold labels")
    ax.set_ylabel("SQuAD 2.0 F1, camera-store test set")
    ax.set_title("Distillation as pre-training: teachers trained on other shops")
    # Below the axes: inside, it hides a curve's points wherever it is put.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())


def report(
    rows: list[Row],
    curve: dict[str, dict[int, float]],
    stage_seconds: dict[str, float],
    total: float,
    extra: dict[str, Any],
    out: str,
) -> dict[str, Any]:
    """Print the table, checks and timings; write results.md, results.json and the plot under `out`."""
    by_key = {r.key: r for r in rows}
    found = checks(by_key)
    plot_uri = storage.join(out, "f1_vs_labels.png")
    plot_curve(
        curve,
        {
            "teacher ensemble": by_key["ensemble"].metrics["f1"],
            "teacher A": by_key["teacher_a"].metrics["f1"],
        },
        plot_uri,
    )
    width = max([len(name) for name in stage_seconds] + [5])
    times = "\n".join(f"  {name:<{width}} {seconds:7.1f} s" for name, seconds in stage_seconds.items())
    checks_text = "\n".join(f"  [{'yes' if ok else 'NO '}] {text}" for text, ok in found)
    print(
        f"\n{console_table(rows)}\n\nChecks:\n{checks_text}\n\n"
        f"Stage times:\n{times}\n  {'total':<{width}} {total:7.1f} s\n",
        flush=True,
    )
    sizes = sorted({n for points in curve.values() for n in points})
    curve_md = "\n".join(
        f"| {name} | " + " | ".join(f"{points[n]:.1f}" if n in points else "-" for n in sizes) + " |"
        for name, points in curve.items()
    )
    md = "\n".join(
        [
            "# qadist demo results",
            "",
            markdown_table(rows),
            "",
            "Store labels used: the camera store's gold answers a model was trained on itself; in brackets, "
            "the other shops' labels that reached it directly or through its teachers. F1 other shops: on the "
            "other shops' held-out questions, where the teachers learned.",
            "Speed, per architecture (rows of one architecture share it; interleaved rounds, median): "
            "milliseconds per question one at a time, answers per second over the test set in forward passes "
            f"of 64 windows, {extra.get('cpu_threads', '?')} threads, {extra.get('precision', 'fp32')}; "
            "and the ratios to a single teacher of answers/s and of forward FLOPs per window.",
            "",
            "## Checks",
            "",
            *[f"- [{'x' if ok else ' '}] {text}" for text, ok in found],
            "",
            "## F1 against the store's gold labels",
            "",
            "| model | " + " | ".join(str(n) for n in sizes) + " |",
            "|---|" + "---|" * len(sizes),
            curve_md,
            "",
            "![F1 against the store's gold labels](f1_vs_labels.png)",
            "",
            "## Stage times",
            "",
            "| stage | seconds |",
            "|---|---|",
            *[f"| {name} | {seconds:.1f} |" for name, seconds in stage_seconds.items()],
            f"| total | {total:.1f} |",
            "",
        ]
    )
    storage.write_bytes(storage.join(out, "results.md"), md.encode("utf-8"))
    result = {
        "rows": [
            {
                "key": r.key,
                "model": r.model,
                "layers": r.layers,
                "labelled": r.labelled,
                "labelled_note": r.labelled_note,
                "settings": r.settings,
                "exact": r.metrics["exact"],
                "f1": r.metrics["f1"],
                "HasAns_f1": r.metrics.get("HasAns_f1"),
                "NoAns_f1": r.metrics.get("NoAns_f1"),
                "other_shops_f1": r.home_f1,
                "params": r.params,
                "megabytes": round(r.megabytes, 1),
                "architecture": r.architecture,
                "latency_ms": round(r.latency_ms, 2),
                "answers_per_s": round(r.answers_per_s, 1),
                "speed_vs_teacher": round(r.speed_vs_teacher, 2),
                "flops_vs_teacher": round(r.flops_vs_teacher, 2),
                "paths": r.paths,
            }
            for r in rows
        ],
        "curve": {name: {str(n): round(v, 2) for n, v in sorted(points.items())} for name, points in curve.items()},
        "checks": [{"claim": text, "holds": ok} for text, ok in found],
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "total_seconds": round(total, 1),
        **extra,
    }
    storage.write_bytes(storage.join(out, "results.json"), json.dumps(result, indent=2).encode("utf-8"))
    print(f"results: {storage.join(out, 'results.md')}, {storage.join(out, 'results.json')}, {plot_uri}", flush=True)
    return result
