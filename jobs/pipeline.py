"""Ray job entry for `qadist pipeline`: pairs -> label -> distill -> finetune -> predict -> evaluate.

Runs the stage sections present in `--config` in order; a stage whose output is already complete
(its manifest, final model or metrics file exists) is skipped and says so, so re-running the same
job does no work, and a job that stopped part way continues at the first unfinished stage.
Exit codes 0 / 2 (bad config or input, one line) / 1.

Laptop (tiny models built offline, embedded Ray, local folders):
    python jobs/pipeline.py --config jobs/configs/local.yaml

One GPU (the production models, every request sized for one GPU: one actor, one Train worker with
gradient accumulation; a config asking for more GPUs than exist exits 2 before any work):
    python jobs/pipeline.py --config jobs/configs/one-gpu.yaml

Cluster:
    ray up cluster.yaml
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/pipeline.py --config jobs/configs/distill-then-finetune.yaml
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["pipeline", *sys.argv[1:]])
