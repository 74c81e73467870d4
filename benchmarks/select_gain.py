"""What picking the labels buys: the distilled student fine-tuned on N pairs chosen by `qadist select`
(entropy, margin, teacher disagreement) against N random pairs, 3 seeds, in the demo's domain.

Uses the demo's domain, teachers and pairs, and the settings `benchmarks/demo_tuning.py` chose on
dev (docs/demo.md, "Tuning"): the distilled student of each seed at its setting, and the fine-tuning
setting for N labels, so every strategy gets the same, tuned, training budget. Run into the folder
demo_tuning.py wrote, it reuses every model that run trained; into a new folder, it trains them.

1. The logged pairs are labelled again by the two teachers with `--keep-teacher-logits` (the
   demo's labels keep only the ensemble's logits; disagreement needs each teacher's).
2. The pool is the logged pairs matched to the page they were asked about (the generated domain
   knows; the rest, about 11%, are excluded through `--exclude`: their true answer on the wrong
   page is not defined). An annotator is simulated by the domain's hidden gold answer on the pair's
   passage (an answer outside the passage is "no answer", as it is for the model).
3. For N in 50 and 200 and each strategy, `run_select` picks N pairs (random: with the run's seed,
   so each seed draws its own N); the distilled student of that seed is fine-tuned on them with
   the tuned setting and scored on the test set (and dev).
4. `select_gain.md` / `.json` in --out: test F1 mean +- sd per strategy and N, each against random
   with ties named (a gap under the two standard deviations added is a tie).

    python benchmarks/select_gain.py --out /tmp/qadist-tuning     # about 60 minutes on 2 cores, 20 after demo_tuning
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from demo_tuning import compare, mean_sd, point_dir, run_point, start_worker

from qadist import storage
from qadist.config import DemoConfig, LabelConfig, SelectConfig
from qadist.demo.plan import FULL
from qadist.demo.prepare import Stopwatch, prepare
from qadist.rows import iter_raw_rows, read_jsonl
from qadist.squad.io import read_pairs

STRATEGIES = ("random", "entropy", "margin", "disagreement")
SIZES = (50, 200)
SEEDS = (0, 1, 2)
# demo_tuning.py's choices on dev (docs/demo.md, "Tuning"): (learning rate, epochs).
DISTILLED = (FULL.distill.learning_rate, FULL.distill.epochs)
FINETUNE = {50: (3e-5, 64.0), 200: (FULL.finetune[200].learning_rate, FULL.finetune[200].epochs)}


def gold_on_passage(pair: dict, gold: dict) -> dict:
    """The pair with the domain's gold answer moved onto its passage ("no answer" outside it)."""
    start0 = pair.get("passage_start", 0)
    answers = {"text": [], "answer_start": []}
    for text, start in zip(gold["answers"]["text"], gold["answers"]["answer_start"]):
        s = start - start0
        if 0 <= s and pair["context"][s : s + len(text)] == text:
            answers["text"].append(text)
            answers["answer_start"].append(s)
    return {k: pair[k] for k in ("id", "question", "context")} | {"answers": answers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", required=True, help="a new folder, or the one demo_tuning.py wrote (its models reused)"
    )
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = os.path.abspath(args.out)
    prep = prepare(DemoConfig(out=out, seed=0), FULL, Stopwatch(), subset_sizes=SIZES)  # reused where done
    from qadist.label.stage import run_label
    from qadist.select.stage import run_select

    labels = prep.path("labels-per-teacher")
    run_label(
        LabelConfig(
            pairs=prep.path("pairs", "pairs"),
            out=labels,
            teachers=[prep.teacher_a, prep.teacher_b],
            keep_teacher_logits=True,
            num_cpus_per_actor=prep.threads,
            batch_size=64,
            **prep.shared,
        )
    )
    gold = {p["id"]: p for p in read_pairs(prep.data["logged-gold"])[0]}
    # Raw rows: the pairs' question_id and passage offsets (read_pairs keeps only the fields a model reads).
    pairs = [raw for _, _, raw in iter_raw_rows(prep.path("pairs", "pairs"))]
    wrong = [p["id"] for p in pairs if gold[p["question_id"]]["doc_id"] != p["doc_id"]]
    exclude = prep.path("select-gain", "mis-paired.txt")
    storage.write_bytes(exclude, "".join(i + "\n" for i in wrong).encode())
    by_id = {p["id"]: p for p in pairs}
    seeds = list(SEEDS)
    common = {"shared": prep.shared, "files": {"dev": prep.data["dev"], "test": prep.data["test"]}}
    distill_tasks = [
        {
            "row": "distilled",
            "kind": "distill",
            "lr": DISTILLED[0],
            "epochs": DISTILLED[1],
            "seed": seed,
            "start": prep.inits["student-init"],
            "data": prep.labels,
            "out": point_dir(out, "distilled", *DISTILLED, seed),  # where demo_tuning.py trained it
            "loss": {"temperature": FULL.temperature, "alpha_kd": 1.0, "alpha_hard": 0.0},
            **common,
        }
        for seed in seeds
    ]
    tasks = []
    for n in SIZES:
        lr, epochs = FINETUNE[n]
        for strategy in STRATEGIES:
            for seed in seeds:
                if strategy != "random" and seed != seeds[0]:
                    sel = prep.path("select-gain", f"{strategy}-{n}-seed{seeds[0]}")  # deterministic: one pick
                else:
                    sel = prep.path("select-gain", f"{strategy}-{n}-seed{seed}")
                    if not storage.exists(storage.join(sel, "_manifest.json")):
                        run_select(
                            SelectConfig(
                                labels=labels, budget=n, out=sel, strategy=strategy, exclude=exclude, seed=seed
                            )
                        )
                picked = [row["id"] for row in read_jsonl(storage.join(sel, "selected.jsonl"))]
                train_file = storage.join(sel, "gold.jsonl")
                if not storage.exists(train_file):
                    rows = [gold_on_passage(by_id[i], gold[by_id[i]["question_id"]]) for i in picked]
                    storage.write_bytes(train_file, "".join(json.dumps(r) + "\n" for r in rows).encode())
                tasks.append(
                    {
                        "row": f"{strategy}_{n}",
                        "kind": "finetune",
                        "lr": lr,
                        "epochs": epochs,
                        "seed": seed,
                        "start": None,  # the distilled student of the seed, once trained
                        "data": train_file,
                        "out": prep.path("select-gain", "models", f"{strategy}-{n}-seed{seed}"),
                        "loss": {},
                        **common,
                    }
                )
    import ray

    ray.shutdown()
    cpus = os.cpu_count() or 1
    with ProcessPoolExecutor(
        args.jobs, mp_context=get_context("spawn"), initializer=start_worker, initargs=(max(1, cpus // args.jobs),)
    ) as pool:
        students = {r["seed"]: r for r in pool.map(run_point, distill_tasks)}
        for r in students.values():
            print(f"[select-gain] distilled seed {r['seed']}: test F1 {r['test']['f1']:.1f}", flush=True)
        for task in tasks:
            task["start"] = students[task["seed"]]["model"]
        records = []
        for r in pool.map(run_point, tasks):
            print(
                f"[select-gain] {r['row']} seed {r['seed']}: test F1 {r['test']['f1']:.1f} ({r['seconds']:.0f} s)",
                flush=True,
            )
            records.append(r)
    table: dict[str, dict] = {}
    for r in records:
        table.setdefault(r["row"], {"test": [], "dev": []})
        table[r["row"]]["test"].append(r["test"]["f1"])
        table[r["row"]]["dev"].append(r["dev"]["f1"])
    table["distilled, no labels"] = {
        "test": [r["test"]["f1"] for r in students.values()],
        "dev": [r["dev"]["f1"] for r in students.values()],
    }
    summary = {row: {k: mean_sd(v) for k, v in d.items()} for row, d in table.items()}
    lines = [
        "# Selection gain (benchmarks/select_gain.py)",
        "",
        f"Distilled student (seeds {seeds}) fine-tuned on N selected labels with the tuned setting for N; "
        f"pool: {len(pairs) - len(wrong):,} correctly paired logged pairs ({len(wrong)} mis-paired excluded); "
        f"test {FULL.sizes.test} questions.",
        "",
        "| N | " + " | ".join(STRATEGIES) + " |",
        "|---|" + "---|" * len(STRATEGIES),
    ]
    comparisons = []
    for n in SIZES:
        cells = [
            f"{summary[f'{s}_{n}']['test']['mean']:.1f} +- {summary[f'{s}_{n}']['test']['sd']:.1f}" for s in STRATEGIES
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
        for s in STRATEGIES[1:]:
            comparisons.append(
                compare(
                    f"N={n}: {s} vs random", summary[f"{s}_{n}"]["test"], summary[f"random_{n}"]["test"], s, "random"
                )
            )
    start = summary["distilled, no labels"]["test"]
    lines += [
        "",
        f"Test F1, mean +- sd over the seeds; the distilled student before fine-tuning: {start['mean']:.1f} +- "
        f"{start['sd']:.1f}. Entropy, margin and disagreement pick the same N pairs at every seed (they are "
        "deterministic); random draws N of its own per seed.",
        "",
        *[f"- {c}" for c in comparisons],
        "",
    ]
    text = "\n".join(lines)
    result = {
        "summary": summary,
        "records": records,
        "comparisons": comparisons,
        "seconds": time.perf_counter() - started,
    }
    storage.write_bytes(os.path.join(out, "select_gain.json"), json.dumps(result, indent=1).encode())
    storage.write_bytes(os.path.join(out, "select_gain.md"), text.encode())
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
