"""qadist.squad.metrics against the official SQuAD 2.0 evaluation script (vendored verbatim)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadist.squad.metrics import (
    compute_exact,
    compute_f1,
    gold_from_squad,
    normalize_answer,
    squad_v2_metrics,
)

REPO = Path(__file__).resolve().parents[2]
REFERENCE_PATH = REPO / "tests" / "reference" / "official_eval_v2.py"
BEST_KEYS = ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
BASE_KEYS = [
    "exact",
    "f1",
    "total",
    "HasAns_exact",
    "HasAns_f1",
    "HasAns_total",
    "NoAns_exact",
    "NoAns_f1",
    "NoAns_total",
]


def _load_reference():
    spec = importlib.util.spec_from_file_location("official_eval_v2", REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


def assert_same_metrics(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for key, expected in theirs.items():
        assert ours[key] == pytest.approx(expected, abs=1e-9, rel=0), key
        if key.endswith("total"):
            assert type(ours[key]) is int


def run_official(
    tmp: Path, dataset: dict, preds: dict, na_probs: dict | None = None, thresh: float | None = None
) -> dict:
    """Run the official script as a subprocess on JSON files, as a user would."""
    data_file, pred_file, out_file = tmp / "data.json", tmp / "pred.json", tmp / "eval.json"
    data_file.write_text(json.dumps(dataset))
    pred_file.write_text(json.dumps(preds))
    cmd = [sys.executable, str(REFERENCE_PATH), str(data_file), str(pred_file), "-o", str(out_file)]
    if na_probs is not None:
        (tmp / "na.json").write_text(json.dumps(na_probs))
        cmd += ["-n", str(tmp / "na.json")]
    if thresh is not None:
        cmd += ["-t", repr(thresh)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out_file.read_text())


def run_official_inprocess(dataset: dict, preds: dict, na_probs: dict | None, thresh: float) -> dict:
    """Call the official main() itself (files in a temp dir, OPTS set as parse_args would)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "data.json").write_text(json.dumps(dataset))
        (tmp / "pred.json").write_text(json.dumps(preds))
        na_file = None
        if na_probs is not None:
            na_file = str(tmp / "na.json")
            Path(na_file).write_text(json.dumps(na_probs))
        ref.OPTS = argparse.Namespace(
            data_file=str(tmp / "data.json"),
            pred_file=str(tmp / "pred.json"),
            out_file=str(tmp / "eval.json"),
            na_prob_file=na_file,
            na_prob_thresh=thresh,
            out_image_dir=None,
            verbose=False,
        )
        ref.main()
        return json.loads((tmp / "eval.json").read_text())


def squad_json(gold: dict[str, list[str]]) -> dict:
    """An official-layout dataset holding the given gold answers."""
    qas = [
        {"id": q, "question": "?", "is_impossible": not a, "answers": [{"text": t, "answer_start": 0} for t in a]}
        for q, a in gold.items()
    ]
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def sample(squad_sample) -> dict:
    """The in-repo SQuAD 2.0 sample (conftest's `squad_sample`: fails, never skips, when missing)."""
    return json.loads(Path(squad_sample).read_text())


def near_miss(rng: random.Random, answers: list[str], others: list[str]) -> str | None:
    """A prediction of a random kind for a question; None = leave the id out."""
    if not answers:
        kind = rng.choice(["empty", "empty", "text", "punct", "article", "missing"])
        return {"empty": "", "text": rng.choice(others), "punct": " . ", "article": "The", "missing": None}[kind]
    gold = rng.choice(answers)
    words = gold.split()
    kind = rng.choice(
        [
            "exact",
            "add_article",
            "drop_article",
            "punct",
            "case",
            "partial",
            "extra",
            "empty",
            "wrong",
            "spaces",
            "missing",
        ]
    )
    if kind == "exact":
        return gold
    if kind == "add_article":
        return rng.choice(["the ", "a ", "An "]) + gold
    if kind == "drop_article":
        return " ".join(w for w in words if w.lower() not in {"a", "an", "the"})
    if kind == "punct":
        return rng.choice(['"', "(", ""]) + gold + rng.choice([".", ",", "!)", "'s"])
    if kind == "case":
        return rng.choice([gold.upper(), gold.lower(), gold.title()])
    if kind == "partial":
        return " ".join(words[1:] if len(words) > 1 and rng.random() < 0.5 else words[:-1])
    if kind == "extra":
        return rng.choice(["in ", "about "]) + gold + rng.choice([" of the city", " and more"])
    if kind == "empty":
        return ""
    if kind == "wrong":
        return rng.choice(others)
    if kind == "spaces":
        return "  " + "\t".join(words) + " \n"
    return None


