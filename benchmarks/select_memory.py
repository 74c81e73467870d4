"""Peak memory of `qadist select` over 10k against 100k labelled pairs (the goal: under 15% growth).

Scoring streams: one Ray Data task per shard, and the driver keeps the best `budget` candidates as
the scores arrive, then streams the pairs file for the selected ids only. Memory should not grow
with the label table. The tables here are synthetic soft labels in the shard format (random
fp16 logits of two teachers and their ensemble, 1-2 windows of 160 tokens per pair, shards of
2,000 pairs; the columns `select` reads), so that 100k pairs need no teacher; `--strategy
disagreement` reads the most (every teacher's logits). Each size runs in a fresh subprocess with
its own embedded Ray; the sampler of `pairs_memory.py` records the driver's peak RSS and the
process tree's peak PSS.

    python benchmarks/select_memory.py [--sizes 10000 100000] [--out /tmp/qadist-select-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pairs_memory import Sampler, print_growth

from qadist.shards import LOGITS_TYPE, SCHEMA_VERSION, TEACHER_LOGITS_TYPE, list_array

SEQ, PER_SHARD, TEACHERS = 160, 2000, 2
CONTEXT = "The Orion Q-570 weighs 420 g, shoots 24.2 megapixels and records 4K video at 60 frames per second. " * 6


def write_table(root: Path, n: int, seed: int = 0) -> str:
    """A label output of n pairs (shards + manifest) and the pairs file it names."""
    rng = np.random.default_rng(seed)
    labels = root / f"labels-{n}"
    (labels / "shards").mkdir(parents=True, exist_ok=True)
    pairs_file = root / f"pairs-{n}.jsonl"
    with pairs_file.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "question": f"How heavy is camera {i}?", "context": CONTEXT}) + "\n")
    offsets = [[-1, -1]] * 20 + [[4 * k, 4 * k + 3] for k in range(SEQ - 20)]
    shards = []
    for first in range(0, n, PER_SHARD):
        ids, start, end, t_start, t_end = [], [], [], [], []
        for i in range(first, min(first + PER_SHARD, n)):
            for _ in range(1 + (i % 3 == 0)):
                ids.append(f"p{i}")
                t = rng.normal(0, 2, (2, TEACHERS, SEQ)).astype(np.float16)
                t_start.append(t[0])
                t_end.append(t[1])
                start.append(t[0].mean(0))
                end.append(t[1].mean(0))
        outer = pa.array(np.arange(0, TEACHERS * len(ids) + 1, TEACHERS, dtype=np.int32))
        table = pa.table(
            {
                "id": pa.array(ids),
                "offsets": pa.array([offsets] * len(ids), type=pa.list_(pa.list_(pa.int32()))),
                "start_logits": list_array(start),
                "end_logits": list_array(end),
                "teacher_start_logits": pa.ListArray.from_arrays(outer, list_array([r for w in t_start for r in w])),
                "teacher_end_logits": pa.ListArray.from_arrays(outer, list_array([r for w in t_end for r in w])),
            }
        )
        assert table.schema.field("start_logits").type == LOGITS_TYPE
        assert table.schema.field("teacher_start_logits").type == TEACHER_LOGITS_TYPE
        path = f"shards/part-{first:09d}.parquet"
        pq.write_table(table, labels / path, compression="zstd")
        shards.append({"path": path, "rows": len(ids), "pairs": min(PER_SHARD, n - first)})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "teachers": [{"name": "synthetic-a"}, {"name": "synthetic-b"}],
        "tokenizer": {"name": "synthetic", "hash": "synthetic"},
        "config": {"pairs": str(pairs_file)},
        "keep_teacher_logits": True,
        "counts": {"pairs_in": n, "pairs_labeled": n, "pairs_rejected": 0},
        "shards": shards,
    }
    (labels / "_manifest.json").write_text(json.dumps(manifest))
    return str(labels)


def child(labels: str, out: str, budget: int) -> None:
    import logging

    import ray

    from qadist.config import SelectConfig
    from qadist.select.stage import run_select

    logging.basicConfig(level=logging.WARNING)
    sampler = Sampler()
    sampler.start()
    ray.init(num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False)
    started = time.perf_counter()
    result = run_select(SelectConfig(labels=labels, budget=budget, out=out, strategy="disagreement", overwrite=True))
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    record = {
        "seconds": seconds,
        "driver_peak_mb": sampler.driver_peak,
        "tree_peak_pss_mb": sampler.tree_peak,
        "counts": result["counts"],
        "by_process": {k: round(v) for k, v in sorted(sampler.by_name.items(), key=lambda kv: -kv[1])[:6]},
    }
    print("RESULT " + json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--out", default="/tmp/qadist-select-memory")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.budget)
        return
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    for n in args.sizes:
        labels = write_table(root, n)
        proc = subprocess.run(
            [sys.executable, __file__, "--budget", str(args.budget), "--child", labels, str(root / f"select-{n}")],
            capture_output=True,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"select over {n} pairs failed:\n{proc.stderr[-3000:]}")
        r = results[n] = json.loads(line[len("RESULT ") :])
        print(
            f"{n:>8,} labelled pairs: {r['seconds']:6.0f}s, {r['counts']['selected']:,} selected of "
            f"{r['counts']['pairs_scored']:,} scored; driver peak RSS {r['driver_peak_mb']:6.0f} MiB, "
            f"process tree peak PSS {r['tree_peak_pss_mb']:6.0f} MiB; by process {r['by_process']}",
            flush=True,
        )
    print_growth(results, "pairs")


if __name__ == "__main__":
    main()
