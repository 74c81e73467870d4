"""What one serving replica does, without the HTTP around it: answer (question, context) items in a
batch with a model or an exported graph, and, with documents, find the contexts first.

The answers are those of `qadist predict` for the same model and settings: the same windows,
batched forward passes and post-processing (`inference.predict_spans`). With documents, each
question without a context is matched to passages by the pairing stage's encoder and index
(dense + BM25, `qadist.encoder` and `qadist.retrieval`), every one of its top passages (widened as the pairing stage
widens them) is answered, and the best-scoring answer wins; when every passage abstains, so does
the reply, naming the best-matched document.
"""

from __future__ import annotations

import logging
from typing import Any

from qadist.config import PairsConfig, ServeConfig

log = logging.getLogger(__name__)


class DocumentIndex:
    """Documents cut into passages and indexed as `qadist pairs` does, held in this process."""

    def __init__(self, uri: str, encoder: str, top_k: int):
        from qadist.documents import load_documents
        from qadist.encoder import Encoder, load_tokenizer_for
        from qadist.passages import build_passages, passage_texts
        from qadist.retrieval import SearchIndex, build_index

        defaults = PairsConfig.model_fields
        self.docs, rejects = load_documents(uri)
        if rejects:
            log.warning("%s: %d documents rejected (first: %s)", uri, len(rejects), rejects[0]["reason"])
        self.passages = build_passages(
            self.docs,
            load_tokenizer_for(encoder),
            defaults["passage_tokens"].default,
            defaults["passage_overlap"].default,
            defaults["context_tokens"].default,
        )
        self.encoder = Encoder(encoder)
        texts = list(passage_texts(self.docs, self.passages))
        arrays = build_index(self.encoder.embed(texts), self.passages, texts, defaults["approximate_above"].default)
        self.index = SearchIndex(arrays, top_k, defaults["lexical_weight"].default)
        log.info("document index: %d documents, %d passages from %s", len(self.docs), len(texts), uri)

    def contexts(self, questions: list[str]) -> list[list[tuple[str, str]]]:
        """Per question, its top passages as (doc_id, context), best match first."""
        found = self.index.search(self.encoder.embed(questions), questions)
        out = []
        for q in range(len(questions)):
            row = []
            for doc, passage in zip(found["doc"][q], found["passage"][q]):
                if doc < 0:
                    continue
                start, end = self.passages["context_start"][passage], self.passages["context_end"][passage]
                row.append((self.docs[doc]["id"], self.docs[doc]["text"][start:end]))
            out.append(row)
        return out


class Answerer:
    """A model (checkpoint or exported folder) and its tokenizer, and optionally a document index."""

    def __init__(self, cfg: ServeConfig):
        from qadist.inference import place
        from qadist.models import load_qa_model, load_tokenizer, local_model

        self.cfg = cfg
        folder = local_model(cfg.model)
        self.tokenizer = load_tokenizer(folder, trust_remote_code=False)  # served models never run shipped code
        # Replicas without GPUs run on the CPU; with GPUs, left to choose (`place`: an exported model
        # without onnxruntime-gpu stays on the CPU).
        use_gpu = cfg.use_gpu if cfg.use_gpu is not None else (None if cfg.num_gpus_per_replica > 0 else False)
        self.model, self.device = place(load_qa_model(folder, trust_remote_code=False), use_gpu)
        self.index = DocumentIndex(cfg.documents, cfg.encoder, cfg.top_k) if cfg.documents else None

    def answer_contexts(self, items: list[tuple[str, str]]) -> list[dict]:
        """(question, context) items -> answers, in order."""
        from qadist.inference import predict_spans

        pairs = [{"id": str(i), "question": q, "context": c} for i, (q, c) in enumerate(items)]
        spans = predict_spans(pairs, self.model, self.tokenizer, self.cfg, self.device, progress=False)
        return [spans[p["id"]] for p in pairs]

    def answer(self, items: list[tuple[str, str | None]]) -> list[dict]:
        """(question, context or None) items -> answers, in order; a None context is looked up in the
        documents (the reply then names its `doc_id`)."""
        lookup = [i for i, (_, context) in enumerate(items) if context is None]
        found = self.index.contexts([items[i][0] for i in lookup]) if lookup else []
        flat = [(q, c) for q, c in items if c is not None]
        flat += [(items[i][0], context) for i, row in zip(lookup, found) for _, context in row]
        answers = iter(self.answer_contexts(flat)) if flat else iter(())
        out: list[dict | None] = [next(answers) if c is not None else None for _, c in items]
        for i, row in zip(lookup, found):
            candidates = [{**next(answers), "doc_id": doc_id} for doc_id, _ in row]
            out[i] = best_of(candidates)
        return out  # type: ignore[return-value]


def best_of(candidates: list[dict]) -> dict:
    """The highest-scoring answer over one question's passages; when all abstain (or there were no
    passages), an abstention naming the best-matched document."""
    answered = [c for c in candidates if c["answer"]]
    if answered:
        return max(answered, key=lambda c: c["score"])
    if candidates:
        return {**candidates[0], "start": -1, "end": -1}
    return {"answer": "", "start": -1, "end": -1, "score": 0.0, "no_answer_probability": 1.0, "doc_id": None}


def describe(answerer: Answerer) -> dict[str, Any]:
    """What the service runs, for /healthz."""
    from qadist.inference import OnnxQAModel

    backend = "onnxruntime" if isinstance(answerer.model, OnnxQAModel) else "pytorch"
    return {"model": answerer.cfg.model, "backend": backend, "documents": answerer.cfg.documents}


def model_version_of(model: str) -> str:
    """A served folder's version when it is not from a registry: its name and a hash of its path."""
    import hashlib

    return f"{model.rstrip('/').rsplit('/', 1)[-1]}@{hashlib.sha256(model.encode()).hexdigest()[:8]}"
