"""Does domain-adaptive pre-training (`qadist pretrain`) carry through the demo's pipeline to the student?

The seed's pipeline order, in the demo's scenario (teachers that learned QA from other shops' labels,
a camera store with logged questions): the teachers' encoder pre-trained on the store's 625 product
pages, then QA-trained; their ensemble labels the store's logged questions; a 2-layer student is
distilled from those labels. This script runs it beside the plain pipeline, each row tuned with the
same budget as in `benchmarks/demo_tuning.py` (whose rows and finished points it shares: give it the
same --out to reuse them):

1. the tuning's rows `teacher` (MiniLM-L6 + a fresh QA head on the other shops' 2,000 labels),
   `pretrained_teacher` (the same on MiniLM after `qadist pretrain` with its defaults on the pages:
   head warm-up, then the whole model at lr 5e-6 for 1 epoch), both on their 3 x 3 grid at seed 0
   chosen on the other shops' dev, then seeds 1 and 2; and `distilled` (MiniLM's first 2 layers
   distilled from the plain seed 0+1 ensemble's labels; chosen on the store's dev);
2. the pre-trained pipeline's student, `distilled_pretrained`: the pre-trained seed 0+1 ensemble
   labels the same logged pairs (`run_label`), and the first 2 layers of the pre-trained encoder (a
   fresh QA head) are distilled from those labels on the distilled row's grid, chosen on the store's
   dev, then seeds 1 and 2;
3. `pretrain.md` / `pretrain.json` in --out: the rows (store test F1 and the other shops' test F1,
   mean +- sd over 3 seeds; ensembles over the three seed pairs), the held-out masked-LM loss of the
   pages before and after pre-training, and each comparison called a gain, a loss or a tie (a gap
   under the two spreads added).

Reuses every finished point in --out (with a finished `demo_tuning.py` --out: the labelling and the
new student's 11 runs, about 30 minutes on 2 CPU cores; from an empty --out, hours).

    python benchmarks/pretrain_gain.py --out /tmp/qadist-tuning
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from demo_tuning import (  # noqa: E402
    DISTILL_LRS,
    EPOCHS,
    LABEL_COUNTS,
    Grid,
    Tuning,
    compare,
    ensemble_scores,
    markdown,
    pretrained_inits,
    student_grids,
    teacher_grids,
    tuning_args,
    write_results,
)
from demo_tuning import comparisons as tuning_comparisons  # noqa: E402

from qadist import storage  # noqa: E402
from qadist.config import DemoConfig  # noqa: E402
from qadist.demo.plan import FULL  # noqa: E402
from qadist.demo.prepare import Stopwatch, finished_model, label_pairs, prepare_data, save_init_models  # noqa: E402
from qadist.models import local_model  # noqa: E402


def rows_compared() -> list[Grid]:
    """The tuning's teacher rows and distilled row, and the pre-trained pipeline's student."""
    distilled = next(g for g in student_grids() if g.row == "distilled")
    pretrained = Grid(
        "distilled_pretrained",
        "distill",
        "student-init-pretrained",
        "labels-pretrained",
        FULL.sizes.logged,
        DISTILL_LRS,
        EPOCHS,
    )
    return [*teacher_grids(), distilled, pretrained]


def label(prep, out: str, teachers: list[str]) -> str:
    """The teachers' ensemble soft labels on the store's logged pairs (reused when finished)."""
    if not storage.exists(storage.join(out, "_manifest.json")):
        from qadist.runtime import ensure_ray

        ensure_ray(min_cpus=4, threads=prep.threads, dedicated=True)
        label_pairs(prep, teachers, out)
    return out


def comparisons(rows: dict, ensembles: dict) -> list[str]:
    """The demo tuning's comparisons of these rows (the teachers' (d) among them), and the students'."""
    found = tuning_comparisons(rows, ensembles)
    if "distilled_pretrained" in rows and "distilled" in rows:
        found.append(
            compare(
                "the distilled student, the pre-trained pipeline vs the plain one",
                rows["distilled_pretrained"]["test_f1"],
                rows["distilled"]["test_f1"],
                "pre-trained",
                "plain",
            )
        )
    return found


def main(argv: list[str] | None = None) -> int:
    args = tuning_args(argv, __doc__.split("\n")[0])
    started = time.perf_counter()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // args.jobs)
    prep = prepare_data(DemoConfig(out=out, seed=0), FULL, Stopwatch(), subset_sizes=LABEL_COUNTS)
    prep.inits.update(
        save_init_models(prep.path("models"), FULL.student_layers, {f"teacher-init-{s}": s + 1 for s in args.seeds})
    )
    prep.inits.update(pretrained_inits(prep, args.seeds))
    encoder = local_model(finished_model(prep.path("models", "pretrained-encoder")))
    student = save_init_models(prep.path("models", "pretrained-student"), FULL.student_layers, {}, source=encoder)
    prep.inits["student-init-pretrained"] = student["student-init"]
    import ray

    ray.shutdown()  # the tuning's workers start their own
    tuning = Tuning(prep, args.seeds, rows=rows_compared())
    tuning.run(args.jobs, threads, only={"teacher", "pretrained_teacher"})
    teachers = {row: [tuning.chosen_model(row, s) for s in args.seeds[:2]] for row in ("teacher", "pretrained_teacher")}
    prep.labels = label(prep, prep.path("labels"), teachers["teacher"])  # the demo tuning's labels
    prep.data["labels-pretrained"] = label(prep, prep.path("labels-pretrained"), teachers["pretrained_teacher"])
    ray.shutdown()
    tuning.run(args.jobs, threads, only={"distilled", "distilled_pretrained"})
    rows = tuning.summary()
    import torch

    torch.set_num_threads(cpus)
    ensembles = {
        name: ensemble_scores(prep, tuning, row)
        for name, row in (("ensemble", "teacher"), ("pretrained_ensemble", "pretrained_teacher"))
    }
    found = comparisons(rows, ensembles)
    report = json.loads(storage.read_text(prep.path("models", "pretrained-encoder", "pretrain_report.json")))
    loss = report["heldout_mlm_loss"]
    seconds = time.perf_counter() - started
    text = markdown(
        rows, ensembles, found, FULL.sizes, seconds, "Domain-adaptive pre-training (benchmarks/pretrain_gain.py)"
    )
    text += (
        f"\nPre-training (`qadist pretrain`'s defaults: {report['head_warmup']['steps']} head warm-up steps, then lr "
        f"{report['config']['learning_rate']:g} for {report['config']['epochs']:g} epoch): the held-out pages' "
        f"masked-LM loss {loss['before']:.2f} -> {loss['after_head_warmup']:.2f} (head warm-up) "
        f"-> {loss['after']:.2f}.\n"
    )
    result = {
        "rows": rows,
        "ensembles": ensembles,
        "comparisons": found,
        "pretraining": report,
        "seconds": round(seconds, 1),
    }
    write_results(out, "pretrain", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
