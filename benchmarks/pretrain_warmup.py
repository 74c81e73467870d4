"""Does `qadist pretrain` (head warm-up, then the whole model) keep the packaged MiniLM QA-ready?

The issue's claim to show: `qadist pretrain` on the packaged MiniLM (no masked-LM head), then QA
training, gives an F1 not below the same QA training without it, beyond the spread (3 seeds).

1. data: the demo's domains at their FULL sizes (`qadist.demo.domain`, seed 0): the QA training
   file is the other shops' 2,000 labels (the teachers' own), the pre-training documents the camera
   store's 625 product pages, dev and test the store's questions (200 and 400), and the other shops'
   400 held-out questions (`--home-file`: the QA training's own domain); --train-file / --dev-file /
   --test-file / --home-file / --documents name other files;
2. pre-training: `run_pretrain` of MiniLM on the documents (head warm-up with `PretrainConfig`'s
   defaults, then the whole model) at each setting of --settings (LR,EPOCHS of the whole model's
   phase; the first setting runs the warm-up, the others start from its warmed-up head: the same
   warm-up, not run again).
   The held-out masked-LM loss before, after the warm-up and after is printed;
3. QA: MiniLM (or a pre-trained encoder) + a fresh QA head seeded seed + 1, fine-tuned by
   `run_finetune` on the QA training file with the demo's teacher setting (`FULL.teacher`, tuned
   on the other shops' dev: lr 2e-4, 2 epochs, batch 16; windows 160/64/32, bf16 where the CPU has
   it), seeds 0, 1, 2; scored on dev, test and the home file (SQuAD 2.0 F1, `qadist predict`'s code).

The pre-training setting compared on test is the one with the best mean dev F1 (every setting's
figures are printed). Each comparison: mean +- sd over the seeds, a gain or loss only when the gap
is at least the two sds added, else a tie. Every finished step in --out is reused.

    python benchmarks/pretrain_warmup.py --out /tmp/qadist-pretrain-warmup [--settings 2e-5,3 5e-6,1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from qadist import storage
from qadist.config import AnswerSettings, FinetuneConfig, PretrainConfig
from qadist.demo.domain import generate_domain, write_domain
from qadist.demo.plan import FULL
from qadist.models import local_model, minilm_path

DEFAULT = PretrainConfig.model_fields
# The measured grid: the first setting tried (lr 2e-5, 3 epochs) lost on dev; the second (the
# defaults now) is the one chosen on dev (docs/pretrain.md, "Does it pay?").
SETTINGS = ["2e-5,3", "5e-6,1"]
# The QA training every arm gets, the same for both: the demo's teachers' (benchmarks/demo_tuning.py
# chose it for MiniLM on the other shops' dev).
QA = FULL.teacher


def args_of(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train-file", help="QA training pairs (default: the demo's teacher.jsonl)")
    p.add_argument("--dev-file", help="pairs the pre-training setting is chosen on (default: the demo's dev.jsonl)")
    p.add_argument("--test-file", help="pairs the comparison is scored on (default: the demo's test.jsonl)")
    p.add_argument(
        "--home-file", help="held-out pairs of the QA training's own domain (default: the demo's teacher-test.jsonl)"
    )
    p.add_argument("--documents", help="pre-training documents (default: the demo's documents.jsonl)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--settings",
        nargs="+",
        default=SETTINGS,
        help="pre-training settings of the whole model's phase, LR,EPOCHS; the first runs the head warm-up, "
        f"the others start from its warmed-up head (default: {' '.join(SETTINGS)})",
    )
    p.add_argument(
        "--finished-only", action="store_true", help="train nothing: the table of the runs already finished in --out"
    )
    p.add_argument("--finished-only-arms", nargs="*", default=[], help="arms (none, default, ...) that train nothing")
    return p.parse_args(argv)


def data_files(args: argparse.Namespace) -> dict[str, str]:
    """The four files: given, or the demo's domain written once under --out/data."""
    folder = os.path.join(args.out, "data")
    if not os.path.exists(os.path.join(folder, "documents.jsonl")):
        write_domain(generate_domain(0, FULL.sizes), folder)
    demo = {k: os.path.join(folder, f"{k}.jsonl") for k in ("teacher", "dev", "test", "teacher-test", "documents")}
    return {
        "train": os.path.abspath(args.train_file or demo["teacher"]),
        "dev": os.path.abspath(args.dev_file or demo["dev"]),
        "test": os.path.abspath(args.test_file or demo["test"]),
        "home": os.path.abspath(args.home_file or demo["teacher-test"]),
        "documents": os.path.abspath(args.documents or demo["documents"]),
    }


