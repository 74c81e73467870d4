"""Ray job entry for `qadist evaluate --model`: a trained model answers a labelled set, then the
official SQuAD 2.0 metric.

The same flags as `qadist evaluate` (a `--config` YAML, flags override its keys; the `evaluate`
section of a pipeline config); exit codes 0 / 2 (bad config or input, one line) / 1. With
`--use-gpu` the model answers as a Ray task on a GPU worker (the job's driver sits on the CPU head
node); scoring runs in the driver.

Laptop (embedded Ray, CPU; a model from `jobs/distill.py` or `jobs/finetune.py`):
    python jobs/evaluate.py --model /tmp/finetune/final --data tests/data/squad-v2-dev-sample.json \
        --predictions /tmp/eval/predictions.json --na-probs /tmp/eval/na_probs.json --out /tmp/eval/metrics.json

One GPU:
    python jobs/evaluate.py --config jobs/configs/distill-then-finetune.yaml \
        --model s3://qadist-data/students/albert-base-finetuned/final --use-gpu

Cluster:
    ray up cluster.yaml
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/evaluate.py --config jobs/configs/distill-then-finetune.yaml \
        --model s3://qadist-data/students/albert-base-finetuned/final --use-gpu
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
