"""Selection scores on hand-made logits: a confident pair ranks last, a split ensemble first."""

import numpy as np
import pytest

from qadist.select.scores import STRATEGIES, group_windows, js_divergence, random_score, score_pair

# One window: [CLS] then 6 context tokens at characters 0-5, 6-11, ... (the question's tokens are
# left out: offsets (-1, -1) would mark them).
OFFSETS = [[-1, -1]] + [[6 * i, 6 * i + 5] for i in range(6)]
CONTEXT = " ".join(["word" + str(i) for i in range(6)]) + " " * 10


def window(pair_id, start, end, teachers=None):
    w = {"id": pair_id, "offsets": OFFSETS, "start_logits": np.array(start, float), "end_logits": np.array(end, float)}
    if teachers is not None:
        w["teacher_start_logits"] = np.array([t[0] for t in teachers], float)
        w["teacher_end_logits"] = np.array([t[1] for t in teachers], float)
    return w


SURE = ([-5, 9, -5, -5, -5, -5, -5], [-5, 9, -5, -5, -5, -5, -5])  # token 1, surely
UNSURE = ([0, 0.1, 0, 0.1, 0, 0.1, 0], [0, 0.1, 0, 0.1, 0, 0.1, 0])  # spread over everything
ABSTAIN = ([9, -5, -5, -5, -5, -5, -5], [9, -5, -5, -5, -5, -5, -5])  # [CLS]: no answer
SPLIT = ([2, 2, -5, -5, -5, -5, -5], [2, 2, -5, -5, -5, -5, -5])  # an answer or no answer, even odds


@pytest.mark.parametrize("strategy", ["entropy", "margin"])
def test_confident_last_uncertain_first(strategy):
    pairs = {
        "sure": [window("sure", *SURE)],
        "abstains": [window("abstains", *ABSTAIN)],
        "unsure": [window("unsure", *UNSURE)],
        "split": [window("split", *SPLIT)],
    }
    scores = {k: score_pair(w, CONTEXT, strategy)["score"] for k, w in pairs.items()}
    ranking = sorted(scores, key=lambda k: -scores[k])
    assert set(ranking[-2:]) == {"sure", "abstains"}, scores
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    if strategy == "margin":  # split between answering and abstaining: the smallest margin of all
        assert scores["split"] == max(scores.values()), scores


def test_no_answer_split_is_uncertain_and_the_prefill_follows_the_ensemble():
    split = score_pair([window("q", *SPLIT)], CONTEXT, "margin")
    sure = score_pair([window("q", *SURE)], CONTEXT, "margin")
    assert split["score"] > 0.9 > 0.1 > sure["score"]
    assert sure["prediction"] | {"no_answer_probability": 0} == {
        "start": 0, "end": 5, "text": "word0", "no_answer_probability": 0
    }  # fmt: skip
    abstain = score_pair([window("q", *ABSTAIN)], CONTEXT, "entropy")["prediction"]
    assert (abstain["start"], abstain["text"]) == (-1, "") and abstain["no_answer_probability"] > 0.99


def test_disagreement_split_ensemble_first_agreeing_last():
    agree = [window("agree", *SURE, teachers=[SURE, SURE])]
    answer_vs_abstain = [window("split", *SPLIT, teachers=[SURE, ABSTAIN])]
    spans_differ = [
        window("differ", *UNSURE, teachers=[SURE, ([-5, -5, -5, 9, -5, -5, -5], [-5, -5, -5, 9, -5, -5, -5])])
    ]
    s = {name: score_pair(w, CONTEXT, "disagreement") for name, w in
         {"agree": agree, "split": answer_vs_abstain, "differ": spans_differ}.items()}  # fmt: skip
    assert s["agree"]["score"] < 0.01
    assert s["split"]["score"] == pytest.approx(1.0) and "1 of 2 teachers abstain" in s["split"]["reason"]
    assert s["differ"]["score"] > 0.5 and "diverge" in s["differ"]["reason"]


def test_a_pair_takes_its_most_uncertain_window():
    one = score_pair([window("q", *SURE)], CONTEXT, "entropy")["score"]
    two = score_pair([window("q", *SURE), window("q", *UNSURE)], CONTEXT, "entropy")["score"]
    assert two > one and two == pytest.approx(score_pair([window("q", *UNSURE)], CONTEXT, "entropy")["score"])


def test_js_divergence_bounds():
    assert js_divergence(np.array([[1.0, 2.0, 3.0]] * 3)) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(np.array([[50.0, 0.0], [0.0, 50.0]])) == pytest.approx(1.0, abs=1e-6)


def test_random_is_seeded():
    assert random_score("a", 0) == random_score("a", 0) != random_score("a", 1)
    assert 0.0 <= random_score("b", 3) < 1.0


def test_group_windows_keeps_pairs_together():
    rows = [{"id": i} for i in ("a", "a", "b", "c", "c", "c")]
    assert [len(g) for g in group_windows(rows)] == [2, 1, 3]


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy"):
        score_pair([window("q", *SURE)], CONTEXT, "vibes")


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_is_a_choice_of_the_config_and_the_flag_and_scores_a_pair(name):
    from typing import get_args

    from qadist.cli import metavar
    from qadist.config import SelectConfig, load_config

    field = SelectConfig.model_fields["strategy"]
    assert get_args(field.annotation) == tuple(STRATEGIES)  # the config's choices are the table's keys
    assert name in metavar(field).split("|")  # `qadist select --strategy` offers it
    assert load_config(SelectConfig, "select", None, {"labels": "l", "out": "o", "budget": 1, "strategy": name})
    teachers = [SURE, ABSTAIN, UNSURE]
    pair = [window("q", *SURE, teachers=teachers), window("q", *UNSURE, teachers=teachers)]
    if not STRATEGIES[name].per_teacher:
        pair = [{k: v for k, v in w.items() if not k.startswith("teacher_")} for w in pair]
    s = score_pair(pair, CONTEXT, name, seed=1)
    assert 0.0 <= s["score"] <= 1.0 and s["reason"] and s["windows"] == 2 and s["id"] == "q"
    assert set(s["prediction"]) == {"start", "end", "text", "no_answer_probability"}
