"""benchmarks/serve_load.py --gpu: the two PyTorch apps share one GPU by default, and GPUs the
cluster does not have are refused before Serve starts (it would wait for them forever)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def serve_load():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_apps_share_one_gpu_by_default(serve_load):
    assert serve_load.gpu_fraction(2, available=1) == 0.5
    assert serve_load.gpu_fraction(3, available=1) * 3 == pytest.approx(1)


def test_a_whole_gpu_each_where_there_are_enough(serve_load):
    assert serve_load.gpu_fraction(2, available=2, fraction=1) == 1
    assert serve_load.gpu_fraction(2, available=8, fraction=0.25) == 0.25


@pytest.mark.parametrize(
    ("available", "fraction"),
    [(0, None), (1, 1.0), (0.5, 0.5), (1.5, 1.0)],
)
def test_more_gpus_than_the_cluster_has_is_one_line_naming_the_fix(serve_load, available, fraction):
    with pytest.raises(ValueError, match=r"--gpu: 2 apps x .* GPU, but this Ray cluster has .*--gpu-fraction") as e:
        serve_load.gpu_fraction(2, available=available, fraction=fraction)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_a_fraction_outside_one_gpu_is_refused(serve_load, fraction):
    with pytest.raises(ValueError, match="--gpu-fraction"):
        serve_load.gpu_fraction(2, available=8, fraction=fraction)


def test_main_exits_2_before_serve_starts_when_the_gpus_are_missing(serve_load, monkeypatch, tmp_path, capsys):
    """The check runs on the real arguments: a machine without GPUs, `--gpu`, exit 2 and one line."""
    import sys
    from types import SimpleNamespace

    demo = tmp_path / "demo"
    for path in ("models/teacher-a/final", "models/student-distilled/final"):
        (demo / path).mkdir(parents=True)
    (demo / "data").mkdir()
    (demo / "data" / "test.jsonl").write_text(
        '{"id": "q1", "question": "Q?", "context": "C.", "answers": {"text": [], "answer_start": []}}\n'
    )
    started = []
    fake_ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0})
    monkeypatch.setattr(serve_load, "export_int8", lambda *a: str(tmp_path / "onnx"))
    monkeypatch.setattr("qadist.runtime.ensure_ray", lambda **kw: fake_ray)
    monkeypatch.setattr("ray.serve.start", lambda *a, **kw: started.append(True))
    monkeypatch.setattr(sys, "argv", ["serve_load.py", "--demo", str(demo), "--gpu"])
    assert serve_load.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--gpu: 2 apps x 0.5 GPU = 1 GPU, but this Ray cluster has 0") and "\n" not in err
    assert not started
