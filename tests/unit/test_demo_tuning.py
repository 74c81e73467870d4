"""benchmarks/demo_tuning.py's choices: the grid first, the best dev F1 chosen, then the other seeds."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_tuning.py"


@pytest.fixture(scope="module")
def tuning():
    spec = importlib.util.spec_from_file_location("demo_tuning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_tuning"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def fake_prep(tmp_path):
    return SimpleNamespace(
        out=str(tmp_path),
        inits={"student-init": "/init", **{f"teacher-init-{s}": f"/t{s}" for s in range(3)}},
        labels="/labels",
        subsets={50: "/s50", 200: "/s200", 1000: "/s1000"},
        shared={"max_seq_len": 160},
        data={k: f"/{k}.jsonl" for k in ("dev", "test", "teacher", "teacher-dev", "teacher-test")},
    )


def finish(t, task, dev_f1):
    key = (task["row"], task["lr"], task["epochs"], task["seed"])
    t.submitted.add(key)
    split = t.grids[task["row"]].dev
    t.records[key] = {split: {"f1": dev_f1}, "test": {"f1": dev_f1}, "model": f"/m/{'-'.join(map(str, key))}"}


def test_grid_at_the_first_seed_then_the_best_dev_setting_at_the_others(tuning, tmp_path):
    t = tuning.Tuning(fake_prep(tmp_path), seeds=[0, 1, 2])
    first = t.ready()
    # Before anything finished: every row that starts from a starting point has its 9 points at
    # seed 0 (the pre-trained teachers' starting points do not exist yet); nothing that starts
    # from another row's model, nothing at another seed.
    assert {task["seed"] for task in first} == {0}
    independent = {"teacher", "distilled", "ood_student", "labels_only_50", "labels_only_200", "labels_only_1000"}
    assert {task["row"] for task in first} == independent
    assert len(first) == len(independent) * 9 and first[0]["row"] == "teacher"
    # Teachers are chosen on the other shops' dev questions and scored on the store's too.
    teacher = [task for task in first if task["row"] == "teacher"]
    assert set(teacher[0]["files"]) == {"teacher-dev", "dev", "test", "teacher-test"}
    assert teacher[0]["data"] == "/teacher.jsonl" and teacher[0]["start"] == "/t0"
    grid = [task for task in first if task["row"] == "distilled"]
    for i, task in enumerate(grid):
        finish(t, task, dev_f1=50.0 + (10.0 if i == 4 else 0.0))
    best = t.chosen("distilled")
    assert best == (grid[4]["lr"], grid[4]["epochs"])
    after = t.ready()
    distilled_seeds = [task for task in after if task["row"] == "distilled"]
    assert [(task["lr"], task["epochs"], task["seed"]) for task in distilled_seeds] == [(*best, 1), (*best, 2)]
    # The fine-tuned rows start from the chosen distilled student of their seed: seed 0's exists now.
    ft = [task for task in after if task["row"] == "distilled_ft_200"]
    assert len(ft) == 9 and {task["start"] for task in ft} == {t.records[("distilled", *best, 0)]["model"]}
    assert all(task["data"] == "/s200" for task in ft)
    # Self-distillation starts from the chosen teacher of its seed: not before the teacher grid is done.
    assert not [task for task in after if task["row"] == "self_distilled"]
    for task in teacher:
        finish(t, task, dev_f1=70.0)
    selfd = [task for task in t.ready() if task["row"] == "self_distilled"]
    assert len(selfd) == 9 and {task["start"] for task in selfd} == {t.chosen_model("teacher", 0)}


def test_only_runs_the_rows_asked_for(tuning, tmp_path):
    t = tuning.Tuning(fake_prep(tmp_path), seeds=[0, 1, 2])
    assert {task["row"] for task in t.ready({"teacher"})} == {"teacher"}


def test_a_gap_under_the_spreads_is_a_tie(tuning):
    a, b = {"mean": 70.0, "sd": 1.0}, {"mean": 68.5, "sd": 0.8}
    assert tuning.compare("x", a, b, "A", "B").endswith("tie")
    assert tuning.compare("x", {"mean": 75.0, "sd": 1.0}, b, "A", "B").endswith("A better")
    assert tuning.compare("x", b, {"mean": 75.0, "sd": 1.0}, "A", "B").endswith("B better")


def test_the_few_label_rows_share_a_step_budget(tuning):
    grids = {g.row: g for g in tuning.grids()}
    for n in (50, 200, 1000):
        assert grids[f"labels_only_{n}"].epochs == grids[f"distilled_ft_{n}"].epochs == grids[f"ood_ft_{n}"].epochs
        assert [round(e * n / 16) for e in grids[f"labels_only_{n}"].epochs] == list(tuning.STEPS)
    assert all(len(g.learning_rates) == 3 and len(g.epochs) == 3 for g in grids.values())


def test_summary_only_tables_the_rows_whose_grid_finished(tuning, tmp_path):
    """A long tuning run can be read while it runs: finished points only, nothing trained."""
    import json

    grid = next(g for g in tuning.grids() if g.row == "teacher")
    for i, (lr, ep) in enumerate((lr, ep) for lr in grid.learning_rates for ep in grid.epochs):
        point = tmp_path / "tuning" / "teacher" / f"lr{lr:g}-ep{ep:g}-seed0"
        point.mkdir(parents=True)
        f1 = 50.0 + i
        record = {"row": "teacher", "lr": lr, "epochs": ep, "seed": 0, "model": "/m", "seconds": 1.0}
        record.update({split: {"f1": f1} for split in ("teacher-dev", "dev", "test", "teacher-test")})
        (point / "point.json").write_text(json.dumps(record))
    assert tuning.main(["--out", str(tmp_path), "--summary-only"]) == 0
    text = (tmp_path / "tuning-partial.md").read_text()
    assert "| teacher | teacher-dev |" in text and "lr 0.0004, 2 ep" in text and "distilled" not in text


def test_pretrain_gain_distils_the_pretrained_pipelines_student_on_its_own_labels(tuning, tmp_path):
    """benchmarks/pretrain_gain.py: the pre-trained pipeline's student gets the distilled row's grid,
    from the pre-trained encoder's layers, on the pre-trained ensemble's labels."""
    spec = importlib.util.spec_from_file_location("pretrain_gain", SCRIPT.with_name("pretrain_gain.py"))
    gain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gain)
    prep = fake_prep(tmp_path)
    prep.inits["student-init-pretrained"] = "/pretrained-student"
    prep.data["labels-pretrained"] = "/pretrained-labels"
    t = tuning.Tuning(prep, seeds=[0, 1, 2], rows=gain.rows_compared())
    tasks = t.ready({"distilled", "distilled_pretrained"})
    by_row = {row: [task for task in tasks if task["row"] == row] for row in ("distilled", "distilled_pretrained")}
    assert [(x["lr"], x["epochs"]) for x in by_row["distilled"]] == [
        (x["lr"], x["epochs"]) for x in by_row["distilled_pretrained"]
    ]
    assert len(by_row["distilled"]) == 9
    assert {(x["start"], x["data"], x["kind"]) for x in by_row["distilled"]} == {("/init", "/labels", "distill")}
    assert {(x["start"], x["data"]) for x in by_row["distilled_pretrained"]} == {
        ("/pretrained-student", "/pretrained-labels")
    }


def test_a_scored_point_keeps_its_final_model_not_its_checkpoints(tuning, tmp_path):
    point = tmp_path / "lr0.0001-ep1-seed0"
    for folder in ("final", "finetune/checkpoint_2026-12-06_02-26-45.365193"):
        (point / folder).mkdir(parents=True)
        (point / folder / "model.safetensors").write_bytes(b"w")
    (point / "finetune" / "checkpoint_manager_snapshot.json").write_text("{}")
    tuning.drop_checkpoints(str(point))
    assert sorted(p.relative_to(point).as_posix() for p in point.rglob("*")) == [
        "final",
        "final/model.safetensors",
        "finetune",
        "finetune/checkpoint_manager_snapshot.json",
    ]
