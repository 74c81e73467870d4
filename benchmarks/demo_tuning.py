"""The demo's tuning: every row's learning-rate x epochs grid, chosen on a dev split, 3 seeds.

`../shared/DESIGN.md` ("Evidence"): every row of a comparison gets the same tuning budget, chosen
on a dev split (never the test set), and a claim about students comes with its spread over seeds.
This script is how the full demo's settings (`qadist/demo/plan.py`, FULL) were found, in the
demo's scenario (teachers that learned QA from other shops' labels, a camera store with logged
questions and few gold labels):

1. the domains at seed 0, the starting points and the pairs (`qadist.demo.prepare.prepare_data`);
2. the teachers: MiniLM-L6 + a fresh QA head on the other shops' 2,000 labels, a 3 x 3 grid at
   seed 0 chosen on the other shops' dev questions (the team's teacher was tuned where it was
   trained, not on the store), then seeds 1 and 2; scored on the other shops' test questions (in
   domain) and on the store's dev and test; the ensemble is seed 0 + seed 1 (the demo's A + B);
3. the ensemble's soft labels on the store's logged pairs (`run_label`);
4. every student row's grid at seed 0 chosen on the store's dev split, then seeds 1 and 2 (a row
   that starts from another row's model starts from that row's chosen model of its own seed);
5. the teachers pre-trained on the store's pages first (`qadist pretrain`, its own defaults, once)
   and then QA-trained with the teachers' grid: the seed's pipeline order;
6. `tuning.md` / `tuning.json` in --out: per row the grid's dev F1, the choice, dev and test F1
   with their spread; the comparisons the demo's checks make, with ties named (a difference smaller
   than the two rows' standard deviations added is a tie).

Budgets, the same for every row of a kind: the few-label rows (store labels only, the distilled
student fine-tuned, the student on the other shops' labels fine-tuned; at 50, 200 and 1,000
labels) epochs making about 50, 100 and 200 optimizer steps of 16; the others 0.5, 1 and 2 epochs.
Learning rates are three around each kind's usual value (a fresh QA head on a pre-trained encoder:
1e-4..1e-3 for the student, 1e-4..4e-4 for the 6-layer teachers; a trained model fine-tuned or
self-distilled: 3e-5..3e-4; distillation into a fresh head: 2e-4..8e-4).

Long (hours on 2 CPU cores with --jobs 2); run by hand, not in CI. Re-running with the same --out
reuses every finished point (a scored point keeps its final model, not its checkpoints); `--rows`
runs some rows only (the others' finished points still count).

    python benchmarks/demo_tuning.py --out /tmp/qadist-tuning
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

from qadist import storage
from qadist.config import AnswerSettings, DemoConfig, DistillConfig, FinetuneConfig
from qadist.demo.plan import FULL
from qadist.demo.prepare import Stopwatch, finished_model, label_pairs, prepare_data, save_init_models
from qadist.demo.report import Row, score
from qadist.models import local_model
from qadist.squad.io import read_pairs

LABEL_COUNTS = (50, 200, 1000)  # the few-label rows (the store's gold labels)
STEPS = (50, 100, 200)  # the few-label rows' step budget (batch 16)
EPOCHS = (0.5, 1.0, 2.0)  # every other row's
HEAD_LRS = (1e-4, 3e-4, 1e-3)  # the student from the encoder's first layers and a fresh QA head
TEACHER_LRS = (1e-4, 2e-4, 4e-4)  # the 6-layer teachers, a fresh QA head
FINETUNE_LRS = (3e-5, 1e-4, 3e-4)  # a trained model, fine-tuned or self-distilled
DISTILL_LRS = (2e-4, 4e-4, 8e-4)
TEACHER_ROWS = ("teacher", "pretrained_teacher")


@dataclass(frozen=True)
class Grid:
    row: str
    kind: str  # "finetune" or "distill"
    start: str  # a key of Prepared.inits, "teacher-init" (a seeded fresh head per seed), or a row (its chosen model)
    data: str  # "labels" (the soft labels), a key of Prepared.data ("teacher": the other shops'), or a number of labels
    examples: int
    learning_rates: tuple[float, ...]
    epochs: tuple[float, ...]
    dev: str = "dev"  # the split the setting is chosen on


def few_label_epochs(n: int) -> tuple[float, ...]:
    return tuple(round(steps * 16 / n, 3) for steps in STEPS)


def teacher_grids(plan=FULL) -> list[Grid]:
    n = plan.sizes.teacher
    return [
        Grid("teacher", "finetune", "teacher-init", "teacher", n, TEACHER_LRS, EPOCHS, dev="teacher-dev"),
        Grid("pretrained_teacher", "finetune", "pretrained-init", "teacher", n, TEACHER_LRS, EPOCHS, dev="teacher-dev"),
    ]


def student_grids(plan=FULL) -> list[Grid]:
    """In the order they are run (the comparisons the demo's claims rest on first, the 6-layer
    self-distillation, the most expensive, last)."""
    logged, n_ood = plan.sizes.logged, plan.sizes.teacher
    out = [
        Grid("distilled", "distill", "student-init", "labels", logged, DISTILL_LRS, EPOCHS),
        Grid("ood_student", "finetune", "student-init", "teacher", n_ood, HEAD_LRS, EPOCHS),
    ]
    for n in sorted(LABEL_COUNTS, key=lambda n: n == 50):
        out += [
            Grid(f"labels_only_{n}", "finetune", "student-init", str(n), n, HEAD_LRS, few_label_epochs(n)),
            Grid(f"distilled_ft_{n}", "finetune", "distilled", str(n), n, FINETUNE_LRS, few_label_epochs(n)),
            Grid(f"ood_ft_{n}", "finetune", "ood_student", str(n), n, FINETUNE_LRS, few_label_epochs(n)),
        ]
    return out + [Grid("self_distilled", "distill", "teacher", "labels", logged, FINETUNE_LRS, EPOCHS)]


def grids(plan=FULL) -> list[Grid]:
    return teacher_grids(plan) + student_grids(plan)


def point_dir(out: str, row: str, lr: float, epochs: float, seed: int) -> str:
    return os.path.join(out, "tuning", row, f"lr{lr:g}-ep{epochs:g}-seed{seed}")


# --- one point, in a worker process with its own embedded Ray -------------------------------------


def start_worker(threads: int) -> None:
    import torch

    from qadist.runtime import ensure_ray

    torch.set_num_threads(threads)
    ensure_ray(min_cpus=4, threads=threads, dedicated=True)


def run_point(task: dict) -> dict:
    """Train one grid point (or reuse it), score it on dev and test; the point's record."""
    done = os.path.join(task["out"], "point.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    started = time.perf_counter()
    common = {
        "out": task["out"],
        "epochs": task["epochs"],
        "learning_rate": task["lr"],
        "batch_size": 16,
        "seed": task["seed"],
        **task["shared"],
    }
    if finished_model(task["out"]) is None:
        if task["kind"] == "distill":
            from qadist.train.stage import run_distill

            cfg = DistillConfig(labels=task["data"], student=task["start"], **common, **task["loss"])
            run_distill(cfg)
        else:
            from qadist.train.stage import run_finetune

            run_finetune(FinetuneConfig(train_file=task["data"], model=task["start"], **common))
    model = local_model(finished_model(task["out"]))
    pcfg = AnswerSettings(batch_size=64, **task["shared"])
    metrics = {}
    for split in task["files"]:
        pairs = read_pairs(task["files"][split])[0]
        row = score(Row(task["row"], split, 0, 0, "", [model]), pairs, task["files"][split], pcfg, task["out"])
        metrics[split] = {
            k: round(float(v), 3) for k, v in row.metrics.items() if k in ("exact", "f1", "HasAns_f1", "NoAns_f1")
        }
    record = {
        **{k: task[k] for k in ("row", "lr", "epochs", "seed")},
        "model": model,
        **metrics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    with open(done, "w") as f:
        json.dump(record, f, indent=1)
    drop_checkpoints(task["out"])
    return record


def drop_checkpoints(point: str) -> None:
    """A scored point keeps its final model, not its Ray Train checkpoints (a full grid's filled 45 GB)."""
    for folder in Path(point).glob("*/checkpoint_*"):
        shutil.rmtree(folder, ignore_errors=True)


# --- scheduling: grids at seed 0, then the chosen settings at the other seeds ----------------------


class Tuning:
    def __init__(self, prep, seeds: list[int], plan=FULL, rows: list[Grid] | None = None):
        self.prep, self.seeds, self.plan = prep, seeds, plan
        self.grids = {g.row: g for g in (grids(plan) if rows is None else rows)}
        self.records: dict[tuple, dict] = {}  # (row, lr, epochs, seed) -> record
        self.submitted: set[tuple] = set()

    def chosen(self, row: str) -> tuple[float, float] | None:
        """The best dev F1 of the row's grid at the first seed, once the whole grid is done."""
        g, seed = self.grids[row], self.seeds[0]
        points = [(lr, ep) for lr in g.learning_rates for ep in g.epochs]
        if any((row, lr, ep, seed) not in self.records for lr, ep in points):
            return None
        return max(points, key=lambda p: self.records[(row, *p, seed)][g.dev]["f1"])

    def chosen_model(self, row: str, seed: int) -> str | None:
        """The row's model at its chosen setting and this seed, once trained."""
        best = self.chosen(row)
        record = best and self.records.get((row, *best, seed))
        return record["model"] if record else None

    def start_model(self, g: Grid, seed: int) -> str | None:
        if g.start in ("teacher-init", "pretrained-init"):
            return self.prep.inits.get(f"{g.start}-{seed}")
        if g.start in self.prep.inits:
            return self.prep.inits[g.start]
        return self.chosen_model(g.start, seed)

    def ready(self, only: set[str] | None = None) -> list[dict]:
        """Points whose inputs exist and that were not submitted (of the rows `only`, if given), in the
        grids' order (a row others start from first)."""
        tasks = []
        for g in self.grids.values():
            if only is not None and g.row not in only:
                continue
            best = self.chosen(g.row)
            for seed in self.seeds:
                settings = (
                    [(lr, ep) for lr in g.learning_rates for ep in g.epochs]
                    if seed == self.seeds[0]
                    else ([best] if best else [])
                )
                start = self.start_model(g, seed)
                for lr, ep in settings:
                    key = (g.row, lr, ep, seed)
                    if key in self.submitted or start is None:
                        continue
                    tasks.append(self.task(g, lr, ep, seed, start))
        return tasks

    def task(self, g: Grid, lr: float, epochs: float, seed: int, start: str) -> dict:
        prep = self.prep
        return {
            "row": g.row,
            "kind": g.kind,
            "lr": lr,
            "epochs": epochs,
            "seed": seed,
            "start": start,
            "data": prep.labels if g.data == "labels" else prep.data.get(g.data) or prep.subsets[int(g.data)],
            "out": point_dir(prep.out, g.row, lr, epochs, seed),
            "shared": prep.shared,
            "loss": {"temperature": self.plan.temperature, "alpha_kd": 1.0, "alpha_hard": 0.0},
            "files": {k: prep.data[k] for k in dict.fromkeys([g.dev, "dev", "test", "teacher-test"])},
        }

    def run(self, jobs: int, threads: int, only: set[str] | None = None) -> None:
        ctx = get_context("spawn")
        running: dict[Future, tuple] = {}
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=start_worker, initargs=(threads,)) as pool:
            while True:
                for task in self.ready(only)[: max(jobs - len(running), 0)]:
                    key = (task["row"], task["lr"], task["epochs"], task["seed"])
                    self.submitted.add(key)
                    running[pool.submit(run_point, task)] = key
                if not running:
                    return
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    key = running.pop(future)
                    record = future.result()
                    self.records[key] = record
                    print(
                        f"[tuning] {key[0]} lr {key[1]:g} ep {key[2]:g} seed {key[3]}: "
                        f"{self.grids[key[0]].dev} F1 {record[self.grids[key[0]].dev]['f1']:.1f}, "
                        f"test F1 {record['test']['f1']:.1f} ({record['seconds']:.0f} s)",
                        flush=True,
                    )

    def summary(self) -> dict:
        rows = {}
        for g in self.grids.values():
            best = self.chosen(g.row)
            if best is None:
                continue
            runs = [self.records[(g.row, *best, s)] for s in self.seeds if (g.row, *best, s) in self.records]
            rows[g.row] = {
                "grid": asdict(g),
                "grid_dev_f1": {
                    f"lr {lr:g}, {ep:g} ep": self.records[(g.row, lr, ep, self.seeds[0])][g.dev]["f1"]
                    for lr in g.learning_rates
                    for ep in g.epochs
                },
                "chosen": {"learning_rate": best[0], "epochs": best[1]},
                "seeds": [r["seed"] for r in runs],
                "dev_f1": mean_sd([r[g.dev]["f1"] for r in runs]),
                "test_f1": mean_sd([r["test"]["f1"] for r in runs]),
                "other_shops_test_f1": mean_sd([r["teacher-test"]["f1"] for r in runs if "teacher-test" in r]),
                "test_by_seed": {str(r["seed"]): r["test"] for r in runs},
            }
        return rows


def mean_sd(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {
        "mean": round(statistics.mean(values), 2),
        "sd": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def compare(name: str, a: dict, b: dict, a_label: str, b_label: str) -> str:
    """`a` against `b` on test F1: better, worse, or a tie when the gap is under their spreads added."""
    gap = a["mean"] - b["mean"]
    spread = a["sd"] + b["sd"]
    verdict = "tie" if abs(gap) < spread else (f"{a_label} better" if gap > 0 else f"{b_label} better")
    return (
        f"{name}: {a['mean']:.1f} +- {a['sd']:.1f} vs {b['mean']:.1f} +- {b['sd']:.1f} "
        f"(gap {gap:+.1f}, spreads added {spread:.1f}): {verdict}"
    )


def ensemble_scores(prep, tuning: Tuning, row: str) -> dict[str, dict]:
    """The mean-logits ensembles of the row's chosen models, seed pairs (0, 1), (1, 2), (0, 2): F1 on
    the store's test and the other shops' test, mean +- sd over the pairs (the demo's is (0, 1))."""
    from itertools import combinations

    from qadist.demo.report import Row as R

    pcfg = AnswerSettings(batch_size=64, **prep.shared)
    out = os.path.join(prep.out, "tuning", f"{row}-ensembles")
    f1: dict[str, list[float]] = {"test": [], "teacher-test": []}
    pairs = {split: read_pairs(prep.data[split])[0] for split in f1}
    for a, b in combinations(tuning.seeds, 2):
        paths = [tuning.chosen_model(row, a), tuning.chosen_model(row, b)]
        for split in f1:
            done = os.path.join(out, f"{a}{b}-{split}.json")
            if not os.path.exists(done):
                key = f"{a}{b}-{split}"
                metrics = score(R(row, key, 6, 0, "", paths), pairs[split], prep.data[split], pcfg, out).metrics
                storage.write_bytes(done, json.dumps(metrics).encode("utf-8"))
            f1[split].append(json.loads(storage.read_text(done))["f1"])
    return {split: mean_sd(values) for split, values in f1.items()}


def markdown(
    rows: dict,
    ensembles: dict,
    comparisons: list[str],
    sizes,
    seconds: float,
    title: str = "Demo tuning (benchmarks/demo_tuning.py)",
) -> str:
    first = next(iter(rows.values()))
    lines = [
        f"# {title}",
        "",
        f"Store: dev {sizes.dev}, test {sizes.test} questions; other shops: dev {sizes.teacher_dev}, test "
        f"{sizes.teacher_test} (disjoint pages). Seeds {first['seeds']}; grid at seed {first['seeds'][0]}, chosen "
        f"by F1 on the row's dev split (teachers: the other shops'; students: the store's)."
        + (f" Wall time {seconds / 60:.0f} min." if seconds else " Partial: the rows whose grid has finished."),
        "",
        "| row | chosen on | grid (lr x epochs) | dev F1 over the grid (seed 0) | chosen | dev F1 | test F1 "
        "| other shops' test F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(m: dict) -> str:
        if not m or m["mean"] is None:
            return "-"
        seeds = "" if m["n"] >= len(first["seeds"]) and m["n"] > 2 else f" ({m['n']} of 3 seeds)"
        return f"{m['mean']:.1f} +- {m['sd']:.1f}{seeds}"

    for name, r in rows.items():
        g = r["grid"]
        grid = f"{', '.join(f'{x:g}' for x in g['learning_rates'])} x {', '.join(f'{x:g}' for x in g['epochs'])}"
        dev_grid = " / ".join(f"{v:.1f}" for v in r["grid_dev_f1"].values())
        c = r["chosen"]
        lines.append(
            f"| {name} | {g['dev']} | {grid} | {dev_grid} | lr {c['learning_rate']:g}, {c['epochs']:g} ep | "
            f"{fmt(r['dev_f1'])} | {fmt(r['test_f1'])} | {fmt(r['other_shops_test_f1'])} |"
        )
    for name, e in ensembles.items():
        lines.append(f"| {name} (seed pairs) | - | - | - | - | - | {fmt(e['test'])} | {fmt(e['teacher-test'])} |")
    lines += [
        "",
        "The grid's dev F1 runs over the learning rates, each over its epochs.",
        "",
        "## Comparisons (store test F1, mean +- sd over seeds)",
        "",
    ]
    lines += [f"- {c}" for c in comparisons]
    return "\n".join(lines) + "\n"


def write_results(out: str, name: str, result: dict, text: str) -> None:
    """<out>/<name>.json and <name>.md, and the markdown on stdout: how every tuning script ends."""
    storage.write_bytes(os.path.join(out, f"{name}.json"), json.dumps(result, indent=2).encode("utf-8"))
    storage.write_bytes(os.path.join(out, f"{name}.md"), text.encode("utf-8"))
    print(text, flush=True)


def tuning_args(argv: list[str] | None, description: str, extra=None) -> argparse.Namespace:
    """--out, --seeds and --jobs: the flags of every tuning script (`extra(parser)` adds a script's own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="a local folder (reused: finished points are kept)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="training runs at once, each with its own Ray")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def pretrained_inits(prep, seeds: list[int]) -> dict[str, str]:
    """`qadist pretrain` (its defaults, or the plan's settings) of MiniLM on the store's pages, once;
    then a seeded fresh QA head per seed on that encoder, as the plain teachers have on MiniLM."""
    from qadist.config import PretrainConfig
    from qadist.models import minilm_path
    from qadist.runtime import ensure_ray
    from qadist.train.pretrain import run_pretrain

    run_out = os.path.join(prep.out, "models", "pretrained-encoder")
    if finished_model(run_out) is None:
        ensure_ray(min_cpus=4, threads=prep.threads, dedicated=True)
        settings = FULL.pretrain or {}
        run_pretrain(
            PretrainConfig(documents=prep.data["documents"], model=minilm_path(), out=run_out, seed=0, **settings)
        )
    return save_init_models(
        os.path.join(prep.out, "models", "pretrained-inits"),
        None,
        {f"pretrained-init-{s}": s + 1 for s in seeds},
        source=local_model(finished_model(run_out)),
    )


def comparisons(rows: dict, ensembles: dict) -> list[str]:
    """The demo's checks, on test F1 over seeds, each called a gain, a loss or a tie."""
    t = {k: r["test_f1"] for k, r in rows.items()}
    found = []
    if "ensemble" in ensembles and "distilled" in t:
        e = ensembles["ensemble"]["test"]
        found.append(
            compare("(a) distilled (no labels) vs the teacher ensemble", t["distilled"], e, "distilled", "ensemble")
            + f"; within 3 F1: {'yes' if t['distilled']['mean'] >= e['mean'] - 3 else 'no'}"
        )
    pairs = [
        (
            "(a) distilled (no labels) vs the student on the teachers' labels",
            "distilled",
            "ood_student",
            "distilled",
            "teachers' labels",
        )
    ]
    for n in LABEL_COUNTS:
        pairs += [
            (
                f"(b) {n} labels: distilled then fine-tuned vs labels only",
                f"distilled_ft_{n}",
                f"labels_only_{n}",
                "distilled then fine-tuned",
                "labels only",
            ),
            (
                f"{n} labels: teachers' labels then fine-tuned vs labels only",
                f"ood_ft_{n}",
                f"labels_only_{n}",
                "teachers' labels then fine-tuned",
                "labels only",
            ),
            (
                f"{n} labels: distilled then fine-tuned vs teachers' labels then fine-tuned",
                f"distilled_ft_{n}",
                f"ood_ft_{n}",
                "distilled then fine-tuned",
                "teachers' labels then fine-tuned",
            ),
        ]
    pairs += [
        (
            "(c) self-distilled vs its teacher (the chosen teacher of each seed)",
            "self_distilled",
            "teacher",
            "self-distilled",
            "teacher",
        ),
        ("(d) teachers pre-trained on the pages vs not", "pretrained_teacher", "teacher", "pre-trained", "not"),
    ]
    partial = lambda a, b: " (fewer than 3 seeds: no verdict yet)" if min(t[a]["n"], t[b]["n"]) < 3 else ""  # noqa: E731
    found += [compare(what, t[a], t[b], an, bn) + partial(a, b) for what, a, b, an, bn in pairs if a in t and b in t]
    if "pretrained_ensemble" in ensembles and "ensemble" in ensembles:
        found.append(
            compare(
                "(d) ensembles: pre-trained on the pages vs not",
                ensembles["pretrained_ensemble"]["test"],
                ensembles["ensemble"]["test"],
                "pre-trained",
                "not",
            )
        )
    return found  # fmt: skip


def finished_points(out: str) -> dict[tuple, dict]:
    """(row, lr, epochs, seed) -> record, of every point finished under `out`."""
    records = {}
    for done in sorted(Path(out, "tuning").glob("*/*/point.json")):
        record = json.loads(done.read_text())
        records[(record["row"], record["lr"], record["epochs"], record["seed"])] = record
    return records


def summary_only(args) -> int:
    from types import SimpleNamespace

    from qadist.inference import cpu_has_bf16

    out = os.path.abspath(args.out)
    data = {p.stem: str(p) for p in Path(out, "data").glob("*.jsonl")}
    shared = {**FULL.windows, "precision": "bf16" if cpu_has_bf16() else "fp32"}
    prep = SimpleNamespace(out=out, inits={}, data=data, subsets={}, shared=shared, labels="")
    tuning = Tuning(prep, args.seeds)
    tuning.records = finished_points(out)
    rows = tuning.summary()
    if not rows:
        print(f"{out}: no row has a finished grid yet ({len(tuning.records)} points finished)")
        return 0
    ensembles = {
        name: ensemble_scores(prep, tuning, row)
        for name, row in (("ensemble", "teacher"), ("pretrained_ensemble", "pretrained_teacher"))
        if row in rows and len(rows[row]["seeds"]) == len(args.seeds) > 1
    }
    found = comparisons(rows, ensembles)
    result = {"rows": rows, "ensembles": ensembles, "comparisons": found}
    write_results(out, "tuning-partial", result, markdown(rows, ensembles, found, FULL.sizes, 0.0))
    return 0


def row_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", nargs="+", help="tune only these rows (default: every row)")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="train nothing: the tables from the points finished so far (rows with a finished grid)",
    )


def main(argv: list[str] | None = None) -> int:
    args = tuning_args(argv, __doc__.split("\n")[0], extra=row_flags)
    if args.summary_only:
        return summary_only(args)
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // args.jobs)
    prep = prepare_data(DemoConfig(out=os.path.abspath(args.out), seed=0), FULL, Stopwatch(), subset_sizes=LABEL_COUNTS)
    prep.inits.update(
        save_init_models(prep.path("models"), FULL.student_layers, {f"teacher-init-{s}": s + 1 for s in args.seeds})
    )
    import ray

    ray.shutdown()  # the workers start their own
    tuning = Tuning(prep, args.seeds)
    wanted = set(args.rows or tuning.grids)
    tuning.run(args.jobs, threads, only={"teacher"} & wanted)
    if wanted - set(TEACHER_ROWS):
        teachers = [tuning.chosen_model("teacher", s) for s in args.seeds[:2]]
        if None in teachers:
            raise SystemExit("the student rows need the teacher row's chosen models of seeds 0 and 1: tune it first")
        prep.teacher_a, prep.teacher_b = teachers
        if not storage.exists(prep.path("labels", "_manifest.json")):
            from qadist.runtime import ensure_ray

            ensure_ray(min_cpus=4, threads=cpus, dedicated=True)
            label_pairs(prep, teachers)
            ray.shutdown()
        tuning.run(args.jobs, threads, only=wanted - set(TEACHER_ROWS))
    if "pretrained_teacher" in wanted:
        prep.inits.update(pretrained_inits(prep, args.seeds))
        ray.shutdown()
        tuning.run(args.jobs, threads, only={"pretrained_teacher"})
    rows = tuning.summary()
    import torch

    torch.set_num_threads(cpus)
    ensembles = {
        name: ensemble_scores(prep, tuning, row)
        for name, row in (("ensemble", "teacher"), ("pretrained_ensemble", "pretrained_teacher"))
        if row in rows and len(rows[row]["seeds"]) == len(args.seeds) > 1
    }
    found = comparisons(rows, ensembles)
    seconds = time.perf_counter() - started
    result = {"rows": rows, "ensembles": ensembles, "comparisons": found, "seconds": round(seconds, 1)}
    write_results(args.out, "tuning", result, markdown(rows, ensembles, found, FULL.sizes, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
