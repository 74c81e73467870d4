"""`qadist label` throughput against a bare loop and the padded-to-max_seq_len way, in one run.

On the same pairs (the SQuAD 2.0 sample in tests/data, answers dropped) and the same small model:
  1. qadist label: the Ray Data pipeline, end to end (windowing, teacher actor, shard writes; the
     actor's start-up and model load included), one actor with `--threads` CPUs (or one GPU);
  2. bare: an in-process loop of the model over pre-tokenized windows in length-sorted batches,
     each padded to its own longest window: the ceiling (no tokenizing, no I/O, no Ray);
  3. padded: the usual way, as Hugging Face's `run_qa.py` evaluation does it: windows in input
     order, every batch padded to max_seq_len.
Prints windows/s of each, the ratios qadist/bare (target >= 0.8) and qadist/padded (target >= 1.5),
and padded/real tokens of both ways at the chosen max_seq_len (target <= 1.15 for qadist at 384).

    python benchmarks/label_throughput.py                      # tiny BERT (4 layers, hidden 256), CPU
    python benchmarks/label_throughput.py --limit 1000         # quicker
    python benchmarks/label_throughput.py --xxlarge --gpu      # random ALBERT-xxlarge on one GPU, with MFU
    python benchmarks/label_throughput.py --mixed              # the cost of a mixed-tokenizer ensemble

With `--mixed`, instead: `qadist label` with a two-teacher ensemble sharing one tokenizer against
the same ensemble whose second teacher (same size, same weights' seed) reads a byte-level BPE
tokenizer trained on the sample (`qadist.label.mixed_tokenizers`), interleaved over `--rounds`
rounds; prints wall seconds of each, the ratio, and the actors' time spent projecting.

With `--xxlarge`, a randomly initialised ALBERT-xxlarge config (speed does not depend on the weights)
with a locally trained ALBERT-style tokenizer; model FLOP utilisation is reported against the
measured dense matmul rate of the device (bf16 on GPU, fp32 on CPU), counting real tokens only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "squad-v2-dev-sample.json"


def build_model(args, root: Path) -> tuple[str, object]:
    from transformers import AlbertConfig, AutoModelForQuestionAnswering

    from qadist.models import build_tiny_model, load_tokenizer, train_albert_tokenizer

    if not args.xxlarge:
        path = build_tiny_model(
            "bert",
            root / "teacher",
            seed=0,
            num_layers=args.layers,
            hidden=args.hidden,
            tokenizer=load_tokenizer(_minilm()),
        )
        return path, load_tokenizer(path)
    tok = train_albert_tokenizer()
    config = AlbertConfig(
        vocab_size=len(tok),
        embedding_size=128,
        hidden_size=4096,
        num_hidden_layers=args.xxlarge_layers,
        num_attention_heads=64,
        intermediate_size=16384,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    AutoModelForQuestionAnswering.from_config(config).save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    return str(root / "teacher"), tok


def _minilm() -> str:
    from qadist.models import minilm_path

    return minilm_path()


def flops(config, lengths: list[int]) -> float:
    """Forward FLOPs of an encoder over windows of these real lengths (matmuls + attention)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = float(sum(lengths))
    squares = float(sum(n * n for n in lengths))
    proj = 2 * getattr(config, "embedding_size", h) * h if getattr(config, "embedding_size", h) != h else 0
    return tokens * (layers * 2 * (4 * h * h + 2 * h * i) + proj) + layers * 4 * h * squares


def matmul_rate(device: torch.device) -> float:
    """Measured dense matmul FLOP/s of the device (bf16 on GPU, fp32 on CPU)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 20 if device.type == "cuda" else 5
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def padded_loop(model, windows: dict, pad_id: int, batch_size: int, max_seq_len: int, device: torch.device) -> int:
    """run_qa.py's evaluation: input order, every batch padded to max_seq_len. Returns padded tokens."""
    from qadist.inference import collate, qa_logits

    ids, types = windows["input_ids"], windows.get("token_type_ids")
    padded = 0
    for s in range(0, len(ids), batch_size):
        batch = collate(ids[s : s + batch_size], types[s : s + batch_size] if types else None, pad_id)
        extra = max_seq_len - batch["input_ids"].shape[1]
        batch = {
            k: torch.nn.functional.pad(v, (0, extra), value=pad_id if k == "input_ids" else 0) for k, v in batch.items()
        }
        qa_logits(model, batch, device)
        padded += batch["input_ids"].numel()
    return padded


def label_config(args, root: Path, out: Path, teachers: list[str], **extra):
    """The `qadist label` settings of every way measured here: one actor, the script's sizes."""
    from qadist.config import LabelConfig

    return LabelConfig(
        pairs=str(root / "pairs.jsonl"),
        out=str(out),
        teachers=teachers,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        doc_stride=args.doc_stride,
        rows_per_shard=args.rows_per_shard,
        num_actors=1,
        num_cpus_per_actor=args.threads,
        **extra,
    )


