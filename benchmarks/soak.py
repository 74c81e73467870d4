"""Soak: `qadist label` over N tiny-model pairs with a teacher actor SIGKILLed every few seconds,
against the same run without faults, side by side in one process (one embedded Ray for both).

Prints, for each run: completion, conservation (pairs in, pairs labelled once, windows, duplicate
(id, window) keys, shards the manifest does not list), faults injected, seconds and pairs/s; then the
throughput ratio faulty/clean. Exit status 1 when any conservation check fails.

    python benchmarks/soak.py                      # 50,000 pairs, a kill every 5 s (of an actor alive >= 10 s)
    python benchmarks/soak.py --pairs 5000 --kill-every 3

The pairs are the questions and contexts of the SQuAD 2.0 sample in tests/data (contexts cut to
400 characters), repeated under fresh ids. The teacher is a 1-layer, hidden-32 BERT with the MiniLM
tokenizer: the point is the fault path (actor restarts, retried blocks), not model speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "squad-v2-dev-sample.json"


def make_pairs(path: Path, n: int) -> list[str]:
    from qadist.squad.io import read_pairs

    base = read_pairs(str(SAMPLE))[0]
    ids = []
    with open(path, "w") as f:
        for i in range(n):
            p = base[i % len(base)]
            ids.append(f"{p['id']}-{i // len(base)}")
            f.write(json.dumps({"id": ids[-1], "question": p["question"], "context": p["context"][:400]}) + "\n")
    return ids


def teacher_pids() -> list[int]:
    """Teacher actor processes of this process's embedded Ray (descendants of this process only)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if "BlockTeacher" not in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                continue
            pid = int(entry)
            while pid > 1:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == me:
                    found.append(int(entry))
                    break
        except (OSError, ValueError):
            continue
    return found


def age_s(pid: int) -> float:
    """Seconds since the process started."""
    start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


class Killer(threading.Thread):
    """SIGKILLs one random teacher actor every `every` seconds until stopped, choosing among actors
    that have lived at least `min_age` seconds: a restarted actor gets time to load its model and
    label something (when restarts take longer than the kill interval, killing whatever is there
    starves the run: measured at 98 of 100 blocks, no progress for minutes)."""

    def __init__(self, every: float, min_age: float, seed: int = 0):
        super().__init__(daemon=True)
        self.every, self.min_age, self.rng, self.stop, self.kills = (
            every,
            min_age,
            random.Random(seed),
            threading.Event(),
            0,
        )

    def run(self) -> None:
        while not self.stop.wait(self.every):
            pids = []
            for pid in teacher_pids():
                try:
                    if age_s(pid) >= self.min_age:
                        pids.append(pid)
                except (OSError, ValueError, IndexError):
                    continue
            if pids:
                try:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass


def conservation(out: str, ids: list[str]) -> dict:
    import pyarrow as pa

    from qadist.shards import read_manifest, read_shard

    manifest = read_manifest(out)
    table = pa.concat_tables([read_shard(f"{out}/{s['path']}", ["id", "window"]) for s in manifest["shards"]])
    keys = list(zip(table.column("id").to_pylist(), table.column("window").to_pylist()))
    firsts = [i for i, w in keys if w == 0]
    files = {p.name for p in Path(out, "shards").glob("*.parquet")}
    return {
        "pairs_in": manifest["counts"]["pairs_in"],
        "pairs_labeled": manifest["counts"]["pairs_labeled"],
        "pairs_once": len(set(firsts)) if set(firsts) == set(ids) else -1,
        "windows": len(keys),
        "duplicate_keys": len(keys) - len(set(keys)),
        "unlisted_shards": len(files - {s["path"].split("/")[1] for s in manifest["shards"]}),
    }


def run(args, pairs: Path, out: Path, teacher: str, ids: list[str], kill_every: float | None) -> dict:
    from qadist.config import LabelConfig
    from qadist.label.stage import run_label

    killer = Killer(kill_every, args.min_age) if kill_every else None
    started = time.perf_counter()
    if killer:
        killer.start()
    try:
        run_label(
            LabelConfig(
                pairs=str(pairs),
                out=str(out),
                teachers=[teacher],
                num_actors=args.num_actors,
                rows_per_shard=args.rows_per_shard,
                max_seq_len=128,
                doc_stride=32,
                max_query_len=32,
                batch_size=64,
            )
        )
        completed = True
    finally:
        if killer:
            killer.stop.set()
            killer.join()
    seconds = time.perf_counter() - started
    return {
        "completed": completed,
        "seconds": seconds,
        "pairs_per_s": len(ids) / seconds,
        "kills": killer.kills if killer else 0,
        **conservation(str(out), ids),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between SIGKILLs of a teacher actor")
    parser.add_argument(
        "--min-age", type=float, default=10.0, help="only kill actors that have lived this many seconds"
    )
    parser.add_argument("--rows-per-shard", type=int, default=500)
    parser.add_argument("--num-actors", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=4, help="CPUs the embedded Ray advertises")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from qadist.models import build_tiny_model, load_tokenizer, minilm_path

    root = Path(tempfile.mkdtemp(prefix="qadist-soak-"))
    teacher = build_tiny_model(
        "bert", root / "teacher", seed=0, num_layers=1, hidden=32, tokenizer=load_tokenizer(minilm_path())
    )
    ids = make_pairs(root / "pairs.jsonl", args.pairs)
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}},
    )
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # Ray Data's progress lines would bury the table
    print(
        f"soak: {args.pairs:,} pairs, {args.rows_per_shard} rows/shard, {args.num_actors} teacher actors, "
        f"a teacher actor (alive >= {args.min_age:g}s) SIGKILLed every {args.kill_every:g}s in the faulty run; "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    results = {}
    for name, kill_every in (("clean", None), ("faulty", args.kill_every)):
        results[name] = run(args, root / "pairs.jsonl", root / f"labels-{name}", teacher, ids, kill_every)
        print(f"  {name} run done in {results[name]['seconds']:.0f}s", flush=True)
    ray.shutdown()

    rows = (
        "completed",
        "kills",
        "pairs_in",
        "pairs_labeled",
        "pairs_once",
        "windows",
        "duplicate_keys",
        "unlisted_shards",
        "seconds",
        "pairs_per_s",
    )
    print(f"\n{'':18s} {'clean':>12s} {'faulty':>12s}")
    for key in rows:
        cells = [results[n][key] for n in ("clean", "faulty")]
        print(f"{key:18s} " + " ".join(f"{c:12.1f}" if isinstance(c, float) else f"{c!s:>12s}" for c in cells))
    ratio = results["faulty"]["pairs_per_s"] / results["clean"]["pairs_per_s"]
    print(f"{'throughput ratio':18s} {'':12s} {ratio:12.2f}  (faulty / clean)")
    ok = (
        all(
            r["completed"]
            and r["pairs_in"] == r["pairs_labeled"] == r["pairs_once"] == args.pairs
            and r["duplicate_keys"] == 0
            and r["unlisted_shards"] == 0
            for r in results.values()
        )
        and results["clean"]["windows"] == results["faulty"]["windows"]
    )
    print("conservation: " + ("OK: every pair exactly once in both runs, the same windows" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
