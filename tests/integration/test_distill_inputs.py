"""Soft labels that training must refuse before it starts: another schema version, a shard of another
tokenizer than its manifest's, shards without the pair text a student with another tokenizer needs,
or a listed shard that is gone.

Each case runs the real `qadist distill` command in this process and expects exit 2 with one
line that names the manifest or the shard and the fix, and no training output. No Ray: the
driver checks run before Ray starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shard_factory import make_label_shards

WINDOWS = {"max_seq_len": 128, "doc_stride": 32, "max_query_len": 32}


@pytest.fixture(scope="module")
def good_labels(tiny_models, squad_pairs, tmp_path_factory) -> str:
    """Soft labels of 24 pairs in 3 shards, made with the teachers' (and the student's) tokenizer."""
    return make_label_shards(
        tmp_path_factory.mktemp("labels") / "good",
        tiny_models["teacher_a"],
        squad_pairs[:24],
        pairs_per_shard=8,
        **WINDOWS,
    )


def copy_labels(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_footer(shard: Path, **changes) -> None:
    """Rewrite one shard with its `qadist` schema metadata changed (as another run or version would write it)."""
    table = pq.read_table(shard)
    meta = dict(table.schema.metadata)
    header = json.loads(meta[b"qadist"])
    header.update(changes)
    meta[b"qadist"] = json.dumps(header).encode()
    pq.write_table(table.replace_schema_metadata(meta), shard)


def distill_fails(labels: Path, student: str, out: Path, capsys) -> str:
    from qadist.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--labels", str(labels), "--student", student, "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    print(f"\nexit {exit_.value.code}: {err}")
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (out / "distill").exists() and not (out / "final").exists()  # nothing trained, no checkpoint
    return err


def test_a_shard_of_another_schema_version_is_refused_before_training(good_labels, tiny_models, tmp_path, capsys):
    labels = copy_labels(good_labels, tmp_path / "labels")
    shard = sorted((labels / "shards").glob("*.parquet"))[1]
    rewrite_footer(shard, schema_version=99)
    err = distill_fails(labels, tiny_models["student"], tmp_path / "out", capsys)
    assert str(shard) in err and "schema_version=99" in err and "qadist label" in err


def test_a_manifest_of_another_schema_version_is_refused_before_training(good_labels, tiny_models, tmp_path, capsys):
    labels = copy_labels(good_labels, tmp_path / "labels")
    manifest = json.loads((labels / "_manifest.json").read_text())
    (labels / "_manifest.json").write_text(json.dumps({**manifest, "schema_version": 0}))
    err = distill_fails(labels, tiny_models["student"], tmp_path / "out", capsys)
    assert "_manifest.json" in err and "schema_version=0" in err and "qadist label" in err


def test_a_shard_made_with_another_tokenizer_is_refused_before_training(good_labels, tiny_models, tmp_path, capsys):
    """The manifest matches the student, but one shard (copied in from another run) does not."""
    labels = copy_labels(good_labels, tmp_path / "labels")
    shard = sorted((labels / "shards").glob("*.parquet"))[-1]
    rewrite_footer(shard, tokenizer={"name": "albert-base-v2", "hash": "0123456789abcdef"})
    err = distill_fails(labels, tiny_models["student"], tmp_path / "out", capsys)
    assert str(shard) in err and "tokenizer" in err and "0123456789abcdef" in err and "qadist label --overwrite" in err


def test_a_student_with_another_tokenizer_needs_the_pair_text(good_labels, tiny_models, tmp_path, capsys):
    """Projection re-cuts the student's windows from the stored text: a shard without it is refused."""
    labels = copy_labels(good_labels, tmp_path / "labels")
    shard = sorted((labels / "shards").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(["question", "context"]), shard)
    err = distill_fails(labels, tiny_models["albert"], tmp_path / "out", capsys)
    assert str(shard) in err and "question/context" in err and "qadist label --overwrite" in err


def test_a_listed_shard_that_is_missing_is_refused_before_training(good_labels, tiny_models, tmp_path, capsys):
    labels = copy_labels(good_labels, tmp_path / "labels")
    shard = sorted((labels / "shards").glob("*.parquet"))[0]
    shard.unlink()
    err = distill_fails(labels, tiny_models["student"], tmp_path / "out", capsys)
    assert str(shard) in err and "_manifest.json" in err and "qadist label" in err
