"""`qadist select` on real soft labels of the SQuAD sample: ranking, determinism, --exclude,
--diversity, the errors a user can make, and `finetune` on an annotated Label Studio export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qadist.select.scores import group_windows, score_pair
from qadist.select.stage import shard_windows
from qadist.shards import read_manifest

pytestmark = pytest.mark.usefixtures("ray_local")


def qadist(*args: str, capsys=None) -> tuple[int, str]:
    from qadist.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    err = capsys.readouterr().err if capsys else ""
    return e.value.code, err


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, squad_pairs, tiny_models):
    """120 SQuAD pairs (and 6 copies of pairs under new ids: near-duplicate questions) labelled by
    two tiny teachers with per-teacher logits, and by one teacher without them."""
    root = tmp_path_factory.mktemp("select")
    pairs = squad_pairs[:120] + [dict(p, id=p["id"] + "-copy") for p in squad_pairs[:6]]
    source = write_jsonl(root / "pairs.jsonl", pairs)
    common = ["--pairs", source, "--rows-per-shard", "40", "--max-seq-len", "128", "--doc-stride", "32"]
    both, one = str(root / "labels-2"), str(root / "labels-1")
    teachers = ["--teacher", tiny_models["teacher_a"], "--teacher", tiny_models["teacher_b"]]
    assert qadist("label", *common, "--out", both, *teachers, "--keep-teacher-logits")[0] == 0
    assert qadist("label", *common, "--out", one, "--teacher", tiny_models["teacher_a"])[0] == 0
    return {"root": root, "pairs": pairs, "both": both, "one": one}


def read_selected(out: str) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "selected.jsonl").read_text().splitlines()]


def all_scores(labels: str, strategy: str) -> dict[str, float]:
    manifest = read_manifest(labels)
    scores = {}
    for s in manifest["shards"]:
        for windows in group_windows(shard_windows(str(Path(labels) / s["path"]), strategy == "disagreement")):
            scores[windows[0]["id"]] = score_pair(windows, None, strategy)["score"]
    return scores


@pytest.mark.parametrize(
    "strategy",
    ["disagreement", pytest.param("entropy", marks=pytest.mark.slow), pytest.param("margin", marks=pytest.mark.slow)],
)
def test_select_ranks_every_pair_and_writes_label_studio_tasks(labelled, strategy, tmp_path):
    out = str(tmp_path / strategy)
    assert (
        qadist("select", "--labels", labelled["both"], "--budget", "10", "--strategy", strategy, "--out", out)[0] == 0
    )
    rows = read_selected(out)
    scores = all_scores(labelled["both"], strategy)
    assert len(scores) == len(labelled["pairs"])  # every labelled pair was scored
    expected = sorted(scores, key=lambda k: (-scores[k], k))[:10]
    assert [r["id"] for r in rows] == expected and [r["rank"] for r in rows] == list(range(1, 11))
    assert all(r["strategy"] == strategy and r["reason"] and r["question"] for r in rows)
    tasks = json.loads((Path(out) / "label_studio_tasks.json").read_text())
    by_id = {p["id"]: p for p in labelled["pairs"]}
    for t, r in zip(tasks, rows):
        assert t["data"]["context"] == by_id[r["id"]]["context"] and t["data"]["question"] == r["question"]
        result = t["predictions"][0]["result"][0]
        if r["prediction"]["start"] >= 0:
            assert result["value"]["text"] == t["data"]["context"][r["prediction"]["start"] : r["prediction"]["end"]]
        else:
            assert result["value"]["choices"] == ["No answer"]
    assert "<Labels" in (Path(out) / "label_studio_config.xml").read_text()
    counts = json.loads((Path(out) / "_manifest.json").read_text())["counts"]
    assert counts == {"pairs_scored": 126, "excluded": 0, "near_duplicates_dropped": 0, "selected": 10}


def test_selection_is_deterministic_exclude_skips_and_random_is_seeded(labelled, tmp_path):
    args = ["select", "--labels", labelled["both"], "--budget", "8"]
    runs = {}
    for name, extra in {
        "a": ["--strategy", "random", "--seed", "1"],
        "b": ["--strategy", "random", "--seed", "1"],
        "c": ["--strategy", "random", "--seed", "2"],
        "entropy": [],
    }.items():
        runs[name] = str(tmp_path / name)
        assert qadist(*args, *extra, "--out", runs[name])[0] == 0
    ids = {k: [r["id"] for r in read_selected(v)] for k, v in runs.items()}
    assert ids["a"] == ids["b"] != ids["c"]
    assert (
        qadist(*args, "--out", str(tmp_path / "next"), "--exclude", str(Path(runs["entropy"]) / "selected.jsonl"))[0]
        == 0
    )
    again = [r["id"] for r in read_selected(str(tmp_path / "next"))]
    assert not set(again) & set(ids["entropy"]) and len(again) == 8
    counts = json.loads((tmp_path / "next" / "_manifest.json").read_text())["counts"]
    assert counts["excluded"] == 8


@pytest.mark.slow
def test_diversity_drops_near_duplicate_questions(labelled, tmp_path):
    # The copies have the same question and passage, so the same score as their originals: without
    # --diversity a pair and its copy sit side by side in the ranking.
    budget = str(len(labelled["pairs"]) // 2)
    plain, diverse = str(tmp_path / "plain"), str(tmp_path / "diverse")
    assert qadist("select", "--labels", labelled["both"], "--budget", budget, "--out", plain)[0] == 0
    assert qadist("select", "--labels", labelled["both"], "--budget", budget, "--out", diverse, "--diversity")[0] == 0

    def twins(rows: list[dict]) -> set[str]:
        ids = {r["id"] for r in rows}
        return {i.removesuffix("-copy") for i in ids if i.endswith("-copy")} & ids

    assert twins(read_selected(plain)), "the test needs a pair and its copy in the plain selection"
    picked = read_selected(diverse)
    assert not twins(picked) and len(picked) == int(budget)
    dropped = [json.loads(line) for line in (Path(diverse) / "near_duplicates.jsonl").read_text().splitlines()]
    assert dropped and all(d["cosine"] >= 0.9 for d in dropped)


def test_user_errors_are_one_line_exit_2(labelled, tiny_models, tmp_path, capsys):
    code, err = qadist(
        "select", "--labels", labelled["both"], "--budget", "1000", "--out", str(tmp_path / "a"), capsys=capsys
    )
    assert code == 2 and "--budget 1000 is more than the 126 pairs" in err and len(err.strip().splitlines()) == 1
    code, err = qadist(
        "select", "--labels", labelled["one"], "--budget", "5", "--strategy", "disagreement",
        "--out", str(tmp_path / "b"), capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "--keep-teacher-logits" in err and len(err.strip().splitlines()) == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "question": "", "context": "c"}])
    empty = str(tmp_path / "empty-labels")
    assert qadist("label", "--pairs", bad, "--out", empty, "--teacher", tiny_models["teacher_a"])[0] == 0
    code, err = qadist("select", "--labels", empty, "--budget", "5", "--out", str(tmp_path / "c"), capsys=capsys)
    assert code == 2 and "no labelled pairs" in err, err


@pytest.mark.slow  # a Ray Train run (~20 s); the export's parsing is tested in tests/unit/test_label_studio.py
def test_finetune_on_an_annotated_label_studio_export(labelled, tiny_models, squad_pairs, tmp_path):
    out = str(tmp_path / "sel")
    assert qadist("select", "--labels", labelled["both"], "--budget", "12", "--out", out)[0] == 0
    tasks = json.loads((Path(out) / "label_studio_tasks.json").read_text())
    gold = {p["id"]: p for p in labelled["pairs"]}
    export = []
    for i, t in enumerate(tasks):  # an annotator labels 10 of the 12 with the SQuAD gold answer
        answers = gold[t["data"]["id"]]["answers"]
        if answers["text"]:
            start = answers["answer_start"][0]
            value = {
                "start": start,
                "end": start + len(answers["text"][0]),
                "text": answers["text"][0],
                "labels": ["Answer"],
            }
            result = [{"from_name": "answer", "to_name": "context", "type": "labels", "value": value}]
        else:
            result = [
                {"from_name": "no_answer", "to_name": "context", "type": "choices", "value": {"choices": ["No answer"]}}
            ]
        export.append(
            {"id": i + 1, "data": t["data"], "annotations": [{"id": i + 1, "result": result}] if i < 10 else []}
        )
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    ft = str(tmp_path / "ft")
    code, _ = qadist(
        "finetune", "--train-file", str(path), "--model", tiny_models["student"], "--out", ft, "--epochs", "1",
        "--batch-size", "4", "--max-seq-len", "128", "--doc-stride", "32",
    )  # fmt: skip
    assert code == 0 and (Path(ft) / "final" / "config.json").exists()
    config = json.loads((Path(ft) / "final" / "qadist_config.json").read_text())
    assert config["stage"] == "finetune"
