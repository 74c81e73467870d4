"""Label Studio tasks out of `qadist select`: each selected pair with the ensemble's answer pre-filled.

Tasks are Label Studio's import format (`data` + `predictions`), for the labelling config of
`qadist.label_studio` (the format, and reading an annotated export back as pairs, live there).
"""

from __future__ import annotations

from qadist.label_studio import ANSWER, CONTEXT, NO_ANSWER, NO_ANSWER_CHOICE


def prediction_result(context: str, start: int, end: int) -> list[dict]:
    """A Label Studio result: the span [start, end) of the context, or "No answer" when start < 0."""
    if start < 0:
        return [
            {"from_name": NO_ANSWER, "to_name": CONTEXT, "type": "choices", "value": {"choices": [NO_ANSWER_CHOICE]}}
        ]
    value = {"start": start, "end": end, "text": context[start:end], "labels": ["Answer"]}
    return [{"from_name": ANSWER, "to_name": CONTEXT, "type": "labels", "value": value}]


def task(pair: dict, selected: dict) -> dict:
    """One Label Studio task of a selected pair (`selected`: a row of selected.jsonl)."""
    data = {"id": pair["id"], "question": pair["question"], "context": pair["context"]}
    data.update({k: pair[k] for k in ("title", "doc_id", "question_id") if pair.get(k) is not None})
    p = selected["prediction"]
    return {
        "data": data,
        "predictions": [
            {
                "model_version": "qadist teacher ensemble",
                "score": round(1.0 - selected["score"], 4),  # the teachers' confidence, as Label Studio shows it
                "result": prediction_result(pair["context"], p["start"], p["end"]),
            }
        ],
        "meta": {k: selected[k] for k in ("rank", "strategy", "score", "reason")},
    }
