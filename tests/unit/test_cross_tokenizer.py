"""`project_shard`: a soft-label shard re-cut into a student's windows, on real shards of the SQuAD sample.

The shards come from a tiny BERT teacher (`shard_factory`, the label stage's windows and forward
pass); the student tokenizers are the teacher's own WordPiece and an ALBERT SentencePiece model.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from shard_factory import make_label_shards

from qadist.models import load_tokenizer
from qadist.shards import list_values
from qadist.train.cross_tokenizer import SHARD_COLUMNS, project_shard

WINDOWS = {"max_seq_len": 128, "doc_stride": 32, "max_query_len": 32}
T = 2.0


PAIRS = 300


@pytest.fixture(scope="module")
def full_shard(tiny_models, squad_pairs, tmp_path_factory):
    """One shard of the first PAIRS sample pairs, every column (gold positions included)."""
    out = make_label_shards(
        tmp_path_factory.mktemp("labels") / "l",
        tiny_models["teacher_a"],
        squad_pairs[:PAIRS],
        pairs_per_shard=PAIRS,
        **WINDOWS,
    )
    return pq.read_table(f"{out}/shards/part-00000.parquet")


@pytest.fixture(scope="module")
def shard(full_shard):
    return full_shard.select(SHARD_COLUMNS)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_same_tokenizer_is_the_identity_on_single_window_pairs(shard, tiny_models):
    """Projected targets == the stored teacher distribution over [CLS] and the context (fp16)."""
    out = project_shard(shard, tiny_models["teacher_a"], WINDOWS, T)
    assert out.num_rows == shard.num_rows  # the same windows, re-cut by the same tokenizer
    ids = shard["id"].to_pylist()
    single = {i for i in ids if ids.count(i) == 1}
    assert len(single) >= 5
    offsets = shard["offsets"].to_pylist()
    for kind in ("start", "end"):
        stored, projected = list_values(shard[f"{kind}_logits"]), list_values(out[f"{kind}_logits"])
        for row, pair_id in enumerate(ids):
            if pair_id not in single:
                continue
            keep = np.array([0] + [k for k, (s, _) in enumerate(offsets[row]) if s >= 0 and k > 0])
            want = softmax(stored[row].astype(np.float64)[keep] / T)
            got = softmax(projected[row].astype(np.float64) / T)
            np.testing.assert_allclose(got[keep], want, atol=2e-3)
            assert got[np.setdiff1d(np.arange(len(got)), keep)].sum() < 1e-6  # question and [SEP]: no mass


def test_another_tokenizer_gets_its_own_windows_and_distributions(shard, tiny_models):
    out = project_shard(shard, tiny_models["albert"], WINDOWS, T)
    tok = load_tokenizer(tiny_models["albert"])
    ids = out["input_ids"].to_pylist()
    assert out.num_rows >= len(set(shard["id"].to_pylist()))  # every pair has at least one window
    assert all(w[0] == tok.cls_token_id and len(w) <= WINDOWS["max_seq_len"] for w in ids)
    assert "token_type_ids" in out.column_names
    for kind in ("start", "end"):
        for row, logits in enumerate(list_values(out[f"{kind}_logits"])):
            assert len(logits) == len(ids[row])
            assert softmax(logits.astype(np.float64) / T).sum() == pytest.approx(1.0)
    assert set(out["start_position"].to_pylist()) == {-1} and sum(out["skipped"].to_pylist()) == 0


@pytest.fixture(scope="module")
def students(tiny_models, squad_pairs, tmp_path_factory) -> dict[str, str]:
    """Student tokenizer folders: ALBERT's SentencePiece-style Unigram, and a RoBERTa-style byte-level BPE."""
    from qadist.models import train_byte_level_bpe_tokenizer

    bpe = tmp_path_factory.mktemp("bpe")
    corpus = sorted({p["context"] for p in squad_pairs}) + [p["question"] for p in squad_pairs[:PAIRS]]
    train_byte_level_bpe_tokenizer(corpus).save_pretrained(bpe)
    return {"sentencepiece": tiny_models["albert"], "byte_level_bpe": str(bpe)}


@pytest.mark.parametrize("student_kind", ["sentencepiece", "byte_level_bpe"])
def test_an_oracle_teachers_answer_is_the_students_best_answer(student_kind, students, full_shard, squad_pairs):
    """Labels that put all the mass on the gold answer's WordPiece tokens, projected to another tokenizer: the student's
    best start (end) token holds the teacher's start (end) character, and is the student's own gold
    position wherever the two tokenizations cut the answer the same way."""
    import pyarrow as pa

    from qadist.shards import list_array
    from qadist.squad.features import make_windows

    pairs, full = squad_pairs[:PAIRS], full_shard
    ids = full["id"].to_pylist()
    single = [r for r, i in enumerate(ids) if ids.count(i) == 1]  # "mean" halves an answer cut by one of two windows
    oracle = {}
    for kind in ("start", "end"):
        gold = full[f"{kind}_position"].to_pylist()
        oracle[kind] = [
            np.where(np.arange(len(x)) == gold[r], 10.0, -10.0) for r, x in enumerate(full["input_ids"].to_pylist())
        ]
    table = (
        full.select(SHARD_COLUMNS)
        .set_column(SHARD_COLUMNS.index("start_logits"), "start_logits", list_array(oracle["start"]))
        .set_column(SHARD_COLUMNS.index("end_logits"), "end_logits", list_array(oracle["end"]))
    )
    table = table.take(pa.array(single))
    projected = project_shard(table, students[student_kind], WINDOWS, T)
    tok = load_tokenizer(students[student_kind])
    kept = [pairs[[p["id"] for p in pairs].index(ids[r])] for r in single]
    student = make_windows({k: [p[k] for p in kept] for k in ("id", "question", "context", "answers")}, tok, **WINDOWS)
    by_id = {i: r for r, i in enumerate(ids)}
    toff = full["offsets"].to_pylist()
    checked = same = 0
    s_start, s_end = list_values(projected["start_logits"]), list_values(projected["end_logits"])
    for w, pair_id in enumerate(student["id"]):
        r = by_id[pair_id]
        t_start, t_end = full["start_position"][r].as_py(), full["end_position"][r].as_py()
        if t_start == 0 or student["start_position"][w] == 0:
            continue  # no answer in the teacher's window, or the student's window cuts it
        a, b = int(np.argmax(s_start[w])), int(np.argmax(s_end[w]))
        so = student["offsets"][w]
        first_char, last_char = toff[r][t_start][0], toff[r][t_end][1] - 1
        context = [k for k, (lo, _) in enumerate(so) if lo >= 0 and k > 0]
        # the gold-label rule: a start goes to the first token ending after its character, an end to
        # the last token starting at or before it
        assert a == next(k for k in context if so[k][1] > first_char)
        assert b == max(k for k in context if so[k][0] <= last_char)
        checked += 1
        same += (a, b) == (student["start_position"][w], student["end_position"][w])
    print(f"\n{student_kind}: {checked} answer windows checked, {same} at the student's own gold positions")
    assert checked >= 20 and same >= 0.95 * checked, (checked, same)
