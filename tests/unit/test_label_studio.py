"""Label Studio tasks out and exports back: spans as character offsets, "No answer", rejects with reasons."""

import json

from qadist.label_studio import LABEL_CONFIG, pair_from_task, utf16_to_index
from qadist.select.label_studio import task
from qadist.squad.io import read_pairs

CONTEXT = "The Orion Q-570 weighs 420 g and shoots 24.2 megapixels."
PAIR = {"id": "q1", "question": "How heavy is the Orion Q-570?", "context": CONTEXT, "title": "Orion Q-570"}


def selected(start, end):
    return {
        "rank": 1,
        "strategy": "entropy",
        "score": 0.7,
        "reason": "spread",
        "prediction": {"start": start, "end": end},
    }


def annotated(result, **extra):
    return {"id": 7, "data": {"id": "q1", "question": PAIR["question"], "context": CONTEXT}, "annotations": [
        {"id": 1, "result": result, "was_cancelled": False, "updated_at": "2026-12-01T10:00:00Z", **extra}
    ]}  # fmt: skip


def span_result(start, end, text=None):
    value = {"start": start, "end": end, "labels": ["Answer"], "text": CONTEXT[start:end] if text is None else text}
    return [{"from_name": "answer", "to_name": "context", "type": "labels", "value": value}]


NO_ANSWER = [{"from_name": "no_answer", "to_name": "context", "type": "choices", "value": {"choices": ["No answer"]}}]


def test_task_prefills_the_ensembles_answer_or_no_answer():
    t = task(PAIR, selected(23, 28))
    assert t["data"] == {"id": "q1", "question": PAIR["question"], "context": CONTEXT, "title": "Orion Q-570"}
    value = t["predictions"][0]["result"][0]["value"]
    assert value["text"] == "420 g" and (value["start"], value["end"]) == (23, 28)
    assert t["meta"]["reason"] == "spread" and t["meta"]["rank"] == 1
    abstain = task(PAIR, selected(-1, -1))["predictions"][0]["result"][0]
    assert abstain["type"] == "choices" and abstain["value"]["choices"] == ["No answer"]
    # The prediction's names are the labelling config's.
    assert 'name="answer"' in LABEL_CONFIG and 'name="no_answer"' in LABEL_CONFIG and 'value="$context"' in LABEL_CONFIG


def test_export_span_and_no_answer_read_back_as_gold():
    pair, reason = pair_from_task(annotated(span_result(23, 28)))
    assert reason is None and pair["answers"] == {"text": ["420 g"], "answer_start": [23]}
    pair, reason = pair_from_task(annotated(NO_ANSWER))
    assert reason is None and pair["answers"] == {"text": [], "answer_start": []}


def test_the_latest_annotation_wins_and_skipped_ones_do_not_count():
    t = annotated(NO_ANSWER)
    t["annotations"].append({"id": 2, "result": span_result(23, 28), "updated_at": "2026-12-02T09:00:00Z"})
    t["annotations"].append({"id": 3, "result": [], "was_cancelled": True, "updated_at": "2026-12-03T09:00:00Z"})
    assert pair_from_task(t)[0]["answers"]["text"] == ["420 g"]


def test_bad_annotations_are_rejected_with_reasons():
    cases = {
        "not annotated yet": {"id": 1, "data": {"id": "q", "question": "?", "context": "c"}, "annotations": []},
        "marks an answer and also": annotated(span_result(23, 28) + NO_ANSWER),
        "neither an answer span": annotated([]),
        "is not at start=23": annotated(span_result(23, 28, text="999 g")),
        "not a character range": annotated(span_result(28, 23)),
        "lacks question": {"id": 2, "data": {"id": "q", "context": "c"}, "annotations": []},
    }
    for needle, raw in cases.items():
        pair, reason = pair_from_task(raw)
        assert pair is None and needle in reason and reason.startswith("Label Studio task"), (needle, reason)


def test_browser_offsets_beyond_the_basic_plane():
    context = "Colour 📷 body: 420 g"  # the camera emoji is 2 UTF-16 units, 1 Python character
    units = len("Colour 📷 body: ".encode("utf-16-le")) // 2
    assert utf16_to_index(context, units) == context.index("420")
    value = {"start": units, "end": units + 5, "text": "420 g"}
    raw = {"id": 3, "data": {"id": "e", "question": "weight?", "context": context}, "annotations": [
        {"result": [{"from_name": "answer", "type": "labels", "value": value}]}
    ]}  # fmt: skip
    pair, reason = pair_from_task(raw)
    assert reason is None and pair["answers"] == {"text": ["420 g"], "answer_start": [context.index("420")]}


def test_an_export_file_reads_row_by_row(tmp_path):
    export = [
        annotated(span_result(23, 28)),
        annotated([]),
        {"id": 9, "data": {"id": "q9", "question": "?", "context": "c"}},
    ]
    export[1]["data"] = dict(export[1]["data"], id="q2")
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    pairs, rejects = read_pairs(str(path), strict=False)
    assert [p["id"] for p in pairs] == ["q1"]
    assert [r["row"] for r in rejects] == [2, 3] and "neither an answer span" in rejects[0]["reason"]
    # A row with `data` but neither annotations nor predictions is not read as a task: a bad pair.
    assert rejects[1]["reason"] == "missing field 'question'"
