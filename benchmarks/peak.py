"""The peak FLOP/s that MFU divides by.

CPU: no datasheet figure means anything for a shared VM, so the peak is measured: the best of a
few large float32 square matmuls in this process, with the same threads as the step. JAX's is
distill_jax.metrics.measured_matmul_peak, the definition the trainer's MFU divides by too;
PyTorch's (torch_matmul_peak) is the same measurement with torch.mm, since the two use different
GEMM libraries (XLA:CPU's Eigen / oneDNN vs MKL/oneDNN).
GPU/TPU: the vendor's dense bf16 figure per device, from distill_jax.metrics.PEAK_BF16_FLOPS (the
one table; train.py's MFU divides by it too).
"""

from __future__ import annotations

import time

from distill_jax.metrics import PEAK_MATMUL_SIZE

# FLOPs per process-CPU-second of the last matmul sample (all threads' CPU time together): the
# per-thread peak, which other processes' load barely changes (unlike the wall-clock figure).
_LAST_CPU_PEAK: dict[str, float] = {}


def jax_matmul_peak(n: int = PEAK_MATMUL_SIZE, repeats: int = 5, device=None) -> float:
    """The trainer's CPU peak (distill_jax.metrics.measured_matmul_peak) on `device`: best FLOP/s
    of a jitted float32 [n,n] x [n,n] matmul (2*n^3 FLOPs each)."""
    from distill_jax.metrics import measured_matmul_peak

    rate = measured_matmul_peak(n, repeats, device)
    _LAST_CPU_PEAK["jax"] = rate.flops_per_cpu_s
    return rate.flops_per_s


def torch_matmul_peak(n: int = PEAK_MATMUL_SIZE, repeats: int = 5) -> float:
    """Best FLOP/s of a float32 [n,n] x [n,n] torch.mm on CPU, with torch's current threads."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    torch.mm(a, b)
    best = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    _LAST_CPU_PEAK["torch"] = 2 * n ** 3 / best_cpu
    return 2 * n ** 3 / best


def peak_for(device, *, n: int = PEAK_MATMUL_SIZE, repeats: int = 5) -> dict:
    """{'flops_per_s', 'source'} for this JAX device: measured on CPU, datasheet elsewhere."""
    if device.platform == "cpu":
        value = jax_matmul_peak(n, repeats, device)
        entry = {"flops_per_s": value, "samples": [value],
                "source": f"measured: best jitted float32 {n}x{n} matmul (jax), over samples taken "
                          "at the start and before every round"}
        record_cpu_peak(entry, "jax")
        return entry
    from distill_jax.metrics import datasheet_peak_flops

    flops = datasheet_peak_flops(device.device_kind)
    if flops is None:
        raise ValueError(f"no datasheet bf16 peak for device kind {device.device_kind!r}; add it to "
                         "distill_jax.metrics.PEAK_BF16_FLOPS")
    return {"flops_per_s": flops, "source": f"datasheet dense bf16 for {device.device_kind}"}


def sample_peak(peaks: dict, n: int = PEAK_MATMUL_SIZE, repeats: int = 3) -> float | None:
    """Measures the CPU matmul peak again (jax, and torch when present), records the samples in
    `peaks`, raises peaks[...]['flops_per_s'] to the best seen; returns this jax sample (None
    off CPU, where the peak is the datasheet's)."""
    if "samples" not in peaks["jax"]:
        return None
    value = jax_matmul_peak(n, repeats)
    peaks["jax"]["samples"].append(value)
    peaks["jax"]["flops_per_s"] = max(peaks["jax"]["samples"])
    record_cpu_peak(peaks["jax"], "jax")
    if "torch" in peaks:
        t = torch_matmul_peak(n, repeats)
        peaks["torch"]["samples"].append(t)
        peaks["torch"]["flops_per_s"] = max(peaks["torch"]["samples"])
        record_cpu_peak(peaks["torch"], "torch")
    return value


def record_cpu_peak(entry: dict, which: str) -> None:
    """Adds the last sample's FLOPs per CPU-second to entry['cpu_samples'] and keeps the best."""
    if which in _LAST_CPU_PEAK:
        entry.setdefault("cpu_samples", []).append(_LAST_CPU_PEAK[which])
        entry["flops_per_cpu_s"] = max(entry["cpu_samples"])
