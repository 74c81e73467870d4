"""The device side of `gpu_suite.py`: its name, peak bf16 FLOP/s, synchronisation and memory
statistics behind one switch (so a CPU runs the same code), and FLOP counting.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` around the real calls; where the
counter sees no attention op (PyTorch's CPU SDPA kernel is not registered with it) the attention
matmuls are added by formula (`attention_flops`) and the caller says so.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets (each sheet gives
# the with-sparsity figure; dense is half): H100 SXM 1,979 -> 989, H100 PCIe 1,513 -> 756, H100 NVL
# 1,671 -> 835; H200 SXM 1,979 -> 989, H200 NVL 1,671 -> 835; A100 (SXM and PCIe) 624 -> 312;
# L40S 733 -> 362 (sheet's dense figure 362.05); L4 242 -> 121; A10 250 -> 125. Written from the
# sheets as known to the author (no internet where this was written): check before quoting an MFU.
# A10G (AWS) has no NVIDIA datasheet and is not listed: pass --peak-tflops. First match wins.
PEAKS = [
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200.*NVL", "H200 NVL", 835.0),
    (r"H200", "H200 SXM", 989.0),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.0),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
]


class Device:
    """Where the suite runs, and everything GPU-specific behind one switch (so the CPU runs the same code)."""

    def __init__(self, cuda: bool, peak_tflops: float | None):
        self.cuda = cuda
        self.torch = torch.device("cuda" if cuda else "cpu")
        self.name = torch.cuda.get_device_name(0) if cuda else f"CPU ({_cpu_name()}, {torch.get_num_threads()} threads)"
        self.peak, self.peak_source = peak_tflops, "--peak-tflops"
        if peak_tflops is None and cuda:
            for pattern, name, tflops in PEAKS:
                if re.search(pattern, self.name):
                    self.peak, self.peak_source = tflops, f"{name} dense bf16, NVIDIA datasheet"
                    break

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_memory(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> tuple[float, str]:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS of this process"

    def mfu(self, flops_per_s: float) -> tuple[float | None, str]:
        if not self.peak:
            return None, "no known peak for this device; pass --peak-tflops"
        return flops_per_s / (self.peak * 1e12), f"of {self.peak:g} TFLOP/s ({self.peak_source})"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def count_flops(fn, config) -> tuple[float, Any, bool]:
    """(FLOPs counted while `fn()` runs, its result, whether the counter saw attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn()
    ops = " ".join(str(op) for op in counter.get_flop_counts().get("Global", {}))
    return float(counter.get_total_flops()), result, bool(re.search(r"scaled_dot_product|bmm", ops))


def attention_flops(padded_lengths: list[tuple[int, int]], config) -> float:
    """QK^T and AV of every layer: 4 * L^2 * hidden FLOPs per padded sequence of length L."""
    return float(sum(n * 4 * length**2 * config.hidden_size * config.num_hidden_layers for n, length in padded_lengths))


def padded_batches(lengths: list[int], batch_size: int) -> list[tuple[int, int]]:
    """(rows, padded length) of each batch `run_windows` makes of these windows."""
    from qadist.inference import length_sorted_batches

    lengths_a = np.asarray(lengths)
    return [(len(idx), int(lengths_a[idx].max())) for idx in length_sorted_batches(lengths, batch_size)]
