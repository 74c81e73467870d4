"""The results table's rows: every model of the demo, scored on the test set."""

from __future__ import annotations

from qadist.config import AnswerSettings
from qadist.demo.plan import Plan, describe
from qadist.demo.prepare import Prepared
from qadist.demo.report import Row, score


def score_all(
    plan: Plan,
    prep: Prepared,
    self_distilled: str | None,
    distilled: str,
    curve_paths: dict[str, dict[int, str]],
    test_pairs: list[dict],
    pcfg: AnswerSettings,
) -> list[Row]:
    n_teacher, few = plan.sizes.teacher, plan.few
    via = f"+{n_teacher:,} via teachers"
    teacher_set, a, b = describe(plan.teacher, n_teacher), prep.teacher_a, prep.teacher_b
    rows = [
        Row("teacher A: MiniLM-L6 + QA head", "teacher_a", 6, n_teacher, "", [a], "MiniLM-L6", teacher_set),
        Row("teacher B: same, another seed", "teacher_b", 6, n_teacher, "", [b], "MiniLM-L6", teacher_set),
        Row(
            "teacher ensemble (A+B, mean logits)",
            "ensemble",
            6,
            n_teacher,
            "",
            [prep.teacher_a, prep.teacher_b],
            "2xMiniLM-L6",
            teacher_set,
        ),
    ]
    if self_distilled:
        rows.append(
            Row(
                "self-distilled: teacher architecture from the ensemble",
                "self_distilled",
                6,
                0,
                f"+{n_teacher:,} via teacher A and the ensemble",
                [self_distilled],
                "MiniLM-L6",
                describe(plan.self_distill, plan.sizes.logged) + ", untuned",
            )
        )
    layers = plan.student_layers
    student = f"MiniLM-L{layers}"
    n_all = n_teacher + few
    rows.append(
        Row(
            f"student ({layers} layers) trained on {few} labels only",
            "labels_only",
            layers,
            few,
            "",
            [curve_paths["labels only"][few]],
            student,
            describe(plan.labels_only[few], few),
        )
    )
    if plan.all_labels is not None:
        rows.append(
            Row(
                f"student ({layers} layers) trained on all {n_all:,} labels",
                "all_labels",
                layers,
                n_all,
                "",
                [curve_paths["labels only"][n_all]],
                student,
                describe(plan.all_labels, n_all),
            )
        )
    rows += [
        Row(
            f"student ({layers} layers) distilled, no labels",
            "distilled",
            layers,
            0,
            via,
            [distilled],
            student,
            describe(plan.distill, plan.sizes.logged),
        ),
        Row(
            f"student ({layers} layers) distilled, then fine-tuned on {few} labels",
            "distilled_ft",
            layers,
            few,
            via,
            [curve_paths["distilled, then fine-tuned"][few]],
            student,
            describe(plan.finetune[few], few),
        ),
    ]
    for row in rows:
        score(row, test_pairs, prep.data["test"], pcfg, prep.path("eval"))
    return rows


def score_curve(
    curve_paths: dict[str, dict[int, str]],
    rows: list[Row],
    data: dict[str, str],
    test_pairs: list[dict],
    pcfg: AnswerSettings,
    out: str,
) -> dict[str, Row]:
    """Model path -> its scored row, for every model of the curve; those in the table are not scored twice."""
    scored = {r.paths[0]: r for r in rows if len(r.paths) == 1}
    for name, paths in curve_paths.items():
        for n, path in paths.items():
            if path not in scored:
                key = "curve-" + ("labels-only" if name == "labels only" else "distilled-ft") + f"-{n}"
                scored[path] = score(
                    Row(f"{name}, {n} labels", key, 0, n, "", [path]), test_pairs, data["test"], pcfg, out
                )
    return scored
