"""Ray job entry for `qadist label`: pairs -> teacher-ensemble soft-label shards.

The same flags as `qadist label` (a `--config` YAML, flags override its keys); exit codes 0 / 2
(bad config or input, one line) / 1. Ray: reuses the job's cluster when submitted (RAY_ADDRESS is
set by `ray job submit`), else starts an embedded Ray in this process.

Laptop (embedded Ray, CPU, local folders; a tiny teacher pair built offline):
    qadist tiny-model --out /tmp/teacher-a --seed 1 && qadist tiny-model --out /tmp/teacher-b --seed 2
    python jobs/label.py --pairs tests/data/squad-v2-dev-sample.json --out /tmp/labels \
        --teacher /tmp/teacher-a --teacher /tmp/teacher-b --rows-per-shard 1000

One GPU (two ALBERT-xxlarge teachers on one actor; half a GPU each for two actors also works):
    python jobs/label.py --config jobs/configs/label-albert-xxlarge.yaml \
        --pairs pairs.jsonl --out labels/ --num-actors 1 --num-gpus-per-actor 1

Cluster (cluster.yaml; one actor per A10G worker, S3 in and out, resumable on spot nodes):
    ray up cluster.yaml
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/label.py --config jobs/configs/label-albert-xxlarge.yaml
Re-submitting the same command after a failure resumes: finished shards are skipped.
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["label", *sys.argv[1:]])
