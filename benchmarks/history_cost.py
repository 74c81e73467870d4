"""What one more day costs a label table with a long history: today's code against the base commit's.

A table of N daily generations (N = 10, 100, 400; `--pairs` pairs each, one shard per generation) is
built without a teacher (tests/table_factory.py: shards of the real schema, random logits), in a
local folder and on moto's S3 server. Its input is a `qadist pairs` output, as in the daily job
(jobs/configs/daily.yaml: `--pairs <pairs out>/pairs/`): each day's pairs file committed as that
output's generation; the old code lists the folder (it did not know pairs outputs). Then day N+1's
label bookkeeping runs in a child process, once with this tree's code and once with the base
commit's (`git archive` of `--base` into a temporary folder, run on its own copy of the table):
  planning: the table's view, the new input files, the ids labelled earlier (for repeats);
  commit:   new code: the generation's id summary, its manifest (conditional put), a snapshot when one
            is due (not on days 11, 101, 401; nor the sweep, which runs on snapshot days); old code:
            the manifest and the view read again (what its sweep, run every day, kept).
  snapshot day (new code): days N+2..N+9 committed, then day N+10, when a snapshot is due: the
            same, plus the merged id summary, the details file, the snapshot, and run_label's sweep.
Each child runs the day `--repeats` times (each but the last undone after it is timed: the manifest and id
summary deleted); the median is reported. The day's shard is written before the clock starts (that is
labelling, not bookkeeping). Counted:
storage round trips and bytes read; locally by wrapping the storage layer's pyarrow filesystem (each
listing, info, open and write is one; bytes: what was read from files), on S3 at the server (every
HTTP request; bytes: response bodies). The shard reads that the old code spreads over Ray tasks run
here in 8 threads in the child (no Ray start-up in either figure).
Then `qadist compact` (new code) on the table (now N + 10 generations), timed, and one epoch's
reader I/O before and after it (every pair read once after it: counted): `snapshot_paths` and every
listed shard read whole in 4 threads (what Ray Data's read tasks do per shard; Ray's own per-block
overhead, which grows with the shard count, not included).

    python benchmarks/history_cost.py                       # 10, 100, 400 generations of 1,000 pairs
    python benchmarks/history_cost.py --generations 10,100 --pairs 200 --stores local
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "801f525"  # the merge before issue 32 (committed_generations probing, ids read from shards)


# ---- counting -------------------------------------------------------------------------------------


class Counts:
    trips = 0
    bytes = 0


def count_local() -> None:
    """Wrap qadist.storage's local filesystem and whole-object writes so each call is counted."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    from qadist import storage

    class File(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            Counts.bytes += len(data)
            return data

        def readinto(self, b):
            data = self.read(len(b))
            b[: len(data)] = data
            return len(data)

        def seek(self, *a):
            return self.f.seek(*a)

        def tell(self):
            return self.f.tell()

        def seekable(self):
            return True

        def readable(self):
            return True

    class Handler(pafs.FileSystemHandler):
        def __init__(self):
            self.fs = pafs.LocalFileSystem()

        def _n(self):
            Counts.trips += 1

        def get_type_name(self):
            return "counting"

        def get_file_info(self, paths):
            Counts.trips += len(paths)
            return self.fs.get_file_info(paths)

        def get_file_info_selector(self, selector):
            self._n()
            return self.fs.get_file_info(selector)

        def open_input_stream(self, path):
            self._n()
            return pa.PythonFile(File(open(path, "rb")), mode="r")

        def open_input_file(self, path):
            self._n()
            return pa.PythonFile(File(open(path, "rb")), mode="r")

        def create_dir(self, path, recursive):
            self.fs.create_dir(path, recursive=recursive)

        def delete_dir(self, path):
            self._n()
            self.fs.delete_dir(path)

        def delete_file(self, path):
            self._n()
            self.fs.delete_file(path)

        def normalize_path(self, path):
            return path

        def delete_dir_contents(self, path, missing_dir_ok=False):
            self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

        def delete_root_dir_contents(self):
            raise NotImplementedError

        def move(self, src, dest):
            self.fs.move(src, dest)

        def copy_file(self, src, dest):
            self.fs.copy_file(src, dest)

        def open_output_stream(self, path, metadata):
            self._n()
            return self.fs.open_output_stream(path)

        def open_append_stream(self, path, metadata):
            raise NotImplementedError

    fs = pafs.PyFileSystem(Handler())
    real_resolve, real_write, real_if_absent = storage.resolve, storage.write_bytes, storage.write_if_absent

    def resolve(uri):
        got, path = real_resolve(uri)
        return (fs, path) if isinstance(got, pafs.LocalFileSystem) else (got, path)

    def write_bytes(uri, data):
        Counts.trips += 1
        real_write(uri, data)

    def write_if_absent(uri, data):
        Counts.trips += 1
        return real_if_absent(uri, data)

    storage.resolve, storage.write_bytes, storage.write_if_absent = resolve, write_bytes, write_if_absent
    if hasattr(storage, "read_if_exists"):  # this tree's code reads whole files and lists names without pyarrow
        real_read, real_names = storage.read_if_exists, storage.list_names

        def read_if_exists(uri):
            Counts.trips += 1
            data = real_read(uri)
            Counts.bytes += len(data or b"")
            return data

        def list_names(*a, **k):
            Counts.trips += 1
            return real_names(*a, **k)

        storage.read_if_exists, storage.list_names = read_if_exists, list_names


class ThreadRay:
    """Ray's task API on a thread pool: the old code's shard reads in parallel, without Ray."""

    def __init__(self, threads: int = 8):
        self.pool = ThreadPoolExecutor(threads)

    def remote(self, **_):
        pool = self.pool
        return lambda f: type("Task", (), {"remote": staticmethod(lambda *a: pool.submit(f, *a))})

    def get(self, futures):
        return [f.result() for f in futures]


# ---- the child: one day's bookkeeping, old or new code ------------------------------------------------


def child(args) -> None:
    if args.store == "local":
        count_local()
    from qadist import storage
    from qadist.outputs import generation_uri

    manifest = json.loads(Path(args.manifest).read_text())
    ray = ThreadRay()
    import qadist.label.blocks  # noqa: F401 (imported by a label run long before its bookkeeping)
    from qadist.shards import read_shard

    read_shard(storage.join(args.out, manifest["shards"][0]["path"]), ["id"])  # warm pyarrow up, as a run has
    storage.check_s3_access(args.out, "--out")  # and boto3 (a label run's first step)

    if args.code == "new":
        from qadist.config import LabelConfig
        from qadist.label import generations
        from qadist.label.commit import sweep
        from qadist.label.generations import generation_ids
        from qadist.label.inputs import fresh_files
        from qadist.label.stage import committed, sweep_due
        from qadist.outputs import LATEST, read_json, read_view, snapshot_uri

        # this tree's planning reads the history's ids in parts (`labelled_id_parts`); an older one merged them
        parts = getattr(generations, "labelled_id_parts", None)
        labelled_id_hashes = parts or generations.labelled_id_hashes
    else:
        from qadist.label.generations import labelled_id_hashes
        from qadist.outputs import committed_generations, committed_inputs, union
        from qadist.rows import input_files
    for repeat in range(args.repeats):
        print("READY", flush=True)
        sys.stdin.readline()
        if args.code == "new" and args.snapshot_day and repeat == 0:  # what its sweep removes that a repeat needs
            snap = read_view(args.out, details=False)
            restore = {s["path"]: storage.read_bytes(storage.join(args.out, s["path"])) for s in snap["id_sources"]
                       if "path" in s}  # fmt: skip
        Counts.trips = Counts.bytes = 0
        t0 = time.perf_counter()
        if args.code == "new":  # what `qadist label` does: `label_and_commit`, then `run_label`'s sweep rule
            started = time.time()  # (a run's lease time: what the sweep spares)
            cfg = LabelConfig(pairs=args.pairs_uri, out=args.out, teachers=["synthetic"])
            view = read_view(args.out, details=False)
            fresh, _, _ = fresh_files(cfg, view)
            labelled = labelled_id_hashes(ray, args.out, view)
            t1 = time.perf_counter()
            gen = {**manifest}
            gen["ids"] = generation_ids(ray, args.out, gen["generation"], gen["plan"], gen["shards"])
            assert storage.write_if_absent(generation_uri(args.out, gen["generation"]), json.dumps(gen).encode())
            after = committed(ray, cfg, view, gen, labelled)
            # days N+1 (11, 101, 401): no snapshot due, so no sweep; a snapshot day (N+10): both, as run_label
            assert sweep_due(after) == args.snapshot_day
            if args.snapshot_day:
                sweep(args.out, read_view(args.out), started)
        else:
            done = committed_generations(args.out)
            held = committed_inputs(done)
            fresh = [f["uri"] for f in input_files(args.pairs_uri) if f["uri"] not in held]
            labelled = labelled_id_hashes(ray, args.out, done)
            t1 = time.perf_counter()
            uri = generation_uri(args.out, manifest["generation"])
            assert storage.write_if_absent(uri, json.dumps(manifest).encode())
            union(committed_generations(args.out))  # what its sweep kept, every run
        t2 = time.perf_counter()
        held = sum(len(p) for p in labelled) if isinstance(labelled, list) else len(labelled)
        assert len(fresh) == 1 and held == args.held, (fresh, held)
        result = {"plan_s": t1 - t0, "commit_s": t2 - t1, "trips": Counts.trips, "bytes": Counts.bytes}
        print("DONE " + json.dumps(result), flush=True)
        if repeat == args.repeats - 1:
            break  # the last one stays committed: the table has N + 1 generations
        storage.delete(generation_uri(args.out, manifest["generation"]))  # undone for the next repeat
        if args.code == "new":
            storage.delete(storage.join(args.out, gen["ids"]["path"]))
        if args.snapshot_day:  # the snapshot too: its head, details, id summary; the hint back to the one before
            head = read_json(snapshot_uri(args.out, after["snapshot"]))
            for rel in [head["details"], *(s["path"] for s in head["id_sources"])]:
                storage.delete(storage.join(args.out, rel))
            storage.delete(snapshot_uri(args.out, after["snapshot"]))
            hint = json.dumps({"snapshot": after["snapshot"] - 1}).encode()
            storage.write_bytes(storage.join(args.out, LATEST), hint)
            for rel, data in restore.items():  # the snapshot before's id summary, which the sweep removed
                storage.write_bytes(storage.join(args.out, rel), data)


# ---- the parent ----------------------------------------------------------------------------------------


class ServerCounts:
    """WSGI middleware on moto's server: every request, and the bytes of every response body."""

    def __init__(self, app):
        self.app, self.trips, self.bytes = app, 0, 0

    def __call__(self, environ, start_response):
        self.trips += 1
        for chunk in self.app(environ, start_response):
            self.bytes += len(chunk)
            yield chunk


def day(code: str, tree: Path, store: str, out: str, pairs_uri: str, manifest: dict, held: int, server,
        repeats: int, snapshot_day: bool = False) -> dict:  # fmt: skip
    """Day N+1's bookkeeping `repeats` times in one child (each undone after it is timed): the median
    times, and the round trips and bytes of one (the same every time)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(manifest, f)
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--child", code, "--store", store, "--out", out, "--pairs-uri", pairs_uri,
           "--manifest", f.name, "--held", str(held), "--repeats", str(repeats),
           *(["--snapshot-day"] if snapshot_day else [])]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    server = server if store == "s3" else None
    results = []
    for _ in range(repeats):
        assert proc.stdout.readline().strip() == "READY"
        if server is not None:
            server.trips = server.bytes = 0
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line.startswith("DONE "), line
        results.append(json.loads(line[5:]))
        if server is not None:
            results[-1]["trips"], results[-1]["bytes"] = server.trips, server.bytes
    proc.wait(timeout=600)
    os.unlink(f.name)
    totals = sorted(results, key=lambda r: r["plan_s"] + r["commit_s"])
    return {**totals[len(totals) // 2], "runs": [round(r["plan_s"] + r["commit_s"], 5) for r in results]}


def epoch_read(out: str) -> tuple[float, int, int]:
    """One epoch's reads: seconds, windows, distinct pair ids (one window per pair here)."""
    from qadist.shards import read_shard, snapshot_paths

    t0 = time.perf_counter()
    paths = snapshot_paths(out)
    with ThreadPoolExecutor(4) as pool:
        tables = list(pool.map(read_shard, paths))
    seconds = time.perf_counter() - t0
    return seconds, sum(t.num_rows for t in tables), len({i for t in tables for i in t["id"].to_pylist()})


def copy_table(src: str, dst: str) -> None:
    from qadist import storage

    if storage.is_s3(src):
        client = storage.s3_client()
        bucket, key = storage.split_s3(src)
        _, dkey = storage.split_s3(dst)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/"):
            for o in page.get("Contents", []):
                client.copy_object(Bucket=bucket, Key=dkey + o["Key"][len(key) :],
                                   CopySource={"Bucket": bucket, "Key": o["Key"]})  # fmt: skip
    else:
        shutil.copytree(src, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generations", default="10,100,400")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--stores", default="local,s3")
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--target-rows", type=int, default=20_000)
    parser.add_argument("--child", choices=["new", "old"])
    parser.add_argument("--store", default="local")
    parser.add_argument("--out")
    parser.add_argument("--pairs-uri")
    parser.add_argument("--manifest")
    parser.add_argument("--held", type=int, default=0)
    parser.add_argument("--snapshot-day", action="store_true")
    parser.add_argument("--rerender", help="print the tables from a run's JSON lines (this file) instead of running")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each day's bookkeeping (median reported)")
    args = parser.parse_args(argv)
    if args.child:
        args.code = args.child
        child(args)
        return 0
    if args.rerender:
        lines = Path(args.rerender).read_text().split("\n")  # its own log: rows end at "\n" only
        rows = [json.loads(line) for line in lines if line.startswith('{"store"')]
        report(rows, args)
        return 0

    sys.path.insert(0, str(REPO / "tests"))
    root = Path(tempfile.mkdtemp(prefix="qadist-history-"))
    old_tree = root / "base"
    old_tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.base, "qadist"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive.stdout, check=True)
    server = None
    if "s3" in args.stores:
        from moto.server import ThreadedMotoServer

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_REGION": "us-east-1"})  # fmt: skip
        server = ServerCounts(moto._server.app)
        moto._server.app = server
        from qadist.storage import s3_client

        s3_client().create_bucket(Bucket="history")

    from table_factory import add_day, commit_pairs_day, day_ids, generation_manifest, make_table

    from qadist.config import CompactConfig
    from qadist.label.compact import run_compact

    rows = []
    for store in args.stores.split(","):
        base = str(root / "data") if store == "local" else "s3://history"
        for n in (int(x) for x in args.generations.split(",")):
            # The input is a `qadist pairs` output (its `pairs/` folder), as in the daily job: each day's
            # file committed as that output's generation. The old code lists the folder (all it knew).
            out, pairs_root = f"{base}/n{n}/labels-new", f"{base}/n{n}/pairs-out"
            pairs_uri = f"{pairs_root}/pairs"
            t = time.perf_counter()
            make_table(out, n, args.pairs, pairs_output=pairs_root)
            built = time.perf_counter() - t
            copy_table(out, f"{base}/n{n}/labels-old")
            source, size = commit_pairs_day(pairs_root, n + 1, args.pairs)
            figures = {}
            for code, tree in (("old", old_tree), ("new", REPO)):
                table = f"{base}/n{n}/labels-{code}"
                manifest = generation_manifest(table, n + 1, day_ids(n + 1, args.pairs), source, size, n + 1)
                figures[code] = day(code, tree, store, table, pairs_uri, manifest, n * args.pairs, server, args.repeats)
            # A snapshot day (N+10: snapshot and sweep), new code: days N+2..N+9 committed first.
            for d in range(n + 2, n + 10):
                add_day(out, d, args.pairs, pairs_output=pairs_root)
            source, size = commit_pairs_day(pairs_root, n + 10, args.pairs)
            manifest = generation_manifest(out, n + 10, day_ids(n + 10, args.pairs), source, size, n + 10)
            figures["snap"] = day("new", REPO, store, out, pairs_uri, manifest, (n + 9) * args.pairs, server,
                                  args.repeats, snapshot_day=True)  # fmt: skip
            before_s, windows, ids = epoch_read(out)
            shards_before = len(__import__("qadist.outputs").outputs.read_view(out)["shards"])
            t = time.perf_counter()
            run_compact(CompactConfig(labels=out, target_rows=args.target_rows))
            compact_s = time.perf_counter() - t
            after_s, windows_after, ids_after = epoch_read(out)
            # exactly once over the compacted table: every window and pair of the N+10 generations, none twice
            assert windows_after == windows == ids == ids_after == (n + 10) * args.pairs
            shards_after = len(__import__("qadist.outputs").outputs.read_view(out)["shards"])
            per_code = {f"{c}_{k}": v for c, f in figures.items() for k, v in f.items()}
            rows.append({"store": store, "n": n, "built_s": built, **per_code, "epoch_before_s": before_s,
                         "epoch_after_s": after_s, "shards_before": shards_before, "shards_after": shards_after,
                         "compact_s": compact_s, "exactly_once": ids_after})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    report(rows, args)
    return 0


