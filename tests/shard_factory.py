"""Soft-label shards for the distill tests, written to the shard contract of DESIGN.md.

A stand-in for `qadist label` (which runs the teachers on Ray Data actors): the same windows
(`make_windows`), the same forward pass (`run_windows`), pyarrow Parquet shards with the `qadist`
schema metadata, and `_manifest.json` written last. Single process, so tests stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from qadist.inference import run_windows
from qadist.models import load_qa_model, load_tokenizer, tokenizer_fingerprint
from qadist.shards import SCHEMA_VERSION
from qadist.squad.features import make_windows


def shard_schema(has_types: bool, has_answers: bool, metadata: dict) -> pa.Schema:
    fields = [
        ("id", pa.string()),
        ("window", pa.int32()),
        ("input_ids", pa.list_(pa.int32())),
        *([("token_type_ids", pa.list_(pa.int8()))] if has_types else []),
        ("offsets", pa.list_(pa.list_(pa.int32()))),
        ("start_logits", pa.list_(pa.float16())),
        ("end_logits", pa.list_(pa.float16())),
        ("start_position", pa.int32()),
        ("end_position", pa.int32()),
        *(
            [("answers", pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))]))]
            if has_answers
            else []
        ),
        ("question", pa.string()),
        ("context", pa.string()),
    ]
    return pa.schema(fields, metadata={"qadist": json.dumps(metadata)})


def label_windows(
    pairs: list[dict], model, tokenizer, max_seq_len: int, doc_stride: int, max_query_len: int
) -> dict[str, list]:
    batch = {k: [p[k] for p in pairs] for k in ("id", "question", "context")}
    if any("answers" in p for p in pairs):
        batch["answers"] = [p.get("answers") for p in pairs]
    w = make_windows(batch, tokenizer, max_seq_len, doc_stride, max_query_len)
    by_id = {p["id"]: p for p in pairs}
    w["question"] = [by_id[i]["question"] for i in w["id"]]
    w["context"] = [by_id[i]["context"] for i in w["id"]]
    logits = run_windows(
        model, w["input_ids"], w.get("token_type_ids"), tokenizer.pad_token_id, 32, torch.device("cpu")
    )
    w["start_logits"] = [s.astype(np.float16).tolist() for s, _ in logits]
    w["end_logits"] = [e.astype(np.float16).tolist() for _, e in logits]
    return w


def make_label_shards(
    out: str | Path,
    teacher: str,
    pairs: list[dict],
    max_seq_len: int = 128,
    doc_stride: int = 32,
    max_query_len: int = 32,
    pairs_per_shard: int = 100,
) -> str:
    """Label `pairs` with the teacher folder `teacher`; returns `out` (shards + manifest)."""
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(teacher)
    model = load_qa_model(teacher).eval()
    tok = {"name": teacher, "hash": tokenizer_fingerprint(tokenizer)}
    teachers = [{"name": teacher, "revision": "local"}]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "teachers": teachers,
        "tokenizer": tok,
        "max_seq_len": max_seq_len,
        "doc_stride": doc_stride,
        "max_query_len": max_query_len,
        "combine": "mean_logits",
    }
    shards, windows = [], 0
    for n, i in enumerate(range(0, len(pairs), pairs_per_shard)):
        chunk = pairs[i : i + pairs_per_shard]
        w = label_windows(chunk, model, tokenizer, max_seq_len, doc_stride, max_query_len)
        schema = shard_schema("token_type_ids" in w, "answers" in w, meta)
        table = pa.table({f.name: pa.array(w[f.name], type=f.type) for f in schema}, schema=schema)
        rel = f"shards/part-{n:05d}.parquet"
        pq.write_table(table, out / rel)
        shards.append({"path": rel, "rows": table.num_rows, "pairs": len(chunk)})
        windows += table.num_rows
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "config": {
            "pairs": "(test)",
            "out": str(out),
            "teachers": [teacher],
            "max_seq_len": max_seq_len,
            "doc_stride": doc_stride,
            "max_query_len": max_query_len,
            "combine": "mean_logits",
        },
        "counts": {"pairs_in": len(pairs), "pairs_labeled": len(pairs), "pairs_rejected": 0, "windows": windows},
        "shards": shards,
        "teachers": teachers,
        "tokenizer": tok,
        "max_seq_len": max_seq_len,
        "doc_stride": doc_stride,
        "max_query_len": max_query_len,
        "combine": "mean_logits",
    }
    (out / "_manifest.json").write_text(json.dumps(manifest, indent=2))
    return str(out)


def sharpen_teacher(src: str, dst: str | Path, scale: float = 8.0) -> str:
    """A copy of a tiny random teacher whose QA head is scaled up, so its answers are decisive.

    A randomly initialised teacher gives nearly uniform start/end distributions; scaling the head
    makes its argmax stable, so "agreement with the teacher" is a meaningful target for a student.
    """
    model = load_qa_model(src)
    with torch.no_grad():
        model.qa_outputs.weight.mul_(scale)
    model.save_pretrained(dst)
    load_tokenizer(src).save_pretrained(dst)
    return str(dst)
