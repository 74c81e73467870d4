"""Ray job entry for `qadist finetune`: a (distilled) student fine-tuned on a few gold answers.

The distill training loop with a_kd = 0, on labelled pairs or SQuAD JSON (`--train-file`). The
same flags as `qadist finetune`; exit codes 0 / 2 / 1. Checkpoints go to `<out>/finetune/`
(re-running continues), the model to `<out>/final`. A model trained by `qadist distill` brings
its window lengths (from its `qadist_config.json`) unless the config sets them.

Laptop (embedded Ray, CPU; a student from `jobs/distill.py`):
    python jobs/finetune.py --model /tmp/distill/final --train-file gold.jsonl --out /tmp/finetune \
        --eval-file tests/data/squad-v2-dev-sample.json --epochs 3 --batch-size 16

One GPU (~1,000 labels: a few minutes on an A10G):
    python jobs/finetune.py --config jobs/configs/distill-then-finetune.yaml --num-workers 1

Cluster:
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/finetune.py --config jobs/configs/distill-then-finetune.yaml
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["finetune", *sys.argv[1:]])