def settings_of(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """name -> (learning rate, epochs) of the whole model's phase, in the order given."""
    settings = {}
    for text in args.settings:
        lr, epochs = (float(x) for x in text.split(","))
        settings[f"lr{lr:g}-ep{epochs:g}"] = (lr, epochs)
    return settings


def is_default(report: dict) -> bool:
    c = report["config"]
    return (c["learning_rate"], c["epochs"]) == (DEFAULT["learning_rate"].default, DEFAULT["epochs"].default)


def pretrained(
    out: str, documents: str, lr: float, epochs: float, precision: str, warmed: dict | None = None
) -> tuple[str, dict]:
    """`run_pretrain` of MiniLM (reused when its report exists): its final folder and report.

    `warmed`: the first setting's report; this run then starts from its warmed-up head (MiniLM
    + the head after the same warm-up steps: no warm-up run again), and its report says so."""
    from qadist.train.pretrain import run_pretrain

    report = os.path.join(out, "pretrain_report.json")
    if not os.path.exists(report):
        run_pretrain(
            PretrainConfig(
                documents=documents,
                model=local_model(warmed["head_warmup"]["final"]) if warmed else minilm_path(),
                out=out,
                seed=0,
                precision=precision,
                learning_rate=lr,
                epochs=epochs,
            )
        )
    result = json.loads(storage.read_text(report))
    if warmed:  # the warm-up and the loss before it are the default run's
        loss = result["heldout_mlm_loss"]
        result["heldout_mlm_loss"] = {
            "before": warmed["heldout_mlm_loss"]["before"],
            "after_head_warmup": loss["before"],
            "after": loss["after"],
        }
        result["head_warmup"] = {**warmed["head_warmup"], "shared": True}
    return local_model(result["final"]), result


def qa_init(folder: str, source: str, seed: int) -> str:
    """`source` + a fresh QA head seeded `seed` (a save_pretrained folder, made once)."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from qadist.models import load_tokenizer

    if not os.path.exists(os.path.join(folder, "config.json")):
        torch.manual_seed(seed)
        AutoModelForQuestionAnswering.from_pretrained(source, dtype=torch.float32).save_pretrained(folder)
        load_tokenizer(source).save_pretrained(folder)
    return folder


def finetuned(out: str, init: str, train_file: str, seed: int, precision: str) -> str:
    """`run_finetune` with the demo's teacher setting (reused when its final model exists)."""
    final = os.path.join(out, "final")
    if not os.path.exists(os.path.join(final, "config.json")):
        from qadist.train.stage import run_finetune

        run_finetune(
            FinetuneConfig(
                train_file=train_file,
                model=init,
                out=out,
                epochs=QA.epochs,
                learning_rate=QA.learning_rate,
                batch_size=QA.batch_size,
                seed=seed,
                precision=precision,
                **FULL.windows,
            )
        )
    return local_model(final)


def f1(model_dir: str, pairs_uri: str, cache: str, precision: str) -> float:
    """SQuAD 2.0 F1 of a QA model on a pairs file (cached in `cache`)."""
    if os.path.exists(cache):
        return json.loads(storage.read_text(cache))["f1"]
    import torch

    from qadist.inference import predict_pairs
    from qadist.models import load_qa_model, load_tokenizer
    from qadist.squad.io import gold_answers, read_pairs
    from qadist.squad.metrics import squad_v2_metrics

    pairs = read_pairs(pairs_uri)[0]
    model, tokenizer = load_qa_model(model_dir).eval(), load_tokenizer(model_dir)
    cfg = AnswerSettings(batch_size=64, precision=precision, **FULL.windows)
    predictions, na_probs = predict_pairs(pairs, model, tokenizer, cfg, torch.device("cpu"), progress=False)
    metrics = squad_v2_metrics(gold_answers(pairs, pairs_uri), predictions, na_probs)
    storage.write_bytes(cache, json.dumps(metrics, indent=2).encode("utf-8"))
    return metrics["f1"]


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "by_seed": values,
    }


def verdict(a: dict, b: dict) -> str:
    """`a` (pre-trained) against `b` (without): gain, loss, or a tie when the gap is under the sds added."""
    gap, spread = a["mean"] - b["mean"], a["sd"] + b["sd"]
    call = "tie" if abs(gap) < spread else ("gain" if gap > 0 else "loss")
    if min(len(a["by_seed"]), len(b["by_seed"])) < 3:
        call += " (fewer than 3 seeds: no verdict yet)"
    return f"gap {gap:+.1f}, sds added {spread:.1f}: {call}"