def make_predictions(dataset: dict, seed: int, allow_missing: bool) -> tuple[dict[str, str], dict[str, float]]:
    rng = random.Random(seed)
    gold = gold_from_squad(dataset)
    others = [a for answers in gold.values() for a in answers][:500]
    preds: dict[str, str] = {}
    for qid, answers in gold.items():
        pred = near_miss(rng, answers, others)
        if pred is None:
            if allow_missing:
                continue
            pred = rng.choice(others)
        preds[qid] = pred
    preds["not-a-gold-id"] = "stray prediction"  # extra ids are ignored by the official script
    # Coarse values give many ties; a few fine ones spread the sweep.
    coarse = [0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]
    na_probs = {q: rng.choice(coarse) if rng.random() < 0.7 else round(rng.random(), 3) for q in preds}
    return preds, na_probs


def without_missing(dataset: dict, preds: dict) -> dict:
    """The dataset less its questions that have no prediction."""
    return {
        **dataset,
        "data": [
            {
                **article,
                "paragraphs": [
                    {**p, "qas": [qa for qa in p["qas"] if qa["id"] in preds]} for p in article["paragraphs"]
                ],
            }
            for article in dataset["data"]
        ],
    }


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("thresh", [None, 0.5])
def test_real_data_matches_official_with_na_probs(sample, tmp_path, seed, thresh):
    preds, na_probs = make_predictions(sample, seed, allow_missing=False)
    theirs = run_official(tmp_path, sample, preds, na_probs, thresh)
    ours = squad_v2_metrics(gold_from_squad(sample), preds, na_probs, 1.0 if thresh is None else thresh)
    assert list(theirs) == BASE_KEYS + BEST_KEYS
    assert_same_metrics(ours, theirs)
    assert theirs["total"] == 3250 and theirs["NoAns_total"] == 1744
    assert 0 < theirs["exact"] < theirs["f1"] < 100  # the near misses really are mixed


@pytest.mark.parametrize("seed", [0, 1])
def test_real_data_matches_official_without_na_probs(sample, tmp_path, seed):
    preds, _ = make_predictions(sample, seed, allow_missing=False)
    theirs = run_official(tmp_path, sample, preds)
    ours = squad_v2_metrics(gold_from_squad(sample), preds)
    assert list(theirs) == BASE_KEYS
    assert_same_metrics(ours, theirs)


def test_real_data_missing_predictions(sample, tmp_path, caplog):
    preds, na_probs = make_predictions(sample, 7, allow_missing=True)
    gold = gold_from_squad(sample)
    missing = [q for q in gold if q not in preds]
    assert len(missing) > 50
    # The official script prints "Missing prediction for ..." and then crashes with a KeyError
    # (make_eval_dict looks every HasAns/NoAns id up). Ours skips such ids everywhere, which is
    # what the official script reports for the same data without those questions.
    with pytest.raises(subprocess.CalledProcessError) as err:
        run_official(tmp_path, sample, preds, na_probs)
    assert "Missing prediction for" in err.value.stdout and "KeyError" in err.value.stderr
    with caplog.at_level(logging.WARNING, logger="qadist.squad.metrics"):
        ours = squad_v2_metrics(gold, preds, na_probs)
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"Missing prediction for {q}" for q in missing]
    assert_same_metrics(ours, run_official(tmp_path, without_missing(sample, preds), preds, na_probs))
    assert ours["total"] == len(gold) - len(missing)
    plain = squad_v2_metrics(gold, preds)
    assert_same_metrics(plain, run_official(tmp_path, without_missing(sample, preds), preds))


def test_gold_from_squad_real_data(sample):
    gold = gold_from_squad(sample)
    assert len(gold) == 3250
    assert sum(1 for a in gold.values() if not a) == 1744
    assert ref.make_qid_to_has_ans(sample["data"]) == {q: bool(a) for q, a in gold.items()}
    first = sample["data"][0]["paragraphs"][0]["qas"][0]
    assert gold[first["id"]] == [a["text"] for a in first["answers"]]


