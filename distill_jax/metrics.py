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


def measured_matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 [size, size] matmul on the default device, best of `repeats`.

    Used as the CPU "peak": there is no datasheet figure, and fake CPU devices share the cores, so
    the peak is the machine's, not per device.
    """
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def machine_peak_flops(override_per_device: float = 0.0) -> tuple[float, str]:
    """Peak FLOP/s of all devices of the job, and where the figure comes from."""
    devices = jax.devices()
    if override_per_device > 0:
        return override_per_device * len(devices), "config.peak_flops_per_device"
    per_device = device_peak_flops(devices[0])
    if per_device is not None:
        return per_device * len(devices), f"datasheet bf16 peak of {devices[0].device_kind}"
    # CPU: the host's measured float32 matmul rate, once per process.
    return measured_matmul_flops() * jax.process_count(), "measured float32 matmul on this host"


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

    return EventWriter(f"{workdir.rstrip('/')}/tensorboard" if jax.process_index() == 0 else None)
