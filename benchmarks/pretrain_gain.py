"""What domain-adaptive pre-training (`qadist pretrain`) gives the demo's pipeline: teachers, ensemble, student.

The demo's domain, pairs and settings (`qadist.demo.prepare.prepare`, FULL) at seed 0, then the original
pipeline twice, without and with a masked-LM pass over the 625 logged product pages first:

1. pre-training: MiniLM-L6 (the teachers' encoder) trained by `run_pretrain` on the product pages,
   once per masking kind (`random`, and `domain`: tokens by their idf over the pages); the held-out
   pages' masked-LM loss before and after is printed;
2. teachers: MiniLM-L6 + a fresh QA head fine-tuned on the 1,200 teacher labels with the demo's
   teacher setting (the team's: lr 2e-4, 1 epoch, not tuned, the same for every encoder), seeds
   0, 1, 2, from MiniLM itself and from each pre-trained encoder; scored on dev and test. The
   ensembles are the three pairs of a kind's teachers (seeds 0+1, 0+2, 1+2);
3. the masking kind whose teachers have the higher mean dev F1 goes on (decided on dev, never on
   test): its seed 0+1 ensemble labels the logged pairs, and the student (the first 2 layers of its
   pre-trained encoder, a fresh QA head) is distilled from those labels with the demo's tuning
   budget (`benchmarks/demo_tuning.py`'s distilled grid, lr 2e-4/4e-4/8e-4 x 0.5/1/2 epochs at seed
   0, the best dev F1 rerun at seeds 1 and 2);
4. the baseline student is the demo's: MiniLM's first 2 layers distilled from the seed 0+1 ensemble
   of MiniLM teachers, the same grid and seeds.

`pretrain.md` / `pretrain.json` in --out: teachers and ensembles per kind (mean +- sd over the three
seeds or pairs), the students (mean +- sd over 3 seeds), and each comparison called a gain, a loss
or a tie (a gap under the two spreads added). Long (about an hour on 2 CPU cores); reuses every
finished step in --out (an --out of `benchmarks/cross_tokenizer_gain.py` or `demo_tuning.py` gives
it the baseline's teachers, labels and tuned student).

    python benchmarks/pretrain_gain.py --out /tmp/qadist-pretrain
"""

from __future__ import annotations

import json
import os
import sys
import time
from itertools import combinations

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from demo_tuning import DISTILL_LRS, Grid, Tuning, compare, mean_sd, tuning_args, write_results  # noqa: E402

from qadist import storage  # noqa: E402
from qadist.config import AnswerSettings, DemoConfig, FinetuneConfig, LabelConfig, PretrainConfig  # noqa: E402
from qadist.demo.plan import FULL  # noqa: E402
from qadist.demo.prepare import Stopwatch, finished_model, prepare, save_init_models  # noqa: E402
from qadist.demo.report import Row, score  # noqa: E402
from qadist.models import local_model, minilm_path  # noqa: E402
from qadist.squad.io import read_pairs  # noqa: E402

SEEDS = (0, 1, 2)
MASKINGS = ("random", "domain")
# One pre-training setting, not tuned (like the teachers'): a usual continued-pretraining rate,
# five passes over 600 short pages (185 steps of 16: about 7 minutes on 2 CPU cores).
PRETRAIN = {"epochs": 5.0, "learning_rate": 1e-4, "batch_size": 16, "max_seq_len": 128, "mask_prob": 0.15}
DISTILL_EPOCHS = (0.5, 1.0, 2.0)


def kind_name(masking: str, learning_rate: float) -> str:
    return masking if learning_rate == PRETRAIN["learning_rate"] else f"{masking}-lr{learning_rate:g}"


def pretrained_encoder(prep, masking: str, learning_rate: float = PRETRAIN["learning_rate"]) -> tuple[str, dict]:
    """`run_pretrain` of MiniLM on the product pages (reused when it finished): its final folder and report."""
    from qadist.train.pretrain import run_pretrain

    out = prep.path("pretrain", kind_name(masking, learning_rate))
    report = storage.join(out, "pretrain_report.json")
    if not storage.exists(report):
        precision = prep.shared["precision"]
        run_pretrain(
            PretrainConfig(
                documents=prep.data["documents"],
                model=minilm_path(),
                out=out,
                masking=masking,
                seed=0,
                precision=precision,
                **{**PRETRAIN, "learning_rate": learning_rate},
            )
        )
    result = json.loads(storage.read_text(report))
    return local_model(result["final"]), result


