"""Stage configs: YAML (flat or one section per stage), flag overrides, errors that name the key."""

from __future__ import annotations

import os

import pytest

from qadist.config import EvaluateConfig, LabelConfig, PredictConfig, load_config, to_dict
from qadist.errors import UserError
from qadist.stages import SECTIONS

REQUIRED = {"model": "m", "data": "d.json", "out": "p.json"}


def yaml_file(tmp_path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def test_flat_yaml(tmp_path):
    path = yaml_file(tmp_path, "model: m\ndata: d.json\nout: p.json\nbatch_size: 8\nmax_seq_len: 256\ndoc_stride: 64\n")
    cfg = load_config(PredictConfig, "predict", path)
    assert (cfg.model, cfg.batch_size, cfg.max_seq_len, cfg.doc_stride, cfg.max_query_len) == ("m", 8, 256, 64, 64)


def test_sectioned_yaml_takes_the_stage_section(tmp_path):
    path = yaml_file(
        tmp_path,
        (
            "label:\n  pairs: s3://b/pairs\n  out: s3://b/labels\n  teachers: [t1, t2]\n  max_seq_len: 256\n"
            "predict:\n  model: m\n  data: d.json\n  out: p.json\n  batch_size: 4\n"
            "evaluate:\n  data: d.json\n  predictions: p.json\n"
        ),
    )
    label = load_config(LabelConfig, "label", path)
    assert label.teachers == ["t1", "t2"] and label.max_seq_len == 256
    assert load_config(PredictConfig, "predict", path).batch_size == 4
    assert load_config(EvaluateConfig, "evaluate", path).predictions == os.path.abspath(
        "p.json"
    )  # resolved on the driver


def test_flag_overrides_win_and_none_does_not_override(tmp_path):
    path = yaml_file(tmp_path, "model: m\ndata: d.json\nout: p.json\nbatch_size: 8\nnull_threshold: 1.5\n")
    cfg = load_config(PredictConfig, "predict", path, {"batch_size": 2, "null_threshold": None, "out": "q.json"})
    assert (cfg.batch_size, cfg.null_threshold, cfg.out) == (2, 1.5, os.path.abspath("q.json"))


def test_flags_alone():
    cfg = load_config(PredictConfig, "predict", None, {**REQUIRED, "use_gpu": False})
    assert cfg.use_gpu is False and cfg.max_seq_len == 384


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    path = yaml_file(tmp_path, "model: m\ndata: d.json\nout: p.json\nbatchsize: 8\n")
    with pytest.raises(UserError) as e:
        load_config(PredictConfig, "predict", path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: unknown key 'batchsize'") and "batch_size" in msg and "\n" not in msg


def test_unknown_key_in_a_section(tmp_path):
    path = yaml_file(tmp_path, "evaluate:\n  data: d\n  predictions: p\n  tresh: 0.5\n")
    with pytest.raises(UserError, match="unknown key 'tresh'"):
        load_config(EvaluateConfig, "evaluate", path)


@pytest.mark.parametrize(
    "text,key,got",
    [
        ("batch_size: many\n", "batch_size", "'many'"),
        ("null_threshold: [1]\n", "null_threshold", "[1]"),
        ("use_gpu: maybe\n", "use_gpu", "'maybe'"),
        ("batch_size: 0\n", "batch_size", "0"),
    ],
)
def test_wrong_type_names_the_key_and_value(tmp_path, text, key, got):
    path = yaml_file(tmp_path, "model: m\ndata: d.json\nout: p.json\n" + text)
    with pytest.raises(UserError) as e:
        load_config(PredictConfig, "predict", path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: key '{key}':") and f"(got {got})" in msg and "\n" not in msg


def test_wrong_type_in_a_list_names_the_element():
    with pytest.raises(UserError, match=r"key 'teachers.1':"):
        load_config(LabelConfig, "label", None, {"pairs": "p", "out": "o", "teachers": ["a", 3]})


def test_missing_required_key_names_the_flag():
    with pytest.raises(
        UserError, match="command line: missing required key 'data'; set it in the config or with --data"
    ):
        load_config(PredictConfig, "predict", None, {"model": "m", "out": "o"})


def test_window_lengths_that_cannot_work():
    with pytest.raises(UserError, match="doc_stride=200 must be in"):
        load_config(PredictConfig, "predict", None, {**REQUIRED, "max_seq_len": 256, "doc_stride": 200})


@pytest.mark.parametrize(
    "content,message",
    [
        ("a: [1\n", "not valid YAML"),
        ("- 1\n- 2\n", "must be a YAML mapping"),
        (b"\xff\xfe: 1\n", "not UTF-8"),
        ("predict: 3\nlabel: {}\n", "section 'predict' must be a mapping"),
    ],
)
def test_unreadable_config_files(tmp_path, content, message):
    path = yaml_file(tmp_path, content)
    with pytest.raises(UserError, match=message) as e:
        load_config(PredictConfig, "predict", path, REQUIRED, sections=SECTIONS)  # as the CLI reads it
    assert str(e.value).startswith(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(PredictConfig, "predict", str(tmp_path / "nope.yaml"), REQUIRED)


def test_empty_config_file_uses_flags(tmp_path):
    assert load_config(PredictConfig, "predict", yaml_file(tmp_path, ""), REQUIRED).model == "m"


def test_to_dict_round_trips():
    cfg = load_config(LabelConfig, "label", None, {"pairs": "p", "out": "o", "teachers": ["t"]})
    data = to_dict(cfg)
    assert data["teachers"] == ["t"] and data["combine"] == "mean_logits"
    assert LabelConfig(**data) == cfg


def test_assignment_is_validated():
    cfg = load_config(PredictConfig, "predict", None, REQUIRED)
    with pytest.raises(ValueError):
        cfg.batch_size = "x"


def test_a_one_line_error_keeps_a_quoted_value_that_holds_unicode_line_separators():
    from qadist.errors import UserError, first_line, one_line, user_error_in

    message = "pairs.jsonl: row 3: id 'a\u2028b\u0085c' is taken; give each row its own id"
    assert one_line(UserError(message + "\ntraceback ...")) == message
    wrapped = RuntimeError(f"ActorDiedError: ...\nqadist.errors.UserError: {message}\r\n  File ...")
    assert str(user_error_in(wrapped)) == message
    assert first_line("") == ""
