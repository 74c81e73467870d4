"""The device decisions of `qadist.inference` (and what the training loop takes from them), proved
on a CPU: precision on emulated-bf16 GPUs, inference that runs out of GPU memory, training that
does, the dtype of training loads, ONNX Runtime's providers, pinned copies and host syncs per step,
the torch floor, and rates on the console."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import qadist.inference as inference
from qadist.errors import UserError, user_error_in

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


# ---- precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_fp16_where_bf16_is_only_emulated(monkeypatch, native):
    """T4/V100: is_bf16_supported() is True through emulation; only native bf16 gets bf16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert inference.autocast_dtype(CUDA, "auto") == (torch.bfloat16 if native else torch.float16)
    assert inference.autocast_dtype(CPU, "auto") is None


# ---- inference out of GPU memory ----------------------------------------------------------------


class RowLimited(torch.nn.Module):
    """A QA 'model' whose logits depend on each row alone, out of GPU memory above `limit` rows."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.batches = limit, []

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        self.batches.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        x = torch.sin(input_ids.float()) * attention_mask
        return SimpleNamespace(start_logits=x, end_logits=x.cumsum(-1))


def windows(n: int = 21) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(1, 1000, size=int(rng.integers(5, 40))).tolist() for _ in range(n)]


def test_inference_out_of_memory_halves_the_batch_and_says_so_once(caplog):
    ids = windows()
    expected = inference.run_windows(RowLimited(limit=100), ids, None, 0, 8, CPU)
    model = RowLimited(limit=2)
    with caplog.at_level(logging.WARNING, logger="qadist.inference"):
        got = inference.run_windows(model, ids, None, 0, 8, CPU)
    assert len(got) == len(expected) == len(ids)
    for (s, e), (s0, e0) in zip(got, expected):
        np.testing.assert_array_equal(s, s0)
        np.testing.assert_array_equal(e, e0)
    assert max(b for b in model.batches[3:]) <= 2  # after 8 -> 4 -> 2 it stays at 2
    said = [r for r in caplog.records if "out of GPU memory" in r.getMessage()]
    assert len(said) == 1 and "--batch-size 2" in said[0].getMessage()


def test_the_batch_size_that_fitted_is_returned_for_later_calls():
    model = RowLimited(limit=3)
    _, size = inference.fit_windows(model, windows(), None, 0, 16, CPU)
    assert size == 2  # 16 -> 8 -> 4 -> 2
    model.batches.clear()
    _, again = inference.fit_windows(model, windows(), None, 0, size, CPU)
    assert again == 2 and max(model.batches) == 2  # a later call starting there never runs out


def test_out_of_memory_at_batch_one_is_a_user_error_naming_the_flag():
    with pytest.raises(UserError, match="--batch-size 1"):
        inference.run_windows(RowLimited(limit=0), windows(3), None, 0, 4, CPU)


# ---- training out of GPU memory -----------------------------------------------------------------


def test_training_out_of_memory_is_one_user_error_line_naming_batch_size_and_grad_accum():
    with pytest.raises(UserError) as raised, inference.training_memory(batch_size=32, grad_accum=2):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = str(raised.value)
    assert "\n" not in message and "--batch-size 16" in message and "--grad-accum 4" in message
    with pytest.raises(UserError, match="even at --batch-size 1.*--grad-accum 2"):
        with inference.training_memory(batch_size=1, grad_accum=2):
            raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(ValueError), inference.training_memory(batch_size=32, grad_accum=2):
        raise ValueError("not a memory error: left alone")


def test_a_user_error_in_a_worker_stops_the_run_instead_of_a_restart():
    """The controller-side callback raises the workers' UserError (a ControllerError, never retried)."""
    from qadist.train.launch import StopOnUserError

    wrapped = RuntimeError("worker 0 failed")
    wrapped.__cause__ = UserError("out of GPU memory in a training step at --batch-size 8 per worker; ...")
    with pytest.raises(UserError, match="--batch-size 8"):
        StopOnUserError().after_exception(None, {0: RuntimeError("collateral"), 1: wrapped})
    StopOnUserError().after_exception(None, {0: RuntimeError("a crash: retried as before")})
    assert user_error_in(wrapped) is not None


# ---- the dtype of loads -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp16_student(tiny_models, tmp_path_factory) -> str:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    folder = tmp_path_factory.mktemp("fp16-student")
    AutoModelForQuestionAnswering.from_pretrained(tiny_models["student"]).half().save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models["student"]).save_pretrained(folder)
    return str(folder)


def test_a_half_precision_checkpoint_trains_on_fp32_weights(fp16_student):
    from qadist.models import load_tokenizer
    from qadist.train.batches import collate_windows, plan_steps
    from qadist.train.loop import build_optimizer, build_scheduler, train_step
    from qadist.train.losses import DistillationLoss
    from qadist.train.qa import QATask

    ctx = SimpleNamespace(train={"trust_remote_code": False})
    model = QATask(DistillationLoss(), ctx).load_model(fp16_student)  # the task's own load, as the loop runs it
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    tok = load_tokenizer(fp16_student)
    ids = [tok("who?", "someone did it")["input_ids"], tok("what?", "nothing at all here")["input_ids"]]
    raw = {
        "input_ids": ids,
        "start_logits": [np.zeros(len(x), np.float32) for x in ids],
        "end_logits": [np.zeros(len(x), np.float32) for x in ids],
        "start_position": [1, -1],
        "end_position": [2, -1],
    }
    optimizer = build_optimizer(model, 1e-3, 0.01)
    stats = train_step(
        model,
        [collate_windows(raw, tok.pad_token_id)],
        DistillationLoss(),
        optimizer,
        build_scheduler(optimizer, plan_steps(2, 1, 2, 1, 1.0, 0.0)),
        torch.amp.GradScaler("cpu", enabled=False),
        1.0,
        CPU,
    )
    assert np.isfinite(stats["loss"])


