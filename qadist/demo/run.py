"""`qadist demo`: the whole pipeline, embedded and offline on a CPU, in the seed's scenario.

    qadist demo                      # full size into ./qadist-demo (teachers cached for later runs)
    qadist demo --quick --out /tmp/d # every stage at a reduced size (about 3.5 minutes), as CI runs it
    qadist demo --out s3://bucket/demo   # artifacts in S3 (AWS_ENDPOINT_URL etc. from the environment)

The situation qadist is for: teachers that learned extractive QA elsewhere (here: other shops'
labelled questions, never the camera store's), a store with many logged questions and few gold
labels. Every stage runs through the same functions a cluster job calls (`run_finetune`,
`run_pretrain`, `run_pairs`, `run_label`, `run_distill`, `predict_pairs` and the SQuAD 2.0
metric), on an embedded local Ray:

1. generate the domains (`qadist.demo.domain`): the other shops' labelled questions; the camera
   store's product pages, logged questions, gold labels, dev and test;
2. teachers: the pretrained all-MiniLM-L6-v2 encoder with a QA head, trained on the other shops'
   labels twice with different seeds (the ensemble; ALBERT-xxlarge cannot be had offline); kept
   in `--teacher-cache` by what made them, so later runs reuse them; where the plan has it, the
   same teachers pre-trained on the store's pages first (`qadist pretrain`);
3. `pairs`: the logged questions matched to the product pages with the packaged bi-encoder;
4. `label`: the two-teacher ensemble's soft labels on those pairs;
5. `distill`: a student made of the teacher encoder's first layers (as DistilBERT was
   initialised), no labels; then `finetune` on the store's gold labels (50, 200, 1,000);
6. baselines: the same student trained on the teachers' own labels (the other shops'), then
   fine-tuned on the store's; the student on the store's labels alone; self-distillation (teacher
   A's architecture, from teacher A, distilled from the ensemble) where the plan has it;
7. every model answers the store's test set (the teachers also the other shops' held-out set); the
   table, the checks and a plot of F1 against the number of store labels are printed and written
   to DIR (results.md, results.json, f1_vs_labels.png).

Each stage's artifacts stay in DIR. Re-running into the same DIR with the same settings reuses
the stages that finished (their manifests and final models) and redoes the rest.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict

from qadist import storage
from qadist.config import AnswerSettings, DemoConfig, to_dict
from qadist.demo.plan import Plan, demo_plan
from qadist.demo.prepare import Prepared, Stopwatch, distill_model, prepare, pretrained_teachers, train_model
from qadist.demo.report import add_speed, report
from qadist.demo.table import DISTILLED_FT, LABELS_ONLY, OOD_FT, Models, score_all, score_curves
from qadist.outputs import claim, claim_file
from qadist.squad.io import read_pairs

log = logging.getLogger(__name__)


def check_out(cfg: DemoConfig, plan: Plan) -> None:
    """DIR may hold an earlier run of the same demo (resumed); another demo's output is refused."""
    config = {k: v for k, v in to_dict(cfg).items() if k != "teacher_cache"}  # where models are kept, not what
    settings = {"config": config, "plan": json.loads(json.dumps(asdict(plan)))}
    if claim(cfg.out, claim_file("demo"), settings, what="a demo run", fix="give another --out, or delete it"):
        print(f"demo: {cfg.out} holds an earlier run with these settings; finished stages are reused", flush=True)


def train_students(cfg: DemoConfig, plan: Plan, clock: Stopwatch, prep: Prepared) -> Models:
    """Every student of the table and of the curves (and self-distillation where the plan has it)."""
    init = prep.inits["student-init"]

    def distill(stage: str, start: str, name: str, train, **cached) -> str:
        out = prep.path("models", name)
        return distill_model(
            clock, stage, prep.labels, start, out, train, plan.temperature, cfg.seed, prep.shared, **cached
        )

    models = Models(
        distilled=distill("distill: student from the soft labels, no labels", init, "student-distilled", plan.distill),
        ood_student=train_model(
            clock,
            prep,
            "baseline: student on the teachers' labels (other shops)",
            "student-other-shops",
            init,
            prep.data["teacher"],
            plan.ood_student,
            plan.sizes.teacher,
            cfg.seed,
        ),
    )
    models.curves = {LABELS_ONLY: {}, OOD_FT: {0: models.ood_student}, DISTILLED_FT: {0: models.distilled}}
    starts = {LABELS_ONLY: (init, plan.labels_only), OOD_FT: (models.ood_student, plan.ood_finetune)}
    starts[DISTILLED_FT] = (models.distilled, plan.finetune)
    names = {LABELS_ONLY: "student-labels", OOD_FT: "student-other-shops-ft", DISTILLED_FT: "student-distilled-ft"}
    for n in plan.curve:
        for curve, (start, trains) in starts.items():
            if n in trains:
                models.curves[curve][n] = train_model(
                    clock,
                    prep,
                    f"{curve}: {n:,} store labels",
                    f"{names[curve]}-{n}",
                    start,
                    prep.subsets[n],
                    trains[n],
                    n,
                    cfg.seed,
                )
    if len(models.curves[OOD_FT]) == 1:
        del models.curves[OOD_FT]  # the quick plan fine-tunes only the distilled student
    if plan.self_distill is not None:
        models.self_distilled = distill(
            "baseline: self-distillation (teacher A's architecture, from the ensemble)",
            prep.teacher_a,
            "self-distilled",
            plan.self_distill,
            cache=cfg.teacher_cache,  # a teacher-side model: kept and reused as the teachers are
            prep=prep,
        )
    return models


def run_demo(cfg: DemoConfig) -> dict:
    plan = demo_plan(cfg)
    check_out(cfg, plan)
    clock = Stopwatch()
    cache = tempfile.mkdtemp(prefix="qadist-demo-models-") if storage.is_s3(cfg.out) else None
    print(f"qadist demo ({'quick' if cfg.quick else 'full'}, seed {cfg.seed}) -> {cfg.out}", flush=True)
    try:
        prep = prepare(cfg, plan, clock, models_dir=cache)
        pretrained = pretrained_teachers(cfg, plan, clock, prep) if plan.pretrain is not None else None
        models = train_students(cfg, plan, clock, prep)
        models.pretrained_teachers = pretrained
        test_pairs = read_pairs(prep.data["test"])[0]
        pcfg = AnswerSettings(batch_size=64, **prep.shared)  # scoring and speed answer alike
        with clock.stage("evaluate every model on the test set"):
            rows = score_all(plan, prep, models, test_pairs, pcfg)
            curve = score_curves(models, rows, prep.data, test_pairs, pcfg, prep.path("eval"))
        with clock.stage("speed: each architecture, batch 1 and batch 64, interleaved"):
            speeds = add_speed(rows, test_pairs, pcfg, plan.speed_rounds, plan.latency_questions)
        extra = {
            "config": to_dict(cfg),
            "plan": json.loads(json.dumps(asdict(plan))),
            "pairs_accuracy": round(prep.pairs_accuracy, 4),
            "pairs_counts": prep.pairs_counts,
            "label_counts": prep.label_counts,
            "cpu_threads": prep.threads,
            "precision": prep.shared["precision"],
            "speed_by_architecture": speeds,
        }
        return report(rows, curve, clock.seconds, clock.total(), extra, cfg.out)
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
