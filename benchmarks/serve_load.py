"""Served answers/s and latency of the demo's teacher, student and int8 student, side by side in one run.

Three `qadist serve` applications (the same code: `qadist.answer.serve.build_app`) run on one
embedded Ray Serve on 127.0.0.1: teacher A, the distilled student (PyTorch) and the same student
exported to ONNX int8 (`qadist export --int8`, made here if the demo folder has none). A closed loop
of N clients (each sends its next question when the last one is answered, over a kept-alive
connection) asks the demo's test questions; the apps take turns round by round, so a busy machine
slows them alike. Reported per app: answers/s, p50/p95/p99 latency, errors; the student's
speed-up over the teacher beside the ratio of their forward FLOPs (torch.utils.flop_counter, on
the same windows). Then an overload phase: many more clients than the student's queue admits
(`max_ongoing_requests` + `max_queued_requests`): the extra requests must get 503, nothing else.
Last, offline `predict` throughput of the same student: PyTorch fp32 / bf16 against ONNX fp32 / int8.

    qadist demo --out qadist-demo                         # once: the models (about 12 minutes on 2 cores)
    python benchmarks/serve_load.py --demo qadist-demo    # about 4 minutes on 2 cores
    python benchmarks/serve_load.py --demo qadist-demo --gpu   # PyTorch apps on a GPU, half of one each

With `--gpu` the two PyTorch apps share one GPU (0.5 each: they take turns, so they do not slow each
other; `--gpu-fraction 1` gives each a whole GPU where there are two). GPUs the cluster does not have
are refused before anything starts (exit 2): Serve would wait for them forever.

Every phase is bounded by a request count and a time limit and stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

WINDOWS = {"max_seq_len": 160, "doc_stride": 64, "max_query_len": 32}  # the demo's (docs/demo.md)


def gpu_fraction(apps: int, available: float, fraction: float | None = None) -> float:
    """GPUs per replica for `apps` single-replica GPU apps: `fraction`, or by default an equal share
    of one GPU (so they all fit on one). Raises ValueError (one line, the fix in it) when the apps
    need more GPUs than the cluster's `available` (Serve would wait for them forever)."""
    share = fraction if fraction is not None else 1.0 / apps
    if not 0 < share <= 1:
        raise ValueError(f"--gpu-fraction {share:g}: give a fraction of one GPU, in (0, 1]")
    if apps * share > available + 1e-9:
        raise ValueError(
            f"--gpu: {apps} apps x {share:g} GPU = {apps * share:g} GPU, but this Ray cluster has {available:g}; "
            "lower --gpu-fraction or run without --gpu"
        )
    return share


def export_int8(student: str, test: str, out: Path) -> str:
    from qadist.cli import main

    if not (out / "export_report.json").exists():
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in WINDOWS.items()]
        try:
            main(["export", "--model", student, "--out", str(out), "--int8", "--eval-file", test, *flags])
        except SystemExit as e:
            if e.code:
                raise
    return str(out)


def forward_flops(folder: str, pairs: list[dict]) -> float:
    """Forward FLOPs per window of `pairs` (the demo's measurement, `qadist.demo.speed`)."""
    from qadist.config import AnswerSettings
    from qadist.demo.speed import forward_flops as per_window
    from qadist.models import load_qa_model, load_tokenizer

    return per_window(load_qa_model(folder).eval(), load_tokenizer(folder), pairs, AnswerSettings(**WINDOWS))


