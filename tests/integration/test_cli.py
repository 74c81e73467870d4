"""The real `qadist` CLI: predict with a tiny model on the SQuAD sample, evaluate it, and bad input
that must end with exit 2 and one line naming the file, row or key and the fix (no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from qadist.cli import main

OFFICIAL_KEYS = [
    "exact",
    "f1",
    "total",
    "HasAns_exact",
    "HasAns_f1",
    "HasAns_total",
    "NoAns_exact",
    "NoAns_f1",
    "NoAns_total",
    "best_exact",
    "best_exact_thresh",
    "best_f1",
    "best_f1_thresh",
]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`qadist ARGV` in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def run_qadist(argv: list[str], cwd) -> subprocess.CompletedProcess:
    """`qadist ARGV` as a user runs it: the installed console script (or `python -m qadist.cli`)."""
    exe = shutil.which("qadist")
    cmd = [exe, *argv] if exe else [sys.executable, "-m", "qadist.cli", *argv]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_predict_then_evaluate_on_the_sample(tiny_models, squad_sample, tmp_path, capsys):
    preds, na, metrics = tmp_path / "predictions.json", tmp_path / "na_probs.json", tmp_path / "metrics.json"
    code, _, _ = run_cli(
        [
            "predict",
            "--model",
            tiny_models["student"],
            "--data",
            squad_sample,
            "--out",
            str(preds),
            "--na-probs",
            str(na),
            "--batch-size",
            "64",
            "--cpu",
        ],
        capsys,
    )
    assert code == 0
    predictions, na_probs = json.loads(preds.read_text()), json.loads(na.read_text())
    gold = json.loads(open(squad_sample).read())
    contexts = {qa["id"]: p["context"] for a in gold["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert set(predictions) == set(na_probs) == set(contexts) and len(predictions) == 3250
    assert all(answer in contexts[i] for i, answer in predictions.items())  # answers are context spans
    assert all(0.0 <= p <= 1.0 for p in na_probs.values())
    code, out, _ = run_cli(
        ["evaluate", "--data", squad_sample, "--predictions", str(preds), "--na-probs", str(na), "--out", str(metrics)],
        capsys,
    )
    assert code == 0
    printed = json.loads(out)
    assert list(printed) == OFFICIAL_KEYS
    assert printed["total"] == 3250 and printed["HasAns_total"] + printed["NoAns_total"] == 3250
    assert all(0 <= printed[k] <= 100 for k in ("exact", "f1", "best_exact", "best_f1"))
    assert json.loads(metrics.read_text()) == printed
    answered = sum(1 for a in predictions.values() if a)
    print(
        f"\n[predict+evaluate tiny student] questions={len(predictions)} answered={answered} "
        f"exact={printed['exact']:.2f} f1={printed['f1']:.2f} best_f1={printed['best_f1']:.2f}"
    )


def test_predict_with_the_albert_family_and_a_config_file(tiny_models, squad_pairs, tmp_path, capsys):
    rows = squad_pairs[:12]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "predict.yaml"
    config.write_text(
        f"predict:\n  model: {tiny_models['albert']}\n  data: {data}\n  out: {tmp_path / 'p.json'}\n"
        "  max_seq_len: 128\n  doc_stride: 32\n  batch_size: 8\n"
    )
    code, _, _ = run_cli(["predict", "--config", str(config), "--out", str(tmp_path / "flag.json")], capsys)
    assert code == 0
    assert not (tmp_path / "p.json").exists()  # the flag overrode the config's out
    assert set(json.loads((tmp_path / "flag.json").read_text())) == {r["id"] for r in rows}


# --- bad input: exit 2, one line, no traceback -----------------------------------------------------


def write(path, content: str | bytes) -> str:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


GOOD = {"id": "a", "question": "Who?", "context": "Ada wrote it."}


def test_malformed_json_via_the_installed_command(tmp_path):
    bad = write(tmp_path / "bad.json", '{"data": [')
    result = run_qadist(["predict", "--model", "m", "--data", bad, "--out", str(tmp_path / "p.json")], tmp_path)
    assert_one_line_error(result.returncode, result.stderr, bad, "malformed JSON at line 1", "give official SQuAD JSON")
    assert result.stdout == ""


def test_unknown_flag_via_the_installed_command(tmp_path):
    result = run_qadist(["predict", "--bogus", "1"], tmp_path)
    assert_one_line_error(result.returncode, result.stderr, "No such option: --bogus", "qadist predict --help")


def test_bare_command_shows_help(tmp_path):
    result = run_qadist([], tmp_path)
    assert result.returncode == 2 and "Usage: qadist" in result.stderr and "predict" in result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr


@pytest.mark.parametrize(
    "rows,needles",
    [
        ([GOOD, {"id": "b", "context": "x"}], ["row 2", "missing field 'question'", "fix or remove the row"]),
        ([{"id": "b", "question": "q"}], ["row 1", "missing field 'context'"]),
        ([{"id": "b", "question": 5, "context": "c"}], ["row 1", "field 'question' is int, not a string"]),
        ([{"id": "b", "question": "q", "context": {"t": 1}}], ["row 1", "field 'context' is dict, not a string"]),
        ([GOOD, GOOD], ["row 2", "duplicate id 'a'"]),
    ],
)
def test_bad_rows(rows, needles, tmp_path, capsys):
    data = write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli(["predict", "--model", "m", "--data", data, "--out", str(tmp_path / "p.json")], capsys)
    assert_one_line_error(code, err, data, *needles)
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    "name,content,needles",
    [
        ("empty.jsonl", "", ["the file is empty", "give at least one row"]),
        ("empty.json", "\n", ["the file is empty"]),
        ("bad.jsonl", '{"id": "a", "question": "q", "context": "c"}\n{"id": "b",\n', ["row 2", "not valid JSON"]),
        ("bad.parquet", "PAR1 not really", ["not a readable Parquet file"]),
    ],
)
def test_unreadable_data_files(name, content, needles, tmp_path, capsys):
    data = write(tmp_path / name, content)
    code, _, err = run_cli(["predict", "--model", "m", "--data", data, "--out", str(tmp_path / "p.json")], capsys)
    assert_one_line_error(code, err, data, *needles)


def test_data_uri_that_does_not_exist(tmp_path, capsys):
    missing = str(tmp_path / "nope.json")
    code, _, err = run_cli(["predict", "--model", "m", "--data", missing, "--out", str(tmp_path / "p.json")], capsys)
    assert_one_line_error(code, err, missing, "no such file or folder", "check the path")


def test_s3_uri_that_does_not_exist(s3_bucket, tmp_path, capsys):
    missing = f"{s3_bucket}/no/such/prefix/"
    code, _, err = run_cli(["evaluate", "--data", missing, "--predictions", str(tmp_path / "p.json")], capsys)
    assert_one_line_error(code, err, missing, "no such file or folder", "AWS_ENDPOINT_URL")


def test_model_that_does_not_exist(tmp_path, capsys):
    data = write(tmp_path / "pairs.jsonl", json.dumps(GOOD) + "\n")
    missing = str(tmp_path / "no-model")
    code, _, err = run_cli(["predict", "--model", missing, "--data", data, "--out", str(tmp_path / "p.json")], capsys)
    assert_one_line_error(code, err, missing, "no such model folder", "give an existing save_pretrained folder")


def test_unknown_config_key(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", "predict:\n  model: m\n  data: d.json\n  out: p.json\n  bach_size: 3\n")
    code, _, err = run_cli(["predict", "--config", config], capsys)
    assert_one_line_error(code, err, config, "unknown key 'bach_size'", "valid keys are", "batch_size")


def test_wrong_config_type(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", "model: m\ndata: d.json\nout: p.json\nmax_seq_len: long\n")
    code, _, err = run_cli(["predict", "--config", config], capsys)
    assert_one_line_error(code, err, config, "key 'max_seq_len'", "valid integer", "(got 'long')")


def test_wrong_flag_type(capsys):
    code, _, err = run_cli(["predict", "--batch-size", "lots"], capsys)
    assert_one_line_error(code, err, "'--batch-size'", "valid integer")


def test_missing_required_flag(capsys):
    code, _, err = run_cli(["predict", "--model", "m", "--data", "d.json"], capsys)
    assert_one_line_error(code, err, "missing required key 'out'", "--out")


def test_bad_window_lengths(tmp_path, capsys):
    code, _, err = run_cli(
        ["predict", "--model", "m", "--data", "d", "--out", "o", "--max-seq-len", "128", "--doc-stride", "64"], capsys
    )
    assert_one_line_error(code, err, "doc_stride=64 must be in")


@pytest.mark.parametrize(
    "content,needles",
    [
        ('{"a": ', ["malformed JSON", "predictions must be a JSON object"]),
        ('["x"]', ["predictions must be a JSON object of id -> value, not list"]),
        ('{"a": 1}', ["id 'a'", "must be str"]),
    ],
)
def test_bad_predictions_file(content, needles, squad_sample, tmp_path, capsys):
    preds = write(tmp_path / "p.json", content)
    code, _, err = run_cli(["evaluate", "--data", squad_sample, "--predictions", preds], capsys)
    assert_one_line_error(code, err, preds, *needles)


def test_evaluate_needs_gold_answers(tmp_path, capsys):
    data = write(tmp_path / "pairs.jsonl", json.dumps(GOOD) + "\n")
    preds = write(tmp_path / "p.json", '{"a": "Ada"}')
    code, _, err = run_cli(["evaluate", "--data", data, "--predictions", preds], capsys)
    assert_one_line_error(code, err, data, "no row has 'answers'")


def test_a_gpu_request_this_machine_can_never_meet_exits_2_at_once(tiny_models, squad_sample, tmp_path):
    """No GPU here: `--use-gpu` would wait forever for a GPU task; it is one line and exit 2 instead."""
    done = run_qadist(
        ["predict", "--model", tiny_models["student"], "--data", squad_sample, "--out", "p.json", "--use-gpu"],
        tmp_path,
    )
    assert_one_line_error(
        done.returncode, done.stderr, "predict: 1 answering task x (1 CPU, 1 GPU) can never be placed",
        "no node has a 'GPU' resource", "drop --use-gpu",
    )  # fmt: skip
    assert not (tmp_path / "p.json").exists()
