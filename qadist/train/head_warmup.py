"""The head warm-up of `qadist pretrain`: a new masked-LM head is trained alone before the encoder.

An encoder that ships no masked-LM head (a sentence-transformers model such as the packaged
MiniLM, a QA model) gets a freshly initialised one when it is loaded as a masked LM. Trained
together from the first step, the random head's large, meaningless gradients move the encoder
before the head predicts anything, and the encoder loses what it was good at (docs/pretrain.md:
22-31 F1 lost by the QA models fine-tuned from it). So `run_pretrain` first trains the head alone
(`head_warmup_steps` optimizer steps at `head_learning_rate`, encoder frozen: its own Ray Train run
into `<out>/warmup/`, resumed like any), then the whole model from the warmed-up head at
`learning_rate`. A model that ships its head (ALBERT, RoBERTa, a BERT pre-training checkpoint, an
earlier `pretrain`'s output) skips the warm-up.
"""

from __future__ import annotations

import torch

from qadist import storage
from qadist.config import PretrainConfig
from qadist.train.batches import plan_steps

WARMUP_DIR = "warmup"  # <out>/warmup/: the warm-up run's checkpoints and its final model


def freeze_all_but_head(model: torch.nn.Module) -> tuple[int, int]:
    """Freeze the base model (embeddings and encoder) and leave the rest, the masked-LM head,
    trainable; returns (trainable, frozen) parameter counts.

    A BERT-style head ties its decoder (the vocabulary projection) to the word embeddings: that one
    tensor belongs to the base model and stays frozen, deliberately. Training it would move the
    encoder's input embeddings, so the encoder would not be left as it was; and the head still has
    weights of its own to learn, the transform (dense + LayerNorm) and the decoder's bias, which map
    the encoder's states onto the (fixed) embedding space. A head with an untied decoder trains it too.
    """
    frozen = {id(p) for p in model.base_model.parameters()}
    trainable = 0
    for p in model.parameters():  # each shared (tied) tensor once
        p.requires_grad = id(p) not in frozen
        trainable += p.numel() if p.requires_grad else 0
    frozen_count = sum(p.numel() for p in model.base_model.parameters())
    assert trainable > 0, f"{type(model).__name__}: its masked-LM head has no weights of its own to warm up"
    return trainable, frozen_count


def warmup_config(cfg: PretrainConfig, sequences: int) -> PretrainConfig:
    """The warm-up run's settings: `head_warmup_steps` optimizer steps over the training sequences
    (as epochs, the unit a run is planned in) at `head_learning_rate`, into `<out>/warmup`."""
    per_epoch = plan_steps(sequences, cfg.num_workers, cfg.batch_size, cfg.grad_accum, 1.0, 0.0).steps_per_epoch
    epochs = (cfg.head_warmup_steps - 1e-6) / per_epoch  # planned as ceil(epochs * per_epoch): the steps asked for
    return cfg.model_copy(
        update={"out": storage.join(cfg.out, WARMUP_DIR), "learning_rate": cfg.head_learning_rate, "epochs": epochs}
    )


def warmup_line(missing: list[str], cfg: PretrainConfig) -> str:
    """The console's line about the warm-up (or why there is none)."""
    if not missing:
        return f"qadist pretrain: {cfg.model} ships its masked-LM head: no head warm-up"
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    if not cfg.head_warmup_steps:
        return f"qadist pretrain: {cfg.model} has no masked-LM head ({shown} new); no head warm-up (steps 0)"
    return (
        f"qadist pretrain: {cfg.model} has no masked-LM head ({shown} new): training the head alone first, "
        f"{cfg.head_warmup_steps} steps at lr {cfg.head_learning_rate:g} with the encoder frozen, then the whole model "
        f"at lr {cfg.learning_rate:g}"
    )
