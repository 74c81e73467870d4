"""`qadist label` under faults: exactly-once output on local Ray with moto's S3 server.

Faults: an unlisted stray file, transient S3 errors (503 SlowDown, 500, dropped connections, a
lost reply to a committed write) injected by `s3_faults` in front of moto for the driver and the
Ray workers alike, S3 errors past the retry limit, permanent S3 errors, a teacher whose forward
always raises, a SIGKILLed teacher actor, the same job twice (one after the other and at once),
and (slow, CLI subprocesses) the driver SIGKILLed mid-upload and shard writes failing past retries.
Every test runs under a wall-clock limit (`limit`: faulthandler ends the process on a hang).
Node loss is in test_label_node_loss.py.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import s3_faults

from qadist import storage
from qadist.config import LabelConfig
from qadist.errors import UserError
from qadist.label.stage import run_label
from qadist.shards import read, read_manifest, read_shard

pytestmark = pytest.mark.usefixtures("ray_local")
LIMIT_S = 240  # per test; a hang past it ends the test process with every thread's traceback


@pytest.fixture(autouse=True)
def limit():
    faulthandler.dump_traceback_later(LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def faults(s3_server):
    injector = s3_faults.install(s3_server)
    yield injector
    injector.clear()


def run_cli(*args: str) -> int:
    from qadist.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["label", *args])
    return exit_info.value.code


def put_pairs(uri: str, pairs: list[dict]) -> None:
    storage.write_bytes(uri, "".join(json.dumps(p) + "\n" for p in pairs).encode("utf-8"))


def small_pairs(squad_pairs, n: int, tag: str = "") -> list[dict]:
    return [
        {"id": f"{p['id']}{tag}", "question": p["question"], "context": p["context"][:600]} for p in squad_pairs[:n]
    ]


def label_args(pairs: str, out: str, teacher: str, rows: int = 20) -> list[str]:
    return [
        "--pairs",
        pairs,
        "--out",
        out,
        "--teacher",
        teacher,
        "--rows-per-shard",
        str(rows),
        "--max-seq-len",
        "128",
        "--doc-stride",
        "32",
        "--batch-size",
        "16",
    ]


def exactly_once(out: str, pairs: list[dict]) -> tuple[dict, pa.Table]:
    """The manifest's shards hold every input pair, each exactly once (window 0 once per id, no
    (id, window) twice), and the output holds no shard the manifest does not list."""
    manifest = read_manifest(out)
    table = pa.concat_tables([read_shard(storage.join(out, s["path"]), ["id", "window"]) for s in manifest["shards"]])
    keys = list(zip(table.column("id").to_pylist(), table.column("window").to_pylist()))
    assert len(keys) == len(set(keys)) == manifest["counts"]["windows"]
    firsts = [i for i, w in keys if w == 0]
    assert len(firsts) == len(set(firsts)) == len(pairs) and set(firsts) == {p["id"] for p in pairs}
    assert manifest["counts"]["pairs_in"] == manifest["counts"]["pairs_labeled"] == len(pairs)
    assert sorted(storage.list_files(storage.join(out, "shards"))) == sorted(
        storage.join(out, s["path"]) for s in manifest["shards"]
    )
    return manifest, table


def s3_keys(uri: str) -> list[str]:
    bucket, prefix = storage.split_s3(uri)
    pages = (
        storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    )
    return sorted(o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", []))


# ---- the commit protocol: readers read only listed shards; the sweep ------------------------------


@pytest.mark.slow
def test_stray_files_are_never_read_and_are_swept_after_commit(tmp_path, squad_pairs, tiny_models):
    pairs = small_pairs(squad_pairs, 60)
    put_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    out = str(tmp_path / "labels")
    args = label_args(str(tmp_path / "pairs.jsonl"), out, tiny_models["student"])
    assert run_cli(*args) == 0
    manifest, table = exactly_once(out, pairs)
    listed = {s["path"]: os.stat(os.path.join(out, s["path"])).st_mtime_ns for s in manifest["shards"]}

    # Leftovers: a whole extra shard (a copy of a listed one: every row would be doubled if it were
    # read), a rejects file no manifest names, an old temporary file, and a fresh one (as a
    # concurrent writer's would be).
    shards = Path(out, "shards")
    first = shards / manifest["shards"][0]["path"].split("/")[1]
    (shards / "stray.r000000000-000000020.parquet").write_bytes(first.read_bytes())
    Path(out, "rejects").mkdir(exist_ok=True)
    Path(out, "rejects", "stray.jsonl").write_text('{"id": "x"}\n')
    for stray in (shards / "stray.r000000000-000000020.parquet", Path(out, "rejects", "stray.jsonl")):
        os.utime(
            stray, (time.time() - 5, time.time() - 5)
        )  # an earlier run's leftovers (the sweep spares its own second)
    old_tmp, fresh_tmp = shards / ".tmp-0123-old.parquet", shards / ".tmp-4567-fresh.parquet"
    old_tmp.write_bytes(b"partial")
    os.utime(old_tmp, (time.time() - 3600, time.time() - 3600))

    assert read(out).count() == manifest["counts"]["windows"] == table.num_rows  # the stray shard is not read

    fresh_tmp.write_bytes(b"partial")
    os.utime(fresh_tmp, (time.time() + 3600, time.time() + 3600))  # "started after this run": a live writer's
    assert run_cli(*args) == 0  # same job again: a no-op that sweeps what the manifest does not list
    assert (
        not (shards / "stray.r000000000-000000020.parquet").exists()
        and not Path(out, "rejects", "stray.jsonl").exists()
    )
    assert not old_tmp.exists() and fresh_tmp.exists()
    assert {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in listed} == listed  # listed shards untouched
    fresh_tmp.unlink()
    exactly_once(out, pairs)


# ---- transient S3 errors: retried by the driver and the workers -----------------------------------


@pytest.mark.slow  # 20 s or more on the 2-core CI machine: run before resolving (pytest -m slow)
def test_transient_s3_errors_are_retried_and_orphaned_uploads_aborted(s3_bucket, faults, squad_pairs, tiny_models):
    pairs = small_pairs(squad_pairs, 60)
    put_pairs(f"{s3_bucket}/pairs/part-0.jsonl", pairs)
    out = f"{s3_bucket}/labels"
    # A killed writer's multipart upload under the output, from before this run.
    bucket, key = storage.split_s3(out)
    client = storage.s3_client()
    orphan = client.create_multipart_upload(Bucket=bucket, Key=f"{key}/shards/killed.parquet")["UploadId"]
    client.upload_part(
        Bucket=bucket, Key=f"{key}/shards/killed.parquet", UploadId=orphan, PartNumber=1, Body=b"x" * 1024
    )
    time.sleep(1.1)  # S3 timestamps have a one-second resolution

    shard = r"/labels/shards/[^?]+\.parquet$"
    rules = [
        faults.add(
            "503", method="GET", path=r"/pairs/part-0\.jsonl", times=3
        ),  # reads: planning (driver) and blocks (workers)
        faults.add("500", method="PUT", path=shard, times=2),  # shard writes (workers)
        faults.add("drop", method="PUT", path=shard, times=1),
        faults.add("503", method="PUT", path=r"/labels/_manifest\.json$", times=1),  # the commit
        faults.add("drop", method="PUT", path=r"/labels/_manifest\.json$", times=1),
        faults.add(
            "lost_reply", method="PUT", path=r"/labels/_manifest\.json$", times=1
        ),  # stored, but the answer is lost
        faults.add("500", method="HEAD", path=r"/labels/_qadist_label\.json$", times=1),  # the claim: exists?
        faults.add("503", method="PUT", path=r"/labels/_qadist_label\.json$", times=1),  # and its conditional put
    ]
    assert run_cli(*label_args(f"{s3_bucket}/pairs", out, tiny_models["student"])) == 0
    print(f"\ninjected {faults.count()} faults: {sorted((k, m) for k, m, _ in faults.injected)}")
    assert [r.hits for r in rules] == [r.times for r in rules], "every fault was injected"
    manifest, _ = exactly_once(out, pairs)
    assert manifest["run"]["shards_computed"] == 3  # the lost reply's retry found our own manifest (412) and kept it
    assert s3_keys(out) == sorted(
        ["_manifest.json", "_qadist_label.json", manifest["ids"]["path"], *(s["path"] for s in manifest["shards"])]
    )  # no duplicates
    assert client.list_multipart_uploads(Bucket=bucket, Prefix=f"{key}/").get("Uploads", []) == []


def test_commit_errors_past_the_retry_limit_fail_cleanly_and_a_rerun_succeeds(
    s3_bucket, faults, squad_pairs, tiny_models, monkeypatch, caplog
):
    pairs = small_pairs(squad_pairs, 40)
    put_pairs(f"{s3_bucket}/pairs.jsonl", pairs)
    out = f"{s3_bucket}/labels"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # the driver's clients (the commit is the driver's)
    rule = faults.add("503", method="PUT", path=r"/labels/_manifest\.json$", times=None)
    args = label_args(f"{s3_bucket}/pairs.jsonl", out, tiny_models["student"])
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="SlowDown"), caplog.at_level("ERROR"):
        run_label(
            LabelConfig(pairs=args[1], out=out, teachers=[args[5]], rows_per_shard=20, max_seq_len=128, doc_stride=32)
        )
    assert rule.hits == 3  # three attempts, then the error
    assert "_manifest.json" not in s3_keys(out) and len(s3_keys(f"{out}/shards")) == 2
    with pytest.raises(UserError, match="no _manifest.json"):
        read_manifest(out)
    faults.clear()
    assert run_cli(*args) == 0
    manifest, _ = exactly_once(out, pairs)
    assert manifest["run"]["shards_skipped"] == 2 and manifest["run"]["shards_computed"] == 0

    # A stray shard (a copy of a listed one: read, it would double rows) is never read.
    first = manifest["shards"][0]["path"]
    storage.write_bytes(f"{out}/shards/stray.r000000000-000000020.parquet", storage.read_bytes(f"{out}/{first}"))
    assert read(out).count() == manifest["counts"]["windows"]


def test_permanent_s3_errors_exit_2_naming_the_uri_without_retrying(
    s3_bucket, faults, squad_pairs, tiny_models, monkeypatch, capsys
):
    pairs = small_pairs(squad_pairs, 5)
    put_pairs(f"{s3_bucket}/pairs.jsonl", pairs)
    teacher = tiny_models["student"]
    assert run_cli(*label_args(f"{s3_bucket}/pairs.jsonl", "s3://qadist-no-such-bucket/labels", teacher)) == 2
    err = capsys.readouterr().err
    assert (
        "s3://qadist-no-such-bucket/labels (--out): bucket 'qadist-no-such-bucket' does not exist" in err
        and "Traceback" not in err
    )
    assert run_cli(*label_args("s3://qadist-no-such-bucket/pairs.jsonl", f"{s3_bucket}/labels", teacher)) == 2
    assert "s3://qadist-no-such-bucket/pairs.jsonl (--pairs): bucket" in capsys.readouterr().err

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "QADISTBADKEY")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # boto3 caches credentials in its default session
    rule = faults.add("403", access_key="QADISTBADKEY", times=None)
    started = time.perf_counter()
    assert run_cli(*label_args(f"{s3_bucket}/pairs.jsonl", f"{s3_bucket}/labels", teacher)) == 2
    err = capsys.readouterr().err
    print(
        f"\nbad credentials: exit 2 after {time.perf_counter() - started:.2f}s, {rule.hits} request(s): {err.strip()}"
    )
    assert f"{s3_bucket}/pairs.jsonl (--pairs): access denied" in err and "check the AWS credentials" in err
    assert rule.hits == 1  # refused credentials are not retried
    monkeypatch.undo()
    boto3.DEFAULT_SESSION = None
    assert s3_keys(f"{s3_bucket}/labels") == []


# ---- compute faults --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_teacher(tmp_path_factory, tiny_models) -> str:
    """A teacher whose forward always raises: 16 position embeddings for windows of up to 128 tokens."""
    from transformers import AutoModelForQuestionAnswering

    from qadist.models import load_tokenizer, tiny_config

    tok = load_tokenizer(tiny_models["student"])
    path = tmp_path_factory.mktemp("broken-teacher")
    AutoModelForQuestionAnswering.from_config(tiny_config("bert", len(tok), 1, 32, max_positions=16)).save_pretrained(
        path
    )
    tok.save_pretrained(path)
    return str(path)


def test_a_teacher_that_always_raises_fails_fast_without_a_manifest(tmp_path, squad_pairs, broken_teacher, caplog):
    pairs = small_pairs(squad_pairs, 40)
    put_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    out = str(tmp_path / "labels")
    started = time.perf_counter()
    with (
        pytest.raises(Exception, match="must match the size of tensor") as failure,
        caplog.at_level("ERROR", logger="qadist.label.stage"),
    ):
        run_label(
            LabelConfig(
                pairs=str(tmp_path / "pairs.jsonl"),
                out=out,
                teachers=[broken_teacher],
                rows_per_shard=20,
                max_seq_len=128,
                doc_stride=32,
            )
        )
    print(
        f"\nfailed after {time.perf_counter() - started:.1f}s with {type(failure.value).__name__}: "
        f"{next(line for line in str(failure.value).splitlines() if 'Error:' in line)}"
    )
    assert "no manifest written" in caplog.text
    assert not Path(out, "_manifest.json").exists() and not list(Path(out).glob("shards/*.parquet"))


def _our_teacher_pids() -> list[int]:
    """Teacher actor processes of this test process's Ray (descendants of this process only)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "BlockTeacher" not in cmd:
            continue
        pid = int(entry)
        while pid > 1:
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                break
            if pid == me:
                found.append(int(entry))
                break
    return found


