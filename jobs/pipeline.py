"""Ray job entry for the whole pipeline: pairs -> label -> distill -> finetune -> predict -> evaluate.

Runs the stage sections present in `--config` in order; a stage whose output is already complete
(its manifest, final model or metrics file exists) is skipped and says so, so re-running the same
job does no work, and a job that stopped part way continues at the first unfinished stage.

Laptop (tiny models built offline, embedded Ray, local folders):
    python jobs/pipeline.py --config jobs/configs/local.yaml

One GPU (the production models; set `use_gpu: true` / `num_gpus_per_actor: 1` in the config):
    python jobs/pipeline.py --config jobs/configs/distill-then-finetune.yaml

Cluster:
    ray up cluster.yaml
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/pipeline.py --config jobs/configs/distill-then-finetune.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

from qadist.errors import UserError
from qadist.pipeline import run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/pipeline.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="A sectioned YAML config (one section per stage).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_pipeline(args.config)
    except UserError as e:
        print(f"qadist pipeline: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
