"""`qadist label` through the real CLI on local Ray: S3 in and out, bad rows, settings changes, resume.

The default tests drive `qadist.cli.main` in-process (it reuses the session's Ray). The resume test
runs the CLI in a subprocess (its own embedded Ray), SIGKILLs it half way and runs it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from qadist import storage
from qadist.errors import UserError
from qadist.shards import SCHEMA_VERSION, list_values, read, read_footer, read_manifest, read_shard

pytestmark = pytest.mark.usefixtures("ray_local")


def run_cli(*args: str) -> int:
    from qadist.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["label", *args])
    return exit_info.value.code


def put_jsonl(uri: str, rows: list) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    storage.write_bytes(uri, ("\n".join(lines) + "\n").encode("utf-8"))


def load_output(out: str) -> tuple[dict, pa.Table]:
    manifest = read_manifest(out)
    tables = [read_shard(storage.join(out, s["path"])) for s in manifest["shards"]]
    return manifest, pa.concat_tables(tables)


def test_label_s3_two_teacher_ensemble(s3_bucket, squad_pairs, tiny_models, ray_local):
    """SQuAD sample (answers dropped) in moto S3 -> two tiny teachers -> shards + manifest in S3,
    counts conserved, windows as make_windows makes them, logits equal to a direct in-process run."""
    import torch

    from qadist.inference import run_windows
    from qadist.models import load_qa_model, load_tokenizer
    from qadist.squad.features import make_windows

    pairs = [{k: v for k, v in p.items() if k != "answers"} for p in squad_pairs[:1200]]  # 4 articles
    half = len(pairs) // 2
    put_jsonl(f"{s3_bucket}/pairs/part-0.jsonl", pairs[:half])
    put_jsonl(f"{s3_bucket}/pairs/part-1.jsonl", pairs[half:])
    out = f"{s3_bucket}/labels"
    teachers = [tiny_models["teacher_a"], tiny_models["teacher_b"]]
    code = run_cli(
        "--pairs",
        f"{s3_bucket}/pairs",
        "--out",
        out,
        "--teacher",
        teachers[0],
        "--teacher",
        teachers[1],
        "--rows-per-shard",
        "400",
        "--batch-size",
        "32",
        "--max-seq-len",
        "256",
        "--doc-stride",
        "64",
    )
    assert code == 0

    manifest, table = load_output(out)
    counts = manifest["counts"]
    assert counts["pairs_in"] == len(pairs) == counts["pairs_labeled"] + counts["pairs_rejected"]
    assert counts["pairs_rejected"] == 0 and manifest["rejects"] == []
    assert [s["path"] for s in manifest["shards"]] == [
        "shards/part-0.jsonl.r000000000-000000400.parquet",
        "shards/part-0.jsonl.r000000400-000000600.parquet",
        "shards/part-1.jsonl.r000000000-000000400.parquet",
        "shards/part-1.jsonl.r000000400-000000600.parquet",
    ]
    assert sorted(storage.list_files(f"{out}/shards")) == sorted(f"{out}/{s['path']}" for s in manifest["shards"])
    assert manifest["teachers"] == [{"name": t, "revision": "local"} for t in teachers]

    tok = load_tokenizer(teachers[0])
    expected = make_windows({k: [p[k] for p in pairs] for k in ("id", "question", "context")}, tok, 256, 64, 64)
    assert counts["windows"] == table.num_rows == len(expected["id"])
    assert table.column("id").to_pylist() == expected["id"] and table.column("window").to_pylist() == expected["window"]
    assert table.column("input_ids").to_pylist() == expected["input_ids"]
    assert table.column("offsets").to_pylist() == [[list(o) for o in w] for w in expected["offsets"]]
    assert set(table.column("start_position").to_pylist()) == {-1}  # no gold answers given
    assert table.schema.field("start_logits").type == pa.list_(pa.float16())
    assert "answers" not in table.column_names

    # The direct run: the same models in this process, on every 5th window (in other batches, so
    # other padding) -> the same logits to float16 precision.
    picked = list(range(0, len(expected["id"]), 5))
    models = [load_qa_model(t).eval() for t in teachers]
    runs = [
        run_windows(
            m,
            [expected["input_ids"][i] for i in picked],
            [expected["token_type_ids"][i] for i in picked],
            tok.pad_token_id,
            64,
            torch.device("cpu"),
        )
        for m in models
    ]
    stored_start, stored_end = list_values(table["start_logits"]), list_values(table["end_logits"])
    for j, i in enumerate(picked):
        for k, stored in ((0, stored_start[i]), (1, stored_end[i])):
            direct = np.mean([r[j][k] for r in runs], axis=0).astype(np.float16)
            assert stored.dtype == np.float16 and stored.shape == direct.shape == (len(expected["input_ids"][i]),)
            np.testing.assert_allclose(stored.astype(np.float32), direct.astype(np.float32), rtol=2e-3, atol=2e-3)

    header, shard, _ = read_footer(f"{out}/{manifest['shards'][0]['path']}")
    assert header["schema_version"] == SCHEMA_VERSION and header["tokenizer"] == manifest["tokenizer"]
    assert shard["pairs_in"] == 400
    ds = read(out, tokenizer_hash=manifest["tokenizer"]["hash"], columns=["id", "start_logits"])
    assert ds.count() == counts["windows"]
    with pytest.raises(UserError, match="tokenizer"):
        read(out, tokenizer_hash="0" * 16)


BAD_KINDS = {
    "missing question": lambda i: {"id": f"bad-{i}", "context": "Some context."},
    "missing context": lambda i: {"id": f"bad-{i}", "question": "Why?"},
    "missing id": lambda i: {"question": "Why?", "context": "Some context."},
    "empty context": lambda i: {"id": f"bad-{i}", "question": "Why?", "context": "   "},
    "null question": lambda i: {"id": f"bad-{i}", "question": None, "context": "Some context."},
    "non-string question": lambda i: {"id": f"bad-{i}", "question": 42, "context": "Some context."},
    "1 MB context": lambda i: {"id": f"bad-{i}", "question": "Why?", "context": "word " * 200_000},
    "not JSON": lambda i: '{"id": "broken-%d", "question": "unterminated' % i,
}
REASONS = {
    "missing question": "missing field 'question'",
    "missing context": "missing field 'context'",
    "missing id": "missing field 'id'",
    "empty context": "field 'context' is empty",
    "null question": "missing field 'question'",
    "non-string question": "field 'question' is int, not a string",
    "1 MB context": "over max_context_chars",
    "not JSON": "not valid JSON",
    "duplicate": "duplicate id",
}


def bad_rows_input(squad_pairs, n_good: int = 180) -> tuple[list, dict[int, str], list[dict]]:
    """Good pairs with ~10% bad rows of every kind mixed in; returns (rows, {line: kind}, good pairs)."""
    good = [{k: v for k, v in p.items() if k != "answers"} for p in squad_pairs[:n_good]]
    rows, kinds, bad = [], {}, 0
    for i, pair in enumerate(good):
        rows.append(pair)
        if i % 9 == 4:  # one bad row every 9 good ones, cycling through every kind (duplicates included)
            kind = (list(BAD_KINDS) + ["duplicate"])[bad % (len(BAD_KINDS) + 1)]
            rows.append(dict(good[bad], question="a later duplicate") if kind == "duplicate" else BAD_KINDS[kind](bad))
            kinds[len(rows)] = kind
            bad += 1
    return rows, kinds, good


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, squad_sample, squad_pairs, tiny_models, ray_local) -> dict:
    """One `qadist label` run over a folder of three formats: official SQuAD JSON (with answers),
    Parquet pairs (with answers) and JSONL pairs (no answers) with ~10% bad rows of every kind."""
    import pyarrow.parquet as pq

    from qadist.squad.io import read_pairs

    root = tmp_path_factory.mktemp("mixed")
    (root / "in").mkdir()
    squad = json.loads(Path(squad_sample).read_text())
    article = dict(squad["data"][0], paragraphs=squad["data"][0]["paragraphs"][:2])
    (root / "in" / "a.json").write_text(json.dumps({"version": "v2.0", "data": [article]}))
    parquet_pairs = [dict(p, id=f"pq-{p['id']}") for p in squad_pairs[200:240]]
    pq.write_table(pa.Table.from_pylist(parquet_pairs), root / "in" / "b.parquet", row_group_size=16)
    rows, kinds, good = bad_rows_input(squad_pairs[300:])  # ids disjoint from a.json's and b.parquet's
    put_jsonl(str(root / "in" / "c.jsonl"), rows)
    out = str(root / "labels")
    args = [
        "--pairs",
        str(root / "in"),
        "--out",
        out,
        "--teacher",
        tiny_models["teacher_a"],
        "--rows-per-shard",
        "70",
        "--max-seq-len",
        "128",
        "--doc-stride",
        "32",
        "--keep-teacher-logits",
        "--combine",
        "mean_probs",
    ]
    code = run_cli(*args)
    manifest, table = load_output(out)
    return {
        "code": code,
        "args": args,
        "out": out,
        "manifest": manifest,
        "table": table,
        "rows": rows,
        "kinds": kinds,
        "good": good,
        "answered": read_pairs(str(root / "in" / "a.json"))[0] + parquet_pairs,
    }


def test_bad_rows_rejected_with_reasons(mixed_run):
    run, manifest, table, kinds = mixed_run, mixed_run["manifest"], mixed_run["table"], mixed_run["kinds"]
    assert run["code"] == 0
    assert set(kinds.values()) == set(REASONS) and 0.08 < len(kinds) / len(run["rows"]) < 0.12
    n_good = len(run["good"]) + len(run["answered"])
    assert manifest["counts"] == {
        "pairs_in": n_good + len(kinds),
        "pairs_labeled": n_good,
        "pairs_rejected": len(kinds),
        "windows": table.num_rows,
    }
    rejects = [
        json.loads(line)
        for rel in manifest["rejects"]
        for line in storage.read_text(f"{run['out']}/{rel}").splitlines()
    ]
    assert {r["row"]: r["reason"] for r in rejects}.keys() == kinds.keys()
    for r in rejects:
        assert REASONS[kinds[r["row"]]] in r["reason"], r
        assert r["source"].endswith("c.jsonl") and r["raw"]
    first_line = {}
    for line, row in enumerate(run["rows"], start=1):
        if isinstance(row, dict) and line not in kinds:
            first_line.setdefault(row["id"], line)
    for r in (r for r in rejects if kinds[r["row"]] == "duplicate"):
        assert r["reason"].endswith(f"(first at c.jsonl row {first_line[r['id']]})")
    labelled = table.column("id").to_pylist()
    assert set(labelled) == {p["id"] for p in run["good"] + run["answered"]}
    assert table.column("window").to_pylist().count(0) == n_good  # every good pair once


def test_squad_json_and_parquet_answers_pass_through(mixed_run, tiny_models):
    from qadist.models import load_tokenizer
    from qadist.squad.features import make_windows

    manifest, table, pairs = mixed_run["manifest"], mixed_run["table"], mixed_run["answered"]
    assert manifest["shards"][0]["path"].startswith("shards/a.json.r") and manifest["combine"] == "mean_probs"
    assert {s["source"].rsplit("/", 1)[1] for s in manifest["shards"]} == {"a.json", "b.parquet", "c.jsonl"}
    tok = load_tokenizer(tiny_models["teacher_a"])
    expected = make_windows(
        {k: [p.get(k) for p in pairs] for k in ("id", "question", "context", "answers")}, tok, 128, 32, 64
    )
    got = table.slice(0, len(expected["id"]))
    assert got.column("id").to_pylist() == expected["id"]
    for k in ("start_position", "end_position", "answers"):
        assert got.column(k).to_pylist() == expected[k], k
    assert any(s > 0 for s in expected["start_position"]) and 0 in expected["start_position"]
    rest = table.slice(len(expected["id"]))  # the JSONL pairs had no answers field
    assert set(rest.column("start_position").to_pylist()) == {-1} and set(rest.column("answers").to_pylist()) == {None}
    start = list_values(table["start_logits"])[0].astype(np.float64)
    assert np.exp(start).sum() == pytest.approx(1.0, abs=2e-2)  # mean_probs stores a log-distribution
    per_teacher = table.column("teacher_start_logits")[0].as_py()  # --keep-teacher-logits: one list per teacher
    assert table.schema.field("teacher_end_logits").type == pa.list_(pa.list_(pa.float16()))
    assert len(per_teacher) == 1 and len(per_teacher[0]) == len(start)
    assert manifest["keep_teacher_logits"] is True


def test_same_settings_do_nothing_other_settings_are_refused(mixed_run, capsys, caplog):
    args, out = mixed_run["args"], mixed_run["out"]
    with caplog.at_level("INFO", logger="qadist.label.stage"):
        assert run_cli(*args) == 0
    assert "already complete" in caplog.text
    assert run_cli(*args[:-2], "--combine", "mean_logits") == 2
    assert "changed: combine" in capsys.readouterr().err
    assert read_manifest(out)["fingerprint"] == mixed_run["manifest"]["fingerprint"]


def test_teachers_with_different_tokenizers_label_through_characters(tmp_path, squad_pairs, tiny_models, capsys):
    """A WordPiece and a SentencePiece teacher on the shared sample: the shards hold the first
    teacher's windows, the ALBERT teacher is projected onto them (banner, header), every pair is
    accounted for, and each window's ALBERT row is a distribution over the stored window."""
    from qadist.models import load_tokenizer
    from qadist.squad.features import make_windows

    pairs = squad_pairs[:40]
    put_jsonl(str(tmp_path / "pairs.jsonl"), pairs)
    bert, albert = tiny_models["teacher_a"], tiny_models["albert"]
    out = str(tmp_path / "labels")
    args = ["--rows-per-shard", "16", "--max-seq-len", "128", "--doc-stride", "32", "--max-query-len", "32"]
    code = run_cli("--pairs", str(tmp_path / "pairs.jsonl"), "--out", out, "--teacher", bert, "--teacher", albert,
                   "--keep-teacher-logits", "--combine", "mean_probs", *args)  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "projection on" in printed and albert in printed
    manifest, table = load_output(out)
    assert manifest["tokenizer"]["name"] == bert
    assert [p["teachers"] for p in manifest["projected_tokenizers"]] == [[albert]]
    assert manifest["counts"]["pairs_in"] == manifest["counts"]["pairs_labeled"] == 40
    want = make_windows({k: [p[k] for p in pairs] for k in ("id", "question", "context")}, load_tokenizer(bert),
                        128, 32, 32)  # fmt: skip
    assert table["id"].to_pylist() == want["id"] and table["input_ids"].to_pylist() == want["input_ids"]
    for rows in table["teacher_start_logits"].to_pylist():
        albert_row = np.exp(np.asarray(rows[1], dtype=np.float64))
        assert albert_row.sum() == pytest.approx(1.0, abs=3e-3)
        assert not np.allclose(rows[0], rows[1])