@pytest.mark.slow
def test_teacher_actor_sigkilled_mid_batch_run_completes_exactly_once(tmp_path, squad_pairs, tiny_models):
    pairs = [{"id": p["id"], "question": p["question"], "context": p["context"]} for p in squad_pairs[:400]]
    put_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    out = tmp_path / "labels"
    kills: list[tuple[int, int]] = []

    def killer():  # SIGKILL the teacher actor twice while blocks are being labelled
        deadline = time.time() + LIMIT_S / 2
        while len(kills) < 2 and time.time() < deadline and not Path(out, "_manifest.json").exists():
            done = len(list(out.glob("shards/*.parquet")))
            pids = _our_teacher_pids()
            if pids and done >= 2 * len(kills) + 1:
                os.kill(pids[0], signal.SIGKILL)
                kills.append((pids[0], done))
                time.sleep(1.0)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    manifest = run_label(
        LabelConfig(
            pairs=str(tmp_path / "pairs.jsonl"),
            out=str(out),
            teachers=[tiny_models["teacher_a"]],
            rows_per_shard=25,
            max_seq_len=384,
            doc_stride=128,
            batch_size=8,
        )
    )
    thread.join(5)
    print(
        f"\nteacher actor SIGKILLed {len(kills)}x (pid, shards done at the kill): {kills}; "
        f"pairs in {manifest['counts']['pairs_in']}, labelled {manifest['counts']['pairs_labeled']}"
    )
    assert len(kills) == 2 and all(done < 16 for _, done in kills), "killed while blocks were still pending"
    exactly_once(str(out), pairs)


