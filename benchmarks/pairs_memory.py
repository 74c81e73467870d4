"""Peak memory of `qadist pairs` for 10k vs 100k questions against the same documents.

Questions stream (one pass in the driver, staged in parts, then through the matching actors), so
memory should not grow with their number beyond the driver's set of ids and digest per distinct
question (tens of bytes each). Each size runs in a fresh subprocess with its own embedded Ray; a
sampler thread records the driver's peak RSS and the peak total PSS of the whole process tree
(driver, Ray's GCS and raylet, every worker and actor; PSS splits shared pages such as the object
store fairly, so the sum counts them once). Documents: the SQuAD sample's 341 paragraphs. Model:
a tiny random sentence-transformers encoder (2 layers, hidden 64) built offline, so that 100k
questions embed in minutes on a CPU; the code path is the production one. About 10% of the
generated questions repeat an earlier one (merged, counted).

    python benchmarks/pairs_memory.py [--sizes 10000 100000] [--out /tmp/qadist-pairs-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "squad-v2-dev-sample.json"


def children_of(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"
    return "driver" if pid == os.getpid() else cmd.rsplit("/", 1)[-1][:60]


class Sampler(threading.Thread):
    """Samples the driver's RSS and the PSS of every process in the tree (peak of the sum, and
    each process name's peak) every `every` seconds."""

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.stop = every, threading.Event()
        self.driver_peak = self.tree_peak = 0.0
        self.by_name: dict[str, float] = {}

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            self.driver_peak = max(self.driver_peak, rss_mb())
            now: dict[str, float] = {}
            for pid in children_of(me):
                name = process_name(pid)
                now[name] = now.get(name, 0.0) + pss_mb(pid)
            self.tree_peak = max(self.tree_peak, sum(now.values()))
            for name, mb in now.items():
                self.by_name[name] = max(self.by_name.get(name, 0.0), mb)
            self.stop.wait(self.every)


def child(args: argparse.Namespace) -> None:
    """One run in this process: print {"seconds", "driver_peak_mb", "tree_peak_pss_mb", "counts"}."""
    import logging

    import ray

    from qadist.config import PairsConfig
    from qadist.pairs.stage import run_pairs

    logging.basicConfig(level=logging.WARNING)
    sampler = Sampler()
    sampler.start()
    ray.init(num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False)
    started = time.perf_counter()
    manifest = run_pairs(
        PairsConfig(
            questions=args.questions,
            documents=args.documents,
            out=args.run_out,
            model=args.model,
            top_k=1,
            batch_size=512,
            overwrite=True,
        )
    )
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "driver_peak_mb": sampler.driver_peak,
                "tree_peak_pss_mb": sampler.tree_peak,
                "counts": manifest["counts"],
                "by_process": {k: round(v) for k, v in sorted(sampler.by_name.items(), key=lambda kv: -kv[1])[:8]},
            }
        )
    )


def print_growth(results: dict[int, dict], unit: str, limit: float = 0.15) -> None:
    """The smallest and the largest size's peaks, and how much they grew."""
    small, large = results[min(results)], results[max(results)]
    for key, name in (("driver_peak_mb", "driver peak RSS"), ("tree_peak_pss_mb", "process-tree peak PSS")):
        growth = large[key] / small[key] - 1
        print(
            f"{name}: {small[key]:.0f} -> {large[key]:.0f} MiB for {max(results) // min(results)}x the {unit}: "
            f"growth {growth:+.1%} ({'under' if growth < limit else 'OVER'} the {limit:.0%} limit)"
        )


def write_questions(path: Path, n: int, seed: int = 0) -> None:
    """n questions: SQuAD questions with a serial number (distinct), every 10th a repeat."""
    data = json.loads(SAMPLE.read_text())["data"]
    pool = [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]]
    rng = random.Random(seed)
    made: list[str] = []
    with path.open("w") as f:
        for i in range(n):
            if i % 10 == 9:
                text = made[rng.randrange(len(made))].upper()  # identical after case folding
            else:
                text = f"{rng.choice(pool)} (case {i})"
                if len(made) < 5000:
                    made.append(text)
            f.write(json.dumps({"id": f"q{i}", "question": text}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--out", default="/tmp/qadist-pairs-memory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--questions", help=argparse.SUPPRESS)
    parser.add_argument("--documents", help=argparse.SUPPRESS)
    parser.add_argument("--run-out", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from qadist.encoder import build_tiny_encoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_encoder(str(out / "tiny-encoder"))
    documents = out / "documents.jsonl"
    data = json.loads(SAMPLE.read_text())["data"]
    documents.write_text(
        "".join(
            json.dumps({"id": f"{a['title']}/{n}", "text": p["context"], "title": a["title"]}) + "\n"
            for a in data
            for n, p in enumerate(a["paragraphs"])
        )
    )
    results = {}
    for n in args.sizes:
        questions = out / f"questions-{n}.jsonl"
        write_questions(questions, n)
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--questions",
                str(questions),
                "--documents",
                str(documents),
                "--run-out",
                str(out / f"run-{n}"),
                "--model",
                model,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"run with {n} questions failed:\n{proc.stderr[-3000:]}")
        results[n] = json.loads(line[len("RESULT ") :])
        r = results[n]
        print(
            f"{n:>8,} questions: {r['seconds']:6.0f}s, {r['counts']['pairs_out']:,} pairs, "
            f"{r['counts']['questions_duplicate']:,} merged; "
            f"driver peak RSS {r['driver_peak_mb']:7.0f} MiB, whole Ray tree peak PSS {r['tree_peak_pss_mb']:7.0f} MiB",
            flush=True,
        )
        print(f"          peak PSS by process (MiB): {r['by_process']}", flush=True)
    print_growth(results, "questions")


if __name__ == "__main__":
    main()
