"""The annotator's side of tests/integration/test_label_studio.py, through label-studio-sdk.

Run with the Python that has label-studio and label-studio-sdk (they need other versions of some
packages than qadist, so the test may run this in a separate environment):

    python label_studio_client.py --url URL --token TOKEN --tasks label_studio_tasks.json
        --config label_studio_config.xml --gold gold.json --annotate 8 --export export.json

Creates a project with qadist's labelling config, imports qadist's tasks (their predictions come
along), annotates the first --annotate tasks through the API with the gold answers (a span, or
"No answer"), and downloads the JSON export of every task, annotated or not.
"""

from __future__ import annotations

import argparse
import json

from label_studio_sdk import LabelStudio


def gold_result(gold: dict) -> list[dict]:
    if not gold["text"]:
        return [
            {"from_name": "no_answer", "to_name": "context", "type": "choices", "value": {"choices": ["No answer"]}}
        ]
    start = gold["answer_start"][0]
    value = {"start": start, "end": start + len(gold["text"][0]), "text": gold["text"][0], "labels": ["Answer"]}
    return [{"from_name": "answer", "to_name": "context", "type": "labels", "value": value}]


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("url", "token", "tasks", "config", "gold", "export"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--annotate", type=int, required=True)
    args = parser.parse_args()
    client = LabelStudio(base_url=args.url, api_key=args.token)
    with open(args.config) as f:
        project = client.projects.create(title="qadist selection", label_config=f.read())
    with open(args.tasks) as f:
        tasks = json.load(f)
    client.projects.import_tasks(id=project.id, request=tasks)
    with open(args.gold) as f:
        gold = json.load(f)
    imported = sorted(client.tasks.list(project=project.id, fields="all"), key=lambda t: t.id)
    assert len(imported) == len(tasks), (len(imported), len(tasks))
    assert all(t.predictions for t in imported), "the pre-filled predictions did not arrive"
    for t in imported[: args.annotate]:
        client.annotations.create(id=t.id, result=gold_result(gold[t.data["id"]]), task=t.id, project=project.id)
    export = b"".join(client.projects.exports.download_sync(project.id, export_type="JSON", download_all_tasks=True))
    with open(args.export, "wb") as f:
        f.write(export)
    print(json.dumps({"project": project.id, "tasks": len(imported), "annotated": args.annotate}))


if __name__ == "__main__":
    main()