# ---- the same job twice ----------------------------------------------------------------------------


@pytest.mark.slow
def test_same_job_twice_one_after_the_other_and_at_once(s3_bucket, squad_pairs, tiny_models, caplog):
    pairs = small_pairs(squad_pairs, 60)
    put_pairs(f"{s3_bucket}/pairs.jsonl", pairs)
    cfg = LabelConfig(
        pairs=f"{s3_bucket}/pairs.jsonl",
        out=f"{s3_bucket}/at-once",
        teachers=[tiny_models["student"]],
        rows_per_shard=20,
        max_seq_len=128,
        doc_stride=32,
    )
    results: list = [None, None]

    def job(i: int) -> None:
        try:
            results[i] = run_label(cfg)
        except BaseException as e:  # noqa: BLE001 (reported by the assertion below)
            results[i] = e

    with caplog.at_level("INFO", logger="qadist.label.stage"):
        threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(isinstance(r, dict) for r in results), results
    stored = read_manifest(cfg.out)
    as_stored = [json.loads(json.dumps(r)) for r in results]
    assert as_stored[0] == as_stored[1] == stored  # both runs answer with the one committed manifest
    outcome = ("a manifest appeared" in caplog.text, "already complete" in caplog.text)
    print(
        "\nat once: both exit 0; one manifest; "
        f"loser {'lost the conditional commit' if outcome[0] else 'found it complete'}"
    )
    assert any(outcome)
    exactly_once(cfg.out, pairs)
    listed = [stored["ids"]["path"], *(s["path"] for s in stored["shards"])]  # the id summary and the shards
    assert s3_keys(cfg.out) == sorted(["_manifest.json", "_qadist_label.json", *listed])

    before = storage.read_bytes(f"{cfg.out}/_manifest.json")
    caplog.clear()
    with caplog.at_level("INFO", logger="qadist.label.stage"):
        again = run_label(cfg)  # one after the other: a no-op
    assert "already complete" in caplog.text and json.loads(json.dumps(again)) == stored
    assert storage.read_bytes(f"{cfg.out}/_manifest.json") == before


