"""Incremental labelling against one full run, in one run: is teacher time paid once per pair?

The SQuAD 2.0 sample in tests/data (3,250 questions, answers dropped) split into three JSONL files.
  1. full: `qadist label` over the three files at once, into a fresh output;
  2. incremental: the files added one at a time to a prefix, `qadist label` run after each onto
     one output: three generations.
Prints, per incremental run, the rows it read and the teacher seconds it spent (the actors' time
in the model, `run.teacher_seconds` of each generation), their sum against the full run's (target:
within 10%), and checks that the union of the generations holds every pair exactly once, with
the full run's windows.

    python benchmarks/incremental_label.py                 # tiny BERT (4 layers, hidden 256), CPU
    python benchmarks/incremental_label.py --layers 6 --hidden 384
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "squad-v2-dev-sample.json"


def write_files(folder: Path, parts: int) -> list[list[dict]]:
    from qadist.squad.io import read_pairs

    pairs = [{k: p[k] for k in ("id", "question", "context")} for p in read_pairs(str(SAMPLE))[0]]
    size = -(-len(pairs) // parts)
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    folder.mkdir(parents=True)
    for i, chunk in enumerate(chunks):
        (folder / f"part-{i}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in chunk))
    return chunks


def windows_by_id(out: str) -> dict[str, int]:
    import pyarrow as pa

    from qadist import storage
    from qadist.shards import read_manifest, read_shard

    manifest = read_manifest(out)
    table = pa.concat_tables([read_shard(storage.join(out, s["path"]), ["id", "window"]) for s in manifest["shards"]])
    keys = list(zip(table["id"].to_pylist(), table["window"].to_pylist()))
    assert len(keys) == len(set(keys)), "a window is there twice"
    counts: dict[str, int] = {}
    for i, _ in keys:
        counts[i] = counts.get(i, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rows-per-shard", type=int, default=250)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    args = parser.parse_args(argv)

    from qadist.config import LabelConfig
    from qadist.label.stage import run_label
    from qadist.models import build_tiny_model, load_tokenizer, minilm_path
    from qadist.outputs import committed_generations

    root = Path(tempfile.mkdtemp(prefix="qadist-incremental-"))
    teacher = build_tiny_model("bert", root / "teacher", seed=0, num_layers=args.layers, hidden=args.hidden,
                               tokenizer=load_tokenizer(minilm_path()))  # fmt: skip
    chunks = write_files(root / "all", args.parts)

    def config(pairs: Path, out: Path) -> LabelConfig:
        return LabelConfig(pairs=str(pairs), out=str(out), teachers=[teacher], rows_per_shard=args.rows_per_shard,
                           num_cpus_per_actor=args.threads, batch_size=64)  # fmt: skip

    started = time.perf_counter()
    full = run_label(config(root / "all", root / "full"))
    full_s = full["run"]["teacher_seconds"]
    print(f"full run: {full['counts']['pairs_in']:,} rows, teacher {full_s:.1f}s, wall {full['run']['seconds']:.1f}s")

    grown = root / "grown"
    grown.mkdir()
    rows = []
    for i, chunk in enumerate(chunks):
        (grown / f"part-{i}.jsonl").write_text((root / "all" / f"part-{i}.jsonl").read_text())
        run_label(config(grown, root / "incremental"))
        gen = committed_generations(str(root / "incremental"))[-1]
        rows.append(
            (gen["generation"], gen["counts"]["pairs_in"], gen["run"]["pairs_in"], gen["run"]["teacher_seconds"])
        )
        run = gen["run"]
        print(f"generation {gen['generation']}: file part-{i}.jsonl ({len(chunk):,} rows): read {run['pairs_in']:,} "
              f"rows, teacher {run['teacher_seconds']:.1f}s, wall {run['seconds']:.1f}s")  # fmt: skip
    incremental_s = sum(r[3] for r in rows)
    ratio = incremental_s / full_s
    same = windows_by_id(str(root / "full")) == windows_by_id(str(root / "incremental"))
    print(
        f"teacher seconds: incremental {incremental_s:.1f} (sum of {len(rows)} generations) vs full {full_s:.1f}: "
        f"ratio {ratio:.3f} (target within 10%: {'met' if abs(ratio - 1) <= 0.10 else 'NOT met'}); "
        f"every pair once with the full run's windows: {same}; wall {time.perf_counter() - started:.0f}s"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
