"""Batched QA forward passes over windows: length-grouped batches, padding only to the batch's
longest window, and the compute precision (`precision`: bf16/fp16 autocast on GPU, fp32 on CPU
unless bf16 is asked for). Shared by the teacher actors of the label stage, `qadist predict`, the
training loop's evaluation, the demo and `qadist serve`; `predict_pairs` is the whole way from pairs
to answers. `OnnxQAModel` runs an exported graph (`qadist export`) behind the same calls.

The device decisions live here, once: which device (`pick_device`, `place`), which precision
(`autocast_dtype`), host-to-device copies (`to_device`), and what running out of GPU memory does
(inference halves its batch, `fit_windows`; training stops with one line, `training_memory`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from qadist.errors import UserError

log = logging.getLogger(__name__)


def pick_device(use_gpu: bool | None = None) -> torch.device:
    """CUDA when asked (or, with None, when present); asking for a GPU without one is an error."""
    if use_gpu or (use_gpu is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from qadist.runtime import simulated_gpus

            if simulated_gpus():  # the simulated GPU cluster's test hook (qadist/runtime.py)
                return torch.device("cpu")
            raise UserError("--use-gpu was given but no CUDA device is visible; drop the flag to run on CPU")
        return torch.device("cuda")
    return torch.device("cpu")


def onnx_has_cuda() -> bool:
    """Whether ONNX Runtime can run on a GPU here (the onnxruntime-gpu package, not onnxruntime)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


_said: set[str] = set()