# ---- slow: the driver killed mid-upload; worker writes failing past the retry limit (CLI subprocesses) ----


def _cli(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="qr-"), RAY_ADDRESS="", **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "qadist.cli", "label", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = LIMIT_S) -> tuple[int, str]:
    from test_label import _kill_group

    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc.pid)
    return proc.returncode, err


def _kill_when(proc: subprocess.Popen, rule: s3_faults.Rule) -> None:
    from test_label import _kill_group

    assert rule.entered.wait(LIMIT_S / 2), "the stalled upload never started"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    _kill_group(proc.pid)
    proc.communicate()


@pytest.mark.slow
def test_driver_sigkilled_mid_upload_leaves_nothing_visible_and_rerun_repairs(
    s3_bucket, faults, squad_pairs, tiny_models
):
    pairs = small_pairs(squad_pairs, 100)
    put_pairs(f"{s3_bucket}/pairs.jsonl", pairs)
    out = f"{s3_bucket}/labels"
    args = label_args(f"{s3_bucket}/pairs.jsonl", out, tiny_models["student"])

    # 1. Killed while a worker uploads the third shard: that object never appears.
    third = r"/labels/shards/pairs\.jsonl\.r000000040-000000060\.parquet$"
    rule = faults.add("stall", method="PUT", path=third, seconds=LIMIT_S, times=1)
    _kill_when(_cli(args), rule)
    after_first = s3_keys(out)
    assert "shards/pairs.jsonl.r000000040-000000060.parquet" not in after_first and "_manifest.json" not in after_first
    with pytest.raises(UserError, match="no _manifest.json"):
        read(out)

    # 2. Killed while the driver uploads the manifest: no manifest, so readers see no output at all.
    faults.clear()
    rule = faults.add("stall", method="PUT", path=r"/labels/_manifest\.json$", seconds=LIMIT_S, times=1)
    _kill_when(_cli(args), rule)
    after_second = s3_keys(out)
    assert "_manifest.json" not in after_second and len([k for k in after_second if k.startswith("shards/")]) == 5
    with pytest.raises(UserError, match="no _manifest.json"):
        read_manifest(out)

    # 3. The same command again: resumes, commits, every pair exactly once.
    faults.clear()
    code, err = _finish(_cli(args))
    assert code == 0, err[-3000:]
    manifest, _ = exactly_once(out, pairs)
    print(
        f"\nkilled mid-upload: after kill 1 {len(after_first)} objects (3rd shard absent), after kill 2 "
        f"{len(after_second)} (no manifest); re-run: {manifest['run']['shards_skipped']} skipped, "
        f"{manifest['run']['shards_computed']} computed, {manifest['counts']['pairs_labeled']}/{len(pairs)} pairs once"
    )
    assert manifest["run"]["shards_skipped"] == 5 and manifest["run"]["shards_computed"] == 0