def teacher(prep, kind: str, seed: int, init: str) -> str:
    """The seed's teacher of a kind: fine-tuned with the demo's teacher setting (reused when finished).
    MiniLM's seeds 0 and 1 are the demo's teachers A and B (their heads seeded 1 and 2, as here)."""
    if kind == "none" and seed < 2:
        return (prep.teacher_a, prep.teacher_b)[seed]
    out = prep.path("pretrain", kind, f"teacher-{seed}")
    if finished_model(out) is None:
        from qadist.train.stage import run_finetune

        run_finetune(
            FinetuneConfig(
                train_file=prep.data["teacher"],
                model=init,
                out=out,
                epochs=FULL.teacher.epochs,
                learning_rate=FULL.teacher.learning_rate,
                batch_size=FULL.teacher.batch_size,
                seed=seed,
                **prep.shared,
            )
        )
    return local_model(finished_model(out))


def f1_on(prep, key: str, paths: list[str]) -> dict[str, float]:
    """Dev and test F1 of a model or an ensemble (cached in its metrics files)."""
    out = prep.path("pretrain", "scores")
    result = {}
    for split in ("dev", "test"):
        cached = storage.join(out, f"{key}-{split}.metrics.json")
        if storage.exists(cached):
            result[split] = json.loads(storage.read_text(cached))["f1"]
            continue
        pairs = read_pairs(prep.data[split])[0]
        cfg = AnswerSettings(batch_size=64, **prep.shared)
        result[split] = score(Row(key, f"{key}-{split}", 6, 0, "", paths), pairs, prep.data[split], cfg, out).metrics[
            "f1"
        ]
    return result


def teacher_rows(prep, kind: str, inits: dict[str, str]) -> tuple[list[str], dict]:
    teachers = [teacher(prep, kind, s, inits[f"teacher-init-{s}"]) for s in SEEDS]
    singles = [f1_on(prep, f"{kind}-teacher-{s}", [teachers[s]]) for s in SEEDS]
    pairs = [f1_on(prep, f"{kind}-ensemble-{a}{b}", [teachers[a], teachers[b]]) for a, b in combinations(SEEDS, 2)]
    rows = {
        "teacher": {split: mean_sd([x[split] for x in singles]) for split in ("dev", "test")},
        "ensemble": {split: mean_sd([x[split] for x in pairs]) for split in ("dev", "test")},
        "by_seed": {"teacher": singles, "ensemble (0+1, 0+2, 1+2)": pairs},
    }
    return teachers, rows


def inits_for(prep, kind: str, encoder: str | None) -> dict[str, str]:
    """Teacher starting points (a fresh QA head seeded seed + 1) and the 2-layer student's, from the encoder."""
    folder = prep.path("models") if encoder is None else prep.path("pretrain", kind, "models")
    return save_init_models(folder, FULL.student_layers, {f"teacher-init-{s}": s + 1 for s in SEEDS}, source=encoder)


def label(prep, kind: str, teachers: list[str]) -> str:
    from qadist.label.stage import run_label

    out = prep.path("pretrain", kind, "labels")
    cfg = LabelConfig(
        pairs=prep.path("pairs", "pairs"),
        out=out,
        teachers=teachers[:2],
        num_cpus_per_actor=prep.threads,
        batch_size=64,
        **prep.shared,
    )
    run_label(cfg)
    return out


class PretrainTuning(Tuning):
    """The demo's distilled row, and the same grid on the pre-trained pipeline's labels and student."""

    def __init__(self, prep, seeds: list[int], labels: dict[str, str]):
        super().__init__(prep, seeds)
        self.labels = labels
        logged = FULL.sizes.logged
        self.grids = {
            "distilled": Grid("distilled", "distill", "student-init", "labels", logged, DISTILL_LRS, DISTILL_EPOCHS),
            "distilled_pretrained": Grid(
                "distilled_pretrained",
                "distill",
                "student-init-pretrained",
                "labels",
                logged,
                DISTILL_LRS,
                DISTILL_EPOCHS,
            ),
        }

    def start_model(self, g: Grid, seed: int) -> str | None:
        return self.prep.inits[g.start]

    def task(self, g: Grid, lr: float, epochs: float, seed: int, start: str) -> dict:
        return {**super().task(g, lr, epochs, seed, start), "data": self.labels[g.row]}


def verdict_line(what: str, a: dict, b: dict) -> str:
    return compare(what, a, b, "pre-trained", "without")


