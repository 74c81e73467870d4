"""What the ingress hop costs: the same model served the way `qadist serve` serves it now (a FastAPI
ingress calling the model replicas through a DeploymentHandle, `qadist/answer/ingress.py`) and the
way it was served before (the FastAPI app on the model replica itself, `qadist/answer/serve.py` as of
git revision --before), side by side on one Ray Serve on 127.0.0.1, in one run.

A closed loop of N clients (kept-alive connections, each asking again when answered) takes turns
on the two apps, round by round (a busy machine slows both alike). Prints answers/s and p50/p95
latency of each (medians over rounds) and the ratios ingress / direct. Bounded in requests and time.

    PYTHONPATH=. python benchmarks/serve_hop.py [--clients 4] [--requests 300] [--rounds 3] [--before 5b8d85f]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import closed_loop, percentile  # noqa: E402

BODY = {"question": "Which mount does the camera use?", "context": "The camera uses the RF mount and a 24 MP sensor."}


def before_module(revision: str, folder: Path) -> str:
    """`qadist/answer/serve.py` at `revision`, importable (here and in Ray's workers) as qadist_serve_direct."""
    repo = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{revision}:qadist/answer/serve.py"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    (folder / "qadist_serve_direct.py").write_text(source)
    return "qadist_serve_direct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300, help="Requests per app and round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit-s", type=float, default=60.0, help="Time limit of one app's round.")
    parser.add_argument("--before", default="5b8d85f", help="A git revision whose serve.py had no ingress.")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="qadist-hop-"))
    name = before_module(args.before, folder)
    os.environ["PYTHONPATH"] = f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # Ray's workers too
    sys.path.insert(0, str(folder))
    import importlib

    import ray
    from ray import serve

    from qadist.answer.serve import build_app, wait_ready
    from qadist.config import ServeConfig
    from qadist.models import build_tiny_model, load_tokenizer, minilm_path

    direct = importlib.import_module(name)
    model = build_tiny_model("bert", folder / "model", seed=0, tokenizer=load_tokenizer(minilm_path()))
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    cfg = ServeConfig(model=model, num_cpus_per_replica=0.5, max_seq_len=128, doc_stride=32)
    apps = {"direct": direct.build_app(cfg), "ingress": build_app(cfg)}
    for app, built in apps.items():
        serve.run(built, name=app, route_prefix=f"/{app}")
        wait_ready(f"http://127.0.0.1:{args.port}/{app}")
    body = [json.dumps(BODY).encode()]
    rates: dict[str, list[float]] = {a: [] for a in apps}
    p50: dict[str, list[float]] = {a: [] for a in apps}
    p95: dict[str, list[float]] = {a: [] for a in apps}
    try:
        for app in apps:  # warm-up
            closed_loop(f"http://127.0.0.1:{args.port}/{app}", body, args.clients, 40, 30)
        for _ in range(args.rounds):
            for app in apps:
                r = closed_loop(f"http://127.0.0.1:{args.port}/{app}", body, args.clients, args.requests, args.limit_s)
                bad = {c: n for c, n in r["codes"].items() if c != "200"}
                if bad:
                    print(f"{app}: non-200 {bad}")
                rates[app].append(r["codes"].get("200", 0) / r["wall_s"])
                p50[app].append(1000 * percentile(r["latencies"], 50))
                p95[app].append(1000 * percentile(r["latencies"], 95))
    finally:
        serve.shutdown()
        ray.shutdown()
    med = {k: {a: statistics.median(v[a]) for a in apps} for k, v in (("rate", rates), ("p50", p50), ("p95", p95))}
    print(f"\n{args.clients} closed-loop clients, {args.rounds} rounds x {args.requests} requests per app, tiny BERT, "
          f"1 replica (0.5 CPU), windows 128/32; medians over rounds")  # fmt: skip
    for app in apps:
        print(f"  {app:<8} {med['rate'][app]:7.1f} answers/s   p50 {med['p50'][app]:6.1f} ms   "
              f"p95 {med['p95'][app]:6.1f} ms   (rounds: {', '.join(f'{x:.1f}' for x in rates[app])})")  # fmt: skip
    print(f"ingress / direct: answers/s {med['rate']['ingress'] / med['rate']['direct']:.3f}, "
          f"p50 latency {med['p50']['ingress'] / med['p50']['direct']:.3f}, "
          f"p95 latency {med['p95']['ingress'] / med['p95']['direct']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
