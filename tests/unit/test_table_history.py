"""A label table's bookkeeping reads a snapshot and a few summaries, not its history; compaction
commits merged shards as one snapshot, exactly once; retention; label sees committed pairs only."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pytest
from table_factory import add_generation, all_ids, make_table

from qadist import outputs, storage
from qadist.config import CompactConfig, LabelConfig
from qadist.errors import UserError
from qadist.label.commit import sweep
from qadist.label.compact import plan_groups, run_compact
from qadist.label.generations import commit_snapshot, labelled_id_hashes
from qadist.label.inputs import fresh_files
from qadist.outputs import StaleView, committed_generations, read_view, union, with_details
from qadist.shards import read_manifest, read_shard, snapshot_paths


class InlineRay:
    """Ray's task API run in this process (the shard fallback needs one; nothing here starts Ray)."""

    def remote(self, **_):
        return lambda f: type("Task", (), {"remote": staticmethod(f)})

    def get(self, values):
        return values


def reads(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: seen.append(uri) or real(uri))
    return seen


def ids_read(out: str, generation: int | None = None) -> list[str]:
    tables = [read_shard(u, ["id"]) for u in snapshot_paths(out, generation)]
    return pa.concat_tables(tables)["id"].to_pylist()


def test_the_view_reads_a_snapshot_and_the_generations_after_it(tmp_path, monkeypatch):
    out = str(tmp_path / "labels")
    make_table(out, 25, 20)  # snapshots at 10 and 20
    seen = reads(monkeypatch)
    planning = read_view(out, details=False)  # what a label run plans with: no per-generation lists
    names = [storage.basename(u) for u in seen]
    print(f"\nthe planning view of 25 generations read: {names}")
    assert names == ["_snapshot-000002.json", *(f"_manifest-{n:06d}.json" for n in range(21, 26))]
    assert not planning["complete"] and len(planning["shards"]) == 5 and len(planning["inputs"]) == 25
    seen.clear()
    view = read_view(out)  # what readers see: the same, and the snapshot's details file
    names = [storage.basename(u) for u in seen]
    assert names[:6] == ["_snapshot-000002.json", *(f"_manifest-{n:06d}.json" for n in range(21, 26))]
    assert len(names) == 7 and names[6].startswith("d000002-") and view["complete"]
    full = union(committed_generations(out))  # the whole history, as readers saw it before
    assert [s["path"] for s in view["shards"]] == [s["path"] for s in full["shards"]]
    assert [g["generation"] for g in view["generations"]] == list(range(1, 26))
    assert view["counts"] == full["counts"] == planning["counts"] and view["generation"] == 25
    seen.clear()
    hashes = labelled_id_hashes(None, out, view)  # summaries only: no shard is opened, no Ray needed
    assert len(hashes) == 25 * 20 and all("/ids/" in u for u in seen) and len(seen) == 6
    assert sorted(ids_read(out)) == sorted(all_ids(25, 20))


def test_a_table_without_summaries_falls_back_to_its_shards(tmp_path):
    out = str(tmp_path / "labels")
    make_table(out, 3, 10, summaries=False)  # committed before summaries existed
    view = read_view(out)
    assert all("shards" in s for s in view["id_sources"])
    assert len(labelled_id_hashes(InlineRay(), out, view)) == 30


def test_compaction_commits_merged_shards_exactly_once_and_keeps_generations_addressable(tmp_path):
    out = str(tmp_path / "labels")
    make_table(out, 40, 50)
    before = sorted(ids_read(out))
    view = run_compact(CompactConfig(labels=out, target_rows=500))
    print(f"\n40 generations: {len(read_view(out)['shards'])} shards after compaction (were 40)")
    assert len(view["shards"]) == 4 and all(s["path"].startswith("compacted/") for s in view["shards"])
    after = ids_read(out)
    assert len(after) == len(set(after)) and sorted(after) == before  # every pair once, none lost
    assert sorted(ids_read(out, 3)) == sorted(f"d00003-{i:06d}" for i in range(50))  # its own shards, kept
    assert read_manifest(out)["counts"]["pairs_labeled"] == 2000
    add_generation(out, 41, [f"d00041-{i:06d}" for i in range(50)], f"{out}-pairs/pairs/day-00041.jsonl")
    grown = ids_read(out)  # the snapshot and the generation after it
    assert len(grown) == len(set(grown)) == 2050
    assert len(labelled_id_hashes(None, out, read_view(out))) == 2050
    # Retention: replaced files of generations older than the newest 5, replaced long enough ago, go.
    view = run_compact(CompactConfig(labels=out, target_rows=500, keep_generations=5, retain_hours=0))
    assert 3 in view["retired"] and 40 not in view["retired"]
    with pytest.raises(UserError, match="generation 3 was compacted and its own shards were removed"):
        read_manifest(out, 3)
    assert sorted(ids_read(out, 40)) == sorted(f"d00040-{i:06d}" for i in range(50))
    assert not storage.exists(storage.join(out, "shards", "day-00003.jsonl.r000000000-000000050.parquet"))
    final = ids_read(out)
    assert len(final) == len(set(final)) == 2050


