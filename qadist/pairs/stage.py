"""`qadist pairs`: logged questions + a document collection -> question-document pairs.

1. Documents are validated, cut into passages (qadist.pairs.passages), embedded by a pool of `Encoder`
   actors in Ray Data, and indexed with BM25 (qadist.pairs.retrieval); the index goes once into the
   object store.
2. Questions stream through the driver once: bad rows and duplicate ids go to rejects, identical
   questions (case and whitespace aside) are merged (the first id is kept, the others listed in
   `duplicates/`, the count carried on the pair), unique questions are staged in `_work/`. The
   driver keeps only a set of ids and a digest per distinct question.
3. The staged questions stream through a pool of `StagedMatcher` actors (read a staged file, embed
   + top-k search against the shared index, a batch at a time); the driver writes pairs and rejects as
   results arrive, then `_manifest.json`.

Output under `--out`: `pairs/part-*.jsonl` (or .parquet), rows `id` (the question id when top_k=1,
else `<question id>::<rank>`), `question`, `context`, `doc_id`, `score`, `title`, `question_id`,
`rank`, `count`, `passage_start`/`passage_end` and `context_start`/`context_end` (character offsets
in the document), `dense_score`, `lexical_score`; `rejects/*.jsonl`; `duplicates/*.jsonl`;
`_manifest.json`. `qadist label --pairs <out>/pairs` reads the pairs as they are.
"""

from __future__ import annotations

import io
import json
import logging
import time
from array import array
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qadist import console, storage
from qadist.capacity import Demand, bundle, check_capacity
from qadist.config import PairsConfig, to_dict
from qadist.documents import load_documents
from qadist.errors import UserError
from qadist.leases import Lease, check_writers
from qadist.outputs import MANIFEST, claim, claim_file, committed_generations, delete_generations, generation_uri
from qadist.pairs import embedding_cache
from qadist.pairs.generations import (
    earlier_questions,
    new_question_files,
    part_prefix,
    question_key,
)
from qadist.pairs.passages import build_passages, passage_texts
from qadist.pairs.retrieval import Encoder, Matcher, build_index, log_index, release_memory, resolve_model
from qadist.rows import Unparsable, bad_unicode, check_id, check_text, iter_raw_rows, make_reject, read_jsonl
from qadist.runtime import ensure_ray

log = logging.getLogger(__name__)

PAIRS_FORMAT_VERSION = 1  # of the pairs manifest
CLAIM = claim_file("pairs")
OUTPUT_DIRS = ("pairs", "rejects", "duplicates", "_work")
STAGE_ROWS = 4096  # unique questions per staged file: the unit of work of a matching actor
PASSAGE_BLOCK = 4096


