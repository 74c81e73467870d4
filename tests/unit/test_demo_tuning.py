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
        inits={"student-init": "/init"},
        labels="/labels",
        subsets={50: "/s50", 200: "/s200", "all": "/all"},
        shared={"max_seq_len": 160},
        data={"dev": "/dev.jsonl", "test": "/test.jsonl"},
    )


def finish(t, task, dev_f1):
    key = (task["row"], task["lr"], task["epochs"], task["seed"])
    t.records[key] = {"dev": {"f1": dev_f1}, "test": {"f1": dev_f1}, "model": f"/m/{'-'.join(map(str, key))}"}


def test_grid_at_the_first_seed_then_the_best_dev_setting_at_the_others(tuning, tmp_path):
    t = tuning.Tuning(fake_prep(tmp_path), seeds=[0, 1, 2])
    first = t.ready()
    # Before anything finished: every independent row's 9 points at seed 0, nothing that needs the
    # distilled student, nothing at another seed.
    assert {task["seed"] for task in first} == {0}
    assert {task["row"] for task in first} == {"distilled", "labels_only_50", "labels_only_200", "all_labels"}
    assert len(first) == 4 * 9 and first[0]["row"] == "distilled"
    grid = [task for task in first if task["row"] == "distilled"]
    for i, task in enumerate(grid):
        t.submitted.add((task["row"], task["lr"], task["epochs"], task["seed"]))
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


def test_a_gap_under_the_spreads_is_a_tie(tuning):
    a, b = {"mean": 70.0, "sd": 1.0}, {"mean": 68.5, "sd": 0.8}
    assert tuning.compare("x", a, b, "A", "B").endswith("tie")
    assert tuning.compare("x", {"mean": 75.0, "sd": 1.0}, b, "A", "B").endswith("A better")
    assert tuning.compare("x", b, {"mean": 75.0, "sd": 1.0}, "A", "B").endswith("B better")


def test_the_few_label_rows_share_a_step_budget(tuning):
    grids = {g.row: g for g in tuning.grids()}
    for n in (50, 200):
        assert grids[f"labels_only_{n}"].epochs == grids[f"distilled_ft_{n}"].epochs
        assert [round(e * n / 16) for e in grids[f"labels_only_{n}"].epochs] == list(tuning.STEPS)
    assert all(len(g.learning_rates) == 3 and len(g.epochs) == 3 for g in grids.values())
