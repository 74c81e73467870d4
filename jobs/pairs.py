"""Ray job entry for `qadist pairs`: logged questions + documents -> question-document pairs.

The same flags as `qadist pairs` (a `--config` YAML, flags override its keys); exit codes 0 / 2
(bad config or input, one line) / 1. Ray: reuses the job's cluster when submitted (RAY_ADDRESS is
set by `ray job submit`), else starts an embedded Ray in this process.

Laptop (embedded Ray, CPU, the packaged all-MiniLM-L6-v2, local folders):

    python jobs/pairs.py --questions questions.jsonl --documents documents.jsonl --out runs/pairs

One GPU (the production question-answer bi-encoder from the hub, GPU actors):

    python jobs/pairs.py --config jobs/configs/pairs.yaml --num-actors 1 --num-gpus-per-actor 1 \
        --questions questions.jsonl --documents documents.jsonl --out runs/pairs

Cluster (`cluster.yaml`; S3 in and out; one embedding actor per GPU worker):

    ray job submit --working-dir . -- python jobs/pairs.py --config jobs/configs/pairs.yaml

The output's `pairs/` folder is the `--pairs` input of `jobs/label.py` as it is.
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["pairs", *sys.argv[1:]])