def report(rows: list[dict], args) -> None:
    """The tables. Each day ran `repeats` times: the median, and the best (least disturbed: on a shared
    machine one run in five can take 10-100x longer); ratios against N = the smallest, of each."""
    print(f"\nday N+1's label bookkeeping (planning + commit), {args.pairs:,} pairs a generation, {args.repeats} runs; "
          f"ratios: against N = {min(r['n'] for r in rows)} of the same code and store (planning and commit "
          "columns: the median run's)")  # fmt: skip
    print("| store | N | code | planning s | commit s | median s | best s | ratio (median) | ratio (best) | "
          "round trips | bytes read |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(x for x in rows if x["store"] == r["store"] and x["n"] == min(y["n"] for y in rows))
        for code, label in (("old", "old"), ("new", "new"), ("snap", "new, snapshot day N+10")):
            plan, commit = r[f"{code}_plan_s"], r[f"{code}_commit_s"]
            best, ref_best = min(r[f"{code}_runs"]), min(ref[f"{code}_runs"])
            ratio = (plan + commit) / (ref[f"{code}_plan_s"] + ref[f"{code}_commit_s"])
            print(f"| {r['store']} | {r['n']} | {label} | {plan:.4f} | {commit:.4f} | {plan + commit:.4f} | "
                  f"{best:.4f} | {ratio:.2f} | {best / ref_best:.2f} | {r[f'{code}_trips']:,} | "
                  f"{r[f'{code}_bytes']:,} |")  # fmt: skip
    print(
        "\none epoch's reader I/O (snapshot_paths + every listed shard, 4 threads), before and after `qadist compact`, "
        "on the table of N + 10 generations; pairs read after it: each exactly once"
    )
    print(
        "| store | generations | shards before | epoch s before | compact s | shards after | epoch s after | "
        "ratio after/before | pairs read once |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["epoch_after_s"] / r["epoch_before_s"]
        print(f"| {r['store']} | {r['n'] + 10} | {r['shards_before']} | {r['epoch_before_s']:.2f} | "
              f"{r['compact_s']:.1f} | {r['shards_after']} | {r['epoch_after_s']:.2f} | {ratio:.2f} | "
              f"{r['exactly_once']:,} |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