def normalize_question(text: str) -> str:
    """The form under which two questions count as identical: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def validate_question(raw: Any) -> tuple[dict | None, str | None]:
    """A raw row -> ({id, question}, None) or (None, the reason it cannot be used)."""
    if not isinstance(raw, dict):
        return None, f"row is {type(raw).__name__}, not a JSON object"
    qid, reason = check_id(raw)
    if reason:
        return None, reason
    question, reason = check_text(raw, "question")
    if reason:
        return None, reason
    reason = bad_unicode([("id", qid), ("question", question)])
    if reason:
        return None, reason
    return {"id": qid, "question": question}, None


class PartWriter:
    """Rows -> numbered part files under a prefix (`<name>-00000.jsonl`), each written whole.

    A part is written once it holds `rows_per_file` rows or `max_bytes` of JSON, so memory stays
    bounded whatever the number of rows. JSONL rows are buffered already encoded (a row's dict
    costs several times its JSON); Parquet rows as dicts, for the Arrow schema.
    """

    def __init__(
        self,
        prefix: str,
        name: str = "part",
        fmt: str = "jsonl",
        rows_per_file: int = 10_000,
        max_bytes: int = 64 << 20,
    ):
        self.prefix, self.name, self.fmt = prefix, name, fmt
        self.rows_per_file, self.max_bytes = rows_per_file, max_bytes
        self.buffer: list = []
        self.buffered_bytes = 0
        self.files: list[dict] = []
        self.rows = 0

    def add(self, row: dict) -> None:
        line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        self.buffer.append(row if self.fmt == "parquet" else line)
        self.buffered_bytes += len(line)
        self.rows += 1
        if len(self.buffer) >= self.rows_per_file or self.buffered_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        uri = storage.join(self.prefix, f"{self.name}-{len(self.files):05d}.{self.fmt}")
        if self.fmt == "parquet":
            sink = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(self.buffer), sink)
            data = sink.getvalue()
        else:
            data = b"".join(self.buffer)
        storage.write_bytes(uri, data)
        self.files.append({"path": uri, "rows": len(self.buffer)})
        self.buffer, self.buffered_bytes = [], 0
        del data
        release_memory()


class QuestionStager:
    """Pass 1 over the questions: rejects, duplicate ids, identical-question merging, staging."""

    def __init__(
        self, out: str, prefix: str = "", earlier_ids: set[str] | None = None, earlier: dict[bytes, str] | None = None
    ):
        self.staged = PartWriter(storage.join(out, "_work", "questions"), rows_per_file=STAGE_ROWS)
        self.rejects = PartWriter(storage.join(out, "rejects"), name=f"{prefix}questions")
        self.duplicates = PartWriter(storage.join(out, "duplicates"), name=f"{prefix}part")
        self.earlier_ids = earlier_ids or set()  # ids an earlier generation took
        self.earlier = earlier or {}  # normalised question an earlier generation paired -> its id
        self.seen_ids: set[str] = set()
        self.slots: dict[bytes, int] = {}  # digest of the normalised question -> slot
        self.rep_ids: list[str] = []  # slot -> id of its first question
        self.counts = array("I")  # slot -> how many logged questions it stands for
        self.rows_in = 0
        self.first_reason: str | None = None

    def add(self, source: str, n: int, raw: Any) -> None:
        self.rows_in += 1
        q, reason = (None, raw.reason) if isinstance(raw, Unparsable) else validate_question(raw)
        if q is not None and q["id"] in self.seen_ids:
            q, reason = None, f"duplicate question id {q['id']!r}"
        elif q is not None and q["id"] in self.earlier_ids:
            q, reason = None, f"duplicate question id {q['id']!r} (taken by an earlier generation of this output)"
        if q is None:
            self.first_reason = self.first_reason or f"{storage.basename(source)} row {n}: {reason}"
            self.rejects.add(make_reject(raw, source, n, reason))
            return
        self.seen_ids.add(q["id"])
        key = question_key(normalize_question(q["question"]))
        if key in self.earlier:  # paired by an earlier generation: merged into it, not paired again
            self.duplicates.add({"id": q["id"], "same_as": self.earlier[key], "source": source, "row": n,
                                 "earlier_generation": True})  # fmt: skip
            return
        slot = self.slots.get(key)
        if slot is not None:
            self.counts[slot] += 1
            self.duplicates.add({"id": q["id"], "same_as": self.rep_ids[slot], "source": source, "row": n})
            return
        slot = self.slots[key] = len(self.rep_ids)
        self.rep_ids.append(q["id"])
        self.counts.append(1)
        self.staged.add({"slot": slot, "id": q["id"], "question": q["question"], "source": source, "row": n})

    def finish(self) -> None:
        for w in (self.staged, self.rejects, self.duplicates):
            w.flush()


def read_staged(uri: str) -> dict[str, list]:
    """A staged file -> its question rows as columns (the filesystem is built where this runs)."""
    cols: dict[str, list] = {k: [] for k in ("slot", "id", "question", "source", "row")}
    for row in read_jsonl(uri):  # "\n" only: a question may hold U+2028 and other line separators
        for k in cols:
            cols[k].append(row[k])
    return cols


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


def demands(cfg: PairsConfig) -> list[Demand]:
    """What one actor pool (the encoders, then the matchers) asks Ray for, all at once."""
    each = bundle(1, cfg.num_gpus_per_actor, cfg.resources_per_actor)
    fix = "lower --num-actors or --num-gpus-per-actor, or add such nodes"
    return [Demand(f"{cfg.num_actors} encoder actor(s)", each, cfg.num_actors, fix)]


def check_resources(ray, cfg: PairsConfig) -> None:
    """Exit 2 now when the embedding and matching actors can never all start."""
    check_capacity(ray, "pairs", demands(cfg))


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


def prepare_out(cfg: PairsConfig) -> list[dict]:
    """Claim `cfg.out` for these settings; its committed generations. What a run killed part way
    left of the next generation is deleted: that generation is redone from the start."""
    settings = {k: v for k, v in to_dict(cfg).items() if k != "overwrite"}
    if cfg.overwrite:  # before the claim, which removes generation 1: never a table with a gap
        delete_generations(cfg.out)
    claim(
        cfg.out,
        CLAIM,
        settings,
        what="pairs",
        overwrite=cfg.overwrite,
        parts=(*OUTPUT_DIRS, MANIFEST, "_index"),
        foreign=(MANIFEST, "pairs"),
        fix="use another --out, or pass --overwrite to replace them",
    )
    committed = committed_generations(cfg.out)
    prefix = part_prefix(len(committed) + 1)
    storage.delete(storage.join(cfg.out, "_work"))
    for name in ("pairs", "rejects", "duplicates"):
        folder = storage.join(cfg.out, name)
        if not committed:
            storage.delete(folder)
        elif storage.exists(folder):
            for uri in storage.list_files(folder):
                if storage.basename(uri).startswith(prefix):
                    storage.delete(uri)
    return committed


def load_tokenizer_for(model: str) -> Any:
    """The embedding model's tokenizer (passages are cut in its tokens); fails early, in the driver."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            resolve_model(model), trust_remote_code=False
        )  # explicit: no prompt, no remote code
    except (OSError, ValueError) as e:
        raise UserError(
            f"--model {model}: cannot load its tokenizer ({str(e).splitlines()[0]}); "
            "give a sentence-transformers name or folder"
        ) from e


