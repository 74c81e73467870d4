"""Ray job entry for `qadist export`: a trained student as ONNX (and dynamic int8), checked.

The same flags as `qadist export` (a `--config` YAML, flags override its keys; the `export` section
of a pipeline config); exit codes 0 / 2 (bad config or input, or an int8 graph that fails its F1
check, one line) / 1. Export and the check run on the CPU of the machine it runs on: the figures in
`export_report.json` are that machine's.

Laptop:
    python jobs/export.py --model /tmp/distill/final --out /tmp/student-onnx --int8 \
        --eval-file tests/data/squad-v2-dev-sample.json

Cluster (the export lands in S3, where `serve deploy jobs/configs/serve-deploy.yaml` reads it):
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/export.py --model s3://qadist-data/students/albert-base-finetuned/final \
        --out s3://qadist-data/students/albert-base-finetuned/onnx --int8 --eval-file s3://qadist-data/dev.json
"""

from __future__ import annotations

import sys

from qadist.cli import main

if __name__ == "__main__":
    main(["export", *sys.argv[1:]])
