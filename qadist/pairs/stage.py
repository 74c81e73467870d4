"""`qadist pairs`: logged questions + a document collection -> question-document pairs.

1. Documents are validated, cut into passages (`qadist.passages`), embedded by a pool of `Encoder`
   actors in Ray Data (`qadist.encoder`), and indexed with BM25 (`qadist.retrieval`); the index goes
   once into the object store (`qadist.pairs.matching`).
2. Questions stream through the driver once (`qadist.pairs.staging`): bad rows and duplicate ids go
   to rejects, identical questions (case and whitespace aside) are merged (the first id is kept, the
   others listed in `duplicates/`, the count carried on the pair), unique questions are staged in
   `_work/`. The driver keeps only a set of ids and a digest per distinct question.
3. The staged questions stream through a pool of `StagedMatcher` actors (read a staged file, embed
   + top-k search against the shared index, a batch at a time); the driver writes pairs and rejects as
   results arrive, then `_manifest.json` (this module: the run, its output folder and its commit).

Output under `--out`: `pairs/part-*.jsonl` (or .parquet), rows `id` (the question id when top_k=1,
else `<question id>::<rank>`), `question`, `context`, `doc_id`, `score`, `title`, `question_id`,
`rank`, `count`, `passage_start`/`passage_end` and `context_start`/`context_end` (character offsets
in the document), `dense_score`, `lexical_score`; `rejects/*.jsonl`; `duplicates/*.jsonl`;
`_manifest.json`. `qadist label --pairs <out>/pairs` reads the pairs as they are.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from qadist import console, storage
from qadist.capacity import Demand, bundle, check_capacity
from qadist.config import PairsConfig, to_dict
from qadist.documents import load_documents
from qadist.encoder import load_tokenizer_for, max_seq_length, resolve_model
from qadist.errors import UserError
from qadist.leases import Lease, check_writers
from qadist.outputs import MANIFEST, claim, claim_file, committed_generations, delete_generations, generation_uri
from qadist.pairs.generations import earlier_questions, new_question_files, part_prefix
from qadist.pairs.matching import match_questions
from qadist.pairs.staging import PartWriter, QuestionStager, normalize_question
from qadist.rows import iter_raw_rows
from qadist.runtime import ensure_ray

log = logging.getLogger(__name__)

PAIRS_FORMAT_VERSION = 1  # of the pairs manifest
CLAIM = claim_file("pairs")
OUTPUT_DIRS = ("pairs", "rejects", "duplicates", "_work")


def demands(cfg: PairsConfig) -> list[Demand]:
    """What one actor pool (the encoders, then the matchers) asks Ray for, all at once."""
    each = bundle(1, cfg.num_gpus_per_actor, cfg.resources_per_actor)
    fix = "lower --num-actors or --num-gpus-per-actor, or add such nodes"
    return [Demand(f"{cfg.num_actors} encoder actor(s)", each, cfg.num_actors, fix)]


def check_resources(ray, cfg: PairsConfig) -> None:
    """Exit 2 now when the embedding and matching actors can never all start."""
    check_capacity(ray, "pairs", demands(cfg))


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
        return nothing_new(cfg, committed)
    number = len(committed) + 1
    prefix = part_prefix(number)
    check_resources(ensure_ray(), cfg)
    docs, doc_rejects = load_documents(cfg.documents)
    stager = stage_questions(cfg, committed, fresh, prefix)
    doc_reject_writer = PartWriter(storage.join(cfg.out, "rejects"), name=f"{prefix}documents")
    for r in doc_rejects:
        doc_reject_writer.add(r)
    doc_reject_writer.flush()
    pairs, unmatched, found = pair_questions(cfg, tokenizer, docs, doc_rejects, stager, prefix)
    counts = {
        "questions_in": stager.rows_in,
        "questions_matched": found["matched"],
        "questions_duplicate": stager.duplicates.rows,
        "questions_rejected": stager.rejects.rows + unmatched.rows,
        "questions_unmatched": unmatched.rows,
        "questions_unique": len(stager.rep_ids),
        "pairs_out": pairs.rows,
        "documents_in": len(docs) + len(doc_rejects),
        "documents_rejected": len(doc_rejects),
        "passages": found["passages"],
    }
    matched = found["matched"]
    assert counts["questions_in"] == matched + counts["questions_duplicate"] + counts["questions_rejected"], counts
    rel = lambda files: [{"path": f["path"][len(cfg.out.rstrip("/")) + 1 :], "rows": f["rows"]} for f in files]  # noqa: E731
    manifest = {
        "schema_version": PAIRS_FORMAT_VERSION,
        "stage": "pairs",
        "generation": number,
        "inputs": fresh,
        "config": to_dict(cfg),
        "model": {"name": cfg.model, "path": resolve_model(cfg.model)},
        "search": "approximate (faiss HNSW + BM25 candidates, rescored)" if found["approximate"] else "exact",
        "counts": counts,
        "files": {
            "pairs": rel(pairs.files),
            "rejects": rel(stager.rejects.files + doc_reject_writer.files + unmatched.files),
            "duplicates": rel(stager.duplicates.files),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    commit(cfg, number, manifest)
    console.summary(
        f"qadist pairs: {counts['questions_in']:,} questions in -> {matched:,} matched ({pairs.rows:,} pairs), "
        f"{counts['questions_duplicate']:,} merged as identical, {counts['questions_rejected']:,} rejected "
        f"({unmatched.rows:,} below min_score) in {manifest['seconds']:.0f}s -> {cfg.out}",
        log,
    )
    return manifest


def pair_questions(
    cfg: PairsConfig, tokenizer, docs: list[dict], doc_rejects: list[dict], stager: QuestionStager, prefix: str
) -> tuple[PartWriter, PartWriter, dict[str, Any]]:
    """Pass 2 (`qadist.pairs.matching`) into this generation's pair and unmatched part files, which are
    flushed; `_work/` is removed. (pairs, unmatched, {passages, approximate, matched})."""
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
    return pairs, unmatched, {"passages": n_passages, "approximate": approximate, "matched": matched}


def nothing_new(cfg: PairsConfig, committed: list[dict]) -> dict:
    """No question file is new: say so, and answer with the committed generations."""
    pairs_out = sum(g["counts"]["pairs_out"] for g in committed)
    console.summary(
        f"qadist pairs: {cfg.out} is already complete with these settings ({len(committed)} generation(s), "
        f"{pairs_out:,} pairs); no new question files under {cfg.questions}; nothing to do",
        log,
    )
    return {**committed[-1], "generations": [{"generation": g.get("generation", 1), "counts": g["counts"]}
                                             for g in committed]}  # fmt: skip


def stage_questions(cfg: PairsConfig, committed: list[dict], fresh: list[dict], prefix: str) -> QuestionStager:
    """Pass 1: the new question files' rows, streamed through the driver into rejects, duplicates and
    staged files; a UserError when a first generation finds no usable question."""
    earlier_ids, earlier = earlier_questions(cfg.out, committed, normalize_question)
    stager = QuestionStager(cfg.out, prefix, earlier_ids, earlier)
    for f in fresh:
        for source, n, raw in iter_raw_rows(f["uri"], "--questions"):
            stager.add(source, n, raw)
    stager.finish()
    if committed:
        console.banner(
            f"qadist pairs: generation {len(committed) + 1}: {len(fresh)} new question file(s) under {cfg.questions} "
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
    return stager


def commit(cfg: PairsConfig, number: int, manifest: dict) -> None:
    """Write generation `number`'s manifest with a conditional put; a UserError when another run took it."""
    if not storage.write_if_absent(generation_uri(cfg.out, number), json.dumps(manifest, indent=2).encode("utf-8")):
        raise UserError(
            f"{generation_uri(cfg.out, number)}: another run committed generation {number} of this output at the "
            "same time; run the command again (it pairs what that run did not)"
        )