def cell(x: dict) -> str:
    return f"{x['mean']:.1f} +- {x['sd']:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = tuning_args(
        argv,
        __doc__.split("\n")[0],
        extra=lambda p: p.add_argument(
            "--probe-lrs",
            type=float,
            nargs="*",
            default=[],
            help="also pre-train (domain masking) at these rates: teacher and ensemble rows only",
        ),
    )
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    cpus = os.cpu_count() or 1
    prep = prepare(DemoConfig(out=os.path.abspath(args.out), seed=0), FULL, Stopwatch())
    import torch

    torch.set_num_threads(cpus)
    pretraining = {m: pretrained_encoder(prep, m) for m in MASKINGS}
    probes = {kind_name("domain", lr): pretrained_encoder(prep, "domain", lr) for lr in args.probe_lrs}
    teachers, tables = {}, {}
    encoders = [("none", None), *[(m, pretraining[m][0]) for m in MASKINGS], *[(k, p[0]) for k, p in probes.items()]]
    for kind, encoder in encoders:
        inits = inits_for(prep, kind, encoder)
        teachers[kind], tables[kind] = teacher_rows(prep, kind, inits)
        if kind != "none":
            prep.inits[f"student-init-{kind}"] = inits["student-init"]
        print(f"[pretrain_gain] {kind}: teacher test F1 {cell(tables[kind]['teacher']['test'])}", flush=True)
    chosen = max(MASKINGS, key=lambda m: tables[m]["teacher"]["dev"]["mean"])
    prep.inits["student-init-pretrained"] = prep.inits[f"student-init-{chosen}"]
    labels = {"distilled": prep.labels, "distilled_pretrained": label(prep, chosen, teachers[chosen])}
    import ray

    ray.shutdown()  # the tuning workers start their own
    tuning = PretrainTuning(prep, args.seeds, labels)
    tuning.run(args.jobs, max(1, cpus // args.jobs))
    students = tuning.summary()

    comparisons = []
    for m in [*MASKINGS, *probes]:
        for row in ("teacher", "ensemble"):
            comparisons.append(
                verdict_line(f"{row}, {m} masking vs none", tables[m][row]["test"], tables["none"][row]["test"])
            )
    comparisons.append(
        compare(
            "teacher, domain vs random masking",
            tables["domain"]["teacher"]["test"],
            tables["random"]["teacher"]["test"],
            "domain",
            "random",
        )
    )
    comparisons.append(
        verdict_line(
            f"distilled student, {chosen} masking vs none",
            students["distilled_pretrained"]["test_f1"],
            students["distilled"]["test_f1"],
        )
    )
    lines = [
        "# Domain-adaptive pre-training (benchmarks/pretrain_gain.py)",
        "",
        "Pre-training on the 625 logged product pages (lr "
        f"{PRETRAIN['learning_rate']:g}, {PRETRAIN['epochs']:g} epochs, batch {PRETRAIN['batch_size']}, "
        f"{PRETRAIN['mask_prob']:.0%} masked); held-out pages' masked-LM loss (random masks):",
        "",
    ]
    for m, (_, report) in [*pretraining.items(), *probes.items()]:
        loss = report["heldout_mlm_loss"]
        lr = report["config"]["learning_rate"]
        lines.append(f"- {m.split('-')[0]} masking, lr {lr:g}: {loss['before']:.3f} -> {loss['after']:.3f}")
    lines += [
        "",
        "| encoder | teacher dev F1 | teacher test F1 | ensemble dev F1 | ensemble test F1 |",
        "|---|---|---|---|---|",
    ]
    for kind, t in tables.items():
        name = "MiniLM-L6 (no pre-training)" if kind == "none" else f"MiniLM-L6 + pretrain, {kind} masking"
        if kind in probes:
            name = f"MiniLM-L6 + pretrain, domain masking, lr {probes[kind][1]['config']['learning_rate']:g} (probe)"
        lines.append(
            f"| {name} | {cell(t['teacher']['dev'])} | {cell(t['teacher']['test'])} | "
            f"{cell(t['ensemble']['dev'])} | {cell(t['ensemble']['test'])} |"
        )
    lines += [
        "",
        f"Students ({chosen} masking chosen on the teachers' dev F1):",
        "",
        "| student | chosen (lr, epochs) | dev F1 | test F1 |",
        "|---|---|---|---|",
    ]
    for name, r in students.items():
        c = r["chosen"]
        lines.append(
            f"| {name} | lr {c['learning_rate']:g}, {c['epochs']:g} ep | {cell(r['dev_f1'])} | {cell(r['test_f1'])} |"
        )
    seconds = time.perf_counter() - started
    lines += [
        "",
        "## Comparisons (test F1)",
        "",
        *[f"- {c}" for c in comparisons],
        "",
        f"Wall time {seconds / 60:.0f} min.",
    ]
    text = "\n".join(lines) + "\n"
    result = {
        "pretraining": {m: report for m, (_, report) in [*pretraining.items(), *probes.items()]},
        "teachers": tables,
        "chosen_masking": chosen,
        "students": students,
        "comparisons": comparisons,
        "seconds": round(seconds, 1),
        "spread_rule": "a gap under the two standard deviations added is a tie",
    }
    write_results(args.out, "pretrain", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
