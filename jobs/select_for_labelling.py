"""Ray job entry for `qadist select`: the labelled pairs most worth a human label, as Label Studio tasks.

Not `jobs/select.py`: a script of that name would shadow the standard library's `select` module
for every job run from this folder.

The same flags as `qadist select` (a `--config` YAML, flags override its keys); exit codes 0 / 2
(bad config or input, one line) / 1. Scoring runs as Ray Data tasks over the label table's shards.

Laptop:
    python jobs/select_for_labelling.py --labels /tmp/labels --budget 200 --strategy margin --out /tmp/to-label

Cluster:
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/select_for_labelling.py --labels s3://qadist-data/labels/logged-2026-12 --budget 1000 \
        --strategy margin --diversity --exclude s3://qadist-data/labelled/ids.txt \
        --out s3://qadist-data/to-label/2026-12
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["select", *sys.argv[1:]])
