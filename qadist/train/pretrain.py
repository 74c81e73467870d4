"""`qadist pretrain`: domain-adaptive masked-LM training of an encoder on the domain's documents.

The documents are read and validated as `qadist pairs` reads them (`qadist.documents`); a share of
them, chosen by a hash of the id (the same documents on every run), is held out to measure the
masked-LM loss before and after training. The rest are cut into token sequences of at most
`max_seq_len` (consecutive sequences of a long document sharing `doc_stride` tokens) in Ray Data
CPU tasks, and trained on Ray Train by the loop distill uses with a masked-LM task
(`qadist.train.masked_lm`): checkpoints and resume, gradient accumulation, several workers or one
GPU. A document with no token the
model's tokenizer knows is rejected with its reason, like an empty or undecodable one, into
`<out>/rejects/documents.jsonl`; every input row is trained on, held out, or rejected.

A model without a masked-LM head (a sentence-transformers encoder, a QA model) first has its new
head trained alone, the encoder frozen (`qadist.train.head_warmup`: its own run into
`<out>/warmup/`); then the whole model is trained from it.

The output `<out>/final` is a `save_pretrained` masked-LM folder: `finetune --model`,
`distill --student` and a teacher's fine-tuning load it as an initialisation (the QA head new, the
encoder kept). `<out>/pretrain_report.json` holds the counts, the head warm-up and the held-out losses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa

from qadist import console, storage
from qadist.config import PretrainConfig, to_dict
from qadist.documents import load_documents
from qadist.errors import UserError
from qadist.models import load_tokenizer, local_model, missing_masked_lm_head
from qadist.rows import jsonl_bytes, make_reject
from qadist.runtime import ensure_ray
from qadist.train.domain_masking import domain_mask_probabilities, token_counts
from qadist.train.head_warmup import warmup_config, warmup_line
from qadist.train.launch import TrainJob, check_workers_fit, launch, quiet
from qadist.train.masked_lm import masked_lm_spec
from qadist.train.task import TaskSpec

log = logging.getLogger(__name__)

DOCS_PER_BLOCK = 1000  # documents per tokenising task
EVAL_BATCH = 32
NO_TOKENS = "no token of the model's tokenizer in the text (only whitespace or unknown characters?)"


def held_out(doc_id: str, share: float) -> bool:
    """Whether a document is held out: a hash of its id, so the same documents on every run."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split_documents(docs: list[dict], share: float) -> tuple[list[dict], list[dict]]:
    """(training documents, held-out documents); at least one of each."""
    if len(docs) < 2:
        raise UserError(
            "pretrain needs at least 2 usable documents: one is held out to measure the masked-LM loss; add documents"
        )
    heldout = [d for d in docs if held_out(d["id"], share)]
    if not heldout or len(heldout) == len(docs):  # a tiny collection: hold out the one the hash ranks first
        first = min(docs, key=lambda d: hashlib.sha256(d["id"].encode("utf-8")).digest())
        heldout = [first]
    chosen = {d["id"] for d in heldout}
    return [d for d in docs if d["id"] not in chosen], heldout


def contentless_ids(tokenizer: Any) -> frozenset[int]:
    """Token ids that carry no text: special tokens, the unknown token, and bare word-boundary
    markers (SentencePiece's "▁", byte-level BPE's "Ġ") that a text of unknown characters becomes."""
    blank = {i for token, i in tokenizer.get_vocab().items() if not token.strip("\u2581\u0120 ")}
    return frozenset({*tokenizer.all_special_ids, *blank})


