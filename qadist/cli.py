"""The `qadist` command: one sub-command per stage. Thin: parse flags, load the config, run a stage.

Exit codes: 0 success; 2 bad usage, config or input (one line naming the file, key or row and the
fix); 1 anything else.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError, UsageError

from qadist.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Distil a large extractive-QA teacher ensemble into a small, fast student, on Ray.",
)

ConfigOpt = typer.Option(None, "--config", help="YAML config; flags override its keys.")
PrecisionOpt = typer.Option(None, "--precision", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16: bf16 on a CPU "
                            "with AVX512-BF16/AMX: inference ~2x, training ~1.2-1.3x faster than fp32.")


def _overrides(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None and v != []}


@app.command()
def pairs(
    config: Optional[str] = ConfigOpt,
    questions: Optional[str] = typer.Option(None, help="Questions URI (JSONL/Parquet: id, question)."),
    documents: Optional[str] = typer.Option(None, help="Documents URI (JSONL/Parquet: id, text or context, title)."),
    out: Optional[str] = typer.Option(None, help="Output folder URI for pairs and rejects."),
    model: Optional[str] = typer.Option(None, help="sentence-transformers model name or path (default: the packaged all-MiniLM-L6-v2)."),
    top_k: Optional[int] = typer.Option(None, help="Documents kept per question (each with its best passage)."),
    min_score: Optional[float] = typer.Option(None, help="Drop matches whose score (cosine + lexical weight x normalised BM25) is below this."),
    lexical_weight: Optional[float] = typer.Option(None, help="Weight of the normalised BM25 score (0: cosine only)."),
    batch_size: Optional[int] = typer.Option(None, help="Texts per embedding batch."),
    num_actors: Optional[int] = typer.Option(None, help="Embedding/matching actors in each pool."),
    num_gpus_per_actor: Optional[float] = typer.Option(None, help="GPUs per actor (0: CPU)."),
    output_format: Optional[str] = typer.Option(None, help="jsonl (default) or parquet."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace an existing output."),
):
    """Match logged questions to documents with a bi-encoder -> question-document pairs."""
    from qadist.config import PairsConfig, load_config
    from qadist.pairs.stage import run_pairs

    run_pairs(load_config(PairsConfig, "pairs", config, _overrides(
        lexical_weight=lexical_weight, batch_size=batch_size, num_actors=num_actors, num_gpus_per_actor=num_gpus_per_actor,
        output_format=output_format,
        questions=questions, documents=documents, out=out, model=model, top_k=top_k, min_score=min_score, overwrite=overwrite)))


@app.command()
def label(
    config: Optional[str] = ConfigOpt,
    pairs: Optional[str] = typer.Option(None, "--pairs", help="Pairs URI (SQuAD JSON, JSONL or Parquet; file or prefix)."),
    out: Optional[str] = typer.Option(None, help="Output URI for shards, manifest and rejects."),
    teacher: Optional[list[str]] = typer.Option(None, "--teacher", help="Teacher model name or path; repeat for an ensemble."),
    max_seq_len: Optional[int] = typer.Option(None),
    doc_stride: Optional[int] = typer.Option(None),
    max_query_len: Optional[int] = typer.Option(None),
    combine: Optional[str] = typer.Option(None, help="mean_logits (default) or mean_probs."),
    keep_teacher_logits: Optional[bool] = typer.Option(None, "--keep-teacher-logits", help="Also store each teacher's logits."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per teacher batch."),
    num_actors: Optional[int] = typer.Option(None, help="Teacher actors in the pool."),
    num_gpus_per_actor: Optional[float] = typer.Option(None, help="GPUs per teacher actor (fractions allowed)."),
    num_cpus_per_actor: Optional[float] = typer.Option(None, help="CPUs per teacher actor (torch threads on CPU-only actors)."),
    rows_per_shard: Optional[int] = typer.Option(None, help="Input rows per shard: the unit of work and of resume."),
    precision: Optional[str] = PrecisionOpt,
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace an output made with another config."),
):
    """Stream pairs through the teacher ensemble on Ray Data actors -> soft-label Parquet shards."""
    from qadist.config import LabelConfig, load_config
    from qadist.label.stage import run_label

    run_label(load_config(LabelConfig, "label", config, _overrides(
        pairs=pairs, out=out, teachers=teacher, max_seq_len=max_seq_len, doc_stride=doc_stride,
        max_query_len=max_query_len, combine=combine, keep_teacher_logits=keep_teacher_logits,
        batch_size=batch_size, num_actors=num_actors, num_gpus_per_actor=num_gpus_per_actor,
        num_cpus_per_actor=num_cpus_per_actor, rows_per_shard=rows_per_shard, precision=precision, overwrite=overwrite)))


def _train_overrides(**kwargs) -> dict:
    return _overrides(**kwargs)


@app.command()
def distill(
    config: Optional[str] = ConfigOpt,
    labels: Optional[str] = typer.Option(None, help="Soft-label output URI of `qadist label`."),
    student: Optional[str] = typer.Option(None, help="Student model name or path."),
    out: Optional[str] = typer.Option(None, help="Output URI for checkpoints and the final student."),
    temperature: Optional[float] = typer.Option(None),
    alpha_kd: Optional[float] = typer.Option(None),
    alpha_hard: Optional[float] = typer.Option(None),
    train_file: Optional[str] = typer.Option(None, help="Gold-labelled pairs mixed into training."),
    eval_file: Optional[str] = typer.Option(None, help="SQuAD JSON or pairs with answers, scored after each epoch."),
    epochs: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None, help="Windows per worker per step."),
    grad_accum: Optional[int] = typer.Option(None),
    learning_rate: Optional[float] = typer.Option(None),
    num_workers: Optional[int] = typer.Option(None),
    use_gpu: Optional[bool] = typer.Option(None, "--use-gpu"),
    precision: Optional[str] = PrecisionOpt,
):
    """Train the student on the soft labels with Ray Train."""
    from qadist.config import DistillConfig, load_config
    from qadist.train.stage import run_distill

    run_distill(load_config(DistillConfig, "distill", config, _train_overrides(
        labels=labels, student=student, out=out, temperature=temperature, alpha_kd=alpha_kd, alpha_hard=alpha_hard,
        train_file=train_file, eval_file=eval_file, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
        learning_rate=learning_rate, num_workers=num_workers, use_gpu=use_gpu, precision=precision)))


@app.command()
def finetune(
    config: Optional[str] = ConfigOpt,
    train_file: Optional[str] = typer.Option(None, help="Labelled pairs or SQuAD JSON."),
    model: Optional[str] = typer.Option(None, help="Model to fine-tune (e.g. a distilled student)."),
    out: Optional[str] = typer.Option(None),
    eval_file: Optional[str] = typer.Option(None),
    epochs: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    grad_accum: Optional[int] = typer.Option(None),
    learning_rate: Optional[float] = typer.Option(None),
    num_workers: Optional[int] = typer.Option(None),
    use_gpu: Optional[bool] = typer.Option(None, "--use-gpu"),
    precision: Optional[str] = PrecisionOpt,
):
    """Fine-tune on gold labels (the distill loop with a_kd = 0)."""
    from qadist.config import FinetuneConfig, load_config
    from qadist.train.stage import run_finetune

    run_finetune(load_config(FinetuneConfig, "finetune", config, _train_overrides(
        train_file=train_file, model=model, out=out, eval_file=eval_file, epochs=epochs, batch_size=batch_size,
        grad_accum=grad_accum, learning_rate=learning_rate, num_workers=num_workers, use_gpu=use_gpu, precision=precision)))


@app.command()
def predict(
    config: Optional[str] = ConfigOpt,
    model: Optional[str] = typer.Option(None, help="QA model folder or name."),
    data: Optional[str] = typer.Option(None, help="SQuAD JSON, JSONL or Parquet pairs."),
    out: Optional[str] = typer.Option(None, help="predictions.json to write."),
    na_probs: Optional[str] = typer.Option(None, help="na_probs.json to write."),
    batch_size: Optional[int] = typer.Option(None),
    max_seq_len: Optional[int] = typer.Option(None),
    doc_stride: Optional[int] = typer.Option(None),
    null_threshold: Optional[float] = typer.Option(None, help="Answer '' when null - best span score exceeds this."),
    use_gpu: Optional[bool] = typer.Option(None, "--use-gpu/--cpu"),
    precision: Optional[str] = PrecisionOpt,
):
    """Answer questions with a QA model (batched; CPU or GPU)."""
    from qadist.config import PredictConfig, load_config
    from qadist.answer.predict import run_predict

    run_predict(load_config(PredictConfig, "predict", config, _overrides(
        model=model, data=data, out=out, na_probs=na_probs, batch_size=batch_size, max_seq_len=max_seq_len,
        doc_stride=doc_stride, null_threshold=null_threshold, use_gpu=use_gpu, precision=precision)))


@app.command()
def evaluate(
    config: Optional[str] = ConfigOpt,
    data: Optional[str] = typer.Option(None, help="Gold SQuAD JSON or pairs with answers."),
    predictions: Optional[str] = typer.Option(None, help="predictions.json (id -> answer text)."),
    na_probs: Optional[str] = typer.Option(None, help="na_probs.json (id -> no-answer probability)."),
    out: Optional[str] = typer.Option(None, help="Write the metrics JSON here too."),
):
    """Score predictions with the official SQuAD 2.0 metric."""
    from qadist.config import EvaluateConfig, load_config
    from qadist.answer.evaluate import run_evaluate

    run_evaluate(load_config(EvaluateConfig, "evaluate", config, _overrides(
        data=data, predictions=predictions, na_probs=na_probs, out=out)))


@app.command("tiny-model")
def tiny_model(
    out: str = typer.Option(..., help="Folder to write the model and tokenizer to."),
    family: str = typer.Option("bert", help="bert or albert."),
    seed: int = typer.Option(0),
    layers: int = typer.Option(2),
    hidden: int = typer.Option(64),
):
    """Build a tiny, randomly initialised QA model with a fast tokenizer, offline (for trials)."""
    from qadist.models import build_tiny_model

    print(build_tiny_model(family, out, seed=seed, num_layers=layers, hidden=hidden))


@app.command()
def demo(
    config: Optional[str] = ConfigOpt,
    out: Optional[str] = typer.Option(None, help="Folder (or s3:// URI) for every stage's artifacts."),
    quick: Optional[bool] = typer.Option(None, "--quick", help="Every stage at a reduced size (about 5 minutes on 2 cores), as CI runs it."),
    seed: Optional[int] = typer.Option(None),
):
    """The whole pipeline, embedded and offline on a CPU, with a results table."""
    from qadist.config import DemoConfig, load_config
    from qadist.demo.run import run_demo

    run_demo(load_config(DemoConfig, "demo", config, _overrides(out=out, quick=quick, seed=seed)))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=os.environ.get("QADIST_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = app(args=argv, prog_name="qadist", standalone_mode=False)
    except NoArgsIsHelpError as e:  # bare `qadist`: the help text, as click itself shows it
        print(e.format_message(), file=sys.stderr)
        sys.exit(2)
    except UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "qadist"
        print(f"{cmd}: error: {e.format_message()} (see '{cmd} --help')", file=sys.stderr)
        sys.exit(2)
    except UserError as e:
        print(f"qadist: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("qadist: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
