"""The demo's scoring and report: every model answers the test set, and the table, checks and plot.

Scoring goes through the code of `qadist predict` / `qadist evaluate` (`predict_pairs`, the SQuAD
2.0 metric); the teacher ensemble answers with the mean of its members' logits, as the label
stage combines them. Speed is answers per second on this machine for the whole test set, after a
short warm-up, one model at a time.
"""

from __future__ import annotations

import json
import logging
import time
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
    metrics: dict[str, float] = field(default_factory=dict)
    params: int = 0
    megabytes: float = 0.0
    answers_per_s: float = 0.0
    speed_vs_teacher: float = 0.0


def weights_megabytes(path: str) -> float:
    files = [f for f in Path(path).iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 1e6


def score(row: Row, test_pairs: list[dict], test_uri: str, cfg: AnswerSettings, out: str) -> Row:
    """Predict the test set with the row's model(s), time it, and compute the SQuAD 2.0 metrics."""
    device = torch.device("cpu")
    tokenizer = load_tokenizer(row.paths[0])
    members = [load_qa_model(p).eval() for p in row.paths]
    model = members[0] if len(members) == 1 else MeanLogitsEnsemble(members).eval()
    predict_pairs(test_pairs[:32], model, tokenizer, cfg, device, progress=False)  # warm-up (allocator, kernels)
    started = time.perf_counter()
    predictions, na_probs = predict_pairs(test_pairs, model, tokenizer, cfg, device, progress=False)
    elapsed = time.perf_counter() - started
    row.metrics = squad_v2_metrics(gold_answers(test_pairs, test_uri), predictions, na_probs)
    row.params = sum(p.numel() for m in members for p in m.parameters())
    row.megabytes = sum(weights_megabytes(p) for p in row.paths)
    row.answers_per_s = len(test_pairs) / max(elapsed, 1e-9)
    storage.write_bytes(
        storage.join(out, f"{row.key}.predictions.json"), json.dumps(predictions, indent=1).encode("utf-8")
    )
    storage.write_bytes(storage.join(out, f"{row.key}.na_probs.json"), json.dumps(na_probs).encode("utf-8"))
    storage.write_bytes(storage.join(out, f"{row.key}.metrics.json"), json.dumps(row.metrics, indent=2).encode("utf-8"))
    log.info(
        "%s: F1 %.1f, EM %.1f, %.1f answers/s", row.model, row.metrics["f1"], row.metrics["exact"], row.answers_per_s
    )
    return row


def checks(rows: dict[str, Row]) -> list[tuple[str, bool]]:
    """The claims the demo exists to show, each with whether this run shows it."""
    f1 = {k: r.metrics["f1"] for k, r in rows.items()}
    found = [
        (
            f"distilled student (no labels) reaches >= 90% of the teacher ensemble's F1 "
            f"({f1['distilled']:.1f} / {f1['ensemble']:.1f} "
            f"= {100 * f1['distilled'] / max(f1['ensemble'], 1e-9):.0f}%)",
            f1["distilled"] >= 0.9 * f1["ensemble"],
        ),
        (
            "distilled student (no labels) beats the same student trained on the labels alone "
            f"({f1['distilled']:.1f} vs {f1['labels_only']:.1f})",
            f1["distilled"] > f1["labels_only"],
        ),
        (
            "distilled, then fine-tuned is at least as good as distilled alone "
            f"({f1['distilled_ft']:.1f} vs {f1['distilled']:.1f})",
            f1["distilled_ft"] >= f1["distilled"],
        ),
        (
            f"the student answers faster than the teacher ({rows['distilled'].speed_vs_teacher:.1f}x a single teacher)",
            rows["distilled"].speed_vs_teacher > 1.0,
        ),
    ]
    if "self_distilled" in rows:
        found.append(
            (
                "self-distillation from the ensemble vs teacher A "
                f"({f1['self_distilled']:.1f} vs {f1['teacher_a']:.1f})",
                f1["self_distilled"] >= f1["teacher_a"],
            )
        )
    return found


COLUMNS = (
    "model",
    "layers",
    "labelled examples used",
    "EM",
    "F1",
    "HasAns F1",
    "NoAns F1",
    "params (M)",
    "size (MB)",
    "answers/s",
    "speed vs teacher",
)


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        m = r.metrics
        labelled = f"{r.labelled:,}" + (f" ({r.labelled_note})" if r.labelled_note else "")
        out.append(
            [
                r.model,
                str(r.layers),
                labelled,
                f"{m['exact']:.1f}",
                f"{m['f1']:.1f}",
                f"{m.get('HasAns_f1', 0.0):.1f}",
                f"{m.get('NoAns_f1', 0.0):.1f}",
                f"{r.params / 1e6:.1f}",
                f"{r.megabytes:.0f}",
                f"{r.answers_per_s:.0f}",
                f"{r.speed_vs_teacher:.1f}x",
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
    fmt = lambda c: "  ".join(x.ljust(w) if i in (0, 2) else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths)))  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(c) for c in cells[1:]])


def plot_curve(curve: dict[str, dict[int, float]], lines: dict[str, float], path: str) -> None:
    """F1 against labelled examples for each curve, with horizontal reference lines (PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (name, points), marker in zip(curve.items(), ("o", "s", "^")):
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker=marker, label=name)
    for (name, value), style in zip(lines.items(), ("--", ":", "-.")):
        ax.axhline(value, linestyle=style, color="grey", linewidth=1)
        ax.annotate(
            f"{name} ({value:.1f})",
            (0.01, value),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
            color="dimgrey",
        )
    xs = sorted({x for points in curve.values() for x in points})
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("labelled examples")
    ax.set_ylabel("SQuAD 2.0 F1 on the test set")
    ax.set_title("Distillation as pre-training (camera-store demo)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
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
            "distilled, no labels": by_key["distilled"].metrics["f1"],
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
    curve_md = "\n".join(
        f"| {name} | " + " | ".join(f"{points[n]:.1f}" for n in sorted(points)) + " |" for name, points in curve.items()
    )
    sizes = sorted({n for points in curve.values() for n in points})
    md = "\n".join(
        [
            "# qadist demo results",
            "",
            markdown_table(rows),
            "",
            "Labelled examples used: the gold answers a model was trained on itself; "
            "in brackets, those that reached it through its teachers.",
            "Speed: answers per second on this machine over the whole test set "
            f"(one process, {extra.get('precision', 'fp32')}), and the ratio to a single teacher.",
            "",
            "## Checks",
            "",
            *[f"- [{'x' if ok else ' '}] {text}" for text, ok in found],
            "",
            "## F1 against labelled examples",
            "",
            "| model | " + " | ".join(str(n) for n in sizes) + " |",
            "|---|" + "---|" * len(sizes),
            curve_md,
            "",
            "![F1 against labelled examples](f1_vs_labels.png)",
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
                "exact": r.metrics["exact"],
                "f1": r.metrics["f1"],
                "HasAns_f1": r.metrics.get("HasAns_f1"),
                "NoAns_f1": r.metrics.get("NoAns_f1"),
                "params": r.params,
                "megabytes": round(r.megabytes, 1),
                "answers_per_s": round(r.answers_per_s, 1),
                "speed_vs_teacher": round(r.speed_vs_teacher, 2),
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
