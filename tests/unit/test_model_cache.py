"""The demo's model cache: a model is reused only for the same start, data, settings and version."""

from __future__ import annotations

import json

from qadist.demo import model_cache


def model(folder, weights: bytes):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


def test_the_key_changes_with_each_thing_that_made_the_model(tmp_path):
    start = model(tmp_path / "start", b"\x00" * 64)
    other_start = model(tmp_path / "other", b"\x01" * 64)
    data = tmp_path / "train.jsonl"
    data.write_text('{"id": "a"}\n')
    settings = {"learning_rate": 2e-4, "epochs": 1.0, "seed": 0}
    key = model_cache.cache_key("finetune", start, str(data), settings)
    assert key == model_cache.cache_key("finetune", start, str(data), dict(settings))
    assert key != model_cache.cache_key("finetune", other_start, str(data), settings)
    assert key != model_cache.cache_key("finetune", start, str(data), {**settings, "seed": 1})
    assert key != model_cache.cache_key("pretrain", start, str(data), settings)
    data.write_text('{"id": "b"}\n')
    assert key != model_cache.cache_key("finetune", start, str(data), settings)


def test_keep_then_restore_copies_the_model_and_a_miss_says_so(tmp_path):
    trained = model(tmp_path / "run" / "final", b"\x02" * 32)
    cache = str(tmp_path / "cache")
    assert not model_cache.restore(cache, "finetune-abc", str(tmp_path / "elsewhere" / "final"))
    model_cache.keep(cache, "finetune-abc", trained)
    assert not list((tmp_path / "cache").glob("*.partial-*"))  # written aside, then renamed
    assert model_cache.restore(cache, "finetune-abc", str(tmp_path / "elsewhere" / "final"))
    assert (tmp_path / "elsewhere" / "final" / "model.safetensors").read_bytes() == b"\x02" * 32


def test_a_copy_killed_midway_is_never_a_hit(tmp_path):
    cache = tmp_path / "cache"
    (cache / "finetune-abc.partial-123").mkdir(parents=True)
    (cache / "finetune-abc.partial-123" / "config.json").write_text("{}")
    assert not model_cache.restore(str(cache), "finetune-abc", str(tmp_path / "out" / "final"))


def test_the_self_distilled_teacher_is_keyed_by_the_teachers_its_labels_come_from(tmp_path):
    """Its soft labels are not a file of the run's inputs: the key holds what made them instead
    (both teachers' files, the pages, the logged questions), and none of the run's own paths."""
    from qadist.config import DistillConfig
    from qadist.demo.prepare import Prepared, distill_key

    pages, questions = tmp_path / "documents.jsonl", tmp_path / "questions.jsonl"
    pages.write_text('{"doc_id": "p1", "text": "A camera."}\n')
    questions.write_text('{"id": "q1", "question": "Which mount?"}\n')
    data = {"documents": str(pages), "questions": str(questions)}

    def prepared(out: str, teacher_b: bytes) -> Prepared:
        a = model(tmp_path / out / "a", b"\x00" * 16)
        b = model(tmp_path / out / "b", teacher_b)
        return Prepared(out, data, {}, {}, a, b, "", {}, 1, 0.0, None, None)

    def key(prep: Prepared, epochs: float = 1.0) -> str:
        cfg = DistillConfig(labels=f"{prep.out}/labels", student=prep.teacher_a, out=f"{prep.out}/self", epochs=epochs)
        return distill_key(prep, cfg)

    first = key(prepared("run1", b"\x01" * 16))
    assert first == key(prepared("run2", b"\x01" * 16))  # another folder, the same teachers
    assert first != key(prepared("run3", b"\x02" * 16))  # teacher B changed
    assert first != key(prepared("run4", b"\x01" * 16), epochs=2.0)
    questions.write_text('{"id": "q1", "question": "Which lens mount?"}\n')
    assert first != key(prepared("run5", b"\x01" * 16))
    pages.write_text('{"doc_id": "p1", "text": "A lens."}\n')
    assert first != key(prepared("run6", b"\x01" * 16))


def test_train_or_reuse_trains_once_and_says_which(tmp_path, capsys):
    cache, runs = str(tmp_path / "cache"), []

    def train(out):
        runs.append(out)
        model(tmp_path / out / "final", b"\x03" * 16)

    model_cache.train_or_reuse(cache, "finetune-k", str(tmp_path / "a"), lambda: train("a"), "teacher trained earlier")
    assert "not in the teacher cache: trained now, then kept for later runs" in capsys.readouterr().out
    model_cache.train_or_reuse(cache, "finetune-k", str(tmp_path / "b"), lambda: train("b"), "teacher trained earlier")
    assert runs == ["a"] and "teacher trained earlier" in capsys.readouterr().out
    assert (tmp_path / "b" / "final" / "model.safetensors").read_bytes() == b"\x03" * 16