def cell(x: dict) -> str:
    return f"{x['mean']:.1f} +- {x['sd']:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = args_of(argv)
    args.out = os.path.abspath(args.out)
    started = time.perf_counter()
    files = data_files(args)
    from qadist.inference import cpu_has_bf16
    from qadist.runtime import ensure_ray

    precision = "bf16" if cpu_has_bf16() else "fp32"
    threads = max(1, os.cpu_count() or 1)
    ensure_ray(min_cpus=max(4, 2 * threads), threads=threads, dedicated=True)  # as the demo: workers get every thread
    import torch

    torch.set_num_threads(threads)
    encoders = {"none": (minilm_path(), None)}
    first = None  # the first setting's report: its warm-up is every other setting's
    for name, (lr, epochs) in settings_of(args).items():
        warmed = encoders[first][1] if first else None
        where = os.path.join(args.out, "pretrain", name)
        if args.finished_only and not os.path.exists(os.path.join(where, "pretrain_report.json")):
            continue
        encoders[name] = pretrained(where, files["documents"], lr, epochs, precision, warmed)
        first = first or name
    scores = {name: {"dev": [], "test": [], "home": []} for name in encoders}
    for seed in args.seeds:  # seed by seed, every arm: a paired comparison grows as the runs finish
        for name, (encoder, _) in encoders.items():
            run = os.path.join(args.out, "qa", name, f"seed-{seed}")
            idle = args.finished_only or name in args.finished_only_arms
            if idle and not os.path.exists(os.path.join(run, "test.metrics.json")):
                continue
            init = qa_init(os.path.join(run, "init"), encoder, seed + 1)
            model = finetuned(run, init, files["train"], seed, precision)
            for split in ("dev", "test", "home"):
                scores[name][split].append(
                    f1(model, files[split], os.path.join(run, f"{split}.metrics.json"), precision)
                )
            dev, test, home = (scores[name][split][-1] for split in ("dev", "test", "home"))
            print(
                f"[pretrain_warmup] {name}, seed {seed}: dev F1 {dev:.1f}, test F1 {test:.1f}, home test F1 {home:.1f}",
                flush=True,
            )
    arms = {name: {split: mean_sd(v) for split, v in s.items()} for name, s in scores.items() if s["test"]}
    pretrained_arms = [n for n in arms if n != "none"]
    chosen = max(pretrained_arms, key=lambda n: arms[n]["dev"]["mean"])
    claim = verdict(arms[chosen]["test"], arms["none"]["test"])
    home_claim = verdict(arms[chosen]["home"], arms["none"]["home"])

    lines = [
        f"pretrain + QA fine-tuning vs QA fine-tuning alone (packaged MiniLM; QA: lr {QA.learning_rate:g}, "
        f"{QA.epochs:g} epochs, batch {QA.batch_size}, the same for every arm)",
        f"data: train {files['train']}, dev {files['dev']}, test {files['test']}, home test {files['home']}, "
        f"documents {files['documents']}",
        f"seeds {args.seeds}; F1 mean +- sd; gain/loss only when the gap is at least the two sds added",
        "",
        "| encoder | pre-training (whole model) | held-out MLM loss: start -> after head warm-up -> end "
        "| dev F1 | test F1 | test F1 by seed | test vs none | home test F1 | home test vs none |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in arms.items():
        report = encoders[name][1]
        if report is None:
            setting, loss, versus, home = "none", "-", "-", "-"
        else:
            c, h, w = report["config"], report["heldout_mlm_loss"], report["head_warmup"]
            setting = (
                f"warm-up {w['steps']} steps lr {w['learning_rate']:g}; lr {c['learning_rate']:g}, {c['epochs']:g} ep"
            )
            warmed = f"{h['after_head_warmup']:.2f}" if h.get("after_head_warmup") is not None else "-"
            loss = f"{h['before']:.2f} -> {warmed} -> {h['after']:.2f}"
            versus = verdict(a["test"], arms["none"]["test"])
            home = verdict(a["home"], arms["none"]["home"])
        by_seed = ", ".join(f"{x:.1f}" for x in a["test"]["by_seed"])
        mark = " (chosen on dev)" if name == chosen and len(pretrained_arms) > 1 else ""
        mark += " [the defaults]" if report is not None and is_default(report) else ""
        lines.append(
            f"| {name}{mark} | {setting} | {loss} | {cell(a['dev'])} | {cell(a['test'])} | {by_seed} | {versus} "
            f"| {cell(a['home'])} | {home} |"
        )
    lines += [
        "",
        f"claim (setting '{chosen}', chosen on dev): pretrain then QA vs QA alone, test F1 "
        f"{cell(arms[chosen]['test'])} vs {cell(arms['none']['test'])}: {claim}; on the QA training's own domain "
        f"{cell(arms[chosen]['home'])} vs {cell(arms['none']['home'])}: {home_claim}",
        f"wall time {(time.perf_counter() - started) / 60:.1f} min ({threads} CPU threads, precision {precision})",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    result = {"files": files, "seeds": args.seeds, "arms": arms, "chosen": chosen, "table": text}
    result["pretraining"] = {n: r for n, (_, r) in encoders.items() if r is not None}
    storage.write_bytes(os.path.join(args.out, "pretrain_warmup.json"), json.dumps(result, indent=2).encode("utf-8"))
    storage.write_bytes(os.path.join(args.out, "pretrain_warmup.md"), (text + "\n").encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
