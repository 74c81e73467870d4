"""The teacher ensemble (`qadist.label.teacher`): combining logits, padding accounting, the callable class."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from qadist.errors import UserError
from qadist.inference import autocast_dtype, collate, cpu_has_bf16, qa_logits
from qadist.label.mixed_tokenizers import other_windows, project_onto
from qadist.label.teacher import COMBINES, TeacherEnsemble, combine_logits, padded_tokens
from qadist.models import load_qa_model, load_tokenizer
from qadist.projection import project_pair
from qadist.shards import LOGITS_TYPE, TEACHER_LOGITS_TYPE, list_values, windows_table
from qadist.squad.features import make_windows


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_mean_logits_is_the_mean():
    x = np.array([[1.0, 2.0, -3.0], [3.0, 0.0, 1.0]])
    np.testing.assert_allclose(combine_logits(x), [2.0, 1.0, -1.0])


@pytest.mark.parametrize("name", list(COMBINES))
def test_every_combine_mode_is_a_choice_of_the_config_and_the_flag_and_gives_one_row(name):
    from typing import get_args

    from qadist.cli import metavar
    from qadist.config import LabelConfig, load_config

    field = LabelConfig.model_fields["combine"]
    assert get_args(field.annotation) == tuple(COMBINES)  # the config's choices are the table's keys
    assert name in metavar(field).split("|")  # `qadist label --combine` offers it
    assert load_config(LabelConfig, "label", None, {"pairs": "p", "out": "o", "teachers": ["t"], "combine": name})
    got = combine_logits(np.random.default_rng(0).normal(size=(3, 7)), name)
    assert got.shape == (7,) and got.dtype == np.float32 and np.isfinite(got).all()


def test_mean_probs_is_log_of_mean_probabilities():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=5, size=(3, 17)).astype(np.float32)
    got = combine_logits(x, "mean_probs")
    want = np.log(np.exp(log_softmax(x.astype(np.float64))).mean(axis=0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.exp(got).sum() == pytest.approx(1.0, abs=1e-5)
    # One teacher (or identical ones): the teacher's own log-softmax; stable for huge logits.
    np.testing.assert_allclose(combine_logits(np.stack([x[0], x[0]]), "mean_probs"), log_softmax(x[0]), atol=1e-5)
    assert np.isfinite(combine_logits(np.array([[1e4, -1e4], [-1e4, 1e4]]), "mean_probs")).all()
    with pytest.raises(ValueError):
        combine_logits(x, "median")


def test_padded_tokens_follows_length_sorted_batches():
    assert padded_tokens([5, 3, 3, 1], 2) == 2 * 5 + 2 * 3
    assert padded_tokens([4, 4, 4], 8) == 12  # no padding when lengths agree
    assert padded_tokens([10, 1, 9, 2], 2) == 2 * 10 + 2 * 2  # sorted first: [10, 9], [2, 1]


@pytest.fixture(scope="module")
def windows(squad_pairs, tiny_models) -> dict:
    tok = load_tokenizer(tiny_models["teacher_a"])
    pairs = squad_pairs[:12]
    return make_windows({k: [p[k] for p in pairs] for k in ("id", "question", "context")}, tok, 128, 32, 32)


def direct_logits(model_paths: list[str], windows: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each window alone through each model (no padding at all): [n_teachers, length] per window."""
    models = [load_qa_model(p).eval() for p in model_paths]
    out = []
    for ids, types in zip(windows["input_ids"], windows["token_type_ids"]):
        runs = [qa_logits(m, collate([ids], [types], 0), torch.device("cpu")) for m in models]
        out.append((np.stack([s[0] for s, _ in runs]), np.stack([e[0] for _, e in runs])))
    return out


