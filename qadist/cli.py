"""The `qadist` command: one sub-command per stage, and the only door to them.

Each stage's flags are derived from its pydantic config model (`qadist.config`): a flag per key,
with the key's help text, so a setting is declared once. A command parses its flags, loads the
config (YAML, then the flags given on top), opens the stage's console and runs the stage.

Exit codes: 0 success; 2 bad usage, config or input (one line naming the file, key or row and the
fix), also when the error was raised inside a Ray worker, actor or task; 1 anything else.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
from typing import Any, Literal, Optional

import typer

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError, UsageError

from qadist.config import (
    DemoConfig,
    DistillConfig,
    EvaluateConfig,
    ExportConfig,
    FinetuneConfig,
    LabelConfig,
    PairsConfig,
    PredictConfig,
    PretrainConfig,
    PromoteConfig,
    SelectConfig,
    ServeConfig,
    StageConfig,
    flag_for,
    load_config,
)
from qadist.errors import one_line, user_error_in
from qadist.pipeline import runner
from qadist.runtime import release_ray

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Distil a large extractive-QA teacher ensemble into a small, fast student, on Ray.",
)

COMMON = {
    "config": (Optional[str], typer.Option(None, "--config", help="YAML config; flags override its keys.")),
    "verbose": (
        bool,
        typer.Option(False, "--verbose", help="Show Ray's and qadist's logs here, not only in the log file."),
    ),
}


def without_none(annotation: Any) -> Any:
    """`X | None` -> `X`; any other annotation as it is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def flag_type(annotation: Any) -> tuple[Any, bool]:
    """A config field's type -> (the Optional type typer parses, whether the flag repeats)."""
    annotation = without_none(annotation)
    if typing.get_origin(annotation) is Literal:
        return Optional[str], False  # the model names the choices when a value is wrong
    if typing.get_origin(annotation) in (list, dict):  # a dict's flag repeats NAME=VALUE
        return Optional[list[str]], True
    return Optional[annotation], False


def metavar(field: Any) -> str | None:
    """URI, NAME|PATH, the choices of a Literal, N or X: what a flag's value is."""
    kind = (field.json_schema_extra or {}).get("kind") if isinstance(field.json_schema_extra, dict) else None
    if kind:
        return "URI" if kind == "uri" else "NAME|PATH"
    annotation = without_none(field.annotation)
    if typing.get_origin(annotation) is Literal:
        return "|".join(map(str, typing.get_args(annotation)))
    if typing.get_origin(annotation) is dict:
        return "NAME=AMOUNT"
    return {int: "N", float: "X", str: "TEXT"}.get(annotation)


def stage_options(cls: type[StageConfig]) -> dict[str, tuple[Any, Any]]:
    """One typer option per config key, spelled by `flag_for`, with the key's help text."""
    options = {}
    for name, field in cls.model_fields.items():
        kind, _ = flag_type(field.annotation)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        spelling = str(extra.get("flag") or flag_for(cls, name))
        if kind is Optional[bool] and "/" not in spelling:
            spelling = f"{spelling}/--no-{spelling[2:]}"
        required = field.is_required()
        default = "" if required else f" [default: {field.default}]" if field.default not in (None, [], "") else ""
        help_text = (field.description or "") + (" (required)" if required else default)
        options[name] = (kind, typer.Option(None, spelling, help=help_text, metavar=metavar(field)))
    return options


def command(name: str, cls: type[StageConfig], help_text: str, show: bool = True) -> None:
    """Register `qadist <name>`: its flags from `cls`, then load the config and run the stage."""
    params = {**COMMON, **stage_options(cls)}

    def invoke(**kwargs: Any) -> None:
        from qadist import console

        config, verbose = kwargs.pop("config"), kwargs.pop("verbose")
        cfg = load_config(cls, name, config, {k: v for k, v in kwargs.items() if v is not None and v != []})
        with console.session(name, getattr(cfg, "out", None), verbose, show=show):
            try:
                runner(name)(cfg)
            finally:
                release_ray()

    invoke.__signature__ = inspect.Signature(
        [  # type: ignore[attr-defined]
            inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind)
            for k, (kind, opt) in params.items()
        ]
    )
    invoke.__annotations__ = {k: kind for k, (kind, _) in params.items()}
    invoke.__doc__ = help_text
    app.command(name)(invoke)


command(
    "pretrain",
    PretrainConfig,
    "Continue an encoder's masked-LM training on the domain's documents (Ray Train) -> an initialisation "
    "for teachers and students.",
)
command(
    "pairs",
    PairsConfig,
    "Match logged questions to documents with a bi-encoder -> question-document pairs.",
)
command(
    "label",
    LabelConfig,
    "Stream pairs through the teacher ensemble on Ray Data actors -> soft-label Parquet shards.",
)
command("distill", DistillConfig, "Train the student on the soft labels with Ray Train.")
command("finetune", FinetuneConfig, "Fine-tune on gold labels (the distill loop with a_kd = 0).")
command("predict", PredictConfig, "Answer questions with a QA model (batched; CPU or GPU).")
command(
    "evaluate",
    EvaluateConfig,
    "Score predictions with the official SQuAD 2.0 metric; with --model, predict first "
    "(on a GPU worker with --use-gpu).",
    show=False,
)  # stdout is the metrics JSON
command(
    "export",
    ExportConfig,
    "A QA model as ONNX (and ONNX Runtime int8 with --int8), scored against PyTorch on --eval-file.",
)
command("serve", ServeConfig, "Serve a QA model over HTTP (Ray Serve, FastAPI, dynamic batching).")
command(
    "promote",
    PromoteConfig,
    "Compare a candidate with the registry's current model on gold (and silver) answers; promote it only when "
    "it is not worse (exit 4 when refused); --rollback moves current back.",
)
command(
    "select",
    SelectConfig,
    "Rank labelled pairs by what a human label would teach (teacher disagreement, uncertainty) -> "
    "a ranked JSONL and Label Studio tasks with the ensemble's answer pre-filled.",
)
command("demo", DemoConfig, "The whole pipeline, embedded and offline on a CPU, with a results table.")


@app.command()
def pipeline(
    config: str = typer.Option(
        ..., "--config", help="A sectioned YAML config: one section per stage to run, in order."
    ),
    verbose: bool = COMMON["verbose"][1],
):
    """Every stage section of the config in order; a stage whose output is complete is skipped."""
    from qadist import console
    from qadist.pipeline import run_pipeline

    with console.session("pipeline", None, verbose):
        try:
            run_pipeline(config)
        finally:
            release_ray()


@app.command("tiny-model")
def tiny_model(
    out: str = typer.Option(..., help="Folder to write the model and tokenizer to."),
    family: str = typer.Option("bert", help="bert (WordPiece), albert (Unigram) or roberta (byte-level BPE)."),
    seed: int = typer.Option(0),
    layers: int = typer.Option(2),
    hidden: int = typer.Option(64),
):
    """Build a tiny, randomly initialised QA model with a fast tokenizer, offline (for trials)."""
    from qadist.models import build_tiny_model

    print(build_tiny_model(family, out, seed=seed, num_layers=layers, hidden=hidden))


def main(argv: list[str] | None = None) -> None:
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
    except typer.Abort:
        print("qadist: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        user = user_error_in(e)
        if user is None:
            raise
        print(f"qadist: error: {one_line(user)}", file=sys.stderr)
        sys.exit(getattr(user, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