def place(model: Any, use_gpu: bool | None = None) -> tuple[Any, torch.device]:
    """(`model` on its device in eval mode, the device): `pick_device(use_gpu)`, except that
    - an exported (ONNX) model left to choose (None) stays on the CPU where ONNX Runtime has no CUDA
      provider (a GPU machine with the CPU-only package); asked for (True), that is an error;
    - half-precision weights on a CPU are cast to fp32 (many CPU kernels are slow or missing in fp16)."""
    device = pick_device(use_gpu)
    if device.type == "cuda" and use_gpu is None and isinstance(model, OnnxQAModel) and not onnx_has_cuda():
        device = torch.device("cpu")
        if "onnx-cpu" not in _said:
            _said.add("onnx-cpu")
            log.warning("an exported model runs on the CPU here: ONNX Runtime has no CUDA provider (onnxruntime-gpu)")
    if device.type == "cpu" and isinstance(model, torch.nn.Module):
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
            model = model.float()
    return model.to(device).eval(), device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision`: "auto" is bf16 (fp16 on GPUs without bf16) on a GPU and
    fp32 (no autocast) on a CPU; "fp32", "bf16" and "fp16" are taken as given."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        # T4 and V100 report bf16 through emulation (slow): they get fp16, and training its GradScaler.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast then runs inference
    ~2x and training steps ~1.2-1.3x faster than fp32 (benchmarks/cpu_precision.py); elsewhere it
    is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(
    input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None, pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad a batch of windows to its longest one; attention_mask marks the real tokens."""
    longest = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), longest), dtype=torch.long)
    types = torch.zeros((len(input_ids), longest), dtype=torch.long) if token_type_ids is not None else None
    for row, seq in enumerate(input_ids):
        ids[row, : len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        mask[row, : len(seq)] = 1
        if types is not None:
            types[row, : len(seq)] = torch.as_tensor(np.asarray(token_type_ids[row], dtype=np.int64))
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated CPU batch on `device`. For a GPU the batch is pinned first: a copy from pageable
    memory is staged and blocks the host, one from pinned memory runs asynchronously."""
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.inference_mode()
def qa_logits(
    model: Any, batch: dict[str, torch.Tensor], device: torch.device, precision: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) float32 logits [batch, longest] for one collated batch."""
    batch = to_device(batch, device)
    dtype = autocast_dtype(device, precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model(**batch)
    return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()


def fit_windows(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    token_type_ids: Sequence[Sequence[int]] | None,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """`run_windows`, and the batch size that fitted: a batch that runs out of GPU memory is halved
    and run again (down to one window), and the smaller size holds for the rest of the windows. A
    caller that passes the returned size to its next call (a teacher actor's next block) does not
    run out of memory again."""
    results: list[tuple[np.ndarray, np.ndarray]] = [None] * len(input_ids)  # type: ignore[list-item]
    size = batch_size
    todo = length_sorted_batches([len(x) for x in input_ids], batch_size)
    while todo:
        idx = todo.pop(0)
        if len(idx) > size:  # a batch cut before the size came down
            todo[:0] = [idx[i : i + size] for i in range(0, len(idx), size)]
            continue
        types = [token_type_ids[i] for i in idx] if token_type_ids is not None else None
        try:
            start, end = qa_logits(model, collate([input_ids[i] for i in idx], types, pad_id), device, precision)
        except torch.OutOfMemoryError as e:  # torch.cuda.OutOfMemoryError is this class
            if len(idx) == 1:
                raise UserError(
                    f"out of GPU memory even at --batch-size 1 (one window of {len(input_ids[idx[0]])} tokens); "
                    "use a smaller --max-seq-len or a GPU with more memory"
                ) from e
            size = len(idx) // 2
            todo.insert(0, idx)
        else:
            for row, i in enumerate(idx):
                n = len(input_ids[i])
                results[i] = (start[row, :n], end[row, :n])
            continue
        # Outside the except block: the exception's frames no longer hold the failed batch's tensors.
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if size < batch_size:  # once per call, not per batch
        log.warning(
            "out of GPU memory at batch size %d: ran at batch size %d instead (--batch-size %d avoids the retries)",
            batch_size,
            size,
            size,
        )
    return results, size


def run_windows(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    token_type_ids: Sequence[Sequence[int]] | None,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Logits for every window, in input order, each cut to the window's real length (batches that
    run out of GPU memory are halved: `fit_windows`)."""
    return fit_windows(model, input_ids, token_type_ids, pad_id, batch_size, device, precision)[0]


@contextmanager
def training_memory(batch_size: int, grad_accum: int) -> Iterator[None]:
    """A training step that runs out of GPU memory is the user's settings, not a fault to retry:
    it becomes a UserError (exit 2, one line) naming the flags that trade memory for steps."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        if batch_size == 1:
            raise UserError(
                f"out of GPU memory in a training step even at --batch-size 1 (--grad-accum {grad_accum}); "
                "use a smaller --max-seq-len, a smaller student or a GPU with more memory"
            ) from e
        raise UserError(
            f"out of GPU memory in a training step at --batch-size {batch_size} per worker; use --batch-size "
            f"{batch_size // 2} --grad-accum {grad_accum * 2} (about the same global batch, in less memory)"
        ) from e


CHUNK = 256  # pairs windowed and run at a time, so memory stays bounded on large files


def pair_windows(
    pairs: list[dict], model: Any, tokenizer: Any, cfg: Any, device: torch.device, progress: bool = True
) -> list[dict]:
    """Every window of `pairs` (`id`, `offsets`, `start_logits`, `end_logits`), by `cfg` (an
    AnswerSettings): the windows of training and labelling, batched forward passes. `progress`: a bar
    over chunks of pairs (for files of more than one chunk)."""
    from tqdm import tqdm

    from qadist.squad.features import make_windows

    windows: list[dict] = []
    batch_size = cfg.batch_size  # comes down for the rest of the call if a batch runs out of GPU memory
    for i in tqdm(
        range(0, len(pairs), CHUNK), desc="predict", unit="chunk", disable=not progress or len(pairs) <= CHUNK
    ):
        chunk = pairs[i : i + CHUNK]
        batch = {k: [p[k] for p in chunk] for k in ("id", "question", "context")}
        w = make_windows(batch, tokenizer, cfg.max_seq_len, cfg.doc_stride, cfg.max_query_len)
        logits, batch_size = fit_windows(
            model,
            w["input_ids"],
            w.get("token_type_ids"),
            tokenizer.pad_token_id,
            batch_size,
            device,
            cfg.precision,
        )
        windows += [
            {"id": w["id"][j], "offsets": w["offsets"][j], "start_logits": s, "end_logits": e}
            for j, (s, e) in enumerate(logits)
        ]
    return windows


def predict_spans(
    pairs: list[dict], model: Any, tokenizer: Any, cfg: Any, device: torch.device, progress: bool = True
) -> dict[str, dict]:
    """By pair id: `answer`, `start`, `end` (characters of the context; -1 when abstaining), `score`
    and `no_answer_probability`, with the shared post-processing (what `qadist serve` returns)."""
    from qadist.squad.postprocess import best_answers

    windows = pair_windows(pairs, model, tokenizer, cfg, device, progress)
    contexts = {p["id"]: p["context"] for p in pairs}
    return best_answers(windows, contexts, cfg.n_best, cfg.max_answer_len, cfg.null_threshold)


def predict_pairs(
    pairs: list[dict], model: Any, tokenizer: Any, cfg: Any, device: torch.device, progress: bool = True
) -> tuple[dict[str, str], dict[str, float]]:
    """(id -> answer, id -> no-answer probability) for pairs: the whole way from pairs to the two
    files of the SQuAD 2.0 evaluation."""
    from qadist.squad.postprocess import squad_files

    return squad_files(predict_spans(pairs, model, tokenizer, cfg, device, progress))


class OnnxQAModel:
    """An exported QA graph run by ONNX Runtime, called like a transformers QA model (`model(**batch)`
    with `.start_logits` / `.end_logits`), so every caller of `run_windows` serves both backends.

    Threads: as many intra-op threads as torch uses, so the two backends compare on equal terms.
    """

    def __init__(self, path: str, threads: int | None = None, use_gpu: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if use_gpu:
            if not onnx_has_cuda():
                raise UserError(
                    f"{path}: an exported model on a GPU needs onnxruntime-gpu (pip install onnxruntime-gpu); "
                    "or run it on the CPU (--cpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        self.path, self.threads = path, options.intra_op_num_threads
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, **batch: torch.Tensor) -> Any:
        from types import SimpleNamespace

        feed = {k: v.cpu().numpy() for k, v in batch.items() if k in self.inputs}
        start, end = self.session.run(["start_logits", "end_logits"], feed)
        return SimpleNamespace(start_logits=torch.from_numpy(start), end_logits=torch.from_numpy(end))

    def to(self, device: torch.device) -> OnnxQAModel:
        on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        if (device.type == "cuda") != on_gpu:
            return OnnxQAModel(self.path, self.threads, use_gpu=device.type == "cuda")
        return self

    def eval(self) -> OnnxQAModel:
        return self
