"""`qadist export`: a QA model as an ONNX graph (and, with `--int8`, ONNX Runtime dynamic int8), checked.

The folder holds `model.onnx`, with `--int8` also `model.int8.onnx`, the tokenizer, the model's
`config.json`, `qadist_config.json` (what made the model, plus `export`: the graph `predict`,
`evaluate --model` and `serve` run) and `export_report.json`: F1 of the PyTorch model and of
each graph on the eval file, their difference, answers/s of each on this machine (interleaved
repeats, median, the same threads) and the largest logit difference on sample windows.

The graph comes from `torch.onnx.export`'s TorchScript exporter: optimum-onnx pins transformers
below 4.58 and the dynamo exporter needs onnxscript (docs/serving.md says more). An int8 graph
that loses more than `--max-f1-loss` F1 is tried again with the attention products and the QA head
kept in fp32, then refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from qadist import console, storage
from qadist.config import ExportConfig, to_dict
from qadist.errors import UserError
from qadist.models import QADIST_CONFIG_FILE, exported_graph, load_qa_model, load_tokenizer, local_model
from qadist.outputs import claim, claim_file

log = logging.getLogger(__name__)

FP32_GRAPH, INT8_GRAPH, REPORT = "model.onnx", "model.int8.onnx", "export_report.json"
CLAIM = claim_file("export")
# The fallback's fp32 nodes: query x key and attention x value (both operands are activations, so
# their int8 scales come from one batch), and the span head the answer is read from.
KEEP_FP32 = ("attention/self/MatMul", "qa_outputs")
MAX_LOGIT_DIFFERENCE = 1e-3  # fp32 graph against PyTorch on sample windows: more means a broken export
SAMPLE = {
    "id": ["a", "b"],
    "question": ["Which lens mount does the camera use?", "How long does the battery last?"],
    "context": [
        "The camera uses the RF lens mount and ships with a 24-105 mm kit lens.",
        "Battery life is rated at about 450 shots per charge, or 90 minutes of 4K video recording.",
    ],
}


def graph_inputs(model: Any, tokenizer: Any) -> list[str]:
    """The tokenizer's inputs that the model's forward takes (no token_type_ids for RoBERTa-likes)."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    wanted = ("input_ids", "attention_mask", "token_type_ids")
    return [name for name in wanted if name in accepted and name in tokenizer.model_input_names]


def sample_batch(tokenizer: Any, names: list[str]) -> dict[str, Any]:
    """Two padded windows of different lengths: the batch the graph is traced with and checked on."""
    enc = tokenizer(SAMPLE["question"], SAMPLE["context"], padding=True, return_tensors="pt")
    return {k: enc[k] for k in names}


