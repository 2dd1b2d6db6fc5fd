"""Training metrics: the TensorBoard writer, parameter overview, peak FLOP/s for MFU. (Rate,
ETA and the console line: distill_jax/loop.py.)

Scalar names written to TensorBoard (tags; float32 `simple_value`s, so TensorBoard's
`EventAccumulator(<workdir>/tensorboard).Scalars(tag)` and tbparse's `.scalars` read them):
  loss                 total objective (weighted sum of the terms)
  loss/<term>          every objective term on its own (e.g. loss/minilmv2, loss/hs)
  loss/<term>/<part>   the parts of a term that has several (e.g. loss/minilmv2/qq, /kk, /vv)
  learning_rate, grad_norm (before clipping)
  perf/steps_per_sec, perf/tokens_per_sec (global batch tokens incl. padding), perf/mfu (0..1)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The one table of datasheet peak dense (no sparsity) bf16 FLOP/s per JAX device, matched on
# device.device_kind (a regex, case-insensitive, first match wins). TPU v4 and v5p run as one
# megacore device per chip (the chip's figure); v2/v3 show one device per TensorCore (half the
# chip's 45 / 123 TFLOP/s). Sources: Cloud TPU system-architecture pages; NVIDIA datasheets (H100
# SXM and H200 989, H100 PCIe 756, A100 312, L4 121, A10 125 TFLOP/s dense bf16).
PEAK_BF16_FLOPS = (
    (r"^TPU v6( lite|e)$", 918e12),     # Trillium (v6e)
    (r"^TPU v5( ?p)?$", 459e12),        # v5p reports "TPU v5"
    (r"^TPU v5( lite|e)$", 197e12),     # v5e
    (r"^TPU v4$", 275e12),
    (r"^TPU v3$", 61.5e12),
    (r"^TPU v2$", 22.5e12),
    (r"\bH200\b", 989e12),
    (r"\bH100 PCIe\b", 756e12),
    (r"\bH100\b", 989e12),              # SXM
    (r"\bA100\b", 312e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
)


def datasheet_peak_flops(device_kind: str) -> float | None:
    """Dense bf16 FLOP/s of one device of this kind (PEAK_BF16_FLOPS), or None when unknown."""
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, device_kind.strip(), re.IGNORECASE):
            return flops
    return None


def flatten_step_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """{"loss", "terms": {t: v}, "grad_norm", "learning_rate"} -> flat {tag: float}."""
    flat = {"loss": float(metrics["loss"])}
    for term, value in metrics["terms"].items():
        flat[f"loss/{term}"] = float(value)
    flat["grad_norm"] = float(metrics["grad_norm"])
    flat["learning_rate"] = float(metrics["learning_rate"])
    return flat


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    """Datasheet peak bf16 FLOP/s of one accelerator, or None when unknown (CPU, new chips)."""
    device = device or jax.devices()[0]
    return datasheet_peak_flops(getattr(device, "device_kind", ""))


# Matrix size of the measured CPU peak (measured_matmul_peak): large enough that the GEMM library
# runs at its best rate on every core, small enough to take about a second.
PEAK_MATMUL_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class MatmulRate:
    """A measured matmul rate: wall-clock FLOP/s (best sample), and FLOPs per process-CPU-second
    (all threads' CPU time together; other processes' load barely changes it)."""

    flops_per_s: float
    flops_per_cpu_s: float


def measured_matmul_peak(n: int = PEAK_MATMUL_SIZE, repeats: int = 5, device=None) -> MatmulRate:
    """The CPU peak MFU divides by, for the trainer's MFU and the benchmark's alike: the best of
    `repeats` jitted float32 [n, n] x [n, n] matmuls (2 n^3 FLOPs each, random normal operands,
    default precision) on `device` (default the first), after one compile-and-warm-up call.

    A CPU has no datasheet figure that means anything on a shared VM, so it is measured, with the
    threads the step uses; fake CPU devices share the cores, so it is the machine's, not per device.
    """
    device = device or jax.devices()[0]
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((n, n), np.float32), device)
    b = jax.device_put(rng.standard_normal((n, n), np.float32), device)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.DEFAULT))
    matmul(a, b).block_until_ready()
    best = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return MatmulRate(flops_per_s=2 * n ** 3 / best, flops_per_cpu_s=2 * n ** 3 / max(best_cpu, 1e-9))


@functools.lru_cache(maxsize=1)
def _host_cpu_peak() -> float:
    return measured_matmul_peak().flops_per_s


def machine_peak_flops(override_per_device: float = 0.0) -> tuple[float, str]:
    """Peak FLOP/s of all devices of the job, and where the figure comes from."""
    devices = jax.devices()
    if override_per_device > 0:
        return override_per_device * len(devices), "config.peak_flops_per_device"
    per_device = device_peak_flops(devices[0])
    if per_device is not None:
        return per_device * len(devices), f"datasheet bf16 peak of {devices[0].device_kind}"
    # CPU: the host's measured matmul rate (measured_matmul_peak), once per process.
    return (_host_cpu_peak() * jax.process_count(),
            f"measured float32 {PEAK_MATMUL_SIZE}x{PEAK_MATMUL_SIZE} matmul on this host")


def cpu_model() -> str:
    """The host CPU's model name from /proc/cpuinfo ('' where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def host_description() -> dict:
    """What a figure measured on this machine depends on: CPU model and cores, JAX devices."""
    devices = jax.devices()
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "devices": f"{len(devices)} x {devices[0].platform}:{devices[0].device_kind}"}


def parameter_overview(params: Any, max_lines: int | None = None) -> str:
    """A table of parameter names, shapes and sizes (clu), plus the total; max_lines=None: all rows."""
    from clu import parameter_overview as overview

    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
        flat[name] = leaf
    table = overview.get_parameter_overview(flat, include_stats=False, max_lines=max_lines)
    return table


def count_parameters(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def create_writer(workdir: str):
    """TensorBoard event writer (distill_jax/event_writer.py, no TensorFlow) of workdir/tensorboard,
    on process 0 only (the other processes get one that drops everything); .close() at the end.
    Console output is loop.progress_line's job."""
    from distill_jax.event_writer import EventWriter
    from distill_jax.workdir_layout import Workdir

    return EventWriter(Workdir(workdir).tensorboard if jax.process_index() == 0 else None)
