"""The GPU suite: labelling, distillation and serving at real sizes, one command, one markdown table.

Three parts, each with its own time budget, each through qadist's own code:

1. **label**: an ALBERT-xxlarge-shaped teacher (the real config, random weights) labels real-length
   windows of the SQuAD sample (max_seq_len 384, doc_stride 128) through `TeacherEnsemble`, the
   label stage's actor class (`qadist.inference.run_windows` inside, bf16 autocast on a GPU):
   windows/s (median of timed rounds over the same windows), achieved TFLOP/s and MFU.
2. **distill**: an albert-base-v2-shaped student trains on those soft labels with the loop's own
   step (`qadist.train.loop.train_step`: gradient accumulation, fused AdamW, autocast) fed with the
   loop's length-grouped micro-batches (`length_grouped`, `collate_windows`), in this process: the
   Ray Train launch (worker group, dataset split, checkpoints) is not timed. Optimizer steps/s, MFU.
3. **serve**: the trained student saved as a model folder and served by the `qadist serve` app
   (`qadist.answer.serve.build_app`) on Ray Serve on 127.0.0.1, a closed loop of N clients over
   HTTP (`serve_load.closed_loop`): answers/s, p50 / p99 latency.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the very batches that are timed
(a counted, untimed warm-up pass); where the counter sees no attention op (PyTorch's CPU SDPA kernel
is not registered with it) the attention matmuls are added by formula, 4 * L^2 * hidden per layer
and padded sequence, and the table says so. MFU = achieved FLOP/s / the device's dense bf16 peak.

    python benchmarks/gpu_suite.py --out gpu-suite.md               # on a GPU: real sizes, under 8 minutes
    python benchmarks/gpu_suite.py --tiny --out tiny.md --peak-tflops 1   # on a CPU: tiny sizes (the test runs this)

Without CUDA it runs at tiny sizes unless `--size full`; `--require-gpu` refuses to run without one.
A part that fails leaves "FAILED: ..." in its rows and the command exits 1; `--max-total-s` ends a
run that hangs (tracebacks on stderr). Results on real GPUs: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import faulthandler
import itertools
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from suite_device import PEAKS, Device, attention_flops, count_flops, padded_batches  # noqa: F401 (PEAKS: the test)

from qadist.errors import first_line

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "squad-v2-dev-sample.json"
WINDOWS = (384, 128, 64)  # max_seq_len, doc_stride, max_query_len: the label stage's defaults

SIZES = {  # the work each part does (the models: `setup`)
    "full": dict(label_windows=1024, label_rounds=5, label_batch=64, train_batch=32, grad_accum=4, train_steps=100,
                 clients=16, requests=2000),
    "tiny": dict(label_windows=32, label_rounds=2, label_batch=16, train_batch=8, grad_accum=2, train_steps=4,
                 clients=4, requests=24),
}  # fmt: skip
ROWS = [  # (part, measure): the table's rows, in order
    ("label", "windows/s"),
    ("label", "achieved TFLOP/s"),
    ("label", "MFU"),
    ("label", "peak memory (MiB)"),
    ("distill", "optimizer steps/s"),
    ("distill", "windows/s"),
    ("distill", "achieved TFLOP/s"),
    ("distill", "MFU"),
    ("distill", "peak memory (MiB)"),
    ("serve", "answers/s"),
    ("serve", "p50 latency (ms)"),
    ("serve", "p99 latency (ms)"),
    ("serve", "errors"),
]


# ---- the parts ------------------------------------------------------------------------------------


def part_label(ctx: dict) -> dict:
    """Windows/s, TFLOP/s and MFU of the teacher through the label stage's actor class."""
    from qadist.label.teacher import TeacherEnsemble

    dev, s, budget = ctx["device"], ctx["size"], ctx["args"].label_budget_s
    dev.reset_memory()
    teacher = TeacherEnsemble(
        [ctx["teacher"]], batch_size=s["label_batch"], use_gpu=dev.cuda, precision=ctx["precision"], lengths=WINDOWS
    )
    windows = ctx["windows"]
    lengths = [len(x) for x in windows["input_ids"]]
    started = time.perf_counter()
    dev.sync()
    flops, labelled, saw_attention = count_flops(lambda: teacher(dict(windows)), ctx["teacher_config"])
    dev.sync()
    note = "attention counted by FlopCounterMode"
    if not saw_attention:
        flops += attention_flops(padded_batches(lengths, s["label_batch"]), ctx["teacher_config"])
        note = "matmuls counted by FlopCounterMode, attention added by formula (its kernel is not counted here)"
    rounds: list[float] = []
    while len(rounds) < s["label_rounds"] and (not rounds or time.perf_counter() - started < budget):
        dev.sync()
        t0 = time.perf_counter()
        teacher(dict(windows))
        dev.sync()
        rounds.append(time.perf_counter() - t0)
    median = statistics.median(rounds)
    mem, mem_how = dev.peak_memory()
    mfu, peak_note = dev.mfu(flops / median)
    padded = sum(n * length for n, length in padded_batches(lengths, s["label_batch"]))
    ctx["labelled"] = labelled  # the teacher goes with this frame: its memory is free for the next part
    return {
        ("label", "windows/s"): (len(lengths) / median, f"median of {len(rounds)} rounds over {len(lengths)} windows"),
        ("label", "achieved TFLOP/s"): (
            flops / median / 1e12,
            f"{flops / len(lengths) / 1e9:.1f} GFLOP/window; {note}",
        ),
        ("label", "MFU"): (mfu, peak_note),
        ("label", "peak memory (MiB)"): (mem, mem_how),
        "settings": f"label: batch {s['label_batch']}, windows {WINDOWS[0]}/{WINDOWS[1]}, mean {np.mean(lengths):.0f} "
        f"tokens/window, padded/real tokens {padded / sum(lengths):.3f}, precision {ctx['precision_name']}",
    }