def closed_loop(base: str, bodies: list[bytes], clients: int, requests: int, limit_s: float) -> dict:
    """`clients` threads, each posting its next body when the last is answered, until `requests`
    have been sent or `limit_s` has passed."""
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    path = "/" + base.removeprefix("http://").split("/", 1)[1] + "/answer"
    lock, sent = threading.Lock(), [0]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    deadline = time.monotonic() + limit_s

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= requests:
                    break
                body = bodies[sent[0] % len(bodies)]
                sent[0] += 1
            started = time.perf_counter()
            try:
                conn.request("POST", path, body, {"content-type": "application/json"})
                response = conn.getresponse()
                response.read()
                code = str(response.status)
            except (OSError, http.client.HTTPException) as e:
                code = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                codes[code] = codes.get(code, 0) + 1
                if code == "200":
                    latencies.append(elapsed)
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"wall_s": wall, "codes": codes, "latencies": latencies}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def offline(student: str, exported: str, pairs: list[dict], repeats: int = 3) -> dict[str, float]:
    """Median answers/s of `predict` on the same pairs: PyTorch fp32 / bf16, ONNX fp32 / int8, interleaved."""
    import torch

    from qadist.config import AnswerSettings
    from qadist.inference import OnnxQAModel, cpu_has_bf16, predict_pairs
    from qadist.models import load_qa_model, load_tokenizer

    tokenizer = load_tokenizer(student)
    torch_model = load_qa_model(student).eval()
    variants = {
        "pytorch fp32": (torch_model, "fp32"),
        "pytorch bf16": (torch_model, "bf16"),
        "onnx fp32": (OnnxQAModel(os.path.join(exported, "model.onnx")), "fp32"),
        "onnx int8": (OnnxQAModel(os.path.join(exported, "model.int8.onnx")), "fp32"),
    }
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    cpu = torch.device("cpu")
    for _ in range(repeats + 1):  # the first round warms up
        for name, (model, precision) in variants.items():
            cfg = AnswerSettings(batch_size=64, precision=precision, **WINDOWS)
            started = time.perf_counter()
            predict_pairs(pairs, model, tokenizer, cfg, cpu, progress=False)
            seconds[name].append(time.perf_counter() - started)
    print(f"(this CPU computes bf16 natively: {cpu_has_bf16()}; torch threads {torch.get_num_threads()})")
    return {name: len(pairs) / statistics.median(s[1:]) for name, s in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="qadist-demo", help="A finished `qadist demo --out` folder.")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent clients of the closed loop.")
    parser.add_argument("--requests", type=int, default=300, help="Requests per app and round.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds (the apps take turns in each).")
    parser.add_argument("--limit-s", type=float, default=60.0, help="Time limit of one app's round.")
    parser.add_argument("--overload-clients", type=int, default=96, help="Clients of the overload phase.")
    parser.add_argument("--gpu", action="store_true", help="PyTorch replicas on a GPU (the int8 app stays on CPU).")
    parser.add_argument(
        "--gpu-fraction", type=float, default=None, help="GPUs per PyTorch replica with --gpu (default: half of one)."
    )
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="Torch / ONNX threads per replica."
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", default=None, help="Write the figures as JSON here too.")
    args = parser.parse_args()

    from ray import serve

    from qadist.answer.serve import build_app, wait_ready
    from qadist.config import ServeConfig
    from qadist.runtime import ensure_ray
    from qadist.squad.io import read_pairs

    demo = Path(args.demo).resolve()
    models = demo / "models"
    teacher, student = str(models / "teacher-a" / "final"), str(models / "student-distilled" / "final")
    test = str(demo / "data" / "test.jsonl")
    for path in (teacher, student, test):
        if not os.path.exists(path):
            print(f"{path}: missing; run `qadist demo --out {args.demo}` first", file=sys.stderr)
            return 2
    exported = export_int8(student, test, demo / "student-onnx")
    pairs, _ = read_pairs(test)
    bodies = [json.dumps({"question": p["question"], "context": p["context"]}).encode() for p in pairs]

    threads = args.threads
    ray = ensure_ray(min_cpus=threads * 4 + 1)  # four apps: three measured, one overloaded
    gpu = 0.0
    if args.gpu:
        try:
            gpu = gpu_fraction(2, ray.cluster_resources().get("GPU", 0), args.gpu_fraction)  # the PyTorch apps
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
    common = dict(**WINDOWS, num_cpus_per_replica=threads, max_batch_size=16, batch_wait_ms=5.0)
    apps = {
        "teacher A (PyTorch)": ServeConfig(model=teacher, num_gpus_per_replica=gpu, **common),
        "student (PyTorch)": ServeConfig(model=student, num_gpus_per_replica=gpu, **common),
        "student (ONNX int8)": ServeConfig(model=exported, **common),
    }
    tight = ServeConfig(model=student, **common, max_ongoing_requests=16, max_queued_requests=16)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    routes = {}
    for i, (name, cfg) in enumerate({**apps, "overload": tight}.items()):
        serve.run(build_app(cfg), name=f"app{i}", route_prefix=f"/app{i}")
        routes[name] = f"http://127.0.0.1:{args.port}/app{i}"
    for url in routes.values():
        wait_ready(url)
    try:
        for url in routes.values():  # warm-up: first batches, allocator, ONNX Runtime's first run
            closed_loop(url, bodies[:32], 4, 32, 30)
        results = {name: {"wall_s": 0.0, "codes": {}, "latencies": []} for name in apps}
        for _ in range(args.rounds):
            for name in apps:
                r = closed_loop(routes[name], bodies, args.clients, args.requests, args.limit_s)
                results[name]["wall_s"] += r["wall_s"]
                results[name]["latencies"] += r["latencies"]
                for code, n in r["codes"].items():
                    results[name]["codes"][code] = results[name]["codes"].get(code, 0) + n
        overload = closed_loop(routes["overload"], bodies, args.overload_clients, args.overload_clients * 6, 90)
    finally:
        serve.shutdown()

    t_flops, s_flops = forward_flops(teacher, pairs[:64]), forward_flops(student, pairs[:64])
    summary = {}
    print(
        f"\nServed on 127.0.0.1: {args.clients} closed-loop clients, {args.rounds} rounds x {args.requests} "
        f"requests per app, batches of up to 16 (5 ms wait), {threads} threads per replica, "
        f"{len(pairs)} demo test questions, windows {WINDOWS['max_seq_len']}/{WINDOWS['doc_stride']}\n"
    )
    print(f"{'app':<22} {'answers/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'ok':>6} {'errors':>7}")
    for name, r in results.items():
        ok = r["codes"].get("200", 0)
        lat = r["latencies"]
        summary[name] = {
            "answers_per_s": ok / r["wall_s"],
            "p50_ms": 1000 * percentile(lat, 50),
            "p95_ms": 1000 * percentile(lat, 95),
            "p99_ms": 1000 * percentile(lat, 99),
            "ok": ok,
            "errors": sum(n for c, n in r["codes"].items() if c != "200"),
            "codes": r["codes"],
        }
        s = summary[name]
        print(
            f"{name:<22} {s['answers_per_s']:>10.1f} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} {s['p99_ms']:>8.1f} "
            f"{s['ok']:>6} {s['errors']:>7}"
        )
    teacher_rate = summary["teacher A (PyTorch)"]["answers_per_s"]
    flops_ratio = t_flops / s_flops
    print(f"\nforward FLOPs teacher / student on the same 64 questions' windows: {flops_ratio:.2f}x")
    for name in ("student (PyTorch)", "student (ONNX int8)"):
        speedup = summary[name]["answers_per_s"] / teacher_rate
        summary[name]["speedup_vs_teacher"] = speedup
        print(f"{name}: {speedup:.2f}x the served teacher = {speedup / flops_ratio:.0%} of the FLOPs ratio")
    codes = overload["codes"]
    other = {c: n for c, n in codes.items() if c not in ("200", "503")}
    print(
        f"\noverload: {args.overload_clients} clients against a student app admitting 16 running + 16 queued: "
        f"{codes.get('200', 0)} x 200, {codes.get('503', 0)} x 503, other {sum(other.values())} {other or ''}"
    )
    rates = offline(student, exported, pairs[:256])
    print("\nOffline predict, the same student, 256 test questions, batch 64 windows (median of 3, interleaved):")
    for name, rate in rates.items():
        print(f"  {name:<14} {rate:8.1f} answers/s  {rate / rates['pytorch fp32']:.2f}x PyTorch fp32")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"served": summary, "flops_ratio": flops_ratio, "overload": codes, "offline": rates}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
