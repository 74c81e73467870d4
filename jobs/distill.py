"""Ray job entry for `qadist distill`: soft-label shards -> a student, on Ray Train.

The same flags as `qadist distill` (a `--config` YAML, flags override its keys); exit codes 0 / 2
(bad config or input, one line) / 1. Ray: joins the job's cluster when submitted (RAY_ADDRESS is
set by `ray job submit`), else starts an embedded Ray in this process. Checkpoints go to
`<out>/distill/`; re-running the same command continues from the last one (not from the start
of the epoch); the student ends up in `<out>/final` (`qadist predict --model <out>/final`).

Laptop (embedded Ray, CPU; tiny models built offline, labels from `jobs/label.py`):
    qadist tiny-model --out /tmp/student --layers 1 --hidden 32
    python jobs/distill.py --labels /tmp/labels --student /tmp/student --out /tmp/distill \
        --epochs 2 --batch-size 16 --eval-file tests/data/squad-v2-dev-sample.json

One GPU (albert-base-v2, bf16 autocast, global batch 256 by gradient accumulation):
    python jobs/distill.py --config jobs/configs/distill-albert-base.yaml \
        --num-workers 1 --batch-size 32 --grad-accum 8

Cluster (cluster.yaml: two g5.12xlarge `train_gpu` nodes, DDP over 8 A10Gs, S3 in and out):
    ray up cluster.yaml
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/distill.py --config jobs/configs/distill-albert-base.yaml
A lost worker is replaced (`max_failures`) and training continues from the last checkpoint.
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["distill", *sys.argv[1:]])
