import json

import pytest
import torch

from qadist.demo.plan import FULL, QUICK, Train, epochs_for
from qadist.demo.report import COLUMNS, MeanLogitsEnsemble, Row, checks, markdown_table, report

KEYS = ["teacher_a", "teacher_b", "ensemble", "ood_student", "distilled", "labels_only_200", "distilled_ft_200"]


def make_rows(distilled_f1: float = 70.0) -> list[Row]:
    specs = [
        ("teacher_a", 6, 72.0, 10.0),
        ("teacher_b", 6, 71.0, 10.0),
        ("ensemble", 6, 72.0, 5.0),
        ("ood_student", 2, 55.0, 30.0),
        ("distilled", 2, distilled_f1, 30.0),
        ("labels_only_200", 2, 40.0, 30.0),
        ("distilled_ft_200", 2, distilled_f1 + 1, 30.0),
    ]
    rows = []
    for key, layers, f1, speed in specs:
        row = Row(key.replace("_", " "), key, layers, 0 if key == "distilled" else 200, "", ["/nowhere"])
        row.metrics = {"exact": f1 - 2, "f1": f1, "HasAns_f1": f1 - 5, "NoAns_f1": f1 + 5}
        row.params, row.megabytes, row.answers_per_s, row.speed_vs_teacher = (
            1_000_000 * layers,
            4.0 * layers,
            speed,
            speed / 10.0,
        )
        row.flops_vs_teacher = 6 / layers if key != "ensemble" else 0.5
        rows.append(row)
    return rows


def test_markdown_table_has_every_column_and_one_line_per_model():
    lines = markdown_table(make_rows()).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == list(COLUMNS)
    assert len(lines) == 2 + len(KEYS)
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)


@pytest.mark.parametrize("distilled_f1, holds", [(70.0, True), (60.0, False)])
def test_checks_follow_the_numbers(distilled_f1, holds):
    found = checks({r.key: r for r in make_rows(distilled_f1)})
    claim = lambda start: next(ok for text, ok in found if text.startswith(start))  # noqa: E731
    assert claim("distilled student (no labels) within 3 F1 of the teacher ensemble") is holds
    assert claim("distilled student (no labels) beats the student trained on the teachers' own labels") is True
    assert claim("200 store labels: distilled, then fine-tuned beats fine-tuned alone") is True
    assert claim("the student answers faster") is True
    assert claim("the student's speed-up matches its FLOPs ratio") is True  # 3.0x faster, 3.0x fewer FLOPs


def test_a_speed_up_far_from_the_flops_ratio_is_called_out():
    rows = {r.key: r for r in make_rows()}
    rows["distilled"].speed_vs_teacher = 1.2  # 3x fewer FLOPs, 1.2x faster: not within 2x
    found = dict((text.split(" (")[0], ok) for text, ok in checks(rows))
    assert found["the student's speed-up matches its FLOPs ratio within 2x"] is False


def test_speed_is_measured_per_architecture(tiny_models, squad_pairs):
    from qadist.config import AnswerSettings
    from qadist.demo.speed import measure
    from qadist.models import load_qa_model, load_tokenizer

    models = {
        k: (load_qa_model(tiny_models[k]).eval(), load_tokenizer(tiny_models[k])) for k in ("teacher_a", "student")
    }
    cfg = AnswerSettings(max_seq_len=128, doc_stride=32)
    speeds = measure(models, squad_pairs[:40], cfg, latency_questions=4, repeats=1)
    for s in speeds.values():
        assert s.latency_ms > 0 and s.answers_per_s > 0 and s.threads >= 1 and s.batch_size == 64
    # teacher: 2 layers of hidden 64; student: 1 layer of hidden 32 -> several times fewer FLOPs per window
    assert speeds["teacher_a"].flops_per_window > 2 * speeds["student"].flops_per_window


def test_report_writes_markdown_json_and_png(tmp_path, capsys):
    curve = {"labels only": {50: 20.0, 200: 40.0}, "distilled, then fine-tuned": {0: 70.0, 50: 69.0, 200: 71.0}}
    result = report(make_rows(), curve, {"teachers": 12.0, "distill": 30.0}, 50.0, {"seed": 0}, str(tmp_path))
    assert (tmp_path / "f1_vs_labels.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert [r["key"] for r in saved["rows"]] == KEYS
    assert saved["curve"]["labels only"] == {"50": 20.0, "200": 40.0}
    assert "| total | 50.0 |" in (tmp_path / "results.md").read_text()
    assert "total" in capsys.readouterr().out


def test_mean_logits_ensemble_averages_members():
    class Fixed(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, input_ids, **_):
            from transformers.modeling_outputs import QuestionAnsweringModelOutput

            x = torch.full(input_ids.shape, self.value)
            return QuestionAnsweringModelOutput(start_logits=x, end_logits=-x)

    out = MeanLogitsEnsemble([Fixed(1.0), Fixed(3.0)])(input_ids=torch.zeros(2, 5, dtype=torch.long))
    assert torch.equal(out.start_logits, torch.full((2, 5), 2.0)) and torch.equal(
        out.end_logits, torch.full((2, 5), -2.0)
    )


def test_few_label_runs_get_a_minimum_number_of_steps():
    train = Train(epochs=2.0, learning_rate=1e-4, batch_size=16, min_steps=40)
    assert epochs_for(train, 50) == pytest.approx(40 * 16 / 50)
    assert epochs_for(train, 5000) == 2.0


def test_quick_plan_is_smaller_than_the_full_one():
    assert QUICK.sizes.logged < FULL.sizes.logged and QUICK.sizes.teacher < FULL.sizes.teacher
    assert set(QUICK.few) <= set(QUICK.curve) and set(FULL.few) <= set(FULL.curve)
    assert FULL.curve == (50, 200, 1000) and FULL.few == (200, 1000)  # the seed's ~1,000 labels
    assert QUICK.student_layers < 6 and FULL.student_layers < 6


def test_optional_rows_add_their_checks():
    rows = {r.key: r for r in make_rows()}
    assert not any(text.startswith("self-distillation") for text, _ in checks(rows))
    for key, f1 in (("self_distilled", 73.0), ("pretrained_ensemble", 71.0)):
        rows[key] = Row(key, key, 6, 0, "", ["/nowhere"])
        rows[key].metrics = {"f1": f1}
    found = dict((text.split(" (")[0], ok) for text, ok in checks(rows))
    assert found["self-distillation beats its teacher"] is True
    assert found["pre-training the teachers on the store's pages helps them"] is False