def part_distill(ctx: dict) -> dict:
    """Optimizer steps/s of the training loop's step function on length-grouped micro-batches."""
    from qadist.inference import autocast_dtype
    from qadist.models import load_qa_model
    from qadist.train.batches import collate_windows, length_grouped, plan_steps
    from qadist.train.loop import build_optimizer, build_scheduler, train_step
    from qadist.train.losses import DistillationLoss

    dev, s, budget = ctx["device"], ctx["size"], ctx["args"].train_budget_s
    dev.reset_memory()
    rows = ctx.get("labelled")
    source = "the teacher's soft labels from the label part"
    if rows is None:  # the label part failed: random soft labels, same shapes
        rng = np.random.default_rng(0)
        rows = dict(ctx["windows"])
        rows["start_logits"] = [rng.normal(size=len(x)).astype(np.float16) for x in rows["input_ids"]]
        rows["end_logits"] = [rng.normal(size=len(x)).astype(np.float16) for x in rows["input_ids"]]
        source = "random soft labels (the label part failed)"
    keep = ("input_ids", "token_type_ids", "start_logits", "end_logits", "start_position", "end_position")
    chunk = {k: list(rows[k]) for k in keep if k in rows}
    batch, accum = s["train_batch"], s["grad_accum"]
    micro = length_grouped(chunk, batch, np.random.default_rng(0))
    groups = [micro[i : i + accum] for i in range(0, len(micro) - accum + 1, accum)]
    if not groups:
        raise RuntimeError(f"{len(chunk['input_ids'])} windows make no group of {accum} micro-batches of {batch}")
    total = len(groups) + s["train_steps"]
    plan = plan_steps(total * batch * accum, 1, batch, accum, 1.0, 0.1)
    model = load_qa_model(ctx["student"]).to(dev.torch)  # the loop loads the start model this way (fp32)
    optimizer = build_optimizer(model, 5e-5, 0.01)
    scheduler = build_scheduler(optimizer, plan)
    amp = autocast_dtype(dev.torch, ctx["precision"])
    scaler = torch.amp.GradScaler(dev.torch.type, enabled=amp == torch.float16)
    loss_fn, pad = DistillationLoss(2.0, 1.0, 0.0), ctx["pad_id"]

    def step(group: list[dict]) -> dict:
        tensors = [collate_windows(raw, pad) for raw in group]
        return train_step(model, tensors, loss_fn, optimizer, scheduler, scaler, 1.0, dev.torch, amp)

    flops_of: list[float] = []  # counted warm-up: one pass over the groups, each step's FLOPs
    saw_attention = True
    for group in groups:
        dev.sync()
        flops, _, seen = count_flops(lambda g=group: step(g), ctx["student_config"])
        saw_attention &= seen
        if not seen:  # forward + backward of attention: 3x the forward's
            lengths = [(len(mb["input_ids"]), max(len(x) for x in mb["input_ids"])) for mb in group]
            flops += 3 * attention_flops(lengths, ctx["student_config"])
        flops_of.append(flops)
    dev.sync()
    started, done, flops_done, losses = time.perf_counter(), 0, 0.0, []
    for i in itertools.cycle(range(len(groups))):
        if done >= s["train_steps"] or (done and time.perf_counter() - started > budget):
            break
        losses.append(step(groups[i])["loss"])
        flops_done += flops_of[i]
        done += 1
    dev.sync()
    seconds = time.perf_counter() - started
    mem, mem_how = dev.peak_memory()
    mfu, peak_note = dev.mfu(flops_done / seconds)
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite training loss: {losses}")
    model.eval()
    model.save_pretrained(ctx["student_trained"])
    ctx["tokenizer"].save_pretrained(ctx["student_trained"])
    note = "" if saw_attention else "; attention added by formula (3x forward)"
    return {
        ("distill", "optimizer steps/s"): (
            done / seconds,
            f"{done} timed steps after {len(groups)} counted warm-up steps",
        ),
        ("distill", "windows/s"): (done * batch * accum / seconds, f"{batch} x {accum} windows per step"),
        ("distill", "achieved TFLOP/s"): (flops_done / seconds / 1e12, f"forward + backward, FlopCounterMode{note}"),
        ("distill", "MFU"): (mfu, peak_note),
        ("distill", "peak memory (MiB)"): (mem, mem_how),
        "settings": f"distill: micro-batch {batch}, grad_accum {accum} (global {batch * accum}), fused AdamW, "
        f"precision {ctx['precision_name']}, {source}, loss {losses[0]:.3f} -> {losses[-1]:.3f}",
    }


