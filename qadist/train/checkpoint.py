"""Checkpoints of a training run: what is saved, how it is restored, how the final model is exported.

A checkpoint is a `save_pretrained` folder (model, tokenizer, `qadist_config.json`) with
`training_state.pt` beside the weights (optimizer, scheduler, scaler, step, data position),
reported to Ray Train, which keeps the last `keep_checkpoints` under `<out>/<stage>/`. The final
model, `<out>/final`, is the last checkpoint without its training state.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.fs as pafs
import torch

from qadist import storage
from qadist.models import QADIST_CONFIG_FILE

STATE_FILE = "training_state.pt"
QADIST_CONFIG_VERSION = 1  # of qadist_config.json


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(folder: str, model: torch.nn.Module, tokenizer: Any, qadist_config: dict, state: dict) -> None:
    """A `save_pretrained` folder (model, tokenizer, qadist_config.json) plus training_state.pt."""
    unwrap(model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, QADIST_CONFIG_FILE), "w") as f:
        json.dump({**qadist_config, "step": state["step"]}, f, indent=2)
    torch.save(state, os.path.join(folder, STATE_FILE))


def load_state(folder: str) -> dict[str, Any]:
    """A checkpoint's training state. weights_only: tensors and plain values only, so a tampered
    checkpoint cannot run code."""
    return torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)


def recorded_windows(model: str) -> dict | None:
    """Window lengths a qadist-trained model folder was trained with (its qadist_config.json)."""
    path = os.path.join(model, QADIST_CONFIG_FILE)
    return json.loads(storage.read_text(path)).get("windows") if os.path.isfile(path) else None


def export_final(checkpoint: Any, out: str) -> str:
    """Copy the last checkpoint's save_pretrained folder (not the training state) to <out>/final."""
    final = storage.join(out, "final")
    dst_fs, dst_root = storage.resolve(final)
    src_fs, src_root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    files = [
        f for f in src_fs.get_file_info(pafs.FileSelector(src_root, recursive=True)) if f.type == pafs.FileType.File
    ]
    # config.json last: a folder with a config.json is a finished export (the pipeline's skip rule).
    for info in sorted(files, key=lambda f: (f.path.endswith("/config.json"), f.path)):
        rel = info.path[len(src_root) :].lstrip("/")
        if rel == STATE_FILE:
            continue
        dst = f"{dst_root}/{rel}"
        if not storage.is_s3(final):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        with src_fs.open_input_stream(info.path) as src, dst_fs.open_output_stream(dst) as sink:
            while chunk := src.read(16 << 20):
                sink.write(chunk)
    return final
