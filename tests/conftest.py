"""Shared fixtures: the SQuAD sample, tiny models (built once), one local Ray, one S3 server.

The S3 server (moto, on 127.0.0.1) is started before Ray so that Ray's workers inherit the AWS
environment that points at it. Ray starts once per test session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# 9 articles of the SQuAD 2.0 dev set (CC BY-SA 4.0; source and licence in tests/data/README.md).
SQUAD_SAMPLE = REPO / "tests" / "data" / "squad-v2-dev-sample.json"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# One node, no spot instances (the settings `qadist demo` runs with, docs/demo.md): Ray Train's
# controller polls its workers every 0.5 s instead of 2 s and starts no preemption watcher, so each
# of the suite's training runs starts and ends seconds sooner. Set before the session's Ray starts.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def squad_sample() -> str:
    """The in-repo SQuAD 2.0 sample. Missing data fails the test; it never skips it."""
    if not SQUAD_SAMPLE.is_file():
        pytest.fail(
            f"test data missing: {SQUAD_SAMPLE} (it is part of the repository; restore it "
            "with `git checkout -- tests/data/`)",
            pytrace=False,
        )
    return str(SQUAD_SAMPLE)


@pytest.fixture(scope="session")
def squad_pairs(squad_sample) -> list[dict]:
    from qadist.squad.io import read_pairs

    return read_pairs(squad_sample)[0]


@pytest.fixture(scope="session")
def bert_tokenizer():
    """The real MiniLM WordPiece tokenizer (BERT-style), loaded once per session."""
    from qadist.models import load_tokenizer, minilm_path

    return load_tokenizer(minilm_path())


@pytest.fixture(scope="session")
def albert_tokenizer(squad_pairs):
    """An ALBERT-style Unigram tokenizer trained once per session on the sample's contexts."""
    from qadist.models import train_albert_tokenizer

    return train_albert_tokenizer(sorted({p["context"] for p in squad_pairs}))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Folders of tiny QA models: two BERT teachers sharing a tokenizer, a BERT student, an ALBERT."""
    from qadist.models import build_tiny_model, load_tokenizer, minilm_path

    root = tmp_path_factory.mktemp("tiny-models")
    bert_tok = load_tokenizer(minilm_path())
    return {
        "teacher_a": build_tiny_model("bert", root / "teacher-a", seed=1, tokenizer=bert_tok),
        "teacher_b": build_tiny_model("bert", root / "teacher-b", seed=2, tokenizer=bert_tok),
        "student": build_tiny_model("bert", root / "student", seed=3, tokenizer=bert_tok, num_layers=1, hidden=32),
        "albert": build_tiny_model("albert", root / "albert", seed=4),
    }


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a real HTTP endpoint), with the AWS environment pointing at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket per test; returns its s3:// URI."""
    from qadist.storage import s3_client

    name = "qadist-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One embedded Ray for the whole session (started after the S3 server, so workers see it)."""
    import ray

    if not ray.is_initialized():
        # address="local": never join whatever /tmp/ray/ray_current_cluster names (a stale file
        # from an earlier `ray start` on the machine makes ray.init() try to connect to it).
        # log_to_driver=False: the session's Ray outlives every test, and Ray forwards worker output
        # late (its log monitor tails the workers' files; its deduplicator holds repeated lines for
        # RAY_DEDUP_LOGS_AGG_WINDOW_S and prints "[repeated Nx across cluster]" afterwards), so a
        # Train test's last lines were printed to this process's stderr during whichever test ran
        # next, inside its captured one-line error. Worker output stays in Ray's session logs.
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}},
        )
    yield ray
    ray.shutdown()
