"""The loop under load, on 127.0.0.1 (bounded in count and time): prints figures, asserts nothing.

1. Logging on vs off: answers/s of the same closed loop of clients against two apps, one with
   --log-questions and one without, interleaved repeats (median); prints the ratio (goal >= 0.95).
2. A promotion mid-load: clients keep asking while `current` moves to a new version; prints failed
   requests, the versions seen, whether any response lacked exactly one version, and the switch time
   (from the pointer's move to the first reply of the new version).

    PYTHONPATH=. python benchmarks/loop_load.py [--clients 4] [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

BODY = {"question": "Which mount does the camera use?", "context": "The camera uses the RF mount and a 24 MP sensor."}


def ask(url: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(BODY).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except OSError:
        return -1, {}


def closed_loop(url: str, clients: int, seconds: float, on_reply=None) -> tuple[int, list[int]]:
    """`clients` threads asking back to back for `seconds`: (answers, non-200 statuses)."""
    stop, done, bad, lock = time.monotonic() + seconds, [0], [], threading.Lock()

    def client():
        while time.monotonic() < stop:
            status, reply = ask(url)
            with lock:
                if status == 200:
                    done[0] += 1
                    if on_reply:
                        on_reply(reply)
                else:
                    bad.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return done[0], bad


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray
    from ray import serve

    from qadist.answer.serve import build_app, wait_ready
    from qadist.config import ServeConfig
    from qadist.models import build_tiny_model, load_tokenizer, minilm_path
    from qadist.registry import ObjectRegistry

    root = Path(tempfile.mkdtemp(prefix="qadist-loop-bench-"))
    tok = load_tokenizer(minilm_path())
    models = [build_tiny_model("bert", root / f"m{i}", seed=i, tokenizer=tok) for i in range(2)]
    registry = ObjectRegistry(str(root / "registry"))
    registry.move(None, registry.publish(models[0], {}), "seed")
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8765})
    common = {"num_cpus_per_replica": 0.5, "max_seq_len": 128, "doc_stride": 32}
    apps = {
        "off": ServeConfig(registry=registry.uri, **common),
        "on": ServeConfig(registry=registry.uri, log_questions=str(root / "log"), log_roll_s=5, **common),
    }
    for name, cfg in apps.items():
        serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
        wait_ready(f"http://127.0.0.1:8765/{name}")
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for name in ("off", "on"):  # interleaved: a busy machine slows both alike
            n, bad = closed_loop(f"http://127.0.0.1:8765/{name}/answer", args.clients, args.seconds)
            rates[name].append(n / args.seconds)
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"logging off {off:.1f} answers/s, on {on:.1f} answers/s (median of {args.repeats}, {args.clients} "
          f"clients, {args.seconds:.0f}s each): on/off = {on / off:.3f}")  # fmt: skip
    serve.delete("on")

    seen: dict[str, int] = {}
    first_new = []

    def note(reply):
        seen[reply.get("model_version", "?")] = seen.get(reply.get("model_version", "?"), 0) + 1
        if reply.get("model_version") == "2" and not first_new:
            first_new.append(time.monotonic())

    moved = []

    def promote_later():
        time.sleep(args.seconds / 3)
        registry.move(1, registry.publish(models[1], {}), "bench")
        moved.append(time.monotonic())

    threading.Thread(target=promote_later).start()
    n, bad = closed_loop("http://127.0.0.1:8765/off/answer", args.clients, args.seconds, note)
    switch = first_new[0] - moved[0] if first_new and moved else float("nan")
    print(f"promotion mid-load: {n} answered, {len(bad)} failed {sorted(set(bad))}, versions seen {seen}, "
          f"switch {switch:.2f}s after the pointer moved (poll 5s default)")  # fmt: skip
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
