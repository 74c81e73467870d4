"""`qadist predict`: answer SQuAD-style questions with any Hugging Face QA model folder.

Transformers 5 removed its question-answering pipeline; this is the batched replacement: the same
windows and post-processing as training and labelling, on CPU or GPU.
"""

from __future__ import annotations

import json
import logging
import time

from tqdm import tqdm

from qadist import storage
from qadist.config import PredictConfig
from qadist.inference import pick_device, run_windows
from qadist.models import load_qa_model, load_tokenizer
from qadist.squad.features import make_windows
from qadist.squad.io import read_pairs
from qadist.squad.postprocess import postprocess

log = logging.getLogger(__name__)
CHUNK = 256  # pairs windowed and run at a time, so memory stays bounded on large files


def predict_pairs(pairs: list[dict], model, tokenizer, cfg: PredictConfig, device) -> tuple[dict[str, str], dict[str, float]]:
    windows: list[dict] = []
    for i in tqdm(range(0, len(pairs), CHUNK), desc="predict", unit="chunk", disable=len(pairs) <= CHUNK):
        chunk = pairs[i:i + CHUNK]
        batch = {k: [p[k] for p in chunk] for k in ("id", "question", "context")}
        w = make_windows(batch, tokenizer, cfg.max_seq_len, cfg.doc_stride, cfg.max_query_len)
        logits = run_windows(model, w["input_ids"], w.get("token_type_ids"), tokenizer.pad_token_id, cfg.batch_size, device, cfg.precision)
        windows += [
            {"id": w["id"][j], "offsets": w["offsets"][j], "start_logits": s, "end_logits": e}
            for j, (s, e) in enumerate(logits)
        ]
    contexts = {p["id"]: p["context"] for p in pairs}
    return postprocess(windows, contexts, cfg.n_best, cfg.max_answer_len, cfg.null_threshold)


def run_predict(cfg: PredictConfig) -> dict[str, str]:
    pairs, _ = read_pairs(cfg.data, strict=True)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    device = pick_device(cfg.use_gpu)
    model = load_qa_model(cfg.model, trust_remote_code=cfg.trust_remote_code).to(device).eval()
    started = time.perf_counter()
    predictions, na_probs = predict_pairs(pairs, model, tokenizer, cfg, device)
    elapsed = time.perf_counter() - started
    storage.write_bytes(cfg.out, json.dumps(predictions, indent=2, ensure_ascii=False).encode("utf-8"))
    if cfg.na_probs:
        storage.write_bytes(cfg.na_probs, json.dumps(na_probs, indent=2).encode("utf-8"))
    answered = sum(1 for a in predictions.values() if a)
    log.info("predicted %d questions (%d answered, %d no-answer) in %.1fs (%.1f questions/s on %s) -> %s",
             len(predictions), answered, len(predictions) - answered, elapsed, len(predictions) / max(elapsed, 1e-9), device, cfg.out)
    return predictions
