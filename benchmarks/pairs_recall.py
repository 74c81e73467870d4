"""Recall of `qadist pairs` on the SQuAD sample (tests/data): does each question find its own paragraph?

Paragraphs are the documents (id `<title>/<n>`), the answerable questions the logged questions.
Printed side by side, all with the same model (default: the packaged all-MiniLM-L6-v2):

- baseline: each whole paragraph embedded as one text (the model truncates it at 256 tokens),
  cosine only, computed in-process;
- `qadist pairs` with passages and cosine only (lexical_weight 0);
- `qadist pairs` as configured by default (passages + normalised BM25, lexical_weight 1.0);

with recall@1 and recall@5 overall and on two halves of the articles (the lexical weight was
chosen looking at both halves), and how often the pair's context holds a gold answer when the
right paragraph came first. Takes a few minutes on a 2-core CPU.

    python benchmarks/pairs_recall.py [--model NAME|PATH] [--out /tmp/pairs-recall]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "squad-v2-dev-sample.json"


def squad_collection(sample: Path) -> tuple[list[dict], list[dict]]:
    """Paragraphs -> documents; answerable questions -> {id, question, doc, article, answers}."""
    data = json.loads(sample.read_text())["data"]
    docs, questions = [], []
    for a, article in enumerate(data):
        for n, paragraph in enumerate(article["paragraphs"]):
            doc_id = f"{article['title']}/{n}"
            docs.append({"id": doc_id, "text": paragraph["context"], "title": article["title"]})
            for qa in paragraph["qas"]:
                if not qa.get("is_impossible") and qa.get("answers"):
                    questions.append(
                        {
                            "id": qa["id"],
                            "question": qa["question"],
                            "doc": doc_id,
                            "article": a,
                            "answers": [(x["answer_start"], x["answer_start"] + len(x["text"])) for x in qa["answers"]],
                        }
                    )
    return docs, questions


def recall(ranked: dict[str, list[str]], questions: list[dict]) -> tuple[float, float]:
    r1 = np.mean([ranked.get(q["id"], [None])[:1] == [q["doc"]] for q in questions])
    r5 = np.mean([q["doc"] in ranked.get(q["id"], [])[:5] for q in questions])
    return float(r1), float(r5)


def baseline(model: str, docs: list[dict], questions: list[dict]) -> dict[str, list[str]]:
    from qadist.encoder import Encoder

    enc = Encoder(model, batch_size=64)
    d = enc.embed([x["text"] for x in docs])
    q = enc.embed([x["question"] for x in questions])
    top = np.argsort(-(q @ d.T), axis=1)[:, :5]
    return {x["id"]: [docs[j]["id"] for j in row] for x, row in zip(questions, top)}


def run_stage(
    out: str, model: str, qfile: str, dfile: str, **overrides
) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """Run `qadist pairs` (top 5) -> (question id -> ranked doc ids, question id -> its rank-1 pair)."""
    from qadist.config import PairsConfig
    from qadist.pairs.stage import run_pairs
    from qadist.rows import read_jsonl

    cfg = PairsConfig(questions=qfile, documents=dfile, out=out, model=model, top_k=5, overwrite=True, **overrides)
    run_pairs(cfg)
    rows = [row for f in sorted(Path(out, "pairs").glob("*.jsonl")) for row in read_jsonl(str(f))]
    same_as = {row["id"]: row["same_as"] for f in Path(out, "duplicates").glob("*.jsonl") for row in read_jsonl(str(f))}
    ranked: dict[str, list[str]] = {}
    first: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["rank"]):
        ranked.setdefault(r["question_id"], []).append(r["doc_id"])
        first.setdefault(r["question_id"], r)
    for dup, rep in same_as.items():
        ranked[dup], first[dup] = ranked.get(rep, []), first.get(rep)
    return ranked, first


def answer_coverage(first: dict[str, dict], questions: list[dict]) -> tuple[float, float]:
    """Of the questions whose own paragraph ranked first: share with a gold answer inside the
    scored passage, and inside the pair's context."""
    hits = [(q, first[q["id"]]) for q in questions if first.get(q["id"]) and first[q["id"]]["doc_id"] == q["doc"]]
    passage = np.mean(
        [any(p["passage_start"] <= s and e <= p["passage_end"] for s, e in q["answers"]) for q, p in hits]
    )
    context = np.mean(
        [any(p["context_start"] <= s and e <= p["context_end"] for s, e in q["answers"]) for q, p in hits]
    )
    return float(passage), float(context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    parser.add_argument("--out", default="/tmp/qadist-pairs-recall")
    parser.add_argument("--sample", default=str(SAMPLE))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    docs, questions = squad_collection(Path(args.sample))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dfile, qfile = out / "documents.jsonl", out / "questions.jsonl"
    dfile.write_text("".join(json.dumps(d) + "\n" for d in docs))
    qfile.write_text("".join(json.dumps({"id": q["id"], "question": q["question"]}) + "\n" for q in questions))
    halves = [[q for q in questions if q["article"] < 4], [q for q in questions if q["article"] >= 4]]
    print(
        f"SQuAD sample: {len(docs)} paragraphs (documents), {len(questions)} answerable questions; model {args.model}"
    )

    ray.init(num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False)
    rows = []
    t = time.perf_counter()
    rows.append(
        ("whole paragraph, cosine (baseline)", baseline(args.model, docs, questions), None, time.perf_counter() - t)
    )
    for name, overrides in [
        ("passages 128/32, cosine", {"lexical_weight": 0.0}),
        ("passages 128/32, cosine + BM25 (default)", {}),
    ]:
        t = time.perf_counter()
        ranked, first = run_stage(str(out / "run"), args.model, str(qfile), str(dfile), **overrides)
        rows.append((name, ranked, first, time.perf_counter() - t))
    ray.shutdown()

    print(
        f"\n{'method':<44} {'r@1':>6} {'r@5':>6}   "
        f"{'articles 0-3 r@1/r@5':>20}   {'articles 4-8 r@1/r@5':>20} {'time':>6}"
    )
    for name, ranked, _, secs in rows:
        r1, r5 = recall(ranked, questions)
        h = [recall(ranked, part) for part in halves]
        print(
            f"{name:<44} {r1:6.3f} {r5:6.3f}   "
            f"{h[0][0]:12.3f} / {h[0][1]:.3f}   {h[1][0]:12.3f} / {h[1][1]:.3f} {secs:5.0f}s"
        )
    for name, _, first, _ in rows:
        if first is not None:
            p, c = answer_coverage(first, questions)
            print(
                f"{name}: own paragraph first -> gold answer inside the passage {p:.3f}, "
                f"inside the pair's context {c:.3f}"
            )


if __name__ == "__main__":
    main()
