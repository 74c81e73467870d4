"""Pass 2 of `qadist pairs`: the passage index built once, then the staged questions matched to it.

Passages are embedded by a pool of `Encoder` actors in Ray Data (or read back from the embedding
cache) and indexed with BM25 (`qadist.retrieval`); the index goes once into the object store. The
staged question files stream through a pool of `StagedMatcher` actors (read a staged file, embed +
top-k search against the shared index, a batch at a time); the driver writes pairs and unmatched
questions as results arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from qadist import console
from qadist.config import PairsConfig
from qadist.encoder import Encoder, resolve_model
from qadist.pairs import embedding_cache
from qadist.pairs.staging import PartWriter, QuestionStager, read_staged, release_memory
from qadist.passages import build_passages, passage_texts
from qadist.retrieval import SearchIndex, build_index, log_index
from qadist.rows import make_reject

log = logging.getLogger(__name__)

PASSAGE_BLOCK = 4096


class Matcher(Encoder):
    """Ray Data actor: unique questions -> their top-k documents (one row per question and rank).

    The passage index is fetched once per actor from the object store (zero-copy numpy arrays).
    Output columns: the input's `slot`, `id`, `question`, `source`, `row`, then `rank` (1 = best;
    0 = no document reached min_score), `doc`, `passage` (indices), `score`, `dense`, `lexical`.
    """

    def __init__(
        self,
        model: str,
        index: Any,
        top_k: int,
        min_score: float | None,
        lexical_weight: float,
        batch_size: int = 64,
        use_gpu: bool = False,
    ):
        import ray

        super().__init__(model, batch_size, use_gpu)
        arrays = ray.get(index) if isinstance(index, ray.ObjectRef) else index
        self.index = SearchIndex(arrays, top_k, lexical_weight)
        self.min_score = -np.inf if min_score is None else min_score

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.match(batch)

    def match(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        found = self.index.search(self.embed(batch["question"]), list(batch["question"]))
        keep = (found["doc"] >= 0) & (found["score"] >= self.min_score)
        q_idx, ranks = np.nonzero(keep)
        missed = np.flatnonzero(~keep.any(axis=1))
        q_all = np.concatenate([q_idx, missed])
        out = {k: np.asarray(batch[k])[q_all] for k in ("slot", "id", "question", "source", "row")}
        out["rank"] = np.concatenate([ranks + 1, np.zeros(len(missed), np.int64)]).astype(np.int32)
        for k in ("doc", "passage", "score", "dense", "lexical"):
            out[k] = np.concatenate([found[k][q_idx, ranks], found[k][missed, 0]])
        return out


class StagedMatcher(Matcher):
    """Ray Data actor: staged question files (one path per input row) -> `Matcher` results, a batch
    of `batch_size` questions at a time. Reading in the actor keeps the pipeline to one operator
    and one worker process per actor, whatever the number of questions."""

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for uri in batch["path"]:
            cols = read_staged(str(uri))
            for i in range(0, len(cols["slot"]), self.batch_size):
                yield self.match({k: np.asarray(v[i : i + self.batch_size]) for k, v in cols.items()})
            release_memory()


def actor_options(cfg: PairsConfig) -> dict[str, Any]:
    import ray.data

    opts: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=cfg.num_actors), "num_cpus": 1}
    if cfg.num_gpus_per_actor > 0:
        opts["num_gpus"] = cfg.num_gpus_per_actor
    if cfg.resources_per_actor:
        opts["resources"] = dict(cfg.resources_per_actor)
    return opts


def embed_passages(texts: list[str], cfg: PairsConfig) -> np.ndarray:
    """Passage texts -> (n, dim) float32 normalised embeddings, by a pool of Encoder actors."""
    import ray.data

    blocks = [
        pa.table({"pidx": np.arange(i, min(i + PASSAGE_BLOCK, len(texts))), "text": texts[i : i + PASSAGE_BLOCK]})
        for i in range(0, len(texts), PASSAGE_BLOCK)
    ]
    ds = ray.data.from_arrow(blocks).map_batches(
        Encoder,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"model": cfg.model, "batch_size": cfg.batch_size, "use_gpu": cfg.num_gpus_per_actor > 0},
        **actor_options(cfg),
    )
    emb: np.ndarray | None = None
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        vectors = np.stack(batch["embedding"]) if batch["embedding"].dtype == object else batch["embedding"]
        if emb is None:
            emb = np.empty((len(texts), vectors.shape[1]), np.float32)
        emb[batch["pidx"]] = vectors
    assert emb is not None
    return emb


def pair_row(r: dict[str, Any], docs: list[dict], passages: dict[str, np.ndarray], count: int, top_k: int) -> dict:
    p, d = int(r["passage"]), int(r["doc"])
    doc = docs[d]
    c0, c1 = int(passages["context_start"][p]), int(passages["context_end"][p])
    row = {
        "id": r["id"] if top_k == 1 else f"{r['id']}::{int(r['rank'])}",
        "question": r["question"],
        "context": doc["text"][c0:c1],
        "doc_id": doc["id"],
        "score": round(float(r["score"]), 6),
        "question_id": r["id"],
        "rank": int(r["rank"]),
        "count": count,
        "passage_start": int(passages["start"][p]),
        "passage_end": int(passages["end"][p]),
        "context_start": c0,
        "context_end": c1,
        "dense_score": round(float(r["dense"]), 6),
        "lexical_score": round(float(r["lexical"]), 6),
    }
    if doc.get("title") is not None:
        row["title"] = doc["title"]
    return row


def match_questions(
    cfg: PairsConfig, tokenizer, docs: list[dict], doc_rejects: list[dict], stager: QuestionStager,
    pairs: PartWriter, unmatched: PartWriter,
) -> tuple[int, bool, int]:  # fmt: skip
    """The index over the documents' passages, then the staged questions through the matching
    actors into `pairs` / `unmatched`; (passages, whether the search was approximate, questions matched)."""
    passages, index_ref, approximate = shared_index(cfg, tokenizer, docs, doc_rejects, stager)
    matched = 0
    for batch in match_staged(cfg, stager, index_ref):
        for i in range(len(batch["slot"])):
            r = {k: v[i] for k, v in batch.items()}
            if int(r["rank"]) == 0:
                unmatched.add(
                    make_reject(
                        {"id": r["id"], "question": r["question"]},
                        str(r["source"]),
                        int(r["row"]),
                        f"no document scored >= min_score={cfg.min_score} (best {float(r['score']):.4f})",
                    )
                )
                continue
            matched += int(r["rank"]) == 1
            pairs.add(pair_row(r, docs, passages, int(stager.counts[int(r["slot"])]), cfg.top_k))
    return len(passages["doc"]), approximate, matched


def shared_index(
    cfg: PairsConfig, tokenizer, docs: list[dict], doc_rejects: list[dict], stager: QuestionStager
) -> tuple[dict[str, np.ndarray], Any, bool]:
    """The index: passages, embeddings (the cache's when the documents are unchanged), BM25; once into
    the object store. (the passages, the index's object ref, whether the search is approximate)."""
    import ray

    passages = build_passages(docs, tokenizer, cfg.passage_tokens, cfg.passage_overlap, cfg.context_tokens)
    n_passages = len(passages["doc"])
    console.banner(
        f"qadist pairs: {stager.rows_in:,} questions ({len(stager.rep_ids):,} unique, "
        f"{stager.duplicates.rows:,} merged as "
        f"identical, {stager.rejects.rows:,} rejected) x {len(docs):,} documents ({len(doc_rejects):,} rejected) -> "
        f"{n_passages:,} passages of {cfg.passage_tokens} tokens (overlap {cfg.passage_overlap}); model {cfg.model}, "
        f"top_k={cfg.top_k}, min_score={cfg.min_score} -> {cfg.out}",
        log,
    )
    key = embedding_cache.cache_key(
        cfg.documents,
        resolve_model(cfg.model),
        {k: getattr(cfg, k) for k in ("model", "passage_tokens", "passage_overlap", "context_tokens")},
    )
    emb = embedding_cache.load(cfg.out, key, n_passages)
    if emb is None:
        emb = embed_passages(list(passage_texts(docs, passages)), cfg)
        embedding_cache.save(cfg.out, key, emb)
    else:
        console.banner(f"qadist pairs: the documents are unchanged: {n_passages:,} passage embeddings reused", log)
    index = build_index(emb, passages, passage_texts(docs, passages), cfg.approximate_above)
    log_index(index)
    return passages, ray.put(index), index["ann"] is not None  # the driver's copies go with this frame


def match_staged(cfg: PairsConfig, stager: QuestionStager, index_ref: Any) -> Iterator[dict[str, np.ndarray]]:
    """Pass 2: the staged files through a pool of `StagedMatcher` actors; their results, as they come."""
    import ray.data

    staged = [f["path"] for f in stager.staged.files]
    ds = ray.data.from_items([{"path": p} for p in staged], override_num_blocks=len(staged)).map_batches(
        StagedMatcher,
        batch_size=1,
        batch_format="numpy",
        fn_constructor_kwargs={
            "model": cfg.model,
            "index": index_ref,
            "top_k": cfg.top_k,
            "min_score": cfg.min_score,
            "lexical_weight": cfg.lexical_weight,
            "batch_size": cfg.batch_size,
            "use_gpu": cfg.num_gpus_per_actor > 0,
        },
        **actor_options(cfg),
    )
    return ds.iter_batches(batch_size=None, batch_format="numpy")
