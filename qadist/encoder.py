"""The sentence encoder that pairs questions with passages: loading it, its tokenizer, its embeddings.

Shared by the pairs stage (embedding passages and questions in Ray Data actors), `qadist select`
(near-duplicate questions) and serving with documents (`qadist.answer.service`). The model is a
sentence-transformers name or folder, or the packaged MiniLM (`packaged:all-MiniLM-L6-v2`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from qadist.errors import UserError, first_line

log = logging.getLogger(__name__)

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"


def resolve_model(name: str) -> str:
    """A config's model value -> a sentence-transformers name or path."""
    if name == PACKAGED_MINILM:
        from qadist.models import minilm_path

        return minilm_path()
    if name.startswith("packaged:"):
        raise UserError(
            f"model {name!r}: the only packaged model is {PACKAGED_MINILM!r}; "
            "or give a sentence-transformers name or path"
        )
    return name


class Encoder:
    """Ray Data actor: texts -> L2-normalised sentence embeddings (GPU when the actor was given one)."""

    def __init__(self, model: str, batch_size: int = 64, use_gpu: bool = False):
        import os

        import torch
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        if use_gpu and device == "cpu":
            log.warning("num_gpus_per_actor > 0 but this actor sees no CUDA device; embedding on CPU")
        self.model = SentenceTransformer(resolve_model(model), device=device)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            emb = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(emb, dtype=np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"pidx": batch["pidx"], "embedding": self.embed(batch["text"])}


def build_tiny_encoder(out_dir: str, hidden: int = 64, num_layers: int = 2, seed: int = 0) -> str:
    """A randomly initialised sentence-transformers model (BERT + mean pooling + normalisation) with
    the packaged MiniLM WordPiece tokenizer, offline: fast embeddings for scale tests and benchmarks."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from qadist.models import minilm_path

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    bert_dir = f"{out_dir}/bert"
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=max(1, hidden // 32),
            intermediate_size=4 * hidden,
        )
    ).save_pretrained(bert_dir)
    tok.save_pretrained(bert_dir)
    word = models.Transformer(bert_dir, max_seq_length=256)
    SentenceTransformer(modules=[word, models.Pooling(hidden, "mean"), models.Normalize()], device="cpu").save(out_dir)
    return out_dir


def load_tokenizer_for(model: str) -> Any:
    """The embedding model's tokenizer (passages are cut in its tokens); fails early, in the driver."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            resolve_model(model), trust_remote_code=False
        )  # explicit: no prompt, no remote code
    except (OSError, ValueError) as e:
        raise UserError(
            f"--model {model}: cannot load its tokenizer ({first_line(str(e))}); "
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
