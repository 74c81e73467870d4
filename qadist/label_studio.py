"""Label Studio's format, as qadist uses it: the labelling config, and an export read back as pairs.

The labelling config marks the answer as a character span of the passage (`Labels` on a `Text` with
symbol granularity) or ticks "No answer". A task of an export in Label Studio's standard JSON
format reads back as a pair with `answers` (`pair_from_task`): every pairs reader takes such an
export (`qadist.squad.io`), so `qadist finetune --train-file export.json` trains on it; a task that
is not labelled yet, or labelled inconsistently, is a reject with its reason. Writing the tasks
(`qadist select`) is the select stage's (`qadist.select.label_studio`).
"""

from __future__ import annotations

from typing import Any

ANSWER, NO_ANSWER, CONTEXT = "answer", "no_answer", "context"
NO_ANSWER_CHOICE = "No answer"
REASON_PREFIX = "Label Studio task"

LABEL_CONFIG = f"""<View>
  <Header value="$question"/>
  <Text name="{CONTEXT}" value="$context" granularity="symbol"/>
  <Labels name="{ANSWER}" toName="{CONTEXT}">
    <Label value="Answer" background="#2e7d32"/>
  </Labels>
  <Choices name="{NO_ANSWER}" toName="{CONTEXT}" choice="single" showInline="true">
    <Choice value="{NO_ANSWER_CHOICE}"/>
  </Choices>
</View>
"""


def utf16_to_index(text: str, offset: int) -> int:
    """A UTF-16 code-unit offset (what a browser counts) -> a Python string index."""
    units = 0
    for i, ch in enumerate(text):
        if units >= offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def span(context: str, value: dict) -> tuple[int, str] | str:
    """(answer_start, text) of a labels result, or the reason it cannot be one."""
    start, end = value.get("start"), value.get("end")
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end:
        return f"span start={start!r} end={end!r} is not a character range"
    text = value.get("text")
    if end <= len(context) and (text is None or context[start:end] == text):
        return start, context[start:end]
    s, e = utf16_to_index(context, start), utf16_to_index(context, end)  # offsets counted by the browser
    if text is not None and context[s:e] == text:
        return s, text
    return f"span text {str(text)[:40]!r} is not at start={start} in the context"


def pair_from_task(raw: dict) -> tuple[dict | None, str | None]:
    """A task of a Label Studio JSON export -> (a pair with `answers`, None) or (None, the reason)."""
    where = f"{REASON_PREFIX} {raw.get('id', '?')}"
    data = raw.get("data")
    if not isinstance(data, dict):
        return None, f"{where}: no 'data' object"
    missing = [k for k in ("id", "question", "context") if not isinstance(data.get(k), (str, int)) or data.get(k) == ""]
    if missing:
        return None, f"{where}: 'data' lacks {', '.join(missing)} (was it made by qadist select?)"
    annotations = [a for a in raw.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None, f"{where}: not annotated yet (no annotation that was not skipped)"
    latest = max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
    results = [r for r in latest.get("result") or [] if isinstance(r, dict)]
    spans = [r for r in results if r.get("type") == "labels" and r.get("from_name") == ANSWER]
    abstain = any(
        r.get("type") == "choices" and NO_ANSWER_CHOICE in (r.get("value") or {}).get("choices", []) for r in results
    )
    if spans and abstain:
        return None, f"{where}: the annotation marks an answer and also '{NO_ANSWER_CHOICE}'"
    if not spans and not abstain:
        return None, f"{where}: the annotation has neither an answer span nor '{NO_ANSWER_CHOICE}'"
    context = str(data["context"])
    answers: dict[str, list] = {"text": [], "answer_start": []}
    for r in spans:
        found = span(context, r.get("value") or {})
        if isinstance(found, str):
            return None, f"{where}: {found}"
        answers["answer_start"].append(found[0])
        answers["text"].append(found[1])
    pair = {**{k: v for k, v in data.items() if k not in ("answers",)}, "answers": answers}
    return pair, None


def is_task(raw: Any) -> bool:
    return isinstance(raw, dict) and "data" in raw and ("annotations" in raw or "predictions" in raw)
