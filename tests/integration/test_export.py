"""`qadist export` through the CLI: ONNX graphs that answer as the PyTorch model does, an int8
graph only after its F1 is checked, and exported folders that `predict` and `evaluate` accept."""

from __future__ import annotations

import json

import pytest
from test_cli import assert_one_line_error, run_cli

from qadist.cli import main

WINDOWS = ["--max-seq-len", "192", "--doc-stride", "64", "--cpu"]


@pytest.fixture(scope="module")
def eval_file(squad_sample, tmp_path_factory) -> str:
    """The first 300 questions of the shared SQuAD sample (answerable and not)."""
    data = json.loads(open(squad_sample).read())
    kept, n = [], 0
    for article in data["data"]:
        if n >= 300:
            break
        kept.append(article)
        n += sum(len(p["qas"]) for p in article["paragraphs"])
    path = tmp_path_factory.mktemp("export-eval") / "eval.json"
    path.write_text(json.dumps({"version": data.get("version", "v2.0"), "data": kept}))
    return str(path)


@pytest.fixture(scope="module")
def exported(tiny_models, eval_file, tmp_path_factory) -> dict:
    """The tiny teacher exported with --int8, checked on the eval file (one export for the module)."""
    out = tmp_path_factory.mktemp("export") / "teacher-onnx"
    with pytest.raises(SystemExit) as e:
        main(
            ["export", "--model", tiny_models["teacher_a"], "--out", str(out), "--int8", "--eval-file", eval_file]
            + WINDOWS
        )
    assert e.value.code == 0
    return {"out": out, "report": json.loads((out / "export_report.json").read_text())}


def test_export_writes_the_folder_of_the_contract(exported):
    out, report = exported["out"], exported["report"]
    for name in ("model.onnx", "model.int8.onnx", "config.json", "tokenizer.json", "qadist_config.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "qadist_config.json").read_text())["export"]["graph"] == "model.int8.onnx"
    assert report["graph"] == "model.int8.onnx" and report["max_logit_difference_fp32"] < 1e-3
    assert report["eval_questions"] >= 300
    # fp32 ONNX answers as PyTorch does; int8 within the limit; every figure measured.
    assert abs(report["onnx_fp32"]["f1"] - report["pytorch"]["f1"]) < 0.05
    assert report["pytorch"]["f1"] - report["onnx_int8"]["f1"] <= 1.0
    assert report["int8_attempts"][-1]["f1_loss"] <= 1.0
    for name in ("pytorch", "onnx_fp32", "onnx_int8"):
        assert report[name]["answers_per_s"] > 0
    assert report["speedup_vs_pytorch"] > 0 and report["threads"] >= 1
    print(
        f"\n[export tiny teacher] F1 pytorch {report['pytorch']['f1']:.2f} fp32 {report['onnx_fp32']['f1']:.2f} "
        f"int8 {report['onnx_int8']['f1']:.2f}; answers/s pytorch {report['pytorch']['answers_per_s']} "
        f"fp32 {report['onnx_fp32']['answers_per_s']} int8 {report['onnx_int8']['answers_per_s']}"
    )


def test_predict_and_evaluate_accept_an_exported_folder(tiny_models, eval_file, tmp_path, capsys):
    out = tmp_path / "fp32"
    code, _, err = run_cli(["export", "--model", tiny_models["student"], "--out", str(out), *WINDOWS], capsys)
    assert code == 0, err
    assert json.loads((out / "qadist_config.json").read_text())["export"]["graph"] == "model.onnx"
    answers = {}
    for name, model in (("pytorch", tiny_models["student"]), ("onnx", str(out))):
        preds = tmp_path / f"{name}.json"
        code, _, err = run_cli(
            ["predict", "--model", model, "--data", eval_file, "--out", str(preds), *WINDOWS], capsys
        )
        assert code == 0, err
        answers[name] = json.loads(preds.read_text())
    same = sum(answers["pytorch"][k] == answers["onnx"][k] for k in answers["pytorch"])
    assert same >= 0.99 * len(answers["pytorch"]), same  # fp32 graph: the same spans (ties aside)
    code, printed, err = run_cli(["evaluate", "--model", str(out), "--data", eval_file, *WINDOWS], capsys)
    assert code == 0, err
    assert json.loads(printed)["total"] == len(answers["onnx"])


def test_a_failing_int8_graph_is_refused_and_fp32_is_served(tiny_models, eval_file, tmp_path, capsys, monkeypatch):
    from qadist.answer import export

    real_score = export.score

    def int8_loses_two_points(model, tokenizer, pairs, gold, cfg):
        scores = real_score(model, tokenizer, pairs, gold, cfg)
        if str(getattr(model, "path", "")).endswith("model.int8.onnx"):
            scores["f1"] -= 2.0
        return scores

    monkeypatch.setattr(export, "score", int8_loses_two_points)
    out = tmp_path / "refused"
    code, _, err = run_cli(
        ["export", "--model", tiny_models["student"], "--out", str(out), "--int8", "--eval-file", eval_file, *WINDOWS],
        capsys,
    )
    assert_one_line_error(code, err, "--int8", "the int8 graph loses", "serves the fp32 graph")
    report = json.loads((out / "export_report.json").read_text())
    assert report["graph"] == "model.onnx" and not (out / "model.int8.onnx").exists()
    assert [a["fp32_nodes"] for a in report["int8_attempts"]] == [[], list(export.KEEP_FP32)]  # the fallback too
    assert json.loads((out / "qadist_config.json").read_text())["export"]["graph"] == "model.onnx"


def test_export_of_an_albert_model(tiny_models, tmp_path, capsys):
    out = tmp_path / "albert"
    code, _, err = run_cli(["export", "--model", tiny_models["albert"], "--out", str(out), *WINDOWS], capsys)
    assert code == 0, err
    assert json.loads((out / "export_report.json").read_text())["max_logit_difference_fp32"] < 1e-3


def test_int8_without_an_eval_file_is_a_usage_error(tiny_models, tmp_path, capsys):
    code, _, err = run_cli(
        ["export", "--model", tiny_models["student"], "--out", str(tmp_path / "x"), "--int8"], capsys
    )
    assert_one_line_error(code, err, "--int8 needs --eval-file")


def test_a_missing_model_folder(tmp_path, capsys):
    code, _, err = run_cli(["export", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")], capsys)
    assert_one_line_error(code, err, "no such model folder")


def test_an_exported_folder_is_not_exported_again(exported, tmp_path, capsys):
    code, _, err = run_cli(
        ["export", "--model", str(exported["out"]), "--out", str(tmp_path / "again"), *WINDOWS], capsys
    )
    assert_one_line_error(code, err, "already an exported folder")


def test_export_into_a_folder_of_other_files_is_refused(tiny_models, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(["export", "--model", tiny_models["student"], "--out", str(out), *WINDOWS], capsys)
    assert_one_line_error(code, err, "no qadist run claimed", "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"