@pytest.mark.slow
def test_resume_after_sigkill_is_exactly_once(tmp_path, squad_pairs, tiny_models):
    """SIGKILL the driver once some shards exist; the re-run skips them and ends with every pair once."""
    pairs = [{k: v for k, v in p.items() if k != "answers"} for p in squad_pairs[:1200]]
    put_jsonl(str(tmp_path / "pairs.jsonl"), pairs)
    out = tmp_path / "labels"
    ray_tmp = tempfile.mkdtemp(prefix="qr-")  # short: Ray's socket paths must fit in 107 bytes
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_ADDRESS="")
    cmd = [
        sys.executable,
        "-m",
        "qadist.cli",
        "label",
        "--pairs",
        str(tmp_path / "pairs.jsonl"),
        "--out",
        str(out),
        "--teacher",
        tiny_models["teacher_a"],
        "--teacher",
        tiny_models["teacher_b"],
        "--rows-per-shard",
        "50",
        "--num-actors",
        "1",
    ]
    first_log = tmp_path / "first-run.log"
    with open(first_log, "wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(list((out / "shards").glob("*.parquet"))) < 6:
            assert proc.poll() is None, (
                f"the first run ended before it could be killed: {first_log.read_text()[-3000:]}"
            )
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _kill_group(proc.pid)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    assert 6 <= len(first) < 24 and not (out / "_manifest.json").exists()

    log = _run(cmd, env)
    assert log.returncode == 0, log.stderr[-3000:]
    assert f"resume: {len(first)} of 24 shards already finished" in log.stdout  # the console, not the log file
    print("\n" + "\n".join(line for line in log.stdout.splitlines() if "resume:" in line or "label: " in line))
    manifest, table = load_output(str(out))
    assert manifest["run"]["shards_skipped"] == len(first) and manifest["run"]["shards_computed"] == 24 - len(first)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet") if p.name in first} == first
    keys = list(zip(table.column("id").to_pylist(), table.column("window").to_pylist()))
    assert len(keys) == len(set(keys)) == manifest["counts"]["windows"]
    assert {k for k, _ in keys} == {p["id"] for p in pairs} and manifest["counts"]["pairs_labeled"] == len(pairs)
    assert len(list((out / "shards").glob("*.parquet"))) == 24

    # Other settings: refused without --overwrite; with it, the old shards are gone, not mixed in.
    other = [*cmd[: cmd.index("--rows-per-shard")], "--rows-per-shard", "400", "--num-actors", "1"]
    refused = _run(other, env)
    assert refused.returncode == 2 and "changed: rows_per_shard" in refused.stderr
    replaced = _run([*other, "--overwrite"], env)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    manifest = read_manifest(str(out))
    assert sorted(p.name for p in (out / "shards").glob("*.parquet")) == sorted(
        s["path"].split("/")[1] for s in manifest["shards"]
    )
    assert len(manifest["shards"]) == 3 and manifest["counts"]["pairs_labeled"] == len(pairs)


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """The CLI in its own session (so its embedded Ray can be ended with it), with a time limit."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        _kill_group(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(sid: int) -> None:
    """End every process of the CLI's session (it was started as a session leader): its embedded
    Ray's raylet and workers too, which Ray puts in process groups of their own. Only processes
    this test started are in that session."""
    for _ in range(100):
        pids = []
        for entry in os.listdir("/proc"):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
            except OSError:
                continue
            if stat and int(stat.rsplit(")", 1)[1].split()[3]) == sid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry))
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _label_subprocess(pairs_path: Path, out: Path, teacher: str, ray_tmp: str) -> dict:
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_ADDRESS="")
    cmd = [
        sys.executable,
        "-m",
        "qadist.cli",
        "label",
        "--pairs",
        str(pairs_path),
        "--out",
        str(out),
        "--teacher",
        teacher,
        "--rows-per-shard",
        "2000",
        "--max-seq-len",
        "128",
        "--doc-stride",
        "32",
        "--max-query-len",
        "32",
    ]
    done = _run(cmd, env)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_manifest(str(out))["run"]


@pytest.mark.slow
def test_memory_is_flat_from_10k_to_100k_pairs(tmp_path, squad_pairs, tiny_models):
    """Peak RSS of the driver and of each kind of worker, 10k vs 100k pairs: growth under 15%."""
    base = [{"id": p["id"], "question": p["question"], "context": p["context"][:400]} for p in squad_pairs]
    runs = {}
    for n in (10_000, 100_000):
        path = tmp_path / f"pairs-{n}.jsonl"
        with open(path, "w") as f:
            for i in range(n):
                p = base[i % len(base)]
                f.write(json.dumps(dict(p, id=f"{p['id']}-{i // len(base)}")) + "\n")
        ray_tmp = tempfile.mkdtemp(prefix="qr-")
        runs[n] = _label_subprocess(path, tmp_path / f"labels-{n}", tiny_models["student"], ray_tmp)
        assert runs[n]["pairs_in"] == n
    stages = ("driver", "window", "teacher", "writer")
    print(f"\npeak RSS, MiB (private/shared max) {'10k pairs':>22s} {'100k pairs':>22s} {'RSS growth':>10s}")
    for stage in stages:
        cells = [
            f"{r[f'{stage}_rss_mb']:6.0f} "
            f"({r.get(f'{stage}_private_mb', 0):4.0f}/{r.get(f'{stage}_shared_mb', 0):3.0f})"
            for r in (runs[10_000], runs[100_000])
        ]
        growth = runs[100_000][f"{stage}_rss_mb"] / runs[10_000][f"{stage}_rss_mb"] - 1
        print(f"{stage:35s} {cells[0]:>22s} {cells[1]:>22s} {growth:10.1%}")
    print(f"{'seconds':35s} {runs[10_000]['seconds']:22.0f} {runs[100_000]['seconds']:22.0f}")
    for stage in stages:
        assert runs[100_000][f"{stage}_rss_mb"] < 1.15 * runs[10_000][f"{stage}_rss_mb"], stage
