"""The demo's tuning: each student row's learning-rate x epochs grid, chosen on the dev split, 3 seeds.

`../shared/DESIGN.md` ("Evidence"): every row of a comparison gets the same tuning budget, chosen
on a dev split (never the test set), and a claim about students comes with its spread over seeds.
This script is how the full demo's student settings (`qadist/demo/plan.py`, FULL) were found:

1. the full demo's shared stages at seed 0 (domain with its dev split, both teachers, pairs, the
   ensemble's soft labels), the same functions `qadist demo` runs;
2. for every student row, its 3 x 3 grid at seed 0, each point trained with `run_finetune` or
   `run_distill` and scored on dev and on test; the point with the best dev F1 is chosen;
3. the chosen setting trained again with seeds 1 and 2 (the distilled student fine-tuned from the
   distilled student of the same seed), so every row has dev and test F1 as mean +- sd over 3 seeds;
4. `tuning.md` / `tuning.json` in --out: per row the grid's dev F1, the choice, dev and test F1
   with their spread, and the comparisons with ties named (a difference smaller than the two
   rows' standard deviations added is a tie).

The few-label rows (labels only, and distilled then fine-tuned, on 50 and 200 labels) share a step
budget: epochs making about 100, 200 and 400 optimizer steps of 16 examples; the learning rates
are three around each kind's usual value (a fresh QA head: 1e-4..1e-3; a distilled student:
3e-5..3e-4). Teachers are the team's, trained once (not tuned); self-distillation is shown by the
demo untuned.

Long (about 70 minutes on 2 CPU cores with --jobs 2); run by hand, not in CI. Re-running with the
same --out reuses every finished point.

    python benchmarks/demo_tuning.py --out /tmp/qadist-tuning
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context

from qadist import storage
from qadist.config import AnswerSettings, DemoConfig, DistillConfig, FinetuneConfig
from qadist.demo.plan import FULL
from qadist.demo.prepare import Stopwatch, finished_model, prepare
from qadist.demo.report import Row, score
from qadist.models import local_model
from qadist.squad.io import read_pairs

LABEL_COUNTS = (50, 200)  # the few-label rows tuned (the demo's table shows 200 and all labels)
STEPS = (100, 200, 400)  # the few-label rows' step budget (batch 16)
HEAD_LRS = (1e-4, 3e-4, 1e-3)  # the student from the encoder's first layers and a fresh QA head
FINETUNE_LRS = (3e-5, 1e-4, 3e-4)  # the distilled student, fine-tuned
DISTILL_LRS = (2e-4, 4e-4, 8e-4)


@dataclass(frozen=True)
class Grid:
    row: str
    kind: str  # "finetune" (gold answers) or "distill" (the soft labels)
    start: str  # "init" (the 2-layer student) or "distilled" (the chosen distilled student of that seed)
    data: str  # "labels", or a key of Prepared.subsets (a number of labels, or "all")
    examples: int
    learning_rates: tuple[float, ...]
    epochs: tuple[float, ...]


def few_label_epochs(n: int) -> tuple[float, ...]:
    return tuple(round(steps * 16 / n, 3) for steps in STEPS)


def grids(plan=FULL) -> list[Grid]:
    n_all = plan.sizes.teacher + plan.few
    out = [Grid("distilled", "distill", "init", "labels", plan.sizes.logged, DISTILL_LRS, (0.5, 1.0, 2.0))]
    for n in LABEL_COUNTS:
        out.append(Grid(f"labels_only_{n}", "finetune", "init", str(n), n, HEAD_LRS, few_label_epochs(n)))
    out.append(Grid("all_labels", "finetune", "init", "all", n_all, HEAD_LRS, (1.0, 2.0, 4.0)))
    for n in LABEL_COUNTS:
        out.append(Grid(f"distilled_ft_{n}", "finetune", "distilled", str(n), n, FINETUNE_LRS, few_label_epochs(n)))
    return out


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
    for split in ("dev", "test"):
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
    return record


# --- scheduling: grids at seed 0, then the chosen settings at the other seeds ----------------------


class Tuning:
    def __init__(self, prep, seeds: list[int], plan=FULL):
        self.prep, self.seeds, self.plan = prep, seeds, plan
        self.grids = {g.row: g for g in grids(plan)}
        self.records: dict[tuple, dict] = {}  # (row, lr, epochs, seed) -> record
        self.submitted: set[tuple] = set()

    def chosen(self, row: str) -> tuple[float, float] | None:
        """The best dev F1 of the row's grid at the first seed, once the whole grid is done."""
        g, seed = self.grids[row], self.seeds[0]
        points = [(lr, ep) for lr in g.learning_rates for ep in g.epochs]
        if any((row, lr, ep, seed) not in self.records for lr, ep in points):
            return None
        return max(points, key=lambda p: self.records[(row, *p, seed)]["dev"]["f1"])

    def start_model(self, g: Grid, seed: int) -> str | None:
        if g.start == "init":
            return self.prep.inits["student-init"]
        best = self.chosen("distilled")
        record = best and self.records.get(("distilled", *best, seed))
        return record["model"] if record else None

    def ready(self) -> list[dict]:
        """Points whose inputs exist and that were not submitted; the distilled student's first."""
        tasks = []
        for g in self.grids.values():
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
            "data": prep.labels if g.data == "labels" else prep.subsets[g.data if g.data == "all" else int(g.data)],
            "out": point_dir(prep.out, g.row, lr, epochs, seed),
            "shared": prep.shared,
            "loss": {"temperature": self.plan.temperature, "alpha_kd": 1.0, "alpha_hard": 0.0},
            "files": {"dev": prep.data["dev"], "test": prep.data["test"]},
        }

    def run(self, jobs: int, threads: int) -> None:
        ctx = get_context("spawn")
        running: dict[Future, tuple] = {}
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=start_worker, initargs=(threads,)) as pool:
            while True:
                for task in self.ready()[: max(jobs - len(running), 0)]:
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
                        f"[tuning] {key[0]} lr {key[1]:g} ep {key[2]:g} seed {key[3]}: dev F1 "
                        f"{record['dev']['f1']:.1f}, test F1 {record['test']['f1']:.1f} ({record['seconds']:.0f} s)",
                        flush=True,
                    )

    def summary(self) -> dict:
        rows = {}
        for g in self.grids.values():
            best = self.chosen(g.row)
            runs = [self.records[(g.row, *best, s)] for s in self.seeds if (g.row, *best, s) in self.records]
            rows[g.row] = {
                "grid": asdict(g),
                "grid_dev_f1": {
                    f"lr {lr:g}, {ep:g} ep": self.records[(g.row, lr, ep, self.seeds[0])]["dev"]["f1"]
                    for lr in g.learning_rates
                    for ep in g.epochs
                },
                "chosen": {"learning_rate": best[0], "epochs": best[1]},
                "seeds": [r["seed"] for r in runs],
                "dev_f1": mean_sd([r["dev"]["f1"] for r in runs]),
                "test_f1": mean_sd([r["test"]["f1"] for r in runs]),
                "test_by_seed": {str(r["seed"]): r["test"] for r in runs},
            }
        return rows