def document_sequences(
    texts: list[str], tokenizer: Any, max_seq_len: int, doc_stride: int, with_offsets: bool
) -> dict[str, list]:
    """Texts -> token sequences (special tokens added; a long text cut into several sharing
    `doc_stride` tokens): input_ids, special_tokens_mask, `doc` (the text's index), `tokens` (the
    sequence's tokens that carry text: not `contentless_ids`) and, `with_offsets` (whole-word
    masking), flat offsets.

    A text without a token that carries text gives one row with `tokens` 0 (to be rejected)."""
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_special_tokens_mask=True,
        return_offsets_mapping=with_offsets,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    out: dict[str, list] = {"input_ids": [], "special_tokens_mask": [], "doc": [], "tokens": []}
    if with_offsets:
        out["offsets"] = []
    empty = contentless_ids(tokenizer)
    seen: set[int] = set()
    for i, doc in enumerate(enc["overflow_to_sample_mapping"]):
        special = enc["special_tokens_mask"][i]
        tokens = sum(1 for t in enc["input_ids"][i] if t not in empty)
        if tokens == 0 and doc in seen:
            continue  # an empty tail of a document that has sequences
        seen.add(doc)
        out["input_ids"].append(enc["input_ids"][i])
        out["special_tokens_mask"].append(special)
        out["doc"].append(doc)
        out["tokens"].append(tokens)
        if with_offsets:
            out["offsets"].append([x for pair in enc["offset_mapping"][i] for x in pair])
    return out


def sequence_schema(with_offsets: bool) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("input_ids", pa.list_(pa.int32())),
            ("special_tokens_mask", pa.list_(pa.int8())),
            *([("offsets", pa.list_(pa.int32()))] if with_offsets else []),
            ("tokens", pa.int32()),
        ]
    )


def tokenize_block(
    block: pa.Table, tokenizer_name: str, max_seq_len: int, doc_stride: int, whole_word: bool, trust_remote_code: bool
) -> pa.Table:
    """A block of documents (id, text) -> its sequences (a Ray Data CPU task)."""
    from qadist.train.cross_tokenizer import student_tokenizer

    tokenizer = student_tokenizer(tokenizer_name, trust_remote_code)
    seqs = document_sequences(block["text"].to_pylist(), tokenizer, max_seq_len, doc_stride, whole_word)
    ids = block["id"].to_pylist()
    columns = {**seqs, "id": [ids[d] for d in seqs["doc"]]}
    schema = sequence_schema(whole_word)
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def heldout_sequences(docs: list[dict], tokenizer: Any, cfg: PretrainConfig) -> tuple[dict[str, list], list[dict]]:
    """The held-out documents' sequences (at most `heldout_sequences`), and the documents that have none."""
    seqs = document_sequences([d["text"] for d in docs], tokenizer, cfg.max_seq_len, cfg.doc_stride, cfg.whole_word)
    empty = {docs[d]["id"] for d, t in zip(seqs["doc"], seqs["tokens"]) if t == 0}
    keep = [i for i, t in enumerate(seqs["tokens"]) if t > 0][: cfg.heldout_sequences]
    kept = {k: [v[i] for i in keep] for k, v in seqs.items() if k in ("input_ids", "special_tokens_mask", "offsets")}
    return kept, [d for d in docs if d["id"] in empty]


def write_rejects(out: str, rejects: list[dict]) -> str:
    uri = storage.join(out, "rejects", "documents.jsonl")
    storage.write_bytes(uri, jsonl_bytes(rejects))
    return uri


def no_token_reject(doc: dict) -> dict:
    raw = {k: doc[k] for k in ("id", "text", "title") if doc.get(k) is not None}
    return make_reject(raw, doc["source"], doc["row"], NO_TOKENS)


def token_totals(dataset: Any) -> dict[str, np.ndarray]:
    """Per token id over the training sequences: occurrences and sequences (Ray Data tasks)."""
    rows = (
        dataset.map_batches(token_counts, batch_format="pyarrow", batch_size=None)
        .groupby("token")
        .sum(["occurrences", "sequences"])
        .take_all()
    )
    return {
        "tokens": np.array([r["token"] for r in rows], dtype=np.int64),
        "occurrences": np.array([r["sum(occurrences)"] for r in rows], dtype=np.int64),
        "sequences": np.array([r["sum(sequences)"] for r in rows], dtype=np.int64),
    }


