"""Paths are resolved on the driver, and a user error raised inside a Ray worker, actor or task
reaches the terminal as the CLI's one line with exit 2.

The training stages are run from another directory with relative paths (Ray Train workers run
with another working directory, so an unresolved relative path would only fail inside them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shard_factory import make_label_shards

from qadist.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("qadist: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def workdir(tmp_path, tiny_models, squad_pairs, monkeypatch):
    """tmp_path/{student, gold.jsonl, labels}, and the current directory tmp_path/elsewhere."""
    shutil.copytree(tiny_models["student"], tmp_path / "student")
    (tmp_path / "gold.jsonl").write_text("".join(json.dumps(p) + "\n" for p in squad_pairs[:40]))
    make_label_shards(tmp_path / "labels", tiny_models["teacher_a"], squad_pairs[:40])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path


@pytest.mark.slow  # 20 s or more on the 2-core CI machine: run before resolving (pytest -m slow)
def test_distill_and_finetune_with_relative_paths_from_another_directory(workdir, ray_local, capsys):
    small = ["--epochs", "1", "--batch-size", "16", "--max-seq-len", "128", "--doc-stride", "32"]
    code, out, err = run_cli(
        ["distill", "--labels", "../labels", "--student", "../student", "--out", "../distilled", *small], capsys
    )
    assert code == 0, err
    assert (workdir / "distilled" / "final" / "config.json").exists()
    code, out, err = run_cli(
        ["finetune", "--model", "../distilled/final", "--train-file", "../gold.jsonl", "--out", "../finetuned", *small],
        capsys,
    )
    assert code == 0, err
    assert (workdir / "finetuned" / "final" / "config.json").exists()
    assert "qadist finetune: done" in out and (workdir / "finetuned.log").exists()


def test_a_missing_model_folder_is_one_line_before_any_work(workdir, capsys):
    code, _, err = run_cli(
        ["finetune", "--model", "../no-such-model", "--train-file", "../gold.jsonl", "--out", "../ft"], capsys
    )
    assert_one_line_error(code, err, str(workdir / "no-such-model"), "no such model folder")


def without_weights(model: Path, folder: Path) -> Path:
    """A copy of a model folder without its weights: its tokenizer loads (on the driver), its model
    does not (in a Ray worker or actor)."""
    folder.mkdir()
    for f in model.iterdir():
        if not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, folder / f.name)
    return folder


def test_a_user_error_in_a_train_worker_is_one_line(workdir, ray_local, capsys):
    broken = without_weights(workdir / "student", workdir / "no-weights")
    (workdir / "once.yaml").write_text("max_failures: 0\n")
    code, _, err = run_cli(
        [
            "finetune",
            "--config",
            "../once.yaml",
            "--model",
            "../no-weights",
            "--train-file",
            "../gold.jsonl",
            "--out",
            "../ft",
            "--epochs",
            "1",
            "--max-seq-len",
            "128",
            "--doc-stride",
            "32",
        ],
        capsys,
    )
    assert_one_line_error(code, err, str(broken), "cannot load a question-answering model")


def test_a_user_error_in_a_teacher_actor_is_one_line(workdir, ray_local, capsys):
    broken = without_weights(workdir / "student", workdir / "no-weights-teacher")
    code, _, err = run_cli(
        [
            "label",
            "--pairs",
            "../gold.jsonl",
            "--out",
            "../labels-2",
            "--teacher",
            "../no-weights-teacher",
            "--max-seq-len",
            "128",
            "--doc-stride",
            "32",
        ],
        capsys,
    )
    assert_one_line_error(code, err, str(broken), "cannot load a question-answering model")