def mean_sd(values: list[float]) -> dict:
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


def teacher_scores(prep) -> dict[str, float]:
    from qadist.demo.report import Row as R

    pairs = read_pairs(prep.data["test"])[0]
    pcfg = AnswerSettings(batch_size=64, **prep.shared)
    out = os.path.join(prep.out, "tuning", "teachers")
    return {
        key: score(R(key, key, 6, 0, "", paths), pairs, prep.data["test"], pcfg, out).metrics["f1"]
        for key, paths in {
            "teacher_a": [prep.teacher_a],
            "teacher_b": [prep.teacher_b],
            "ensemble": [prep.teacher_a, prep.teacher_b],
        }.items()
    }


def markdown(rows: dict, teachers: dict[str, float], comparisons: list[str], sizes, seconds: float) -> str:
    lines = [
        "# Demo tuning (benchmarks/demo_tuning.py)",
        "",
        f"Dev {sizes.dev} questions, test {sizes.test} questions (disjoint pages), seeds "
        f"{next(iter(rows.values()))['seeds']}; grid at seed {next(iter(rows.values()))['seeds'][0]}, "
        f"chosen by dev F1. Teachers (not tuned) on test: A {teachers['teacher_a']:.1f}, "
        f"B {teachers['teacher_b']:.1f}, ensemble {teachers['ensemble']:.1f}. Wall time {seconds / 60:.0f} min.",
        "",
        "| row | grid (lr x epochs) | dev F1 over the grid (seed 0) | chosen | dev F1 | test F1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        g = r["grid"]
        grid = f"{', '.join(f'{x:g}' for x in g['learning_rates'])} x {', '.join(f'{x:g}' for x in g['epochs'])}"
        dev_grid = " / ".join(f"{v:.1f}" for v in r["grid_dev_f1"].values())
        c = r["chosen"]
        lines.append(
            f"| {name} | {grid} | {dev_grid} | lr {c['learning_rate']:g}, {c['epochs']:g} ep | "
            f"{r['dev_f1']['mean']:.1f} +- {r['dev_f1']['sd']:.1f} | "
            f"{r['test_f1']['mean']:.1f} +- {r['test_f1']['sd']:.1f} |"
        )
    lines += [
        "",
        "The grid's dev F1 runs over the learning rates, each over its epochs.",
        "",
        "## Comparisons (test F1)",
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


def main(argv: list[str] | None = None) -> int:
    args = tuning_args(argv, __doc__.split("\n")[0])
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    cpus = os.cpu_count() or 1
    prep = prepare(DemoConfig(out=os.path.abspath(args.out), seed=0), FULL, Stopwatch(), subset_sizes=LABEL_COUNTS)
    import ray

    ray.shutdown()  # the workers start their own
    tuning = Tuning(prep, args.seeds)
    tuning.run(args.jobs, max(1, cpus // args.jobs))
    rows = tuning.summary()
    import torch

    torch.set_num_threads(cpus)
    teachers = teacher_scores(prep)
    few = FULL.few
    ensemble = {"mean": teachers["ensemble"], "sd": 0.0}
    # (what, row a, row b, a's name, b's name): each compared on test F1 with the tie rule.
    pairs = [
        ("distilled (no labels) vs labels only (200)", "distilled", f"labels_only_{few}", "distilled", "labels only"),
        ("distilled (no labels) vs all labels (1,400)", "distilled", "all_labels", "distilled", "all labels"),
        (
            f"distilled then fine-tuned ({few}) vs distilled",
            f"distilled_ft_{few}",
            "distilled",
            "fine-tuned",
            "distilled",
        ),
        (
            f"distilled then fine-tuned ({few}) vs all labels (1,400)",
            f"distilled_ft_{few}",
            "all_labels",
            "distilled then fine-tuned",
            "all labels",
        ),
    ]
    pairs += [
        (f"{n} labels: distilled then fine-tuned vs labels only", f"distilled_ft_{n}", f"labels_only_{n}",
         "distilled then fine-tuned", "labels only")
        for n in LABEL_COUNTS
    ]  # fmt: skip
    comparisons = [compare(what, rows[a]["test_f1"], rows[b]["test_f1"], an, bn) for what, a, b, an, bn in pairs]
    share = 100 * rows["distilled"]["test_f1"]["mean"] / ensemble["mean"]
    comparisons.insert(
        4,
        compare(
            "distilled (no labels) vs the teacher ensemble",
            rows["distilled"]["test_f1"],
            ensemble,
            "distilled",
            "ensemble",
        )
        + f"; {share:.0f}% of the ensemble's F1",
    )
    seconds = time.perf_counter() - started
    result = {"rows": rows, "teachers_test_f1": teachers, "comparisons": comparisons, "seconds": round(seconds, 1)}
    write_results(args.out, "tuning", result, markdown(rows, teachers, comparisons, FULL.sizes, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