def max_seq_length(model: str) -> int | None:
    """The sentence-transformers model's max_seq_length, when its folder says (None otherwise)."""
    try:
        from pathlib import Path

        from huggingface_hub import try_to_load_from_cache

        path = Path(resolve_model(model)) / "sentence_bert_config.json"
        if not path.exists():
            cached = try_to_load_from_cache(model, "sentence_bert_config.json")
            path = Path(cached) if isinstance(cached, str) else path
        return int(json.loads(path.read_text())["max_seq_length"]) if path.exists() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    import ray
    import ray.data

    # The index: passages, embeddings, BM25; once into the object store.
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
    approximate = index["ann"] is not None
    index_ref = ray.put(index)
    del index, emb

    # Pass 2: unique questions stream through the matching actors; results written as they come.
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
    matched = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
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
    return n_passages, approximate, matched


def run_pairs(cfg: PairsConfig) -> dict:
    """Run the whole stage; returns the manifest."""
    started = time.perf_counter()
    if cfg.passage_overlap >= cfg.passage_tokens:
        raise UserError(f"passage_overlap={cfg.passage_overlap} must be below passage_tokens={cfg.passage_tokens}")
    limit = max_seq_length(cfg.model)
    if limit is not None and cfg.passage_tokens > limit - 2:
        raise UserError(
            f"passage_tokens={cfg.passage_tokens} is over what {cfg.model} embeds ({limit - 2} tokens + 2 special); "
            "lower --passage-tokens"
        )
    tokenizer = load_tokenizer_for(cfg.model)
    # One pairs run at a time per output: a second would clear the first's unfinished generation.
    with Lease(cfg.out, "pairs", overwrite=cfg.overwrite) as lease:
        check_writers(cfg.out, lease, exclusive=True)
        return pairs_generation(cfg, tokenizer, started)


