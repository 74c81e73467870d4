"""The daily pipeline of jobs/configs/daily.yaml with `use_gpu: true`, on a simulated GPU cluster.

simulated_gpu_run.py (its own process: a cluster cannot share this process with the session's Ray)
starts raylets shaped like cluster.yaml: a CPU head where the driver runs, a `label_gpu` node (1 GPU,
`qadist_label`) and a `train_gpu` node (2 GPUs, `qadist_train`), with qadist's test hook
(QADIST_SIMULATED_GPUS, qadist/runtime.py): what Ray gives a GPU computes on the CPU.
Asserted from Ray's state API: every teacher and encoder actor on the label node, every Train
worker on the train node, the predict task on a GPU node; the driver (given no GPU, so untouched
by the hook) never needing CUDA;
then 8 Train workers on the 2 "GPUs" exit 2 with one line, in seconds, not a wait.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LIMIT_S = 600


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tiny_daily_config(tmp_path: Path, squad_sample: str, squad_pairs, tiny_models, encoder: str) -> Path:
    """jobs/configs/daily.yaml with local folders, tiny models and sizes for 1 + 2 simulated GPUs;
    its GPU settings (use_gpu, num_gpus_per_actor, resources_per_*) kept as they are."""
    daily = yaml.safe_load((REPO / "jobs" / "configs" / "daily.yaml").read_text())
    for section in ("pairs", "label"):
        assert daily[section]["num_gpus_per_actor"] == 1
        assert daily[section]["resources_per_actor"] == {"qadist_label": 1}
    assert daily["distill"]["use_gpu"] and daily["distill"]["resources_per_worker"] == {"qadist_train": 1}
    assert daily["predict"]["use_gpu"]
    articles = json.loads(Path(squad_sample).read_text())["data"][:2]
    docs = [
        {"id": f"a{a}p{n}", "text": p["context"]}
        for a, art in enumerate(articles)
        for n, p in enumerate(art["paragraphs"][:3])
    ]
    questions = [
        {"id": qa["id"], "question": qa["question"]}
        for art in articles
        for p in art["paragraphs"][:3]
        for qa in p["qas"][:3]
    ]
    write_jsonl(tmp_path / "logged" / "documents.jsonl", docs)
    write_jsonl(tmp_path / "logged" / "questions" / "day-1.jsonl", questions[:12])
    write_jsonl(tmp_path / "eval.jsonl", squad_pairs[:12])
    out, gen = tmp_path / "run", "gen-{generation}"
    windows = {"max_seq_len": 128, "doc_stride": 32, "max_query_len": 32}
    daily["pairs"] |= {
        "questions": str(tmp_path / "logged" / "questions"),
        "documents": str(tmp_path / "logged" / "documents.jsonl"),
        "out": f"{out}/pairs",
        "model": encoder,
        "num_actors": 1,
        "batch_size": 16,
    }
    daily["label"] |= {
        "pairs": f"{out}/pairs/pairs",
        "out": f"{out}/labels",
        "teachers": [tiny_models["teacher_a"]],
        "num_actors": 1,
        "batch_size": 16,
        "rows_per_shard": 6,
        "progress_deadline_s": 300,
        **windows,
    }
    daily["compact"] |= {"labels": f"{out}/labels"}
    daily["distill"] |= {
        "labels": f"{out}/labels",
        "student": tiny_models["student"],
        "out": f"{out}/students/{gen}",
        "continue_from": f"{out}/students/gen-{{previous_generation}}/final",
        "num_workers": 2,
        "epochs": 1,
        "batch_size": 4,
        "checkpoint_every": 1000,
        "eval_file": None,
        **windows,
    }
    daily["predict"] |= {
        "model": f"{out}/students/{gen}/final",
        "data": str(tmp_path / "eval.jsonl"),
        "out": f"{out}/eval/{gen}/predictions.json",
        "na_probs": f"{out}/eval/{gen}/na.json",
        "batch_size": 8,
        **windows,
    }
    daily["evaluate"] |= {
        "data": str(tmp_path / "eval.jsonl"),
        "predictions": f"{out}/eval/{gen}/predictions.json",
        "na_probs": f"{out}/eval/{gen}/na.json",
        "out": f"{out}/eval/{gen}/metrics.json",
    }
    daily["promote"] |= {"candidate": f"{out}/students/{gen}/final", "registry": f"{out}/registry",
                         "eval_file": str(tmp_path / "eval.jsonl"), "day_metrics": f"{out}/eval/{gen}/metrics.json",
                         "out": f"{out}/eval/{gen}/verdict.json", "batch_size": 8, **windows}  # fmt: skip
    path = tmp_path / "daily.yaml"
    path.write_text(yaml.safe_dump(daily))
    return path


@pytest.mark.slow
def test_daily_pipeline_places_every_gpu_unit_on_its_node_type(tmp_path, squad_sample, squad_pairs, tiny_models):
    from qadist.encoder import build_tiny_encoder

    encoder = build_tiny_encoder(str(tmp_path / "encoder"))
    config = tiny_daily_config(tmp_path, squad_sample, squad_pairs, tiny_models, encoder)
    done = subprocess.run(
        [sys.executable, str(HERE / "simulated_gpu_run.py"), str(config)],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        env={k: v for k, v in os.environ.items() if k != "QADIST_SIMULATED_GPUS"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("SIMULATED ")]
    assert done.returncode == 0 and lines, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(lines[-1].removeprefix("SIMULATED "))
    print(json.dumps(report, indent=1))
    where = report["placement"]
    assert where["BlockTeacher"] and set(where["BlockTeacher"]) == {"label_gpu"}
    assert where["Encoder"] and set(where["Encoder"] + where.get("StagedMatcher", [])) == {"label_gpu"}
    assert len(where["RayTrainWorker"]) == 2 and set(where["RayTrainWorker"]) == {"train_gpu"}
    assert where["answer"] and set(where["answer"]) <= {"label_gpu", "train_gpu"}
    metrics = json.loads((tmp_path / "run" / "eval" / "gen-1" / "metrics.json").read_text())
    assert metrics["total"] == 12
    assert json.loads((tmp_path / "run" / "eval" / "gen-1" / "verdict.json").read_text())["promoted"]  # version 1
    # 8 Train workers x 1 GPU on a cluster of 3 GPUs (2 of them qadist_train): one line, exit 2, no wait.
    # (its time is printed above, not asserted: a wait would have hit the subprocess's limit instead)
    assert report["too_large_exit"] == 2
    assert "distill: 8 Train worker(s) x (1 GPU, 1 qadist_train) can never be placed" in done.stderr
    assert "lower --num-workers" in done.stderr