@pytest.mark.slow
def test_shard_writes_failing_past_retries_fail_cleanly_and_rerun_succeeds(s3_bucket, faults, squad_pairs, tiny_models):
    pairs = small_pairs(squad_pairs, 60)
    put_pairs(f"{s3_bucket}/pairs.jsonl", pairs)
    out = f"{s3_bucket}/labels"
    args = label_args(f"{s3_bucket}/pairs.jsonl", out, tiny_models["student"])
    rule = faults.add("503", method="PUT", path=r"/labels/shards/[^?]+\.parquet$", times=None)
    started = time.perf_counter()
    code, err = _finish(_cli(args, {"AWS_MAX_ATTEMPTS": "3"}))  # workers inherit the setting from the CLI's Ray
    elapsed = time.perf_counter() - started
    print(
        f"\nshard PUTs answered 503 past 3 attempts: exit {code} after {elapsed:.0f}s, {rule.hits} faulted PUTs; "
        f"error: {next((line for line in err.splitlines() if 'SlowDown' in line), '')[:200]}"
    )
    assert code == 1 and "SlowDown" in err and "no manifest written" in err
    assert s3_keys(out) == ["_qadist_label.json"]
    faults.clear()
    code, err = _finish(_cli(args))
    assert code == 0, err[-3000:]
    exactly_once(out, pairs)
