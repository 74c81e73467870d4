"""Ray job entry for evaluation: a trained model answers a labelled set, then the official SQuAD 2.0 metric.

Reads the `predict` and `evaluate` sections of `--config` (the pipeline configs have them); flags
override: `--model`, `--data`, and `--out DIR`, which puts predictions.json, na_probs.json and
metrics.json under DIR. Prediction runs as a Ray task, on a GPU worker when `use_gpu: true` (the
job's driver sits on the CPU head node); scoring runs in the driver. Exit codes: 0 done / 2 bad
config or input (one line) / 1 anything else.

Laptop (embedded Ray, CPU; a model from `jobs/distill.py` or `jobs/finetune.py`):
    python jobs/evaluate.py --model /tmp/finetune/final \
        --data ../shared/data/squad-v2-dev-sample.json --out /tmp/eval

One GPU:
    python jobs/evaluate.py --config jobs/configs/distill-then-finetune.yaml --use-gpu

Cluster:
    ray up cluster.yaml
    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/evaluate.py --config jobs/configs/distill-then-finetune.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from qadist import storage
from qadist.config import EvaluateConfig, PredictConfig, load_config
from qadist.errors import UserError


def evaluation_configs(args: argparse.Namespace) -> tuple[PredictConfig, EvaluateConfig]:
    """The two stage configs: the file's sections, then the flags on top."""
    out = args.out
    predict = load_config(PredictConfig, "predict", args.config, {
        "model": args.model, "data": args.data, "use_gpu": args.use_gpu,
        "out": out and storage.join(out, "predictions.json"), "na_probs": out and storage.join(out, "na_probs.json")})
    evaluate = load_config(EvaluateConfig, "evaluate", args.config, {
        "data": args.data or predict.data, "predictions": predict.out, "na_probs": predict.na_probs,
        "out": out and storage.join(out, "metrics.json")})
    return predict, evaluate


def predict_task(cfg: PredictConfig) -> int:
    from qadist.answer.predict import run_predict

    return len(run_predict(cfg))


def predict_on_ray(cfg: PredictConfig) -> None:
    """Run `qadist predict` as a Ray task (one GPU when asked), so a cluster job predicts on a GPU node."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address or "local", include_dashboard=None if address else False)
    task = ray.remote(predict_task).options(num_gpus=1 if cfg.use_gpu else 0)
    answered = ray.get(task.remote(cfg))
    print(f"jobs/evaluate.py: {answered} questions answered -> {cfg.out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/evaluate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="A YAML config with `predict` and `evaluate` sections.")
    parser.add_argument("--model", help="The model folder or URI to evaluate (its `final/`).")
    parser.add_argument("--data", help="Labelled questions: SQuAD JSON, or JSONL/Parquet pairs with answers.")
    parser.add_argument("--out", help="Folder or URI for predictions.json, na_probs.json and metrics.json.")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="Predict on a GPU worker.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        predict, evaluate = evaluation_configs(args)
        predict_on_ray(predict)
        from qadist.answer.evaluate import run_evaluate

        run_evaluate(evaluate)  # prints the metrics
    except UserError as e:
        print(f"jobs/evaluate.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
