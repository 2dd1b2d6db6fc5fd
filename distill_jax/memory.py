"""Bytes per device: what XLA says a compiled step needs, and what a sharded tree puts on one
device. The trainer logs the first (and keeps it in summary.json), the TPU plan
(distill_jax.plan) reports both per chip, benchmarks/jax_step.py the first.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


def memory_bytes(compiled) -> dict[str, int] | None:
    """Per-device bytes of a compiled step from XLA's memory_analysis() (None when the backend
    reports none): arguments, outputs, temporaries, aliased (donated state reuses its input
    buffers) and total = arguments + outputs + temporaries - aliased."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if mem is None:
        return None
    out = {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
           "temporaries": int(mem.temp_size_in_bytes), "aliased": int(mem.alias_size_in_bytes),
           "generated_code": int(mem.generated_code_size_in_bytes)}
    out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def tree_bytes_per_device(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs) under `shardings`: each
    array's shard shape times its item size (replicated arrays count whole on every device)."""
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(
            shardings, is_leaf=lambda v: isinstance(v, jax.sharding.Sharding))):
        shard = s.shard_shape(tuple(x.shape))
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return int(total)