def most_and_least_masked(
    probs: np.ndarray, totals: dict[str, np.ndarray], n_sequences: int, tokenizer: Any, n: int = 20
) -> dict[str, list[str]]:
    """For the report: the frequent tokens (in at least 1% of the sequences) masked most and least."""
    common = totals["tokens"][totals["sequences"] >= max(1, 0.01 * n_sequences)]
    common = [t for t in common.tolist() if probs[t] > 0]
    ranked = sorted(common, key=lambda t: -probs[t])
    name = lambda t: f"{tokenizer.convert_ids_to_tokens(t)} {probs[t]:.2f}"  # noqa: E731
    return {"most": [name(t) for t in ranked[:n]], "least": [name(t) for t in ranked[::-1][:n]]}


def training_sequences(train_docs: list[dict], cfg: PretrainConfig) -> tuple[Any, set[str]]:
    """The training documents' sequences (tokenised in Ray Data tasks, materialised), and the ids of
    the documents that have none (to be rejected)."""
    import ray.data
    from ray.data.expressions import col

    table = pa.table({"id": [d["id"] for d in train_docs], "text": [d["text"] for d in train_docs]})
    blocks = [table.slice(i, DOCS_PER_BLOCK) for i in range(0, table.num_rows, DOCS_PER_BLOCK)]
    sequences = (
        quiet(ray.data.from_arrow(blocks))
        .map_batches(
            tokenize_block,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={
                "tokenizer_name": cfg.model,  # each task fetches an s3:// model itself (the driver's copy is local)
                "max_seq_len": cfg.max_seq_len,
                "doc_stride": cfg.doc_stride,
                "whole_word": cfg.whole_word,
                "trust_remote_code": cfg.trust_remote_code,
            },
        )
        .materialize()
    )
    empty_ids = {row["id"] for row in sequences.filter(expr=col("tokens") == 0).take_all()}  # few: rejects
    return sequences.filter(expr=col("tokens") > 0).drop_columns(["id", "tokens"]).materialize(), empty_ids


def domain_masking(dataset: Any, count: int, tokenizer: Any, cfg: PretrainConfig) -> tuple[list[float], dict]:
    """Domain masking's per-token probabilities (by idf over the training sequences), and for the
    report the tokens masked most and least."""
    totals = token_totals(dataset)
    never = frozenset(tokenizer.all_special_ids)
    probs = domain_mask_probabilities(
        **totals, n_sequences=count, vocab_size=len(tokenizer), mask_prob=cfg.mask_prob, never=never
    )
    ranked = most_and_least_masked(probs, totals, count, tokenizer)
    console.summary(
        f"qadist pretrain: domain masking: most masked {', '.join(ranked['most'][:8])}; "
        f"least masked {', '.join(ranked['least'][:8])}",
        log,
    )
    return probs.tolist(), ranked


def described(counts: dict[str, int], rejects_uri: str, cfg: PretrainConfig) -> str:
    """The training rows, for the banner."""
    masking = f"{cfg.mask_prob:.0%} of {'words' if cfg.whole_word else 'tokens'}" + (
        " (by domain idf)" if cfg.masking == "domain" else ""
    )
    return (
        f"{counts['documents_in']:,} documents ({counts['documents_trained']:,} trained on, "
        f"{counts['documents_heldout']:,} held out, {counts['documents_rejected']:,} rejected -> {rejects_uri}) -> "
        f"{counts['sequences']:,} sequences of <= {cfg.max_seq_len} tokens, masking {masking}"
    )


def report_losses(result: dict, warmup: dict | None, counts: dict[str, int]) -> dict[str, float | None]:
    """The held-out masked-LM loss before training (before the head warm-up, if any), after the
    warm-up and after training, said on the console."""
    metrics = result["metrics"]
    warmed = warmup["metrics"].get("eval/mlm_loss") if warmup else None
    before = warmup["metrics"].get("eval/mlm_loss_before") if warmup else metrics.get("eval/mlm_loss_before")
    after = metrics.get("eval/mlm_loss")
    if before is not None and after is not None:
        console.summary(
            f"qadist pretrain: held-out masked-LM loss {before:.4f} -> {after:.4f} (perplexity "
            f"{math.exp(before):,.1f} -> {math.exp(after):,.1f}) on {counts['heldout_sequences']:,} sequences of "
            f"{counts['documents_heldout']:,} held-out documents"
            + (f"; {warmed:.4f} after the head warm-up" if warmed is not None else ""),
            log,
        )
    return {"before": before, "after_head_warmup": warmed, "after": after}


