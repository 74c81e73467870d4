"""The daily job (jobs/configs/daily.yaml's shape) run twice: day 1, then day 2 with new questions.

Day 2 pairs only the new question file, labels only the new pairs (label generation 2), distils
generation 2 starting from day 1's student, evaluates it and promotes it behind the gate (the
registry's version 2, day 1's being version 1); a third run with nothing new does no work. The
same job with a running service that follows the promotion: tests/integration/test_loop_walkthrough.py.
Tiny models throughout (a random sentence encoder for pairs, tiny BERT teacher and student).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qadist.pipeline import run_pipeline
from qadist.registry import ObjectRegistry

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    from qadist.encoder import build_tiny_encoder

    return build_tiny_encoder(str(tmp_path_factory.mktemp("daily-encoder")))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow  # 20 s or more on the 2-core CI machine: run before resolving (pytest -m slow)
def test_daily_job_twice_day_two_labels_only_new_pairs_and_continues_the_student(
    tmp_path, squad_sample, squad_pairs, tiny_models, tiny_encoder, capsys
):
    articles = json.loads(Path(squad_sample).read_text())["data"][:3]
    docs = [{"id": f"a{a}p{n}", "text": p["context"], "title": art["title"]}
            for a, art in enumerate(articles) for n, p in enumerate(art["paragraphs"][:3])]  # fmt: skip
    questions = [{"id": qa["id"], "question": qa["question"]}
                 for art in articles for p in art["paragraphs"][:3] for qa in p["qas"][:4]]  # fmt: skip
    write_jsonl(tmp_path / "logged" / "documents.jsonl", docs)
    write_jsonl(tmp_path / "logged" / "questions" / "day-1.jsonl", questions[:20])
    write_jsonl(tmp_path / "eval.jsonl", squad_pairs[:30])
    out, windows = tmp_path / "run", {"max_seq_len": 128, "doc_stride": 32}
    gen = "gen-{generation}"
    config = {
        "pairs": {"questions": str(tmp_path / "logged" / "questions"), "documents": str(tmp_path / "logged" /
                  "documents.jsonl"), "out": f"{out}/pairs", "model": tiny_encoder, "top_k": 1},  # fmt: skip
        "label": {"pairs": f"{out}/pairs/pairs", "out": f"{out}/labels", "teachers": [tiny_models["teacher_a"]],
                  "rows_per_shard": 10, "batch_size": 32, "progress_deadline_s": 300, **windows},  # fmt: skip
        "distill": {"labels": f"{out}/labels", "generation": "{generation}", "student": tiny_models["student"],
                    "continue_from": f"{out}/students/gen-{{previous_generation}}/final",
                    "out": f"{out}/students/{gen}", "epochs": 1, "batch_size": 8, **windows},  # fmt: skip
        "predict": {"model": f"{out}/students/{gen}/final", "data": str(tmp_path / "eval.jsonl"),
                    "out": f"{out}/eval/{gen}/predictions.json", "na_probs": f"{out}/eval/{gen}/na.json", **windows},
        "evaluate": {"data": str(tmp_path / "eval.jsonl"), "predictions": f"{out}/eval/{gen}/predictions.json",
                     "na_probs": f"{out}/eval/{gen}/na.json", "out": f"{out}/eval/{gen}/metrics.json"},
        "promote": {"candidate": f"{out}/students/{gen}/final", "registry": f"{out}/registry",
                    "eval_file": str(tmp_path / "eval.jsonl"), "min_gain": -100,
                    "day_metrics": f"{out}/eval/{gen}/metrics.json", "out": f"{out}/eval/{gen}/verdict.json",
                    **windows},
    }  # fmt: skip
    path = tmp_path / "daily.yaml"
    path.write_text(yaml.safe_dump(config))

    day_1 = run_pipeline(str(path))
    assert set(day_1.values()) == {"ran"}
    registry = ObjectRegistry(f"{out}/registry")
    assert registry.current()["version"] == 1  # the first promotion has nothing to compare with
    write_jsonl(tmp_path / "logged" / "questions" / "day-2.jsonl", questions[20:])
    capsys.readouterr()
    day_2 = run_pipeline(str(path))
    printed = capsys.readouterr().out
    assert set(day_2.values()) == {"ran"}, printed

    pairs_2 = json.loads((out / "pairs" / "_manifest-000002.json").read_text())
    label_1 = json.loads((out / "labels" / "_manifest.json").read_text())
    label_2 = json.loads((out / "labels" / "_manifest-000002.json").read_text())
    print(
        f"\nday 1: {label_1['counts']['pairs_in']} pairs labelled; day 2: {pairs_2['counts']['questions_in']} new "
        f"questions -> {pairs_2['counts']['pairs_out']} pairs -> label generation 2 read {label_2['run']['pairs_in']} "
        f"pairs ({label_2['run']['teacher_seconds']:.1f} teacher s)"
    )
    assert pairs_2["counts"]["questions_in"] == len(questions) - 20
    assert label_2["run"]["pairs_in"] == pairs_2["counts"]["pairs_out"] > 0  # only the new pairs met a teacher
    assert [i["uri"] for i in label_2["inputs"]] == [f"{out}/pairs/pairs/g000002-part-00000.jsonl"]
    started_from = json.loads((out / "students" / "gen-2" / "final" / "qadist_config.json").read_text())
    assert started_from["config"]["student"] == f"{out}/students/gen-1/final"
    assert started_from["config"]["generation"] == 2
    assert (out / "eval" / "gen-2" / "metrics.json").exists() and (out / "eval" / "gen-1" / "metrics.json").exists()
    verdict = json.loads((out / "eval" / "gen-2" / "verdict.json").read_text())
    assert verdict["promoted"] and verdict["current_version"] == 1 and verdict["version"] == 2
    assert set(verdict["figures"]["candidate"]) == {"f1"} and verdict["day_metrics"]["total"] == 30
    assert registry.current()["version"] == 2 and registry.current()["previous"] == [1]
    assert registry.record(2)["source"] == f"{out}/students/gen-2/final"

    assert set(run_pipeline(str(path)).values()) == {"skipped"}  # nothing new: no work