def test_label_sees_only_what_committed_pairs_generations_list(tmp_path):
    """A pairs output with generation 1 committed and generation 2's part files written but not committed
    (the pairs run is still at work): label plans generation 1's file only; once generation 2 commits,
    its file. Plain pairs folders are listed as they are."""
    root = tmp_path / "pairs-out"
    (root / "pairs").mkdir(parents=True)
    (root / "_qadist_pairs.json").write_text("{}")
    (root / "pairs" / "part-00000.jsonl").write_text('{"id": "a", "question": "q?", "context": "c."}\n')
    manifest = {"generation": 1, "stage": "pairs", "files": {"pairs": [{"path": "pairs/part-00000.jsonl", "rows": 1}]}}
    (root / "_manifest.json").write_text(json.dumps(manifest))
    (root / "pairs" / "g000002-part-00000.jsonl").write_text('{"id": "b", "question": "q?", "context": "c."}\n')
    cfg = LabelConfig(pairs=str(root / "pairs"), out=str(tmp_path / "labels"), teachers=["x"])
    assert fresh_files(cfg, None)[0] == [str(root / "pairs" / "part-00000.jsonl")]
    gen2 = {**manifest, "generation": 2, "files": {"pairs": [{"path": "pairs/g000002-part-00000.jsonl", "rows": 1}]}}
    (root / "_manifest-000002.json").write_text(json.dumps(gen2))
    files, _, through = fresh_files(cfg, {"pairs_through": 1, "inputs": [], "generations": []})
    assert files == [str(root / "pairs" / "g000002-part-00000.jsonl")] and through == 2  # only manifests after 1
    (root / "_manifest.json").unlink()
    (root / "_manifest-000002.json").unlink()
    with pytest.raises(UserError, match="has no committed generation yet"):
        fresh_files(cfg, None)
    plain = LabelConfig(pairs=str(root / "pairs"), out=str(tmp_path / "labels"), teachers=["x"])
    (root / "_qadist_pairs.json").unlink()  # not a pairs output: the folder's files, as today
    assert len(fresh_files(plain, None)[0]) == 2


def test_merge_groups_hold_each_small_shard_once_and_a_small_remainder_joins_the_last_group():
    shards = [{"path": f"s{i}", "rows": r} for i, r in enumerate([300] * 7 + [5000, 100])]
    groups = plan_groups(shards, 1000)
    paths = [s["path"] for g in groups for s in g]
    assert sorted(paths) == sorted(s["path"] for s in shards if s["rows"] < 500)  # each small shard once
    assert [len(g) for g in groups] == [3, 5]  # 900, then 900 + 100 + 300 + 300 (a remainder under half joins)


def backdate(out: str, seconds: float = 100) -> None:
    """Every file of the table written `seconds` ago (the sweep spares what shares its run's second)."""
    then = time.time() - seconds
    for folder, _, files in os.walk(out):
        for f in files:
            os.utime(os.path.join(folder, f), (then, then))


def test_a_reader_between_a_snapshot_and_its_details_survives_the_next_snapshot_and_its_sweep(tmp_path, monkeypatch):
    """A reader reads snapshot 2's head; before it reads the details file, a compaction commits snapshot 3
    and sweeps: snapshot 2's details are still there (each snapshot keeps its predecessor's). After a
    fourth snapshot and sweep they are gone: `with_details` says so (StaleView), and `read_view` reads
    the newest snapshot again instead of failing."""
    out = str(tmp_path / "labels")
    make_table(out, 20, 5)  # snapshots 1 and 2
    head = read_view(out, details=False)
    assert head["snapshot"] == 2 and not head["complete"]
    backdate(out)
    run_compact(CompactConfig(labels=out, target_rows=40))  # snapshot 3, then the sweep
    assert read_view(out)["snapshot"] == 3
    assert len(with_details(out, head)["shards"]) == 20  # snapshot 2's details survived the sweep
    for day in range(21, 31):
        add_generation(out, day, [f"d{day:05d}-{i:06d}" for i in range(5)], f"{out}-pairs/pairs/day-{day:05d}.jsonl")
    view = read_view(out)
    assert commit_snapshot(out, view, labelled_id_hashes(None, out, view)) == 4
    backdate(out)
    sweep(out, read_view(out), time.time())
    with pytest.raises(StaleView, match="details file .* is gone"):
        with_details(out, head)  # two snapshots later: swept
    real, calls = outputs.newest_snapshot, []
    monkeypatch.setattr(outputs, "newest_snapshot", lambda o: 2 if not calls.append(o) and len(calls) == 1 else real(o))
    view = read_view(out)
    assert len(calls) == 2 and view["snapshot"] == 4 and view["generation"] == 30
    assert sorted(ids_read(out)) == sorted(all_ids(30, 5))


def test_the_pipelines_compact_step_runs_only_when_a_merge_is_due(tmp_path):
    """`compact`'s finished rule: complete while the small shards hold under min_rows windows (no file
    past retention either); due once they hold that many; complete again after the compaction."""
    from qadist.stages import BY_NAME

    out = str(tmp_path / "labels")
    make_table(out, 30, 40)  # 1,200 windows in 30 small shards
    waiting = CompactConfig(labels=out, target_rows=400, min_rows=2000)
    assert "1,200 windows in small ones" in BY_NAME["compact"].done(waiting)
    assert run_compact(waiting)["snapshot"] == 3  # nothing to do: no new snapshot
    due = CompactConfig(labels=out, target_rows=400, min_rows=1000)
    assert BY_NAME["compact"].done(due) is None
    assert len(run_compact(due)["shards"]) == 3
    assert BY_NAME["compact"].done(due) is not None
    assert sorted(ids_read(out)) == sorted(all_ids(30, 40))
