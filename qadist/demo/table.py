"""The results table's rows: every model of the demo, scored on the camera store's test set (and the
teachers, and the student trained on their labels, also on the other shops' held-out questions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qadist.config import AnswerSettings
from qadist.demo.plan import Plan, describe
from qadist.demo.prepare import Prepared
from qadist.demo.report import Row, score
from qadist.squad.io import read_pairs

LABELS_ONLY = "store labels only"
DISTILLED_FT = "distilled on the store's logs, then fine-tuned"
OOD_FT = "trained on the other shops' labels, then fine-tuned"


@dataclass
class Models:
    """The local paths of the run's models, by role."""

    distilled: str
    ood_student: str
    curves: dict[str, dict[int, str]] = field(default_factory=dict)  # curve -> number of store labels -> model
    self_distilled: str | None = None
    pretrained_teachers: tuple[str, str] | None = None


def teacher_rows(plan: Plan, prep: Prepared, models: Models) -> list[Row]:
    n, settings = plan.sizes.teacher, describe(plan.teacher, plan.sizes.teacher)
    a, b = prep.teacher_a, prep.teacher_b
    rows = [
        Row("teacher A: MiniLM-L6 + QA head, other shops' labels", "teacher_a", 6, 0, f"{n:,} other shops'", [a]),
        Row("teacher B: same, another seed", "teacher_b", 6, 0, f"{n:,} other shops'", [b]),
        Row("teacher ensemble (A+B, mean logits)", "ensemble", 6, 0, f"{n:,} other shops'", [a, b], "2xMiniLM-L6"),
    ]
    if models.pretrained_teachers:
        pa, pb = models.pretrained_teachers
        rows += [
            Row("teacher A pre-trained on the store's pages first", "pretrained_a", 6, 0, f"{n:,} other shops'", [pa]),
            Row("teacher B pre-trained on the store's pages first", "pretrained_b", 6, 0, f"{n:,} other shops'", [pb]),
            Row(
                "ensemble of the pre-trained teachers",
                "pretrained_ensemble",
                6,
                0,
                f"{n:,} other shops'",
                [pa, pb],
                "2xMiniLM-L6",
            ),
        ]
    pretrained = describe(plan.pretrained_teacher_training, n)
    for r in rows:
        r.architecture = r.architecture or "MiniLM-L6"
        r.settings = pretrained if r.key.startswith("pretrained") else settings
    return rows


def student_rows(plan: Plan, models: Models) -> list[Row]:
    layers, n_ood, logged = plan.student_layers, plan.sizes.teacher, plan.sizes.logged
    arch = f"MiniLM-L{layers}"
    via = f"{n_ood:,} other shops' via teachers"
    rows = []
    if models.self_distilled:
        rows.append(
            Row(
                "self-distilled: teacher A's architecture from the ensemble",
                "self_distilled",
                6,
                0,
                via,
                [models.self_distilled],
                "MiniLM-L6",
                describe(plan.self_distill, logged),
            )
        )
    rows += [
        Row(
            f"student ({layers} layers) on the teachers' labels (other shops)",
            "ood_student",
            layers,
            0,
            f"{n_ood:,} other shops'",
            [models.ood_student],
            arch,
            describe(plan.ood_student, n_ood),
        ),
        Row(
            f"student ({layers} layers) distilled on the store's logs, no labels",
            "distilled",
            layers,
            0,
            via,
            [models.distilled],
            arch,
            describe(plan.distill, logged),
        ),
    ]
    for n in plan.few:
        rows.append(
            Row(
                f"student ({layers} layers) on {n:,} store labels only",
                f"labels_only_{n}",
                layers,
                n,
                "",
                [models.curves[LABELS_ONLY][n]],
                arch,
                describe(plan.labels_only[n], n),
            )
        )
        if n in models.curves.get(OOD_FT, {}):
            rows.append(
                Row(
                    f"student on the other shops' labels, then {n:,} store labels",
                    f"ood_ft_{n}",
                    layers,
                    n,
                    f"{n_ood:,} other shops'",
                    [models.curves[OOD_FT][n]],
                    arch,
                    describe(plan.ood_finetune[n], n),
                )
            )
        rows.append(
            Row(
                f"student distilled, then fine-tuned on {n:,} store labels",
                f"distilled_ft_{n}",
                layers,
                n,
                via,
                [models.curves[DISTILLED_FT][n]],
                arch,
                describe(plan.finetune[n], n),
            )
        )
    return rows


def score_all(plan: Plan, prep: Prepared, models: Models, test_pairs: list[dict], pcfg: AnswerSettings) -> list[Row]:
    """Every row scored on the store's test set; the teachers and the student on their labels also on
    the other shops' held-out questions (`home_f1`: how far the store is from where they learned)."""
    rows = teacher_rows(plan, prep, models) + student_rows(plan, models)
    home = read_pairs(prep.data["teacher-test"])[0]
    for row in rows:
        score(row, test_pairs, prep.data["test"], pcfg, prep.path("eval"))
        if row.key in ("teacher_a", "teacher_b", "ensemble", "ood_student") or row.key.startswith("pretrained"):
            shops = Row(row.model, f"{row.key}.other-shops", row.layers, 0, "", row.paths)
            row.home_f1 = score(shops, home, prep.data["teacher-test"], pcfg, prep.path("eval")).metrics["f1"]
    return rows


def score_curves(
    models: Models, rows: list[Row], data: dict[str, str], test_pairs: list[dict], pcfg: AnswerSettings, out: str
) -> dict[str, dict[int, float]]:
    """F1 on the test set of every point of every curve; models in the table are not scored twice."""
    scored = {r.paths[0]: r for r in rows if len(r.paths) == 1}
    curve = {}
    for name, paths in models.curves.items():
        for n, path in paths.items():
            if path not in scored:
                key = f"curve-{'-'.join(name.split()[:2])}-{n}"
                scored[path] = score(
                    Row(f"{name}, {n} labels", key, 0, n, "", [path]), test_pairs, data["test"], pcfg, out
                )
        curve[name] = {n: scored[path].metrics["f1"] for n, path in sorted(paths.items())}
    return curve