def test_inference_on_a_cpu_runs_half_precision_weights_in_fp32(fp16_student):
    from qadist.models import load_qa_model

    model, device = inference.place(load_qa_model(fp16_student), use_gpu=False)
    assert device == CPU and {p.dtype for p in model.parameters()} == {torch.float32}


# ---- ONNX Runtime's providers -------------------------------------------------------------------


def exported(providers: list[str]) -> inference.OnnxQAModel:
    """An OnnxQAModel whose session runs on `providers` (no graph needed to decide the device)."""
    model = object.__new__(inference.OnnxQAModel)
    model.path, model.threads = "graph.onnx", 1
    model.session = SimpleNamespace(get_providers=lambda: providers)
    return model


def test_an_exported_model_stays_on_the_cpu_without_onnxruntime_gpu(monkeypatch, caplog):
    import onnxruntime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(inference, "_said", set())
    with caplog.at_level(logging.WARNING, logger="qadist.inference"):
        model, device = inference.place(exported(["CPUExecutionProvider"]), use_gpu=None)
        inference.place(exported(["CPUExecutionProvider"]), use_gpu=None)
    assert device == CPU and isinstance(model, inference.OnnxQAModel)
    assert len([r for r in caplog.records if "onnxruntime-gpu" in r.getMessage()]) == 1  # said once
    with pytest.raises(UserError, match="onnxruntime-gpu"):  # asked for explicitly: the clear error
        inference.place(exported(["CPUExecutionProvider"]), use_gpu=True)


def test_an_exported_model_uses_cuda_where_onnxruntime_has_it(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    moved = []
    monkeypatch.setattr(inference.OnnxQAModel, "to", lambda self, device: moved.append(device) or self)
    _, device = inference.place(exported(["CUDAExecutionProvider"]), use_gpu=None)
    assert device == CUDA and moved == [CUDA]


# ---- host-to-device copies and host syncs -------------------------------------------------------


def test_batches_are_pinned_only_for_a_gpu(monkeypatch):
    pinned, moved = [], []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(1) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, non_blocking=False: moved.append(non_blocking) or self)
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    inference.to_device(batch, CPU)
    assert pinned == [] and moved == [True, True]
    inference.to_device(batch, CUDA)
    assert len(pinned) == 2 and moved == [True] * 4


def test_a_training_step_syncs_with_the_device_once_per_step_not_per_micro_batch(tiny_models, monkeypatch):
    """Every tensor -> Python conversion waits for the GPU; qadist's own must not grow with grad_accum
    (the CPU-side group counts, made before the copy to the device, are not counted; nor is
    transformers' SDPA mask check, `padding_mask.all()`, which is not ours)."""
    import qadist.train.loop as loop
    import qadist.train.qa as qa
    from qadist.models import load_qa_model, load_tokenizer
    from qadist.train.batches import collate_windows, plan_steps
    from qadist.train.losses import DistillationLoss

    counting = {"on": True, "n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, **kwargs):
            counting["n"] += counting["on"] and "/qadist/" in sys._getframe(1).f_code.co_filename
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    real_counts = qa.group_counts

    def cpu_counts(micro_batches):
        counting["on"] = False
        try:
            return real_counts(micro_batches)
        finally:
            counting["on"] = True

    monkeypatch.setattr(qa, "group_counts", cpu_counts)
    tok = load_tokenizer(tiny_models["student"])
    ids = [tok("who?", "someone did it")["input_ids"], tok("what?", "nothing at all here")["input_ids"]]
    raw = {
        "input_ids": ids,
        "start_logits": [np.zeros(len(x), np.float32) for x in ids],
        "end_logits": [np.zeros(len(x), np.float32) for x in ids],
        "start_position": [1, -1],
        "end_position": [2, -1],
    }

    def syncs(k: int) -> int:
        model = load_qa_model(tiny_models["student"])
        opt = loop.build_optimizer(model, 1e-3, 0.01)
        sched = loop.build_scheduler(opt, plan_steps(2 * k, 1, 2, k, 1.0, 0.0))
        group = [collate_windows(raw, tok.pad_token_id) for _ in range(k)]
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        counting["n"] = 0
        loop.train_step(model, group, DistillationLoss(alpha_hard=0.5), opt, sched, scaler, 1.0, CPU)
        return counting["n"]

    assert syncs(4) == syncs(1)


# ---- packaging and the console ------------------------------------------------------------------


def test_torch_floor_is_2_6():
    from packaging.requirements import Requirement

    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()  # (no tomllib on Python 3.10)
    torch_req = Requirement(re.search(r'^\s*"(torch[<>=!~][^"]*)"', text, re.M).group(1))
    assert not torch_req.specifier.contains("2.5.1") and torch_req.specifier.contains("2.6.0")


@pytest.mark.parametrize(
    ("count", "seconds", "shown"),
    [
        (8, 244.0, "30.5 s/pair"),
        (1, 3.0, "3 s/pair"),
        (300, 10.0, "30.0 pairs/s"),
        (12345, 1.0, "12,345.0 pairs/s"),
        (0, 5.0, "0 pairs/s"),
    ],
)
def test_rates_stay_readable_below_one_per_second(count, seconds, shown):
    from qadist.console import rate

    assert rate(count, seconds, "pair") == shown