def test_ensemble_on_a_dict_batch_matches_each_teacher_run_alone(windows, tiny_models):
    teachers = [tiny_models["teacher_a"], tiny_models["teacher_b"]]
    ensemble = TeacherEnsemble(teachers, batch_size=4, keep_teacher_logits=True)
    out = ensemble(dict(windows))
    assert out["id"] == windows["id"] and out["window"] == windows["window"]  # passed through
    direct = direct_logits(teachers, windows)
    assert len(out["start_logits"]) == len(windows["id"])
    for i, (start, end) in enumerate(direct):
        n = len(windows["input_ids"][i])
        assert out["start_logits"][i].dtype == np.float16 and out["start_logits"][i].shape == (n,)
        assert out["teacher_end_logits"][i].shape == (2, n)
        np.testing.assert_allclose(out["start_logits"][i].astype(np.float32), start.mean(axis=0), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(out["end_logits"][i].astype(np.float32), end.mean(axis=0), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(out["teacher_start_logits"][i].astype(np.float32), start, rtol=2e-3, atol=2e-3)
    assert not np.allclose(direct[0][0][0], direct[0][0][1])  # the two teachers really differ


def test_ensemble_on_an_arrow_table_gives_contract_columns(windows, tiny_models):
    teachers = [tiny_models["teacher_a"], tiny_models["teacher_b"]]
    table = windows_table(windows, has_answers=False)
    ensemble = TeacherEnsemble(teachers, combine="mean_probs", batch_size=5, keep_teacher_logits=True)
    out = ensemble(table)
    assert isinstance(out, pa.Table) and out.num_rows == table.num_rows
    names = out.column_names
    assert names[names.index("offsets") + 1 : names.index("offsets") + 3] == ["start_logits", "end_logits"]
    assert out.schema.field("start_logits").type == LOGITS_TYPE
    assert out.schema.field("teacher_start_logits").type == TEACHER_LOGITS_TYPE
    assert out.column("id").to_pylist() == windows["id"]
    starts = list_values(out["start_logits"])
    per_teacher = out.column("teacher_start_logits").to_pylist()
    for i, n in enumerate(len(x) for x in windows["input_ids"]):
        assert len(starts[i]) == n and len(per_teacher[i]) == 2 and len(per_teacher[i][1]) == n
        want = combine_logits(np.array(per_teacher[i], dtype=np.float32), "mean_probs")
        np.testing.assert_allclose(starts[i].astype(np.float32), want, rtol=5e-3, atol=5e-3)
        assert np.exp(starts[i].astype(np.float64)).sum() == pytest.approx(1.0, abs=2e-2)


def test_batch_size_and_padding_do_not_change_logits(windows, tiny_models):
    small = TeacherEnsemble([tiny_models["teacher_a"]], batch_size=1)(dict(windows))
    large = TeacherEnsemble([tiny_models["teacher_a"]], batch_size=64)(dict(windows))
    for a, b in zip(small["end_logits"], large["end_logits"]):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_empty_batch(tiny_models):
    ensemble = TeacherEnsemble([tiny_models["teacher_a"]])
    out = ensemble({"id": [], "input_ids": [], "token_type_ids": []})
    assert out["start_logits"] == [] and out["end_logits"] == []


def test_a_bad_combine_is_a_user_error(tiny_models):
    with pytest.raises(UserError, match="combine"):
        TeacherEnsemble([tiny_models["teacher_a"]], combine="median")


def with_text(windows: dict, pairs: list[dict]) -> dict:
    by_id = {p["id"]: p for p in pairs}
    return {**windows, **{k: [by_id[i][k] for i in windows["id"]] for k in ("question", "context")}}


def expected_projection(teacher: str, pairs: list[dict], target: dict) -> list[np.ndarray]:
    """`teacher` alone on its own windows, each pair's windows carried onto the target windows (T = 1)."""
    own = make_windows(
        {k: [p[k] for p in pairs] for k in ("id", "question", "context")}, load_tokenizer(teacher), 128, 32, 32
    )
    logits = TeacherEnsemble([teacher])(dict(own))
    contexts = {p["id"]: p["context"] for p in pairs}
    out = []
    for pair_id in dict.fromkeys(target["id"]):
        teacher_windows = [
            {
                "offsets": own["offsets"][i],
                "start_logits": logits["start_logits"][i],
                "end_logits": logits["end_logits"][i],
            }
            for i, x in enumerate(own["id"])
            if x == pair_id
        ]
        mine = [{"offsets": target["offsets"][j]} for j, x in enumerate(target["id"]) if x == pair_id]
        out += [s for s, _ in project_pair(teacher_windows, contexts[pair_id], mine, 1.0)]
    return out


def test_a_mixed_tokenizer_ensemble_carries_the_other_teacher_onto_the_first_ones_windows(squad_pairs, tiny_models):
    """WordPiece + SentencePiece teachers: the windows are the first's; its row is its own run; the
    ALBERT row is that teacher alone on its own windows, projected through characters; combined as configured."""
    pairs = squad_pairs[:12]
    bert, albert = tiny_models["teacher_a"], tiny_models["albert"]
    windows = with_text(make_windows({k: [p[k] for p in pairs] for k in ("id", "question", "context")},
                                     load_tokenizer(bert), 128, 32, 32), pairs)  # fmt: skip
    ensemble = TeacherEnsemble([bert, albert], combine="mean_probs", keep_teacher_logits=True, lengths=(128, 32, 32))
    out = ensemble(dict(windows))
    alone = TeacherEnsemble([bert])(dict(windows))
    projected = expected_projection(albert, pairs, windows)
    assert len(out["start_logits"]) == len(windows["id"]) == len(projected)
    for i in range(len(windows["id"])):
        rows = out["teacher_start_logits"][i].astype(np.float64)
        np.testing.assert_array_equal(rows[0], alone["start_logits"][i].astype(np.float64))
        np.testing.assert_allclose(np.exp(rows[1]), projected[i], atol=2e-3)
        assert np.exp(rows[1]).sum() == pytest.approx(1.0, abs=2e-3)  # a distribution over the stored window
        combined = np.exp(out["start_logits"][i].astype(np.float64))
        want = (np.exp(rows[0] - rows[0].max()) / np.exp(rows[0] - rows[0].max()).sum() + np.exp(rows[1])) / 2
        np.testing.assert_allclose(combined, want, atol=3e-3)
    # The other tokenizer's windows cut elsewhere (the CPU stage) give the same labels.
    others = [other_windows(pairs, load_tokenizer(albert), (128, 32, 32))]
    again = ensemble(dict(windows), others)
    for a, b in zip(out["teacher_end_logits"], again["teacher_end_logits"]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(KeyError, match="context"):
        ensemble({k: v for k, v in windows.items() if k != "context"})


def test_projecting_onto_the_same_windows_is_the_softmax_over_cls_and_context(squad_pairs, tiny_models):
    pairs = squad_pairs[:6]
    windows = make_windows({k: [p[k] for p in pairs] for k in ("id", "question", "context")},
                           load_tokenizer(tiny_models["teacher_a"]), 384, 128, 32)  # fmt: skip
    rng = np.random.default_rng(0)
    logits = [(rng.normal(size=(2, len(x))), rng.normal(size=(2, len(x)))) for x in windows["input_ids"]]
    contexts = {p["id"]: p["context"] for p in pairs}
    ids = windows["id"]
    single = [i for i, x in enumerate(ids) if ids.count(x) == 1]  # one window: nothing to combine
    got = project_onto(ids, windows["offsets"], logits, ids, windows["offsets"], contexts)
    for i in single:
        answerable = [0] + [k for k, (a, _) in enumerate(windows["offsets"][i]) if k and a >= 0]
        for kind in (0, 1):
            z = logits[i][kind][:, answerable]
            want = np.exp(z - z.max(axis=1, keepdims=True))
            want /= want.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(np.exp(got[i][kind][:, answerable]), want, atol=1e-6)
            others = np.setdiff1d(np.arange(len(windows["offsets"][i])), answerable)
            assert (np.exp(got[i][kind][:, others]) < 1e-11).all()  # question and special tokens: no mass
    assert single


def test_precision_picks_the_autocast_dtype():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None and autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16 and autocast_dtype(cpu, "fp16") == torch.float16
    assert autocast_dtype(torch.device("cuda"), "fp32") is None
    assert isinstance(cpu_has_bf16(), bool)


def test_bf16_teacher_logits_stay_close_to_fp32(windows, tiny_models):
    """bf16 autocast on a CPU (the demo's setting where the CPU has it natively): the same ranking of
    positions, logits within bf16 rounding."""
    fp32 = TeacherEnsemble([tiny_models["teacher_a"]], batch_size=4)(dict(windows))
    bf16 = TeacherEnsemble([tiny_models["teacher_a"]], batch_size=4, precision="bf16")(dict(windows))
    assert not all(np.array_equal(a, b) for a, b in zip(fp32["start_logits"], bf16["start_logits"]))  # bf16 really ran
    for a, b in zip(fp32["start_logits"], bf16["start_logits"]):
        a, b = a.astype(np.float32), b.astype(np.float32)
        np.testing.assert_allclose(b, a, atol=0.1 * (np.abs(a).max() + 1))
        assert int(np.argmax(a)) == int(np.argmax(b)) or abs(a[np.argmax(b)] - a.max()) < 0.05 * (np.abs(a).max() + 1)
