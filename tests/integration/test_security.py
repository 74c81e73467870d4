"""Security: no credentials in any output or log, no remote code unless the config allows it,
safetensors over pickles (and pickles only weights-only), and input data that cannot steer a write
outside the output prefix.

Default suite: the static and loader checks, and the label stage's writes for hostile ids
(locally and into S3). Slow: the whole pipeline (pairs -> label -> distill) in a subprocess with
recognisable credentials, then every output object, file and log line is searched for them.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from qadist import storage
from qadist.errors import UserError

REPO = Path(__file__).resolve().parents[2]
HOSTILE_IDS = [
    "../../x",
    "/etc/passwd",
    "s3://other/x",
    "..\\..\\y",
    "rejects/../../z",
    "shards/../../../w",
    "~/.ssh/id_rsa",
    "%2e%2e%2fq",
]


# ---- trust_remote_code ---------------------------------------------------------------------------


def loader_calls() -> list[tuple[str, int, str, ast.Call]]:
    """Every call in qadist/ and jobs/ that loads a model, tokenizer or config from a name or folder."""
    names = {"from_pretrained", "SentenceTransformer", "CrossEncoder", "from_config"}
    found = []
    for path in sorted([*REPO.glob("qadist/**/*.py"), *REPO.glob("jobs/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name in names:
                    found.append((str(path.relative_to(REPO)), node.lineno, name, node))
    return found


def test_no_loader_turns_on_remote_code_by_itself():
    """trust_remote_code is never hard-coded on: it is absent (transformers' default, off) or passed from the config."""
    calls = loader_calls()
    assert len(calls) >= 8, calls  # the scan sees the loaders (models.py, pairs.py, retrieval.py, demo.py, ...)
    for path, line, name, call in calls:
        for kw in call.keywords:
            if kw.arg == "trust_remote_code":
                assert not (isinstance(kw.value, ast.Constant) and kw.value.value is not False), (
                    f"{path}:{line}: {name}(trust_remote_code={ast.unparse(kw.value)})"
                )
            assert kw.arg is not None or path.startswith("qadist/"), (
                f"{path}:{line}: {name}(**...) may carry trust_remote_code"
            )
    print(
        f"\n{len(calls)} loader calls checked; trust_remote_code passed from a config in "
        f"{sum(any(k.arg == 'trust_remote_code' for k in c.keywords) for *_, c in calls)}"
    )


def test_every_stage_config_defaults_remote_code_to_off():
    from qadist.stages import STAGE_CONFIGS

    with_field = {
        name: cls.model_fields["trust_remote_code"].default
        for name, cls in STAGE_CONFIGS.items()
        if "trust_remote_code" in cls.model_fields
    }
    assert set(with_field) >= {"label", "distill", "finetune", "predict"}
    assert not any(with_field.values()), with_field


@pytest.fixture
def remote_code_model(tiny_models, tmp_path) -> tuple[Path, Path]:
    """A model folder whose config and tokenizer point at custom code that leaves a marker file when imported."""
    folder, marker = tmp_path / "remote-code-model", tmp_path / "REMOTE_CODE_RAN"
    folder.mkdir()
    for f in Path(tiny_models["student"]).iterdir():
        if f.name != "config.json":
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "evil.py").write_text(
        textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("imported")
        from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast
        class EvilConfig(BertConfig):
            model_type = "qadist-evil"
        class EvilModel(BertForQuestionAnswering):
            config_class = EvilConfig
        class EvilTokenizer(BertTokenizerFast):
            pass
    """)
    )
    config = json.loads((Path(tiny_models["student"]) / "config.json").read_text())
    config.update(
        model_type="qadist-evil",
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForQuestionAnswering": "evil.EvilModel"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.update(auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]}, tokenizer_class="EvilTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return folder, marker


def test_remote_code_runs_in_no_stage_unless_the_config_turns_it_on(remote_code_model, tmp_path, capfd):
    from sentence_transformers import SentenceTransformer

    from qadist.answer.predict import run_predict
    from qadist.config import LabelConfig, PredictConfig
    from qadist.encoder import load_tokenizer_for
    from qadist.label.stage import run_label
    from qadist.models import load_qa_model, load_tokenizer, model_revision

    folder, marker = remote_code_model
    model = str(folder)
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"id": "a", "question": "q?", "context": "c."}) + "\n")
    refused = {
        "load_tokenizer": lambda: load_tokenizer(model),
        "load_qa_model": lambda: load_qa_model(model),
        "pairs tokenizer": lambda: load_tokenizer_for(model),
        "qadist label": lambda: run_label(
            LabelConfig(pairs=str(pairs), out=str(tmp_path / "labels"), teachers=[model])
        ),
        "qadist predict": lambda: run_predict(
            PredictConfig(model=model, data=str(pairs), out=str(tmp_path / "pred.json"))
        ),
    }
    for what, load in refused.items():
        with pytest.raises(UserError, match="cannot load"):
            load()
        assert not marker.exists(), f"{what} ran the model folder's code"
    model_revision(model)  # provenance lookup: refused quietly ("local"), code not run
    with pytest.raises(ValueError):
        SentenceTransformer(model, device="cpu")  # the pairs stage's encoder (trust_remote_code off by default)
    assert not marker.exists()
    assert "Do you wish to run the custom code" not in "".join(capfd.readouterr())  # refused outright, never a prompt
    # The control: with trust_remote_code on, the same folder's code does run (so the checks above can fail).
    load_tokenizer(model, trust_remote_code=True)
    assert marker.exists()


# ---- safetensors, and pickles only weights-only ----------------------------------------------------


def test_safetensors_weights_win_over_pickled_ones(tiny_models, tmp_path):
    from qadist.models import load_qa_model

    folder = tmp_path / "both"
    folder.mkdir()
    for f in Path(tiny_models["student"]).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    safe = load_qa_model(str(folder)).state_dict()
    torch.save({k: torch.zeros_like(v) for k, v in safe.items()}, folder / "pytorch_model.bin")  # different weights
    loaded = load_qa_model(str(folder)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in safe.items())


def test_pickled_weights_that_carry_code_are_refused(tiny_models, tmp_path):
    from qadist.models import load_qa_model

    folder, marker = tmp_path / "pickled", tmp_path / "PICKLE_CODE_RAN"
    folder.mkdir()
    for f in Path(tiny_models["student"]).iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"bert.embeddings.word_embeddings.weight": Payload()}))
    with pytest.raises(UserError, match="safetensors"):
        load_qa_model(str(folder))
    assert not marker.exists()


def test_saved_models_and_checkpoints_are_safetensors_and_training_state_is_weights_only(tiny_models, tmp_path):
    from dataclasses import asdict

    from qadist.models import load_qa_model, load_tokenizer
    from qadist.train.batches import plan_steps
    from qadist.train.checkpoint import STATE_FILE, save_checkpoint
    from qadist.train.loop import build_optimizer, build_scheduler

    model, tokenizer = load_qa_model(tiny_models["student"]), load_tokenizer(tiny_models["student"])
    plan = plan_steps(64, 1, 8, 1, 1.0, 0.1)
    optimizer = build_optimizer(model, 1e-3, 0.01)
    scheduler = build_scheduler(optimizer, plan)
    model(input_ids=torch.tensor([[101, 2054, 102, 2009, 102]])).start_logits.sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        "step": 1,
        "epoch": 0,
        "batches_in_epoch": 1,
        "plan": asdict(plan),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": None,
        "metrics": {"train/loss": 1.0, "workers/node_ids": "n"},
        "resumed_at": [0],
    }
    save_checkpoint(str(tmp_path / "ckpt"), model, tokenizer, {"stage": "distill"}, state)
    for folder in (Path(tiny_models["student"]), tmp_path / "ckpt"):
        names = {f.name for f in folder.iterdir()}
        assert "model.safetensors" in names and not any(n.endswith((".bin", ".pkl", ".ckpt")) for n in names), names
    restored = torch.load(tmp_path / "ckpt" / STATE_FILE, weights_only=True)  # what the train loop does on resume
    optimizer.load_state_dict(restored["optimizer"])
    scheduler.load_state_dict(restored["scheduler"])
    assert restored["step"] == 1


# ---- input data cannot steer where the label stage writes -----------------------------------------


def hostile_rows(squad_pairs: list[dict]) -> list[dict]:
    """Valid pairs with hostile ids, rejects with hostile ids (missing context, duplicate id, not Unicode)."""
    rows = [{**p, "id": hid} for p, hid in zip(squad_pairs, HOSTILE_IDS)]
    rows += [{"id": hid + "-bad", "question": "q?"} for hid in HOSTILE_IDS]
    rows += [{**squad_pairs[20], "id": HOSTILE_IDS[1]}, {**squad_pairs[21], "id": "../../\ud800"}]
    return rows


def label_one_block(rows: list[dict], out: str, tokenizer) -> tuple[dict, list[str]]:
    """The label stage's window and write stages for one block, in this process (a fake teacher:
    zero logits); returns the block's counts and the shard name it wrote."""
    from qadist.label.blocks import Block, block_name, find_duplicates, scan_block
    from qadist.label.stages import window_block, write_shards
    from qadist.shards import LOGITS_TYPE, list_array, pack

    name = block_name("/in", "/in/pairs.json", 0, len(rows))
    block = Block(name, "/in/pairs.json", "inline", 0, len(rows), rows=rows, with_answers=True)
    find_duplicates([block], [scan_block(block.to_json(), 100_000)])
    table, stats, _ = window_block(block, tokenizer, out, (128, 32, 32), 100_000)
    lengths = [len(x) for x in table.column("input_ids").to_pylist()]
    zeros = list_array([np.zeros(n, np.float16) for n in lengths], LOGITS_TYPE.value_type)
    at = table.schema.get_field_index("offsets") + 1
    table = table.add_column(at, "start_logits", zeros).add_column(at + 1, "end_logits", zeros)
    batch = pa.table(
        {
            "name": [name],
            "data": pa.array([pack(table)], pa.large_binary()),
            "stats": [json.dumps(stats | {"node_id": "n"})],
            "others": pa.array([[]], pa.list_(pa.large_binary())),
        }
    )
    write_shards(batch, out, {"schema_version": 1})
    return stats, [name]


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_hostile_ids_cannot_steer_label_writes_outside_the_output(bert_tokenizer, squad_pairs, tmp_path):
    out = tmp_path / "out" / "labels"
    rows = hostile_rows(squad_pairs)
    stats, (name,) = label_one_block(rows, str(out), bert_tokenizer)
    assert stats["pairs_in"] == len(rows) and stats["pairs_rejected"] == len(HOSTILE_IDS) + 2
    # Exactly the block's shard and its rejects file, named after the input file and row range.
    assert all_files(tmp_path) == {f"out/labels/shards/{name}.parquet", f"out/labels/rejects/{name}.jsonl"}
    rejects = [
        json.loads(line) for line in (out / "rejects" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert {r["id"] for r in rejects} >= {h + "-bad" for h in HOSTILE_IDS}  # the ids are data in the file, not paths
    print(f"\n{len(rows)} rows with ids like {HOSTILE_IDS[:3]}: files written {sorted(all_files(tmp_path))}")


def test_hostile_ids_cannot_steer_label_writes_outside_the_s3_prefix(bert_tokenizer, squad_pairs, s3_bucket):
    client = storage.s3_client()
    before = {b["Name"] for b in client.list_buckets()["Buckets"]}
    out = f"{s3_bucket}/run/labels"
    _, (name,) = label_one_block(hostile_rows(squad_pairs), out, bert_tokenizer)
    bucket = s3_bucket[len("s3://") :]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert keys == {f"run/labels/shards/{name}.parquet", f"run/labels/rejects/{name}.jsonl"}
    assert {b["Name"] for b in client.list_buckets()["Buckets"]} == before  # no bucket named by an id ("other")


# ---- slow: credentials never appear in any output or log ------------------------------------------


SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAQADISTLEAKCHECK7",
    "AWS_SECRET_ACCESS_KEY": "qadistSecretKey/9f3c1e7a+LEAKCHECK",
    "AWS_SESSION_TOKEN": "qadistSessionToken-5b2d8c40-LEAKCHECK",
    "HF_TOKEN": "hf_qadistLEAKCHECKtoken0123456789",
}


def s3_objects(client) -> dict[str, bytes]:
    out = {}
    for b in client.list_buckets()["Buckets"]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            for o in page.get("Contents", []):
                out[f"s3://{b['Name']}/{o['Key']}"] = client.get_object(Bucket=b["Name"], Key=o["Key"])["Body"].read()
    return out


@pytest.mark.slow
def test_no_credentials_in_any_output_log_config_or_checkpoint(
    s3_server, s3_bucket, tiny_models, squad_pairs, tmp_path
):
    """pairs (S3 -> S3), label (local -> local), distill (local -> S3 checkpoints) as one pipeline job,
    with recognisable credentials in its environment; then every object, file and log is searched."""
    client = storage.s3_client()
    buckets_before = {b["Name"] for b in client.list_buckets()["Buckets"]}
    docs = sorted({p["context"] for p in squad_pairs[:200]})[:30]
    questions = [{"id": hid, "question": p["question"]} for hid, p in zip(HOSTILE_IDS, squad_pairs)]
    questions += [{"id": f"q{i}", "question": p["question"]} for i, p in enumerate(squad_pairs[8:40])] + [
        {"id": "../../empty", "question": " "}
    ]
    storage.write_bytes(f"{s3_bucket}/in/questions.jsonl", "".join(json.dumps(q) + "\n" for q in questions).encode())
    storage.write_bytes(
        f"{s3_bucket}/in/documents.jsonl",
        "".join(
            json.dumps({"id": HOSTILE_IDS[i % len(HOSTILE_IDS)] + str(i), "text": d}) + "\n" for i, d in enumerate(docs)
        ).encode(),
    )
    pairs_in = tmp_path / "in" / "pairs.jsonl"
    pairs_in.parent.mkdir()
    pairs_in.write_text("".join(json.dumps(r) + "\n" for r in hostile_rows(squad_pairs[:60]) + squad_pairs[30:60]))
    out = tmp_path / "out"
    windows = {"max_seq_len": 128, "doc_stride": 32, "max_query_len": 32}
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        json.dumps(
            {
                "pairs": {
                    "questions": f"{s3_bucket}/in/questions.jsonl",
                    "documents": f"{s3_bucket}/in/documents.jsonl",
                    "out": f"{s3_bucket}/out/pairs",
                },
                "label": {
                    "pairs": str(pairs_in),
                    "out": str(out / "labels"),
                    "teachers": [tiny_models["teacher_a"]],
                    "rows_per_shard": 20,
                    **windows,
                },
                "distill": {
                    "labels": str(out / "labels"),
                    "student": tiny_models["student"],
                    "out": f"{s3_bucket}/out/student",
                    "epochs": 1,
                    "batch_size": 16,
                    "checkpoint_every": 2,
                    **windows,
                },
            }
        )
    )
    ray_tmp = tempfile.mkdtemp(prefix="qr-")
    env = {**os.environ, **SECRETS, "RAY_TMPDIR": ray_tmp, "QADIST_LOG_LEVEL": "DEBUG"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "pipeline.log"
    with log.open("wb") as sink:
        proc = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "pipeline.py"), "--config", str(config)],
            env=env,
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]

    searched: dict[str, bytes] = s3_objects(client)
    searched |= {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    searched |= {str(p): p.read_bytes() for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_socket()}
    kinds = {
        "manifests": [k for k in searched if k.endswith("_manifest.json")],
        "checkpoints": [k for k in searched if "/checkpoint_" in k],
        "rejects": [k for k in searched if "/rejects/" in k],
        "configs": [k for k in searched if k.endswith(("qadist_config.json", ".yaml")) or "/_qadist_" in k],
        "logs": [k for k in searched if k.endswith((".log", ".out", ".err"))],
    }
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    leaks = [
        (name, key) for key, data in searched.items() for name, secret in SECRETS.items() if secret.encode() in data
    ]
    print(
        f"\nsearched {len(searched)} objects/files ({sum(map(len, searched.values())) / 1e6:.1f} MB): "
        + ", ".join(f"{k} {len(v)}" for k, v in kinds.items())
        + f"; credentials found: {len(leaks)}"
    )
    assert not leaks, leaks[:10]

    # Hostile ids steered no write: every object is under an output prefix, every local file under out/ (or the inputs).
    assert {b["Name"] for b in client.list_buckets()["Buckets"]} == buckets_before
    prefixes = (f"{s3_bucket}/in/", f"{s3_bucket}/out/pairs/", f"{s3_bucket}/out/student/")
    mine = {k: v for k, v in s3_objects(client).items() if k.startswith(f"{s3_bucket}/")}
    # Empty "folder/" markers (pyarrow's create_dir) of the output prefixes' parents are not writes elsewhere.
    outside = [
        k
        for k, v in mine.items()
        if not k.startswith(prefixes) and not (k.endswith("/") and not v and any(p.startswith(k) for p in prefixes))
    ]
    assert not outside, outside
    local = [
        p
        for p in all_files(tmp_path)
        if not p.startswith(("out/labels/", "in/")) and p not in ("pipeline.yaml", "pipeline.log")
    ]
    assert not local, local
