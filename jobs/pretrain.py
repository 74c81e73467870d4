"""Ray job entry for `qadist pretrain`: domain-adaptive masked-LM training on the product pages.

The same flags as `qadist pretrain`; exit codes 0 / 2 / 1. Documents as for `qadist pairs`
(JSONL/Parquet rows with `id` and `text`); rejects go to `<out>/rejects/documents.jsonl`, the
held-out masked-LM loss before and after is printed and kept in `<out>/pretrain_report.json`.
Checkpoints go to `<out>/pretrain/` (re-running continues), the encoder to `<out>/final`, which
`finetune --model`, `distill --student` and a teacher's fine-tuning load (the QA head new).

Laptop (embedded Ray, CPU; a tiny model from `qadist tiny-model`):
    qadist tiny-model --out /tmp/tiny
    python jobs/pretrain.py --documents docs.jsonl --model /tmp/tiny --out /tmp/pretrain --epochs 1

One GPU (gradient accumulation for a larger global batch):
    python jobs/pretrain.py --config jobs/configs/pretrain-albert-base.yaml --num-workers 1 --grad-accum 8

Cluster:
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/pretrain.py --config jobs/configs/pretrain-albert-base.yaml
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["pretrain", *sys.argv[1:]])