def warm_up_head(cfg: PretrainConfig, dataset: Any, count: int, task: TaskSpec, what: str, provenance: dict) -> dict:
    """The head warm-up (`qadist.train.head_warmup`): the new head trained alone, in its own run into
    <out>/warmup; its result (final model, metrics)."""
    job = TrainJob(
        "pretrain",
        warmup_config(cfg, count),
        cfg.model,
        dataset,
        {"sequences": count},
        TaskSpec(task.kind, {**task.settings, "head_only": True}),
        f"head warm-up (the new masked-LM head alone, encoder frozen) on {what}",
        provenance,
    )
    return launch(job)


def run_pretrain(cfg: PretrainConfig) -> dict:
    model = local_model(cfg.model)
    tokenizer = load_tokenizer(model, cfg.trust_remote_code)
    if tokenizer.mask_token is None:
        raise UserError(f"{cfg.model}: its tokenizer has no mask token, so it cannot be trained as a masked LM")
    docs, rejects = load_documents(cfg.documents)
    documents_in = len(docs) + len(rejects)
    train_docs, heldout_docs = split_documents(docs, cfg.heldout_share)
    heldout, heldout_empty = heldout_sequences(heldout_docs, tokenizer, cfg)
    if not heldout["input_ids"]:
        raise UserError(f"{cfg.documents}: no held-out document has a token of {cfg.model}'s tokenizer")
    missing_head = missing_masked_lm_head(model, cfg.trust_remote_code)
    console.summary(warmup_line(missing_head, cfg), log)
    check_workers_fit(ensure_ray(min_cpus=cfg.num_workers + 1), "pretrain", cfg)
    dataset, empty_ids = training_sequences(train_docs, cfg)
    by_id = {d["id"]: d for d in train_docs}
    rejects += [no_token_reject(by_id[i]) for i in sorted(empty_ids)] + [no_token_reject(d) for d in heldout_empty]
    count = dataset.count()
    if not count:
        raise UserError(f"{cfg.documents}: no training document has a token of {cfg.model}'s tokenizer")
    counts = {
        "documents_in": documents_in,
        "documents_trained": len(train_docs) - len(empty_ids),
        "documents_heldout": len(heldout_docs) - len(heldout_empty),
        "documents_rejected": len(rejects),
        "sequences": count,
        "heldout_sequences": len(heldout["input_ids"]),
    }
    assert counts["documents_in"] == sum(
        counts[k] for k in ("documents_trained", "documents_heldout", "documents_rejected")
    )
    rejects_uri = write_rejects(cfg.out, rejects)
    task = masked_lm_spec(cfg.mask_prob, cfg.whole_word, heldout, EVAL_BATCH)
    masking_report = {"kind": cfg.masking}
    if cfg.masking == "domain":
        task.settings["token_mask_prob"], ranked = domain_masking(dataset, count, tokenizer, cfg)
        masking_report.update(ranked)
    what = described(counts, rejects_uri, cfg)
    provenance = {"documents": cfg.documents, "counts": counts}
    warmup = None
    if missing_head and cfg.head_warmup_steps:
        warmup = warm_up_head(cfg, dataset, count, task, what, provenance)
    start = warmup["final"] if warmup else cfg.model
    result = launch(TrainJob("pretrain", cfg, start, dataset, {"sequences": count}, task, what, provenance))
    report = {
        "config": to_dict(cfg),
        "counts": counts,
        "heldout_mlm_loss": report_losses(result, warmup, counts),
        "head_warmup": {
            "missing_head_weights": missing_head,
            "steps": warmup["plan"]["total_steps"] if warmup else 0,
            "learning_rate": cfg.head_learning_rate if warmup else None,
            "final": warmup["final"] if warmup else None,
        },
        "masking": masking_report,
        "final": result["final"],
        "rejects": rejects_uri,
    }
    storage.write_bytes(storage.join(cfg.out, "pretrain_report.json"), json.dumps(report, indent=2).encode("utf-8"))
    return {**result, **report}
