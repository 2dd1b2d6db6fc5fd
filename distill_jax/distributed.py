"""Multi-process start-up: when and how `jax.distributed.initialize` runs.

With mode 'on', or 'auto' (the default) when the environment says the job is multi-process (a
coordinator address in the flags or JAX_COORDINATOR_ADDRESS, SLURM with more than one task, or a
multi-host TPU slice), every process joins the coordination service. On TPU pods and SLURM, JAX
finds coordinator, process count and id by itself.
"""

from __future__ import annotations

import os

import jax


def multi_process_environment(coordinator_address: str | None = None) -> bool:
    if coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    # Multi-host TPU slices list every worker's hostname.
    return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize(mode: str = "auto", *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Joins the job's processes ('on' | 'off' | 'auto'); returns whether it did."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--distributed={mode!r}: use auto, on or off")
    if mode == "off" or (mode == "auto" and not multi_process_environment(coordinator_address)):
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