def test_gold_from_squad_layout():
    dataset = {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is in France.",
                        "qas": [
                            {
                                "id": "a",
                                "question": "Where?",
                                "is_impossible": False,
                                "answers": [
                                    {"text": "France", "answer_start": 12},
                                    {"text": "in France", "answer_start": 9},
                                ],
                            },
                            {
                                "id": "b",
                                "question": "Who?",
                                "is_impossible": True,
                                "answers": [],
                                "plausible_answers": [{"text": "Paris", "answer_start": 0}],
                            },
                        ],
                    }
                ],
            },
            {
                "title": "U",
                "paragraphs": [
                    {
                        "context": "x",
                        "qas": [{"id": "c", "question": "?", "answers": [{"text": "x", "answer_start": 0}]}],
                    }
                ],
            },
        ],
    }
    assert gold_from_squad(dataset) == {"a": ["France", "in France"], "b": [], "c": ["x"]}


# --------------------------------------------------------------------------- hand-computed


def test_hand_computed_without_na_probs():
    gold = {"q1": ["Denver Broncos", "The Denver Broncos"], "q2": [], "q3": ["1990s"]}
    preds = {"q1": "the Broncos", "q2": "", "q3": "late 1990s"}
    # q1: "broncos" vs "denver broncos": exact 0, P=1, R=1/2, F1=2/3.  q2: "" vs [""]: 1 and 1.
    # q3: "late 1990s" vs "1990s": exact 0, P=1/2, R=1, F1=2/3.
    out = squad_v2_metrics(gold, preds)
    assert list(out) == BASE_KEYS
    assert out["exact"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1 + 2 / 3) / 3)  # 77.78
    assert out["HasAns_exact"] == 0.0 and out["HasAns_f1"] == pytest.approx(200 / 3)
    assert (out["total"], out["HasAns_total"], out["NoAns_total"]) == (3, 2, 1)
    assert out["NoAns_exact"] == out["NoAns_f1"] == 100.0
    assert_same_metrics(out, run_official_inprocess(squad_json(gold), preds, None, 1.0))


def test_hand_computed_with_na_probs_and_threshold():
    gold = {"q1": ["Denver Broncos", "The Denver Broncos"], "q2": [], "q3": ["1990s"]}
    preds = {"q1": "the Broncos", "q2": "", "q3": "late 1990s"}
    na = {"q1": 0.8, "q2": 0.9, "q3": 0.1}
    out = squad_v2_metrics(gold, preds, na, na_prob_thresh=0.5)
    # Threshold 0.5: q1 (0.8) and q2 (0.9) become no-answer -> q1 scores 0, q2 scores 1.
    assert out["exact"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (0 + 1 + 2 / 3) / 3)  # 55.56
    # Sweep, starting from "all no-answer" = 1 (q2) and ascending na prob: q3 (+2/3 F1, +0 EM),
    # q1 (+2/3 F1, +0 EM), q2 (empty prediction: +0).  EM never beats 1 -> thresh 0.0;
    # F1 peaks at 1 + 4/3 after q1 -> thresh 0.8.
    assert out["best_exact"] == pytest.approx(100 / 3) and out["best_exact_thresh"] == 0.0
    assert out["best_f1"] == pytest.approx(100 * (7 / 3) / 3) and out["best_f1_thresh"] == 0.8
    assert list(out) == BASE_KEYS + BEST_KEYS
    assert_same_metrics(out, run_official_inprocess(squad_json(gold), preds, na, 0.5))


def test_punctuation_only_answer_counts_as_answer_in_sweep():
    gold = {"a": ["Paris"], "b": [], "c": []}
    preds = {"a": "Paris", "b": "London", "c": "."}
    na = {"a": 0.5, "b": 0.5, "c": 0.2}
    out = squad_v2_metrics(gold, preds, na)
    # "." normalizes to "" so c scores 1 (EM and F1), b scores 0: exact = 2/3, NoAns = 1/2.
    assert out["exact"] == pytest.approx(200 / 3) and out["NoAns_exact"] == 50.0
    # Sweep from 2 (b, c): c is a non-empty string so -1 -> 1, a +1 -> 2, b -1 -> 1: never > 2.
    assert out["best_exact"] == pytest.approx(200 / 3) and out["best_exact_thresh"] == 0.0
    assert_same_metrics(out, run_official_inprocess(squad_json(gold), preds, na, 1.0))


@pytest.mark.parametrize("order, best, thresh", [(("a", "b"), 100.0, 0.3), (("b", "a"), 50.0, 0.0)])
def test_ties_follow_na_probs_order(order, best, thresh):
    # Official quirk kept: the sweep scores every prefix, even inside a run of equal
    # probabilities, so the order of tied ids (the na_probs file order) matters.
    gold, preds = {"a": ["x"], "b": []}, {"a": "x", "b": "y"}
    na = {q: 0.3 for q in order}
    out = squad_v2_metrics(gold, preds, na)
    assert (out["best_exact"], out["best_exact_thresh"]) == (best, thresh)
    assert_same_metrics(out, run_official_inprocess(squad_json(gold), preds, na, 1.0))