def mixed_ensembles(args) -> None:
    """Label the sample with a shared-tokenizer and a mixed-tokenizer ensemble, interleaved."""
    import statistics

    import ray

    from qadist.label.stage import run_label
    from qadist.models import build_tiny_model, load_tokenizer, train_byte_level_bpe_tokenizer
    from qadist.squad.io import read_pairs

    root = Path(tempfile.mkdtemp(prefix="qadist-bench-mixed-"))
    pairs = [{k: v for k, v in p.items() if k != "answers"} for p in read_pairs(str(SAMPLE))[0]][: args.limit]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    size = dict(num_layers=args.layers, hidden=args.hidden)
    wordpiece = load_tokenizer(_minilm())
    bpe = train_byte_level_bpe_tokenizer(sorted({p["context"] for p in pairs}), vocab_size=8000)
    a = build_tiny_model("bert", root / "a", seed=0, tokenizer=wordpiece, **size)
    b_shared = build_tiny_model("bert", root / "b", seed=1, tokenizer=wordpiece, **size)
    b_other = build_tiny_model("bert", root / "c", seed=1, tokenizer=bpe, **size)
    ensembles = {
        "shared tokenizer (WordPiece + WordPiece)": [a, b_shared],
        "mixed (WordPiece + byte-level BPE)": [a, b_other],
    }
    print(f"{len(pairs):,} pairs, 2 teachers BERT {args.layers}x{args.hidden}, CPU, {args.threads} thread(s)")
    ray.init(address="local", num_cpus=max(2, args.threads + 1), include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict]] = {name: [] for name in ensembles}
    for r in range(args.rounds):
        for name, teachers in ensembles.items():
            out = root / f"labels-{len(runs[name])}-{teachers[1].rsplit('/', 1)[-1]}"
            cfg = label_config(args, root, out, teachers, combine="mean_probs")
            run = run_label(cfg)["run"]
            runs[name].append(run)
            print(f"round {r}: {name}: {run['seconds']:.1f}s", flush=True)
    ray.shutdown()
    print(f"\n{'ensemble':42s} {'wall s':>7s} {'windows/s':>10s} {'actor s':>8s} {'projecting s':>13s}")
    means = {}
    for name, rs in runs.items():
        means[name] = {
            k: statistics.mean(r[k] for r in rs) for k in ("seconds", "teacher_seconds", "projection_seconds")
        }
        m = means[name]
        print(f"{name:42s} {m['seconds']:7.1f} {rs[0]['windows'] / m['seconds']:10.1f} {m['teacher_seconds']:8.1f} "
              f"{m['projection_seconds']:13.1f}")  # fmt: skip
    same, mixed = means.values()
    print(f"\nmixed / shared wall time          = {mixed['seconds'] / same['seconds']:.2f}")
    print(f"mixed / shared actor time         = {mixed['teacher_seconds'] / same['teacher_seconds']:.2f}")
    print(f"projection share of the actor time = {mixed['projection_seconds'] / mixed['teacher_seconds']:.1%}")
    print(json.dumps({"pairs": len(pairs), "windows": runs[next(iter(runs))][0]["windows"], "means": means}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="Use the first N pairs of the sample.")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--xxlarge", action="store_true", help="Random ALBERT-xxlarge instead of the tiny BERT.")
    parser.add_argument(
        "--xxlarge-layers", type=int, default=12, help="Layers of the xxlarge config (fewer: a CPU smoke run)."
    )
    parser.add_argument("--gpu", action="store_true", help="One GPU for the actor and the loops (bf16 autocast).")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the model in all three ways.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--rows-per-shard", type=int, default=500)
    parser.add_argument("--mixed", action="store_true", help="Shared-tokenizer against mixed-tokenizer ensemble.")
    parser.add_argument("--rounds", type=int, default=2, help="--mixed: interleaved rounds of the two ensembles.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.mixed:
        return mixed_ensembles(args)

    import ray

    from qadist.inference import pick_device, run_windows
    from qadist.label.stage import run_label
    from qadist.label.teacher import padded_tokens
    from qadist.models import load_qa_model
    from qadist.squad.features import make_windows
    from qadist.squad.io import read_pairs

    root = Path(tempfile.mkdtemp(prefix="qadist-bench-"))
    pairs = [{k: v for k, v in p.items() if k != "answers"} for p in read_pairs(str(SAMPLE))[0]][: args.limit]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    path, tok = build_model(args, root)
    device = pick_device(args.gpu)
    print(
        f"{len(pairs):,} pairs, "
        f"model {'ALBERT-xxlarge (random)' if args.xxlarge else f'BERT {args.layers}x{args.hidden}'}, "
        f"{device}, {args.threads} thread(s), batch {args.batch_size}, max_seq_len {args.max_seq_len}",
        flush=True,
    )

    ray.init(
        address="local",
        num_cpus=max(2, args.threads + 1),
        num_gpus=1 if args.gpu else 0,
        include_dashboard=False,
        log_to_driver=False,
    )
    cfg = label_config(args, root, root / "labels", [path], num_gpus_per_actor=1 if args.gpu else 0)
    # Ray runs its workers at a lower CPU priority (worker_niceness, 15 by default): on a machine
    # shared with other work that alone slows the actor down, so the in-process loops get the same.
    worker_nice = ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote())
    os.nice(max(0, worker_nice - os.nice(0)))
    windows = make_windows(
        {k: [p[k] for p in pairs] for k in ("id", "question", "context")}, tok, args.max_seq_len, args.doc_stride, 64
    )
    n, lengths = len(windows["id"]), [len(x) for x in windows["input_ids"]]
    torch.set_num_threads(args.threads)
    model = load_qa_model(path).to(device).eval()
    types = windows.get("token_type_ids")

    cpu_seconds: dict[str, float] = {}

    def bare(limit: int | None = None) -> float:
        t, cpu = time.perf_counter(), time.process_time()
        run_windows(
            model,
            windows["input_ids"][:limit],
            types[:limit] if types else None,
            tok.pad_token_id,
            args.batch_size,
            device,
        )
        cpu_seconds["bare"] = time.process_time() - cpu
        return time.perf_counter() - t

    # On a shared machine the load changes from minute to minute: bracket qadist between two bare
    # runs and print the load average of each phase, so a reader can judge the ratios.
    bare(args.batch_size)  # warm-up
    loads = [os.getloadavg()[0]]
    bare_1 = bare()
    loads.append(os.getloadavg()[0])
    t = time.perf_counter()
    run = run_label(cfg)["run"]
    qadist_s = time.perf_counter() - t
    loads.append(os.getloadavg()[0])
    ray.shutdown()
    assert n == run["windows"], (n, run["windows"])
    bare_2 = bare()
    loads.append(os.getloadavg()[0])
    t, cpu = time.perf_counter(), time.process_time()
    padded_way = padded_loop(model, windows, tok.pad_token_id, args.batch_size, args.max_seq_len, device)
    padded_s, cpu_seconds["padded"] = time.perf_counter() - t, time.process_time() - cpu
    loads.append(os.getloadavg()[0])
    bare_s = (bare_1 + bare_2) / 2

    real = sum(lengths)
    rows = [
        ("qadist label (Ray Data, end to end)", qadist_s, run["padded_tokens"], loads[1:3]),
        (
            "bare loop, length-sorted (mean of 2)",
            bare_s,
            padded_tokens(lengths, args.batch_size),
            [loads[0], loads[1], loads[3]],
        ),
        (f"padded to {args.max_seq_len} (run_qa.py way)", padded_s, padded_way, loads[3:5]),
    ]
    print(f"\n{'way':40s} {'seconds':>8s} {'windows/s':>10s} {'padded/real tokens':>19s}  load average")
    for name, s, padded, load in rows:
        print(f"{name:40s} {s:8.1f} {n / s:10.1f} {padded / real:19.3f}  {' -> '.join(f'{x:.1f}' for x in load)}")
    print(
        f"(bare runs: {bare_1:.1f}s before qadist, {bare_2:.1f}s after; {os.cpu_count()} cores; "
        f"all at nice {os.nice(0)} like Ray's workers)"
    )
    print(f"\nqadist / bare   = {bare_s / qadist_s:.2f}  (target >= 0.8)")
    print(f"qadist / padded = {padded_s / qadist_s:.2f}x (target >= 1.5)")
    print(f"bare / padded   = {padded_s / bare_s:.2f}x")
    print(f"qadist padded/real tokens at {args.max_seq_len} = {run['padded_tokens'] / real:.3f} (target <= 1.15)")
    print(
        f"qadist: teacher compute {run['teacher_seconds']:.1f}s of {qadist_s:.1f}s wall "
        f"({qadist_s - run['teacher_seconds']:.1f}s start-up, windowing before the first block, "
        "writes and the manifest)"
    )
    if device.type == "cpu":  # CPU seconds do not depend on how busy the machine is
        print(
            f"model CPU seconds: qadist actor {run['teacher_cpu_seconds']:.1f}, bare {cpu_seconds['bare']:.1f}, "
            f"padded {cpu_seconds['padded']:.1f} -> "
            f"bare/qadist actor {cpu_seconds['bare'] / run['teacher_cpu_seconds']:.2f}, "
            f"padded/qadist actor {cpu_seconds['padded'] / run['teacher_cpu_seconds']:.2f}x"
        )
    if args.xxlarge or args.gpu:
        rate = matmul_rate(device)
        useful = flops(model.config, lengths)
        for name, s, *_ in rows:
            print(f"MFU {name:36s} {useful / s / rate:6.1%} of a measured {rate / 1e12:.1f} TFLOP/s")
    print(
        json.dumps(
            {
                "pairs": len(pairs),
                "windows": n,
                "qadist_s": qadist_s,
                "bare_s": bare_s,
                "padded_s": padded_s,
                "device": str(device),
                "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