def part_serve(ctx: dict) -> dict:
    """Answers/s and latency of the `qadist serve` app over HTTP at a fixed concurrency."""
    from ray import serve
    from serve_load import closed_loop, percentile

    from qadist.answer.serve import build_app, wait_ready
    from qadist.config import ServeConfig
    from qadist.runtime import ensure_ray

    dev, s, args = ctx["device"], ctx["size"], ctx["args"]
    if dev.cuda:
        torch.cuda.empty_cache()  # the replica is another process on the same GPU
    port = args.port or _free_port()
    threads = 2 if dev.cuda else 1
    cfg = ServeConfig(
        model=ctx["student_trained"], host="127.0.0.1", port=port, num_cpus_per_replica=threads,
        num_gpus_per_replica=1.0 if dev.cuda else 0.0, max_batch_size=16, batch_wait_ms=5.0,
        precision=ctx["precision"], max_ongoing_requests=64, max_queued_requests=256,
    )  # fmt: skip
    ray = ensure_ray(min_cpus=threads + 2, threads=threads)
    if dev.cuda and ray.cluster_resources().get("GPU", 0) < 1:  # a replica asking for it would wait forever
        raise RuntimeError(f"Ray sees no GPU (cluster resources {ray.cluster_resources()}); the replica cannot start")
    started = time.perf_counter()
    quiet = {"log_level": "WARNING", "enable_access_log": False}  # no log line per request on the console
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
    try:
        serve.run(build_app(cfg), name="gpu-suite", route_prefix="/suite", logging_config=quiet)
        url = f"http://127.0.0.1:{port}/suite"
        about = wait_ready(url, timeout_s=max(30.0, args.serve_budget_s / 2))
        bodies = [json.dumps({"question": p["question"], "context": p["context"]}).encode() for p in ctx["pairs"]]
        closed_loop(url, bodies[:32], min(4, s["clients"]), 32, 30)  # warm-up: first batches, kernels
        left = max(10.0, args.serve_budget_s - (time.perf_counter() - started))
        r = closed_loop(url, bodies, s["clients"], s["requests"], left)
    finally:
        serve.shutdown()
    ok = r["codes"].get("200", 0)
    errors = sum(n for c, n in r["codes"].items() if c != "200")
    if not ok:
        raise RuntimeError(f"no request answered 200: {r['codes']}")
    lat = r["latencies"]
    return {
        ("serve", "answers/s"): (ok / r["wall_s"], f"{ok} answers in {r['wall_s']:.1f} s"),
        ("serve", "p50 latency (ms)"): (1000 * percentile(lat, 50), f"{s['clients']} closed-loop clients"),
        ("serve", "p99 latency (ms)"): (1000 * percentile(lat, 99), "request sent to answer read, kept-alive"),
        ("serve", "errors"): (float(errors), f"of {ok + errors} requests: {r['codes']}"),
        "settings": f"serve: 1 replica ({'1 GPU, ' if dev.cuda else ''}{threads} CPUs), batches of up to 16 (5 ms "
        f"wait), windows {cfg.max_seq_len}/{cfg.doc_stride}, {s['clients']} clients, model loaded in "
        f"{about.get('load_s', '?')} s",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- setup, the table, main ----------------------------------------------------------------------


def setup(ctx: dict, root: Path) -> None:
    """The tokenizer, the windows, and the teacher and student folders (random weights, real configs)."""
    from qadist.models import albert_config, build_model_from_config, tiny_config, train_albert_tokenizer
    from qadist.squad.features import make_windows
    from qadist.squad.io import read_pairs

    if not SAMPLE.is_file():
        raise SystemExit(f"{SAMPLE}: the SQuAD sample is missing (git checkout -- tests/data/)")
    pairs = read_pairs(str(SAMPLE))[0]
    tokenizer = train_albert_tokenizer(sorted({p["context"] for p in pairs}), vocab_size=30000)
    n = ctx["size"]["label_windows"]
    windows: dict[str, list] = {}
    for i in range(0, len(pairs), 200):
        part = pairs[i : i + 200]
        w = make_windows(
            {k: [p[k] for p in part] for k in ("id", "question", "context", "answers")}, tokenizer, *WINDOWS
        )
        for k, v in w.items():
            windows.setdefault(k, []).extend(v)
        if len(windows["input_ids"]) >= n:
            break
    windows = {k: v[:n] for k, v in windows.items() if k != "answers"}
    if ctx["full"]:
        teacher_cfg, student_cfg = albert_config("albert-xxlarge-v2"), albert_config("albert-base-v2")
        ctx["sizes"] = "teacher albert-xxlarge-v2 config, student albert-base-v2 config (random weights, vocab 30000)"
    else:
        teacher_cfg, student_cfg = (
            tiny_config("albert", len(tokenizer), 2, 64),
            tiny_config("albert", len(tokenizer), 1, 32),
        )
        ctx["sizes"] = (
            f"TINY: teacher ALBERT 2 layers h64, student 1 layer h32 (random weights, vocab {len(tokenizer)})"
        )
    ctx.update(
        pairs=pairs[:512], tokenizer=tokenizer, windows=windows, pad_id=tokenizer.pad_token_id,
        teacher_config=teacher_cfg, student_config=student_cfg,
        teacher=build_model_from_config(teacher_cfg, root / "teacher", tokenizer, seed=1),
        student=build_model_from_config(student_cfg, root / "student", tokenizer, seed=2),
        student_trained=str(root / "student-trained"),
    )  # fmt: skip


def fmt(measure: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if measure == "MFU":
        return f"{value:.1%}" if value >= 0.001 else f"{value:.2e}"
    if measure == "errors":
        return f"{value:.0f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def table(ctx: dict, results: dict, failures: dict[str, str], seconds: dict[str, float]) -> str:
    import transformers

    dev = ctx["device"]
    cuda = f", CUDA {torch.version.cuda}" if dev.cuda else ""
    lines = [
        f"GPU suite, {time.strftime('%Y-%m-%d %H:%M')}: device **{dev.name}**; torch {torch.__version__}{cuda}, "
        f"transformers {transformers.__version__}; {ctx.get('sizes', '')}; SQuAD sample windows "
        f"{WINDOWS[0]}/{WINDOWS[1]}/{WINDOWS[2]}; part seconds "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        "",
        "| part | measure | value | how |",
        "|---|---|---|---|",
    ]
    for part, measure in ROWS:
        if part in failures:
            state = "not run" if failures[part].startswith("not run") else "FAILED"
            lines.append(f"| {part} | {measure} | {state} | {failures[part]} |")
            continue
        value, how = results[(part, measure)]
        lines.append(f"| {part} | {measure} | {fmt(measure, value)} | {how} |")
    lines.append("")
    lines += [f"- {results[k]}" for k in sorted(k for k in results if isinstance(k, str))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=("auto", "tiny", "full"), default="auto", help="auto: full on CUDA, else tiny"
    )
    parser.add_argument("--tiny", action="store_true", help="same as --size tiny")
    parser.add_argument("--require-gpu", action="store_true", help="fail at once without a CUDA device")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    parser.add_argument("--precision", default=None, help="default: bf16 on a GPU, auto (fp32) on a CPU")
    parser.add_argument("--parts", default="label,distill,serve", help="comma-separated subset to run")
    parser.add_argument("--label-budget-s", type=float, default=90.0)
    parser.add_argument("--train-budget-s", type=float, default=60.0)
    parser.add_argument("--serve-budget-s", type=float, default=90.0)
    parser.add_argument("--max-total-s", type=float, default=450.0, help="hard limit: dump tracebacks and exit")
    parser.add_argument("--port", type=int, default=0, help="Serve's HTTP port (0: a free one)")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    parts = {"label": part_label, "distill": part_distill, "serve": part_serve}
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(wanted) - set(parts):
        print(f"error: --parts: unknown {sorted(set(wanted) - set(parts))}; use {', '.join(parts)}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    if args.require_gpu and not cuda:
        print("error: --require-gpu: torch sees no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    faulthandler.dump_traceback_later(args.max_total_s, exit=True, file=sys.__stderr__)
    size = "tiny" if args.tiny else ("full" if cuda else "tiny") if args.size == "auto" else args.size
    precision = args.precision or ("bf16" if cuda else "auto")
    device = Device(cuda, args.peak_tflops)
    from qadist.inference import autocast_dtype

    amp = autocast_dtype(device.torch, precision)
    ctx: dict[str, Any] = dict(
        args=args, device=device, size=SIZES[size], full=size == "full", precision=precision,
        precision_name=f"{precision} (autocast {str(amp).removeprefix('torch.') if amp else 'off: fp32'})",
    )  # fmt: skip
    results: dict = {}
    failures = {p: "not run (--parts)" for p in parts if p not in wanted}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qadist-gpu-suite-") as tmp:
        started = time.perf_counter()
        setup(ctx, Path(tmp))
        seconds["setup"] = time.perf_counter() - started
        for name in wanted:
            started = time.perf_counter()
            print(f"[gpu_suite] {name} ...", file=sys.stderr, flush=True)
            try:
                out = parts[name](ctx)
                results.update({k: v for k, v in out.items() if k != "settings"})
                results[name] = out["settings"]
                figures = ", ".join(f"{k[1]} {fmt(k[1], v[0])}" for k, v in out.items() if isinstance(k, tuple))
                print(f"[gpu_suite] {name}: {figures}", flush=True)  # on record even if a later part hangs
            except Exception as e:  # one part's failure must not cost the others' figures
                import traceback

                traceback.print_exc()
                failures[name] = f"{type(e).__name__}: {first_line(str(e))[:200]}"
                if name == "distill":
                    failures.setdefault("serve", "needs the distill part's student")
            seconds[name] = time.perf_counter() - started
            if name == "distill" and "distill" in failures and "serve" in wanted:
                wanted.remove("serve")
    from qadist.runtime import release_ray

    release_ray()
    text = table(ctx, results, failures, seconds)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        flat = {f"{p}/{m}": v[0] for (p, m), v in ((k, v) for k, v in results.items() if isinstance(k, tuple))}
        Path(args.json).write_text(json.dumps({"device": device.name, "figures": flat, "failures": failures}, indent=2))
    faulthandler.cancel_dump_traceback_later()
    return 1 if failures and set(failures) & set(wanted) else 0


if __name__ == "__main__":
    sys.exit(main())
