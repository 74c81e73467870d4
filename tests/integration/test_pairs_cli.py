"""`qadist pairs` through the real CLI on local Ray: layout, counts, bad input, S3, and pairs -> label.

The main run uses the packaged pretrained all-MiniLM-L6-v2 on a few SQuAD paragraphs; the others a
tiny random sentence-transformers model (fast), since they test plumbing, not retrieval quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from qadist import storage

pytestmark = pytest.mark.usefixtures("ray_local")


def run_cli(*args: str) -> int:
    from qadist.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def put_jsonl(uri: str, rows: list) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    storage.write_bytes(uri, ("\n".join(lines) + "\n").encode("utf-8"))


def read_jsonl(uri: str) -> list[dict]:
    return [
        json.loads(line) for f in storage.list_files(uri, (".jsonl",)) for line in storage.read_text(f).splitlines()
    ]


@pytest.fixture(scope="module")
def collection(squad_sample, tmp_path_factory):
    """2 paragraphs of each of the first 4 articles as documents, 3 questions from each, plus bad rows."""
    articles = json.loads(Path(squad_sample).read_text())["data"][:4]
    root = tmp_path_factory.mktemp("pairs-in")
    docs, questions, own = [], [], {}
    for a, article in enumerate(articles):
        for n, paragraph in enumerate(article["paragraphs"][:2]):
            docs.append({"id": f"a{a}p{n}", "text": paragraph["context"], "title": article["title"]})
            for qa in [q for q in paragraph["qas"] if not q.get("is_impossible")][:3]:
                questions.append({"id": qa["id"], "question": qa["question"]})
                own[qa["id"]] = f"a{a}p{n}"
    bad_questions = [
        {"id": "same-text", "question": "  " + questions[0]["question"].upper()},  # identical to the first
        {"id": questions[1]["id"], "question": "a different question with a reused id"},
        {"id": "number", "question": 42},
        {"id": "blank", "question": " "},
        {"question": "no id"},
        "{not json",
    ]
    bad_docs = [
        {"id": "a0p0", "text": "duplicate id"},
        {"id": "empty", "text": ""},
        {"id": "list", "text": ["x"]},
        {"text": "no id"},
    ]
    put_jsonl(str(root / "questions.jsonl"), questions + bad_questions)
    put_jsonl(str(root / "documents.jsonl"), docs + bad_docs)
    return {
        "root": root,
        "docs": {d["id"]: d for d in docs},
        "questions": questions,
        "own": own,
        "n_questions": len(questions) + len(bad_questions),
        "n_docs": len(docs) + len(bad_docs),
    }


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    from qadist.encoder import build_tiny_encoder

    return build_tiny_encoder(str(tmp_path_factory.mktemp("tiny-encoder")))


@pytest.fixture(scope="module")
def minilm_run(collection):
    out = collection["root"] / "out"
    code = run_cli(
        "pairs",
        "--questions",
        str(collection["root"] / "questions.jsonl"),
        "--documents",
        str(collection["root"] / "documents.jsonl"),
        "--out",
        str(out),
        "--top-k",
        "2",
    )
    assert code == 0
    return out


def test_pairs_layout_counts_and_rejects(collection, minilm_run):
    out = minilm_run
    manifest = json.loads((out / "_manifest.json").read_text())
    c = manifest["counts"]
    n_good = len(collection["questions"])
    assert c["questions_in"] == collection["n_questions"] and c["questions_duplicate"] == 1
    assert c["questions_rejected"] == 5 and c["questions_matched"] == n_good and c["pairs_out"] == 2 * n_good
    assert c["questions_in"] == c["questions_matched"] + c["questions_duplicate"] + c["questions_rejected"]
    assert c["documents_in"] == collection["n_docs"] and c["documents_rejected"] == 4 and c["passages"] >= 8
    assert manifest["search"] == "exact" and manifest["config"]["top_k"] == 2

    pairs = read_jsonl(str(out / "pairs"))
    assert len(pairs) == c["pairs_out"] and len({p["id"] for p in pairs}) == len(pairs)
    for p in pairs:
        doc = collection["docs"][p["doc_id"]]
        assert p["id"] == f"{p['question_id']}::{p['rank']}" and p["rank"] in (1, 2)
        assert p["context"] == doc["text"][p["context_start"] : p["context_end"]] and p["title"] == doc["title"]
        assert p["context_start"] <= p["passage_start"] < p["passage_end"] <= p["context_end"]
        assert p["score"] == pytest.approx(p["dense_score"] + p["lexical_score"], abs=1e-5)
    firsts = {p["question_id"]: p for p in pairs if p["rank"] == 1}
    assert firsts[collection["questions"][0]["id"]]["count"] == 2  # it stands for the identical question too
    # the real MiniLM + BM25 finds the right article nearly always, the own paragraph mostly
    article = sum(firsts[q]["doc_id"][:2] == d[:2] for q, d in collection["own"].items())
    paragraph = sum(firsts[q]["doc_id"] == d for q, d in collection["own"].items())
    assert article >= 0.9 * len(collection["own"]) and paragraph >= 0.7 * len(collection["own"])

    rejects = read_jsonl(str(out / "rejects"))
    reasons = sorted(r["reason"].split(" (")[0] for r in rejects)
    assert reasons == sorted(
        [
            f"duplicate question id {collection['questions'][1]['id']!r}",
            "field 'question' is int, not a string",
            "field 'question' is empty",
            "missing field 'id'",
            "not valid JSON",
            "duplicate document id 'a0p0'",
            "field 'text' is empty",
            "field 'text' is list, not a string",
            "missing field 'id'",
        ]
    )
    assert all({"id", "source", "row", "reason", "raw"} <= set(r) for r in rejects)
    dups = read_jsonl(str(out / "duplicates"))
    assert dups == [
        {
            "id": "same-text",
            "same_as": collection["questions"][0]["id"],
            "source": str(collection["root"] / "questions.jsonl"),
            "row": len(collection["questions"]) + 1,
        }
    ]
    assert not (out / "_work").exists()


def test_existing_output_needs_overwrite(collection, minilm_run, capsys):
    args = [
        "pairs",
        "--questions",
        str(collection["root"] / "questions.jsonl"),
        "--documents",
        str(collection["root"] / "documents.jsonl"),
        "--out",
        str(minilm_run),
    ]
    assert run_cli(*args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_pairs_feed_label_unchanged(collection, minilm_run, tiny_models, tmp_path):
    from qadist import shards as labels

    out = tmp_path / "labels"
    assert (
        run_cli("label", "--pairs", str(minilm_run / "pairs"), "--out", str(out), "--teacher", tiny_models["teacher_a"])
        == 0
    )
    manifest = labels.read_manifest(str(out))
    n_pairs = json.loads((minilm_run / "_manifest.json").read_text())["counts"]["pairs_out"]
    assert manifest["counts"]["pairs_in"] == n_pairs and manifest["counts"]["pairs_labeled"] == n_pairs
    assert {r["id"] for r in labels.read(str(out)).select_columns(["id"]).take_all()} == {
        p["id"] for p in read_jsonl(str(minilm_run / "pairs"))
    }


def test_s3_in_and_out_with_parquet_pairs_and_min_score(collection, tiny_encoder, s3_bucket):
    for name in ("questions.jsonl", "documents.jsonl"):
        storage.write_bytes(f"{s3_bucket}/in/{name}", (collection["root"] / name).read_bytes())
    out = f"{s3_bucket}/pairs-out"
    cfg = collection["root"] / "pairs.yaml"
    cfg.write_text(
        f"pairs:\n  model: {tiny_encoder}\n  output_format: parquet\n  top_k: 1\n  min_score: 0.9\n"
        "  passage_tokens: 48\n  passage_overlap: 8\n  batch_size: 8\n"
    )
    assert (
        run_cli(
            "pairs",
            "--config",
            str(cfg),
            "--questions",
            f"{s3_bucket}/in/questions.jsonl",
            "--documents",
            f"{s3_bucket}/in/documents.jsonl",
            "--out",
            out,
        )
        == 0
    )
    manifest = json.loads(storage.read_text(f"{out}/_manifest.json"))
    c = manifest["counts"]
    assert c["questions_in"] == c["questions_matched"] + c["questions_duplicate"] + c["questions_rejected"]
    assert (
        c["questions_unmatched"] == c["questions_unique"] - c["questions_matched"]
        and c["pairs_out"] == c["questions_matched"]
    )
    files = storage.list_files(f"{out}/pairs", (".parquet",)) if c["pairs_out"] else []
    pairs = [
        row for f in files for row in pq.read_table(storage.resolve(f)[1], filesystem=storage.resolve(f)[0]).to_pylist()
    ]
    assert len(pairs) == c["pairs_out"] and all(p["score"] >= 0.9 and p["id"] == p["question_id"] for p in pairs)
    unmatched = [r for r in read_jsonl(f"{out}/rejects") if r["reason"].startswith("no document scored")]
    assert len(unmatched) == c["questions_unmatched"] and not storage.exists(f"{out}/_work")


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty-questions", "the file is empty; give at least one row"),  # the one row reader's rule
        (
            "bad-questions",
            "no usable questions (2 rows read, 2 rejected, first: questions.jsonl row 1: field 'question' is int",
        ),
        ("no-documents", "no usable documents (1 rows rejected, first: missing field 'text'"),
        ("missing-file", "no such file or folder"),
        ("long-passages", "passage_tokens=400 is over what"),
        ("bad-key", "unknown key 'top_n'"),
    ],
)
def test_bad_input_is_a_one_line_error(collection, tiny_encoder, tmp_path, capsys, case, message):
    qfile, dfile = tmp_path / "questions.jsonl", tmp_path / "documents.jsonl"
    put_jsonl(str(qfile), [{"id": "a", "question": "what is it?"}])
    put_jsonl(str(dfile), [{"id": "d", "text": "It is a camera."}])
    extra: list[str] = []
    if case == "empty-questions":
        qfile.write_text("\n")
    elif case == "bad-questions":
        put_jsonl(str(qfile), [{"id": "a", "question": 1}, {"id": "b"}])
    elif case == "no-documents":
        put_jsonl(str(dfile), [{"id": "d"}])
    elif case == "missing-file":
        dfile = tmp_path / "nowhere.jsonl"
    elif case == "long-passages":
        extra = ["--config", str(tmp_path / "c.yaml")]
        (tmp_path / "c.yaml").write_text("passage_tokens: 400\n")
    elif case == "bad-key":
        extra = ["--config", str(tmp_path / "c.yaml")]
        (tmp_path / "c.yaml").write_text("pairs:\n  top_n: 3\n")
    model = "packaged:all-MiniLM-L6-v2" if case == "long-passages" else tiny_encoder
    code = run_cli(
        "pairs",
        *extra,
        "--questions",
        str(qfile),
        "--documents",
        str(dfile),
        "--out",
        str(tmp_path / "out"),
        "--model",
        model,
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_approximate_index_above_the_threshold(collection, tiny_encoder, tmp_path, monkeypatch, caplog):
    """faiss installed: HNSW candidates; not installed: a warning and exact search, same output layout."""
    import qadist.retrieval

    args = [
        "pairs",
        "--questions",
        str(collection["root"] / "questions.jsonl"),
        "--documents",
        str(collection["root"] / "documents.jsonl"),
        "--model",
        tiny_encoder,
        "--config",
        str(tmp_path / "c.yaml"),
    ]
    (tmp_path / "c.yaml").write_text("approximate_above: 2\ntop_k: 3\n")
    try:
        import faiss  # noqa: F401

        have_faiss = True
    except ImportError:
        have_faiss = False
    if have_faiss:
        assert run_cli(*args, "--out", str(tmp_path / "ann")) == 0
        manifest = json.loads((tmp_path / "ann" / "_manifest.json").read_text())
        assert (
            manifest["search"].startswith("approximate")
            and manifest["counts"]["pairs_out"] == 3 * manifest["counts"]["questions_matched"]
        )
    monkeypatch.setattr(qadist.retrieval, "build_ann", lambda emb: None)  # as if faiss were missing
    assert run_cli(*args, "--out", str(tmp_path / "exact")) == 0
    manifest = json.loads((tmp_path / "exact" / "_manifest.json").read_text())
    assert manifest["search"] == "exact" and "faiss is not installed" in caplog.text


def test_new_question_files_become_a_generation_of_only_their_pairs(collection, tiny_encoder, tmp_path, capsys):
    """Day 1's questions, then day 2's (with a repeated id and a question identical to one of day 1):
    day 2 pairs only its new questions, reuses the passage embeddings, and label picks up its part
    files alone; a third run with nothing new does nothing."""
    questions, docs = collection["questions"], str(collection["root"] / "documents.jsonl")
    qdir, out = tmp_path / "questions", tmp_path / "out"
    qdir.mkdir()
    put_jsonl(str(qdir / "day-1.jsonl"), questions[:12])
    day_2 = [*questions[12:], {"id": questions[0]["id"], "question": "asked again, same id"},
             {"id": "day-2-same-text", "question": questions[1]["question"].lower()}]  # fmt: skip
    args = ["pairs", "--questions", str(qdir), "--documents", docs, "--out", str(out), "--model", tiny_encoder]
    assert run_cli(*args) == 0
    put_jsonl(str(qdir / "day-2.jsonl"), day_2)
    capsys.readouterr()
    assert run_cli(*args) == 0
    printed = capsys.readouterr().out
    assert "generation 2: 1 new question file(s)" in printed and "passage embeddings reused" in printed
    gen_2 = json.loads((out / "_manifest-000002.json").read_text())
    c = gen_2["counts"]
    assert gen_2["generation"] == 2 and [i["uri"] for i in gen_2["inputs"]] == [str(qdir / "day-2.jsonl")]
    assert c["questions_in"] == len(day_2) and c["questions_matched"] == len(questions) - 12
    assert c["questions_rejected"] == 1 and c["questions_duplicate"] == 1
    new_pairs = read_jsonl(str(out / "pairs" / "g000002-part-00000.jsonl"))
    assert {p["question_id"] for p in new_pairs} == {q["id"] for q in questions[12:]}
    all_pairs = read_jsonl(str(out / "pairs"))
    assert len({p["question_id"] for p in all_pairs}) == len(all_pairs) == len(questions)
    dups = read_jsonl(str(out / "duplicates"))
    merged = {"id": "day-2-same-text", "same_as": questions[1]["id"], "source": str(qdir / "day-2.jsonl"),
              "row": len(day_2), "earlier_generation": True}  # fmt: skip
    assert merged in dups
    rejects = read_jsonl(str(out / "rejects"))
    assert any("taken by an earlier generation" in r["reason"] and r["id"] == questions[0]["id"] for r in rejects)

    assert run_cli(*args) == 0
    assert "no new question files" in capsys.readouterr().out
    put_jsonl(str(qdir / "day-3.jsonl"), [{"id": "day-3-again", "question": questions[2]["question"]}])
    assert run_cli(*args) == 0  # every question asked before: a generation with no pairs, not an error
    gen_3 = json.loads((out / "_manifest-000003.json").read_text())
    assert gen_3["counts"]["pairs_out"] == 0 and gen_3["counts"]["questions_duplicate"] == 1
    put_jsonl(str(qdir / "day-1.jsonl"), questions[:11])
    assert run_cli(*args) == 2
    assert "day-1.jsonl: changed since generation 1 paired it" in capsys.readouterr().err


def test_questions_holding_unicode_line_separators_are_paired_row_for_row(collection, tiny_encoder, tmp_path):
    """U+2028, U+2029, U+0085 and a form feed inside a question (kept raw by JSON written with
    ensure_ascii=False) are text, not row ends: staged, matched and written back whole, in two
    generations (the second reads the first's part files to find repeats)."""
    docs, qdir, out = str(collection["root"] / "documents.jsonl"), tmp_path / "questions", tmp_path / "out"
    odd = ["\u2028", "\u2029", "\u0085", "\x0c"]
    questions = [{"id": f"sep-{i}", "question": f"What{sep}is {q['question']}"}
                 for i, (sep, q) in enumerate(zip(odd * 2, collection["questions"]))]  # fmt: skip
    qdir.mkdir()
    for day, rows in (("day-1", questions[:4]), ("day-2", questions[4:])):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (qdir / f"{day}.jsonl").write_text(text, encoding="utf-8")
        args = ["pairs", "--questions", str(qdir), "--documents", docs, "--out", str(out), "--model", tiny_encoder]
        assert run_cli(*args) == 0
    pairs = [json.loads(line) for f in storage.list_files(str(out / "pairs"), (".jsonl",))
             for line in storage.read_text(f).split("\n") if line.strip()]  # fmt: skip
    assert sorted((p["question_id"], p["question"]) for p in pairs) == sorted(
        (q["id"], q["question"]) for q in questions
    )
    for generation in ("_manifest.json", "_manifest-000002.json"):
        assert json.loads((out / generation).read_text())["counts"]["questions_rejected"] == 0