def export_onnx(model: Any, tokenizer: Any, path: str, opset: int) -> list[str]:
    """Write `model` as an ONNX graph with dynamic batch and sequence axes; returns its input names."""
    import warnings

    import torch

    names = graph_inputs(model, tokenizer)
    batch = sample_batch(tokenizer, names)
    axes = {k: {0: "batch", 1: "sequence"} for k in (*names, "start_logits", "end_logits")}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow over static shapes
        torch.onnx.export(
            model,
            (),
            path,
            kwargs=dict(batch),
            input_names=names,
            output_names=["start_logits", "end_logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return names


def logit_difference(model: Any, graph: str, tokenizer: Any, names: list[str]) -> float:
    """Largest |PyTorch - ONNX| start/end logit over the sample windows (padding excluded)."""
    import numpy as np
    import torch

    from qadist.inference import OnnxQAModel

    batch = sample_batch(tokenizer, names)
    with torch.inference_mode():
        ref = model(**batch)
    got = OnnxQAModel(graph)(**batch)
    mask = batch["attention_mask"].numpy().astype(bool)
    return float(
        max(
            np.abs(ref.start_logits.numpy() - got.start_logits.numpy())[mask].max(),
            np.abs(ref.end_logits.numpy() - got.end_logits.numpy())[mask].max(),
        )
    )


def quantize_int8(src: str, dst: str, keep_fp32: tuple[str, ...] = ()) -> None:
    """ONNX Runtime dynamic quantisation of the MatMuls: int8 weights per output channel in 7 bits
    (`reduce_range`: no saturation in the int16 sums of CPUs without VNNI), activations quantised
    per batch at run time. `keep_fp32`: substrings of node names left unquantised. On the demo's
    student the defaults lose 1.2-2.7 F1; these settings lose none (docs/serving.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = onnx.load(src, load_external_data=False).graph.node
    exclude = [n.name for n in nodes if any(k in n.name for k in keep_fp32)]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process (shape inference) is for static quantisation
    try:
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=True,
            nodes_to_exclude=exclude,
        )
    finally:
        root.setLevel(level)


def score(model: Any, tokenizer: Any, pairs: list[dict], gold: dict, cfg: ExportConfig) -> dict[str, float]:
    import torch

    from qadist.inference import predict_pairs
    from qadist.squad.metrics import squad_v2_metrics

    predictions, na_probs = predict_pairs(pairs, model, tokenizer, cfg, torch.device("cpu"), progress=False)
    metrics = squad_v2_metrics(gold, predictions, na_probs)
    return {"f1": round(metrics["f1"], 3), "exact": round(metrics["exact"], 3)}


def answers_per_s(models: dict[str, Any], tokenizer: Any, pairs: list[dict], cfg: ExportConfig, repeats: int = 3):
    """Median answers/s of each model on the same pairs, the models' runs interleaved (noisy machines)."""
    import torch

    from qadist.inference import predict_pairs

    cpu = torch.device("cpu")
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up: allocator, kernels, ONNX Runtime's first-run work
        predict_pairs(pairs[:16], model, tokenizer, cfg, cpu, progress=False)
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            predict_pairs(pairs, model, tokenizer, cfg, cpu, progress=False)
            seconds[name].append(time.perf_counter() - started)
    return {name: round(len(pairs) / statistics.median(s), 1) for name, s in seconds.items()}


def check_int8(folder: str, tokenizer: Any, pairs: list[dict], gold: dict, cfg: ExportConfig, f1: float):
    """Quantise, score, and keep the int8 graph only within `max_f1_loss` of PyTorch's F1: first every
    MatMul, then with the attention-score products and the QA head in fp32. Returns (scores of the
    kept graph or None, attempts)."""
    from qadist.inference import OnnxQAModel

    attempts = []
    for keep in ((), KEEP_FP32):
        quantize_int8(os.path.join(folder, FP32_GRAPH), os.path.join(folder, INT8_GRAPH), keep)
        scores = score(OnnxQAModel(os.path.join(folder, INT8_GRAPH)), tokenizer, pairs, gold, cfg)
        loss = round(f1 - scores["f1"], 3)
        attempts.append({"fp32_nodes": list(keep), **scores, "f1_loss": loss})
        kept = f" ({', '.join(keep)} in fp32)" if keep else ""
        log.info("int8%s: F1 %.2f (%.2f below PyTorch)", kept, scores["f1"], loss)
        if loss <= cfg.max_f1_loss:
            return {**scores, "fp32_nodes": list(keep)}, attempts
    os.remove(os.path.join(folder, INT8_GRAPH))
    return None, attempts


def build(cfg: ExportConfig, folder: str) -> dict:
    """Export into the local `folder`; returns the report."""
    import torch

    from qadist.inference import OnnxQAModel
    from qadist.squad.io import gold_answers, read_pairs

    source = local_model(cfg.model)
    if exported_graph(source):
        raise UserError(f"--model {cfg.model}: already an exported folder; give the PyTorch model it came from")
    tokenizer = load_tokenizer(source, cfg.trust_remote_code)
    model = load_qa_model(source, trust_remote_code=cfg.trust_remote_code).eval()
    names = export_onnx(model, tokenizer, os.path.join(folder, FP32_GRAPH), cfg.opset)
    difference = logit_difference(model, os.path.join(folder, FP32_GRAPH), tokenizer, names)
    if difference > MAX_LOGIT_DIFFERENCE:
        raise RuntimeError(f"the ONNX graph's logits differ from PyTorch's by {difference:.2g}: the export is broken")
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)
    report: dict[str, Any] = {
        "model": cfg.model,
        "inputs": names,
        "opset": cfg.opset,
        "max_logit_difference_fp32": difference,
        "threads": torch.get_num_threads(),
        "graph": FP32_GRAPH,
    }
    if cfg.eval_file:
        pairs, _ = read_pairs(cfg.eval_file, strict=True)
        gold = gold_answers(pairs, cfg.eval_file)
        report.update(eval_file=cfg.eval_file, eval_questions=len(pairs))
        report["pytorch"] = score(model, tokenizer, pairs, gold, cfg)
        report["onnx_fp32"] = score(OnnxQAModel(os.path.join(folder, FP32_GRAPH)), tokenizer, pairs, gold, cfg)
        models = {"pytorch": model, "onnx_fp32": OnnxQAModel(os.path.join(folder, FP32_GRAPH))}
        if cfg.int8:
            kept, report["int8_attempts"] = check_int8(folder, tokenizer, pairs, gold, cfg, report["pytorch"]["f1"])
            if kept:
                report["onnx_int8"], report["graph"] = kept, INT8_GRAPH
                models["onnx_int8"] = OnnxQAModel(os.path.join(folder, INT8_GRAPH))
        speed = answers_per_s(models, tokenizer, pairs[: cfg.speed_questions], cfg)
        for name, value in speed.items():
            report[name]["answers_per_s"] = value
        report["speed_questions"] = min(len(pairs), cfg.speed_questions)
        served = "onnx_int8" if "onnx_int8" in report else "onnx_fp32"
        report["f1_difference"] = round(report[served]["f1"] - report["pytorch"]["f1"], 3)
        report["speedup_vs_pytorch"] = round(speed[served] / max(speed["pytorch"], 1e-9), 2)
    made_by = os.path.join(source, QADIST_CONFIG_FILE)
    qadist_config = json.loads(open(made_by).read()) if os.path.isfile(made_by) else {}
    qadist_config["export"] = {"graph": report["graph"], "config": to_dict(cfg)}
    with open(os.path.join(folder, QADIST_CONFIG_FILE), "w") as f:
        json.dump(qadist_config, f, indent=2)
    with open(os.path.join(folder, REPORT), "w") as f:  # last: its presence means the export is complete
        json.dump(report, f, indent=2)
    return report


def summary_line(report: dict) -> str:
    if "pytorch" not in report:
        return f"qadist export: {report['graph']} (logits within {report['max_logit_difference_fp32']:.1g} of PyTorch)"
    served = "onnx_int8" if report["graph"] == INT8_GRAPH else "onnx_fp32"
    return (
        f"qadist export: serving {report['graph']}: F1 {report[served]['f1']:.2f} vs PyTorch "
        f"{report['pytorch']['f1']:.2f} ({report['f1_difference']:+.2f}) on {report['eval_questions']:,} questions; "
        f"{console.rate(report[served]['answers_per_s'], 1.0, 'answer')}, "
        f"{report['speedup_vs_pytorch']:.2f}x PyTorch fp32 "
        f"({report['threads']} threads)"
    )


def run_export(cfg: ExportConfig) -> dict:
    """Export `cfg.model` to `cfg.out`; returns the report. An int8 graph that fails its F1 check is
    refused (exit 2) after the fp32 export is written."""
    if cfg.overwrite:
        storage.delete(cfg.out)  # the whole folder: tokenizer files included
    claim(
        cfg.out,
        CLAIM,
        {k: v for k, v in to_dict(cfg).items() if k != "overwrite"},
        what="an export",
        fix="use another --out, or pass --overwrite to replace it",
    )
    console.banner(
        f"qadist export: {cfg.model} -> {cfg.out} (ONNX fp32{', int8' if cfg.int8 else ''}"
        f"{f', checked on {cfg.eval_file}' if cfg.eval_file else ''})",
        log,
    )
    started = time.perf_counter()
    local = not storage.is_s3(cfg.out)
    folder = cfg.out if local else tempfile.mkdtemp(prefix="qadist-export-")
    os.makedirs(folder, exist_ok=True)
    try:
        report = build(cfg, folder)
        if not local:
            for name in sorted(os.listdir(folder), key=lambda n: n == REPORT):  # the report last
                with open(os.path.join(folder, name), "rb") as f:
                    storage.write_bytes(storage.join(cfg.out, name), f.read())
    finally:
        if not local:
            shutil.rmtree(folder, ignore_errors=True)
    console.summary(f"{summary_line(report)} in {time.perf_counter() - started:.1f}s", log)
    if cfg.int8 and report["graph"] != INT8_GRAPH:
        worst = min(a["f1_loss"] for a in report["int8_attempts"])
        raise UserError(
            f"--int8: the int8 graph loses {worst:.2f} F1 against PyTorch on {cfg.eval_file} (over --max-f1-loss "
            f"{cfg.max_f1_loss}), also with the attention products and QA head in fp32; {cfg.out} serves the "
            "fp32 graph instead (drop --int8, or raise --max-f1-loss)"
        )
    return report
