"""`qadist demo`: the whole pipeline, embedded and offline on a CPU, on a generated camera-store domain.

    qadist demo                      # full size (about 14 minutes on 2 CPU cores) into ./qadist-demo
    qadist demo --quick --out /tmp/d # every stage at a reduced size (about 5 minutes), as CI runs it
    qadist demo --out s3://bucket/demo   # artifacts in S3 (AWS_ENDPOINT_URL etc. from the environment)

Every stage runs through the same functions a cluster job calls (`run_finetune`, `run_pairs`,
`run_label`, `run_distill`, `predict_pairs` and the SQuAD 2.0 metric), on an embedded local Ray:

1. generate the domain (`qadist.demo.camera_domain`): product pages, labelled sets, logged questions;
2. teachers: the pretrained all-MiniLM-L6-v2 encoder with a QA head, fine-tuned on the teacher
   set twice with different seeds (the ensemble; ALBERT-xxlarge cannot be had offline);
3. `pairs`: the logged questions matched to the product pages with the packaged bi-encoder;
4. `label`: the two-teacher ensemble's soft labels on those pairs;
5. `distill`: a student made of the teacher encoder's first layers (as DistilBERT was
   initialised), no labels; then `finetune` on the few labels;
6. baselines: the same student trained on the few labels alone, and on every label (the teachers'
   set and the few); self-distillation (the teacher's architecture, started from teacher A,
   distilled from the ensemble) where the plan has it;
7. every model answers the test set; the table, the checks and a plot of F1 against the number of
   labelled examples are printed and written to DIR (results.md, results.json, f1_vs_labels.png).

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
from qadist.demo.prepare import Stopwatch, distill_model, prepare, train_model
from qadist.demo.report import add_speed, report
from qadist.demo.table import score_all, score_curve
from qadist.outputs import claim, claim_file
from qadist.squad.io import read_pairs

log = logging.getLogger(__name__)


def check_out(cfg: DemoConfig, plan: Plan) -> None:
    """DIR may hold an earlier run of the same demo (resumed); another demo's output is refused."""
    settings = {"config": to_dict(cfg), "plan": json.loads(json.dumps(asdict(plan)))}
    if claim(cfg.out, claim_file("demo"), settings, what="a demo run", fix="give another --out, or delete it"):
        print(f"demo: {cfg.out} holds an earlier run with these settings; finished stages are reused", flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    plan = demo_plan(cfg)
    check_out(cfg, plan)
    clock = Stopwatch()
    cache = tempfile.mkdtemp(prefix="qadist-demo-models-") if storage.is_s3(cfg.out) else None
    print(f"qadist demo ({'quick' if cfg.quick else 'full'}, seed {cfg.seed}) -> {cfg.out}", flush=True)
    try:
        prep = prepare(cfg, plan, clock, models_dir=cache)
        init = prep.inits["student-init"]
        distilled = distill_model(
            clock,
            "distill: student from the soft labels, no labels",
            prep.labels,
            init,
            prep.path("models", "student-distilled"),
            plan.distill,
            plan.temperature,
            cfg.seed,
            prep.shared,
        )
        curve_paths: dict[str, dict[int, str]] = {"labels only": {}, "distilled, then fine-tuned": {}}
        for n in plan.curve:
            curve_paths["labels only"][n] = train_model(
                clock,
                prep,
                f"baseline: student on {n} labels only",
                f"student-labels-{n}",
                init,
                prep.subsets[n],
                plan.labels_only[n],
                n,
                cfg.seed,
            )
            curve_paths["distilled, then fine-tuned"][n] = train_model(
                clock,
                prep,
                f"finetune: distilled student on {n} labels",
                f"student-distilled-ft-{n}",
                distilled,
                prep.subsets[n],
                plan.finetune[n],
                n,
                cfg.seed,
            )
        n_all = plan.sizes.teacher + plan.few
        if plan.all_labels is not None:
            curve_paths["labels only"][n_all] = train_model(
                clock,
                prep,
                f"baseline: student on all {n_all:,} labels",
                "student-all-labels",
                init,
                prep.subsets["all"],
                plan.all_labels,
                n_all,
                cfg.seed,
            )
        self_distilled = None
        if plan.self_distill is not None:
            self_distilled = distill_model(
                clock,
                "baseline: self-distillation (teacher architecture, from the ensemble)",
                prep.labels,
                prep.teacher_a,
                prep.path("models", "self-distilled"),
                plan.self_distill,
                plan.temperature,
                cfg.seed,
                prep.shared,
            )

        test_pairs = read_pairs(prep.data["test"])[0]
        pcfg = AnswerSettings(batch_size=64, **prep.shared)  # scoring and speed answer alike
        with clock.stage("evaluate every model on the test set"):
            rows = score_all(plan, prep, self_distilled, distilled, curve_paths, test_pairs, pcfg)
            scored = score_curve(curve_paths, rows, prep.data, test_pairs, pcfg, prep.path("eval"))
            curve = {
                name: {n: scored[path].metrics["f1"] for n, path in paths.items()}
                for name, paths in curve_paths.items()
            }
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
