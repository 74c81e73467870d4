"""`qadist label` as an incremental table: new input files become new generations, each pair once.

The default tests drive the CLI in-process on the session's Ray with the shared SQuAD sample split
into three files that arrive one at a time; the slow ones race two runs and kill a driver mid-commit.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from qadist import storage
from qadist.config import LabelConfig
from qadist.label.stage import run_label
from qadist.leases import Lease
from qadist.shards import read_manifest, read_shard, snapshot_paths

pytestmark = pytest.mark.usefixtures("ray_local")
ARGS = ["--rows-per-shard", "20", "--max-seq-len", "128", "--doc-stride", "32", "--batch-size", "16"]


def run_cli(*args: str) -> int:
    from qadist.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def put_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def three_files(squad_pairs) -> list[list[dict]]:
    rows = [{"id": p["id"], "question": p["question"], "context": p["context"][:600]} for p in squad_pairs[:120]]
    return [rows[:40], rows[40:80], rows[80:]]


def ids_of(out: str, generation: int | None = None) -> list[str]:
    """Pair ids the readers see (window 0 of each pair), in shard order."""
    manifest = read_manifest(out, generation)
    tables = [read_shard(storage.join(out, s["path"]), ["id", "window"]) for s in manifest["shards"]]
    table = pa.concat_tables(tables)
    return [i for i, w in zip(table["id"].to_pylist(), table["window"].to_pylist()) if w == 0]


@pytest.mark.slow  # 20 s or more on the 2-core CI machine: run before resolving (pytest -m slow)
def test_files_added_one_at_a_time_are_labelled_once_each(tmp_path, squad_pairs, tiny_models, capsys):
    files = three_files(squad_pairs)
    files[2][5] = {**files[0][3], "question": files[0][3]["question"]}  # a logged repeat of a labelled pair
    pairs, out = tmp_path / "pairs", str(tmp_path / "labels")
    label = ["label", "--pairs", str(pairs), "--out", out, "--teacher", tiny_models["teacher_a"], *ARGS]
    seen = []
    for day, rows in enumerate(files, start=1):
        put_jsonl(pairs / f"day-{day}.jsonl", rows)
        if day == 2:  # claimed before generations, under the claim's old name: it held the input files
            held = json.loads(Path(out, "_qadist_label.json").read_text())
            first_inputs = json.loads(Path(out, "_manifest.json").read_text())["inputs"]
            Path(out, "_fingerprint.json").write_text(json.dumps({**held, "inputs": first_inputs}))
            Path(out, "_qadist_label.json").unlink()
        assert run_cli(*label) == 0
        printed = capsys.readouterr().out
        manifest = read_manifest(out)
        gen = json.loads(Path(out, "_manifest.json" if day == 1 else f"_manifest-{day:06d}.json").read_text())
        seen.append((gen["counts"]["pairs_in"], gen["run"]["shards_computed"], gen["run"]["pairs_in"]))
        assert f"{len(rows):,} new rows in 1 file(s)" in printed
        assert gen["generation"] == day and [i["uri"] for i in gen["inputs"]] == [str(pairs / f"day-{day}.jsonl")]
        assert len(manifest["generations"]) == day
    print(f"\nper generation (pairs in, shards computed, pairs the teachers read): {seen}")
    assert seen == [(40, 2, 40), (40, 2, 40), (40, 2, 40)]  # each run reads its own file's rows only

    manifest = read_manifest(out)
    ids = ids_of(out)
    expected = {r["id"] for rows in files for r in rows}
    assert len(ids) == len(set(ids)) == len(expected) == 119 and set(ids) == expected
    assert manifest["counts"] == {"pairs_in": 120, "pairs_labeled": 119, "pairs_rejected": 1,
                                  "windows": manifest["counts"]["windows"]}  # fmt: skip
    rejects = [json.loads(line) for r in manifest["rejects"] for line in Path(out, r).read_text().splitlines()]
    assert [(r["id"], r["row"]) for r in rejects] == [(files[0][3]["id"], 6)]
    assert "already labelled by an earlier generation" in rejects[0]["reason"]
    assert ids_of(out, 2) == [r["id"] for r in files[1]]  # --generation N: that generation alone
    listed = [storage.join(out, s["path"]) for s in manifest["shards"] if s["rows"]]
    assert snapshot_paths(out) == listed and set(snapshot_paths(out, 2)) < set(listed)  # what other engines read

    # Nothing new: a no-op. A file edited after it was labelled: refused, naming it.
    assert run_cli(*label) == 0
    assert "already complete" in capsys.readouterr().out
    put_jsonl(pairs / "day-2.jsonl", files[1][:39])
    assert run_cli(*label) == 2
    err = capsys.readouterr().err
    assert "day-2.jsonl: changed since generation 2 labelled it" in err and "new files" in err
    put_jsonl(pairs / "day-2.jsonl", files[1])

    # Distill and select read every generation, or one.
    student = ["--student", tiny_models["student"], "--epochs", "0.2", "--batch-size", "8", "--max-seq-len", "128",
               "--doc-stride", "32"]  # fmt: skip
    assert run_cli("distill", "--labels", out, "--out", str(tmp_path / "s"), "--generation", "3", *student) == 0
    assert (
        f"{read_manifest(out, 3)['counts']['windows']:,} windows ({read_manifest(out, 3)['counts']['windows']:,} soft"
        in (capsys.readouterr().out)
    )
    assert run_cli("select", "--labels", out, "--out", str(tmp_path / "sel"), "--budget", "5", "--generation", "4") == 2
    assert "has generations 1..3, not 4" in capsys.readouterr().err


@pytest.mark.slow  # 20 s or more on the 2-core CI machine: run before resolving (pytest -m slow)
def test_overwrite_waits_for_no_one_and_refuses_under_a_live_writer(tmp_path, squad_pairs, tiny_models, capsys):
    rows = three_files(squad_pairs)[0]
    put_jsonl(tmp_path / "pairs.jsonl", rows)
    out = str(tmp_path / "labels")
    label = ["label", "--pairs", str(tmp_path / "pairs.jsonl"), "--out", out, "--teacher", tiny_models["teacher_a"]]
    assert run_cli(*label, *ARGS) == 0
    with Lease(out, "label"):  # another run at work on this output
        assert run_cli(*label, *ARGS, "--overwrite") == 2
        assert "--overwrite refused: another run is writing this output (`qadist label` pid" in capsys.readouterr().err
    assert ids_of(out) == [r["id"] for r in rows]  # untouched
    with Lease(out, "label", overwrite=True):  # an --overwrite at work: no one writes under it
        assert run_cli(*label, *ARGS) == 2
        assert "an --overwrite run is replacing this output" in capsys.readouterr().err
    assert run_cli(*label, *ARGS, "--overwrite") == 0  # alone: goes through
    assert not list(Path(out, "_writers").glob("*.json"))  # leases are released


@pytest.mark.slow
def test_two_incremental_runs_at_once_commit_each_pair_once(
    s3_bucket, s3_server, squad_pairs, tiny_models, caplog, monkeypatch
):
    """Generation 1 holds day 1. Run A plans day 2 and is held at its commit; meanwhile day 3 arrives
    and run B plans days 2 and 3 (reusing A's day-2 shards), labels day 3 and commits generation 2.
    A's commit then finds generation 2 taken with another plan, plans again: nothing is left."""
    import boto3
    import s3_faults
    from botocore.config import Config

    files = three_files(squad_pairs)
    pairs, out = f"{s3_bucket}/pairs", f"{s3_bucket}/labels"
    cfg = LabelConfig(pairs=pairs, out=out, teachers=[tiny_models["teacher_a"]], rows_per_shard=20,
                      max_seq_len=128, doc_stride=32, batch_size=16)  # fmt: skip
    storage.write_bytes(f"{pairs}/day-1.jsonl", "".join(json.dumps(r) + "\n" for r in files[0]).encode())
    run_label(cfg)
    storage.write_bytes(f"{pairs}/day-2.jsonl", "".join(json.dumps(r) + "\n" for r in files[1]).encode())
    injector = s3_faults.install(s3_server)
    try:
        # A's commit is held until B has committed. boto3 gives up on a reply after 60 s by default and
        # tries again (unstalled): A then committed first whenever B took longer, on a loaded machine.
        # So this process's client waits as long as the stall (Ray's workers, which write shards, keep theirs).
        patient = boto3.client("s3", region_name=storage.s3_region(), endpoint_url=storage.s3_endpoint(),
                               config=Config(read_timeout=600, retries={"total_max_attempts": 3}))  # fmt: skip
        monkeypatch.setattr(storage, "s3_client", lambda: patient)
        held = injector.add("stall", method="PUT", path=r"/labels/_manifest-000002\.json$", seconds=600, times=1)
        results: dict[str, object] = {}
        a = threading.Thread(target=lambda: results.setdefault("a", run_label(cfg)))
        a.start()
        assert held.entered.wait(120), "run A never reached its commit"
        storage.write_bytes(f"{pairs}/day-3.jsonl", "".join(json.dumps(r) + "\n" for r in files[2]).encode())
        with caplog.at_level("INFO", logger="qadist.label.stage"):
            results["b"] = run_label(cfg)
            held.release.set()
            a.join(120)
    finally:
        injector.clear()
    b_gen = json.loads(storage.read_text(f"{out}/_manifest-000002.json"))
    print(f"\nB committed generation 2: {b_gen['run']['shards_computed']} computed, {b_gen['run']['shards_skipped']} "
          f"reused of A's; A: {'planned again' if 'planning again' in caplog.text else '?'}")  # fmt: skip
    assert b_gen["run"]["shards_skipped"] == 2 and b_gen["run"]["shards_computed"] == 2
    assert "another run committed generation 2" in caplog.text
    assert not storage.exists(f"{out}/_manifest-000003.json")
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 120
    assert json.loads(json.dumps(results["a"]))["counts"] == json.loads(json.dumps(results["b"]))["counts"]


def exactly_once_across(out: str, rows: list[dict], generations: int) -> None:
    """Every row once across the committed generations (window 0 once per id), none twice, and no
    shard under the output that no generation lists."""
    manifest = read_manifest(out)
    assert len(manifest["generations"]) == generations
    table = pa.concat_tables([read_shard(storage.join(out, s["path"]), ["id", "window"]) for s in manifest["shards"]])
    keys = list(zip(table["id"].to_pylist(), table["window"].to_pylist()))
    assert len(keys) == len(set(keys)) == manifest["counts"]["windows"]
    assert sorted(i for i, w in keys if w == 0) == sorted(r["id"] for r in rows)
    assert sorted(storage.list_files(storage.join(out, "shards"))) == sorted(
        storage.join(out, s["path"]) for s in manifest["shards"]
    )


@pytest.mark.slow
def test_driver_killed_mid_commit_of_generation_2_and_an_actor_killed_in_generation_3(
    s3_bucket, s3_server, squad_pairs, tiny_models
):
    """Generation 2's commit stalls and the CLI is SIGKILLed: readers still see generation 1 alone,
    the re-run commits generation 2 from the finished shards. Generation 3 then loses its teacher
    actor twice mid-run: Ray restarts it, the generation commits. Every pair once at each step."""
    import os
    import signal

    import s3_faults
    from test_label_faults import _cli, _finish, _kill_when, _our_teacher_pids, label_args

    files = three_files(squad_pairs)
    pairs, out = f"{s3_bucket}/pairs", f"{s3_bucket}/labels"
    args = label_args(pairs, out, tiny_models["teacher_a"])

    def put(name: str, rows: list[dict]) -> None:
        storage.write_bytes(f"{pairs}/{name}", "".join(json.dumps(r) + "\n" for r in rows).encode())

    put("day-1.jsonl", files[0])
    code, err = _finish(_cli(args))
    assert code == 0, err[-3000:]

    put("day-2.jsonl", files[1])
    injector = s3_faults.install(s3_server)
    try:
        rule = injector.add("stall", method="PUT", path=r"/labels/_manifest-000002\.json$", seconds=240, times=1)
        _kill_when(_cli(args), rule)
    finally:
        injector.clear()
    assert not storage.exists(f"{out}/_manifest-000002.json")
    assert sorted(ids_of(out)) == sorted(r["id"] for r in files[0])  # generation 2 is invisible
    code, err = _finish(_cli(args))
    assert code == 0, err[-3000:]
    gen_2 = json.loads(storage.read_text(f"{out}/_manifest-000002.json"))
    assert gen_2["run"]["shards_skipped"] == 2 and gen_2["run"]["shards_computed"] == 0
    exactly_once_across(out, files[0] + files[1], 2)

    put("day-3.jsonl", files[2])
    kills: list[int] = []
    proc = _cli([*args, "--batch-size", "4"])

    def killer() -> None:  # SIGKILL the teacher actor twice while generation 3 is labelled
        deadline = time.time() + 120
        while len(kills) < 2 and time.time() < deadline and proc.poll() is None:
            pids = _our_teacher_pids()
            if pids:
                time.sleep(2.0)  # let it load and start a block
                try:
                    os.kill(pids[0], signal.SIGKILL)
                    kills.append(pids[0])
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    code, err = _finish(proc)
    thread.join(5)
    assert code == 0, err[-3000:]
    gen_3 = json.loads(storage.read_text(f"{out}/_manifest-000003.json"))
    print(f"\ngeneration 2 after the killed commit: {gen_2['run']['shards_skipped']} shards reused; generation 3: "
          f"teacher actor SIGKILLed {len(kills)}x, {gen_3['counts']['pairs_labeled']} pairs committed")  # fmt: skip
    assert len(kills) >= 1
    exactly_once_across(out, files[0] + files[1] + files[2], 3)


@pytest.mark.slow  # two label runs: about 20 s on the 2-core CI machine
def test_a_label_run_beside_a_pairs_run_writing_its_parts_labels_only_committed_pairs(
    tmp_path, squad_pairs, tiny_models, capsys
):
    """A `qadist pairs` output whose generation 2 is being written (its part files in `pairs/` as a pairs
    run names them, its writer's lease live, no manifest yet): `qadist label` labels generation 1's pairs
    only. Once the pairs run commits, the next label run labels generation 2's, each pair once."""
    rows = three_files(squad_pairs)
    root, out = tmp_path / "pairs-out", str(tmp_path / "labels")
    put_jsonl(root / "pairs" / "part-00000.jsonl", rows[0])
    (root / "_qadist_pairs.json").write_text(json.dumps({"stage": "pairs"}))
    gen1 = {"generation": 1, "stage": "pairs", "files": {"pairs": [{"path": "pairs/part-00000.jsonl", "rows": 40}]}}
    (root / "_manifest.json").write_text(json.dumps(gen1))
    label = ["label", "--pairs", str(root / "pairs"), "--out", out, "--teacher", tiny_models["teacher_a"], *ARGS]
    with Lease(str(root), "pairs"):  # generation 2's run, still at work: parts written, nothing committed
        put_jsonl(root / "pairs" / "g000002-part-00000.jsonl", rows[1])
        put_jsonl(root / "pairs" / "g000002-part-00001.jsonl", rows[2][:10])
        assert run_cli(*label) == 0
    assert sorted(ids_of(out)) == sorted(r["id"] for r in rows[0])
    assert [i["uri"] for i in read_manifest(out)["inputs"]] == [str(root / "pairs" / "part-00000.jsonl")]
    assert "40 new rows in 1 file(s)" in capsys.readouterr().out

    parts = [{"path": f"pairs/g000002-part-0000{i}.jsonl", "rows": n} for i, n in ((0, 40), (1, 10))]
    (root / "_manifest-000002.json").write_text(json.dumps({**gen1, "generation": 2, "files": {"pairs": parts}}))
    assert run_cli(*label) == 0
    assert "50 new rows in 2 file(s)" in capsys.readouterr().out
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 90 and set(ids) == {r["id"] for r in rows[0] + rows[1] + rows[2][:10]}
    assert sorted(ids_of(out, 2)) == sorted(r["id"] for r in rows[1] + rows[2][:10])
    assert read_manifest(out, 2)["pairs_generation"] == 2