def pairs_generation(cfg: PairsConfig, tokenizer, started: float) -> dict:
    """Pair the question files no committed generation read and commit them as the next generation."""
    committed = prepare_out(cfg)
    fresh = new_question_files(cfg.questions, committed)
    if committed and not fresh:
        pairs_out = sum(g["counts"]["pairs_out"] for g in committed)
        console.summary(
            f"qadist pairs: {cfg.out} is already complete with these settings ({len(committed)} generation(s), "
            f"{pairs_out:,} pairs); no new question files under {cfg.questions}; nothing to do",
            log,
        )
        return {**committed[-1], "generations": [{"generation": g.get("generation", 1), "counts": g["counts"]}
                                                 for g in committed]}  # fmt: skip
    number = len(committed) + 1
    prefix = part_prefix(number)
    check_resources(ensure_ray(), cfg)
    docs, doc_rejects = load_documents(cfg.documents)

    # Pass 1: the new question files' rows, streamed through the driver.
    earlier_ids, earlier = earlier_questions(cfg.out, committed, normalize_question)
    stager = QuestionStager(cfg.out, prefix, earlier_ids, earlier)
    for f in fresh:
        for source, n, raw in iter_raw_rows(f["uri"], "--questions"):
            stager.add(source, n, raw)
    stager.finish()
    if committed:
        console.banner(
            f"qadist pairs: generation {number}: {len(fresh)} new question file(s) under {cfg.questions} "
            f"({stager.rows_in:,} rows); {len(earlier_ids):,} questions of earlier generations are not paired again",
            log,
        )
    if not stager.rep_ids and not committed:
        storage.delete(storage.join(cfg.out, "_work"))
        first = f", first: {stager.first_reason}" if stager.first_reason else ""
        raise UserError(
            f"{cfg.questions}: no usable questions ({stager.rows_in} rows read, "
            f"{stager.rejects.rows} rejected{first}); "
            "give JSONL or Parquet rows with 'id' and 'question'"
        )
    doc_reject_writer = PartWriter(storage.join(cfg.out, "rejects"), name=f"{prefix}documents")
    for r in doc_rejects:
        doc_reject_writer.add(r)
    doc_reject_writer.flush()

    pairs = PartWriter(
        storage.join(cfg.out, "pairs"), name=f"{prefix}part", fmt=cfg.output_format, rows_per_file=cfg.rows_per_file
    )
    unmatched = PartWriter(storage.join(cfg.out, "rejects"), name=f"{prefix}unmatched")
    n_passages, approximate, matched = 0, False, 0
    if stager.rep_ids:  # (a later generation whose questions were all asked before pairs nothing)
        n_passages, approximate, matched = match_questions(cfg, tokenizer, docs, doc_rejects, stager, pairs, unmatched)
    pairs.flush()
    unmatched.flush()
    if not pairs.rows:
        log.warning(
            "pairs: no question reached min_score=%s: no pairs written (see %s)",
            cfg.min_score,
            storage.join(cfg.out, "rejects"),
        )
    storage.delete(storage.join(cfg.out, "_work"))

    counts = {
        "questions_in": stager.rows_in,
        "questions_matched": matched,
        "questions_duplicate": stager.duplicates.rows,
        "questions_rejected": stager.rejects.rows + unmatched.rows,
        "questions_unmatched": unmatched.rows,
        "questions_unique": len(stager.rep_ids),
        "pairs_out": pairs.rows,
        "documents_in": len(docs) + len(doc_rejects),
        "documents_rejected": len(doc_rejects),
        "passages": n_passages,
    }
    assert counts["questions_in"] == matched + counts["questions_duplicate"] + counts["questions_rejected"], counts
    rel = lambda files: [{"path": f["path"][len(cfg.out.rstrip("/")) + 1 :], "rows": f["rows"]} for f in files]  # noqa: E731
    manifest = {
        "schema_version": PAIRS_FORMAT_VERSION,
        "stage": "pairs",
        "generation": number,
        "inputs": fresh,
        "config": to_dict(cfg),
        "model": {"name": cfg.model, "path": resolve_model(cfg.model)},
        "search": "approximate (faiss HNSW + BM25 candidates, rescored)" if approximate else "exact",
        "counts": counts,
        "files": {
            "pairs": rel(pairs.files),
            "rejects": rel(stager.rejects.files + doc_reject_writer.files + unmatched.files),
            "duplicates": rel(stager.duplicates.files),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    if not storage.write_if_absent(generation_uri(cfg.out, number), json.dumps(manifest, indent=2).encode("utf-8")):
        raise UserError(
            f"{generation_uri(cfg.out, number)}: another run committed generation {number} of this output at the "
            "same time; run the command again (it pairs what that run did not)"
        )
    console.summary(
        f"qadist pairs: {counts['questions_in']:,} questions in -> {matched:,} matched ({pairs.rows:,} pairs), "
        f"{counts['questions_duplicate']:,} merged as identical, {counts['questions_rejected']:,} rejected "
        f"({unmatched.rows:,} below min_score) in {manifest['seconds']:.0f}s -> {cfg.out}",
        log,
    )
    return manifest