def test_gold_answers_that_normalize_to_empty():
    # has-answer (the list is not empty) but scored against [""] as the official script does.
    gold = {"q": ["The", "a."]}
    out = squad_v2_metrics(gold, {"q": ""})
    assert out == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        "HasAns_exact": 100.0,
        "HasAns_f1": 100.0,
        "HasAns_total": 1,
    }
    assert_same_metrics(out, run_official_inprocess(squad_json(gold), {"q": ""}, None, 1.0))


def test_missing_prediction_is_logged_and_skipped(caplog):
    gold = {"q1": ["x"], "q2": []}
    with caplog.at_level(logging.WARNING, logger="qadist.squad.metrics"):
        out = squad_v2_metrics(gold, {"q1": "x"}, {"q1": 0.2})
    assert [r.getMessage() for r in caplog.records] == ["Missing prediction for q2"]
    assert out == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        "HasAns_exact": 100.0,
        "HasAns_f1": 100.0,
        "HasAns_total": 1,
        "best_exact": 100.0,
        "best_exact_thresh": 0.2,
        "best_f1": 100.0,
        "best_f1_thresh": 0.2,
    }


def test_negative_threshold_without_na_probs_predicts_no_answer_everywhere():
    gold, preds = {"a": ["x"], "b": []}, {"a": "x", "b": "y"}
    out = squad_v2_metrics(gold, preds, na_prob_thresh=-1.0)
    assert out["exact"] == 50.0 and "best_exact" not in out
    assert_same_metrics(out, run_official_inprocess(squad_json(gold), preds, None, -1.0))


def test_errors():
    with pytest.raises(ValueError, match="no prediction"):
        squad_v2_metrics({"a": ["x"]}, {"b": "x"})
    with pytest.raises(ValueError, match="'b'"):
        squad_v2_metrics({"a": ["x"], "b": []}, {"a": "x", "b": ""}, {"a": 0.1})


# --------------------------------------------------------------------------- properties

_PIECES = st.sampled_from(
    [
        "the",
        "The",
        "a",
        "an",
        "An",
        "THE",
        "theory",
        "and",
        "Paris",
        "paris",
        "1990s",
        "U.S.",
        "don't",
        "é",
        "ß",
        "İ",
        "ﬁ",
        "—",
        "·",
        "\u00a0",
        " ",
        "  ",
        "\t",
        "\n",
        ".",
        ",",
        "!",
        "(",
        ")",
        "'",
        '"',
        "-",
        "_",
    ]
)
_TEXT = st.one_of(st.text(max_size=40), st.lists(_PIECES, max_size=12).map("".join))


@settings(max_examples=400, deadline=None)
@given(_TEXT, _TEXT)
def test_text_functions_agree_with_reference(gold, pred):
    assert normalize_answer(pred) == ref.normalize_answer(pred)
    assert compute_exact(gold, pred) == ref.compute_exact(gold, pred)
    ours, theirs = compute_f1(gold, pred), ref.compute_f1(gold, pred)
    assert ours == theirs and type(ours) is type(theirs)


_ANSWER = st.lists(st.sampled_from(["the", "a", "Paris", "paris", "France", "in", ".", ",", "x"]), max_size=4).map(
    " ".join
)


@st.composite
def _cases(draw):
    n = draw(st.integers(1, 8))
    gold = {f"q{i}": draw(st.lists(_ANSWER, max_size=3)) for i in range(n)}
    preds = {q: draw(_ANSWER) for q in gold}
    if draw(st.booleans()):
        preds["extra"] = draw(_ANSWER)
    ids = draw(st.permutations(list(preds)))
    na = {q: draw(st.sampled_from([0.0, 0.2, 0.5, 0.5, 1.0])) for q in ids}
    return gold, preds, draw(st.one_of(st.none(), st.just(na))), draw(st.sampled_from([0.0, 0.5, 1.0]))


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_metrics_agree_with_official_main(case):
    gold, preds, na, thresh = case
    ours = squad_v2_metrics(gold, preds, na, thresh)
    assert_same_metrics(ours, run_official_inprocess(squad_json(gold), preds, na, thresh))
