"""`qadist pretrain` as a user runs it: masked-LM training on real documents (the SQuAD sample's
Wikipedia paragraphs) with bad rows among them, relative paths and S3 URIs, the output loaded as a
masked LM and as a QA model, and (slow) a worker killed mid-run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error, run_cli
from train_faults import kill_a_worker_and_check_resume

from qadist import storage

BAD_ROWS = [
    ('{"id": "empty", "text": "   "}', "field 'text' is empty"),
    ("not json", "not valid JSON"),
    ('{"id": "surrogate", "text": "broken \\ud800 text"}', "not valid Unicode"),
    ('{"id": "doc-0", "text": "a second doc-0"}', "duplicate document id 'doc-0'"),
    ('{"id": "no-tokens", "text": "\\u200b\\u200b"}', "no token of the model's tokenizer"),
]
SMALL = [
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--max-seq-len",
    "64",
    "--learning-rate",
    "1e-3",
    "--heldout-share",
    "0.1",
    "--head-warmup-steps",
    "12",
]


def write_documents(path: Path, squad_pairs: list[dict], n: int = 60) -> int:
    """n real paragraphs and the bad rows; returns the number of input rows."""
    contexts = list(dict.fromkeys(p["context"] for p in squad_pairs))[:n]
    lines = [json.dumps({"id": f"doc-{i}", "title": "wiki", "text": c}) for i, c in enumerate(contexts)]
    lines += [row for row, _ in BAD_ROWS]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def losses(stdout: str) -> tuple[float, float]:
    m = re.search(r"held-out masked-LM loss ([\d.]+) -> ([\d.]+)", stdout)
    assert m, stdout[-2000:]
    return float(m.group(1)), float(m.group(2))


def test_pretrain_on_documents_with_bad_rows_from_relative_paths(
    ray_local, tiny_models, squad_pairs, tmp_path, capsys, monkeypatch
):
    from transformers import AutoModelForMaskedLM, AutoModelForQuestionAnswering

    rows = write_documents(tmp_path / "docs.jsonl", squad_pairs)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["pretrain", "--documents", "docs.jsonl", "--model", tiny_models["albert"], "--out", "encoder", *SMALL], capsys
    )
    assert code == 0, err[-3000:]
    before, after = losses(out)
    print(f"\nheld-out masked-LM loss {before:.3f} -> {after:.3f}")
    assert after < before - 0.5  # a 4,000-token vocabulary: random is ~8.3; the documents' frequencies alone beat it
    report = json.loads((tmp_path / "encoder" / "pretrain_report.json").read_text())
    counts = report["counts"]
    assert counts["documents_in"] == rows
    assert counts["documents_rejected"] == len(BAD_ROWS)
    assert counts["documents_trained"] + counts["documents_heldout"] + counts["documents_rejected"] == rows
    assert counts["documents_heldout"] >= 1 and counts["heldout_sequences"] >= 1
    assert report["heldout_mlm_loss"]["after"] == pytest.approx(after, abs=1e-3)
    rejects = [
        json.loads(line) for line in (tmp_path / "encoder" / "rejects" / "documents.jsonl").read_text().splitlines()
    ]
    reasons = sorted(r["reason"] for r in rejects)
    for _, reason in BAD_ROWS:
        assert sum(reason in r for r in reasons) == 1, (reason, reasons)
    assert all(r["source"].endswith("docs.jsonl") and r["row"] > 0 for r in rejects)
    final = tmp_path / "encoder" / "final"
    mlm = AutoModelForMaskedLM.from_pretrained(final)
    qa, info = AutoModelForQuestionAnswering.from_pretrained(final, output_loading_info=True)
    assert any("qa_outputs" in k for k in info["missing_keys"])  # the QA head is new ...
    assert not any("embeddings" in k or "encoder" in k for k in info["missing_keys"])  # ... the encoder kept
    assert torch.equal(mlm.albert.embeddings.word_embeddings.weight, qa.albert.embeddings.word_embeddings.weight)
    start = AutoModelForMaskedLM.from_pretrained(tiny_models["albert"])
    assert not torch.equal(start.albert.embeddings.word_embeddings.weight, mlm.albert.embeddings.word_embeddings.weight)
    # The tiny ALBERT is a QA model: its new masked-LM head was trained alone first, the encoder untouched.
    assert "has no masked-LM head" in out and "training the head alone first, 12 steps" in out
    warmup = report["head_warmup"]
    assert warmup["steps"] == 12 and "predictions.dense.weight" in warmup["missing_head_weights"]
    warmed = AutoModelForMaskedLM.from_pretrained(warmup["final"])
    start_weights, warmed_weights = start.state_dict(), warmed.state_dict()
    encoder = [k for k in warmed_weights if k.startswith("albert.")]
    assert encoder and all(torch.equal(start_weights[k], warmed_weights[k]) for k in encoder)
    assert not torch.equal(start_weights["predictions.dense.weight"], warmed_weights["predictions.dense.weight"])
    loss = report["heldout_mlm_loss"]
    assert loss["after"] < loss["after_head_warmup"] < loss["before"]


@pytest.mark.slow  # 20 s or more on the 2-core CI machine: run before resolving (pytest -m slow)
def test_domain_masking_masks_the_documents_rare_tokens_more_and_still_learns(
    ray_local, tiny_models, squad_pairs, tmp_path, capsys
):
    write_documents(tmp_path / "docs.jsonl", squad_pairs)
    out = tmp_path / "encoder"
    args = ["--documents", str(tmp_path / "docs.jsonl"), "--model", tiny_models["albert"], "--out", str(out)]
    code, stdout, err = run_cli(["pretrain", *args, *SMALL, "--masking", "domain"], capsys)
    assert code == 0, err[-3000:]
    before, after = losses(stdout)
    assert after < before - 0.5  # measured on random masks, as every run is
    assert "domain masking: most masked" in stdout
    masking = json.loads((out / "pretrain_report.json").read_text())["masking"]
    assert masking["kind"] == "domain"
    prob = lambda entry: float(entry.rsplit(" ", 1)[1])  # noqa: E731  ("token 0.31")
    assert prob(masking["most"][0]) > 0.15 > prob(masking["least"][0])  # the share is kept on average
    least = [entry.rsplit(" ", 1)[0] for entry in masking["least"][:5]]
    assert any(t.strip("\u2581").lower() in {"the", ",", ".", "of", "and", "a", "in"} for t in least), least


def test_bad_pretrain_input_is_one_line_and_exit_2(tiny_models, tmp_path, capsys):
    one = tmp_path / "one.jsonl"
    one.write_text('{"id": "a", "text": "a single page"}\n{"id": "b", "text": ""}\n')
    code, _, err = run_cli(
        ["pretrain", "--documents", str(one), "--model", tiny_models["albert"], "--out", str(tmp_path / "o")], capsys
    )
    assert_one_line_error(code, err, "at least 2 usable documents")
    code, _, err = run_cli(
        [
            "pretrain",
            "--documents",
            str(one),
            "--model",
            tiny_models["albert"],
            "--out",
            str(tmp_path / "o"),
            "--doc-stride",
            "80",
            "--max-seq-len",
            "64",
        ],
        capsys,
    )
    assert_one_line_error(code, err, "doc_stride")
    for flag, value, key in [
        ("--head-warmup-steps", "-1", "head_warmup_steps"),
        ("--head-learning-rate", "0", "head_learning_rate"),
    ]:
        code, _, err = run_cli(
            ["pretrain", "--documents", str(one), "--model", tiny_models["albert"], "--out", str(tmp_path / "o")]
            + [flag, value],
            capsys,
        )
        assert_one_line_error(code, err, key)
    none = tmp_path / "none.jsonl"
    none.write_text("not json\n")
    code, _, err = run_cli(
        ["pretrain", "--documents", str(none), "--model", tiny_models["albert"], "--out", str(tmp_path / "o")], capsys
    )
    assert_one_line_error(code, err, "no usable documents", "not valid JSON")


@pytest.mark.slow
def test_pretrain_from_and_into_s3_then_finetune_starts_from_it(
    ray_local, s3_bucket, tiny_models, squad_pairs, tmp_path, capsys
):
    write_documents(tmp_path / "docs.jsonl", squad_pairs)
    docs = f"{s3_bucket}/documents/docs.jsonl"
    storage.write_bytes(docs, (tmp_path / "docs.jsonl").read_bytes())
    out = f"{s3_bucket}/encoders/camera"
    code, stdout, err = run_cli(
        ["pretrain", "--documents", f"{s3_bucket}/documents/", "--model", tiny_models["albert"], "--out", out, *SMALL],
        capsys,
    )
    assert code == 0, err[-3000:]
    before, after = losses(stdout)
    assert after < before
    assert storage.exists(storage.join(out, "final", "config.json"))
    assert storage.exists(storage.join(out, "rejects", "documents.jsonl"))
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps(p) for p in squad_pairs[:40]) + "\n")
    code, _, err = run_cli(
        [
            "finetune",
            "--train-file",
            str(gold),
            "--model",
            storage.join(out, "final"),
            "--out",
            str(tmp_path / "ft"),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-seq-len",
            "128",
            "--doc-stride",
            "32",
            "--max-query-len",
            "32",
        ],
        capsys,
    )
    assert code == 0, err[-3000:]
    assert (tmp_path / "ft" / "final" / "config.json").exists()


@pytest.mark.slow
def test_a_killed_pretrain_worker_is_replaced_and_training_resumes_at_the_saved_step(
    tiny_models, squad_pairs, tmp_path
):
    write_documents(tmp_path / "docs.jsonl", squad_pairs, n=120)
    run = tmp_path / "run"
    config = tmp_path / "pretrain.yaml"
    settings = {
        "documents": str(tmp_path / "docs.jsonl"),
        "model": tiny_models["albert"],
        "out": str(run),
        "num_workers": 2,
        "batch_size": 4,
        "epochs": 2,
        "max_seq_len": 64,
        "checkpoint_every": 5,
        "max_failures": 2,
        "keep_checkpoints": 100,
        "learning_rate": 1e-3,
        "head_warmup_steps": 10,  # the tiny ALBERT has no masked-LM head: a short warm-up run first
    }
    config.write_text(json.dumps({"pretrain": settings}))
    log = tmp_path / "pretrain.log"
    kill_a_worker_and_check_resume(config, run, log, "pretrain")
    assert "held-out masked-LM loss" in log.read_text()
