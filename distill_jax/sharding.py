"""Device mesh and logical-axis sharding rules, in one place.

Model code names parameter axes logically ("embed", "mlp", "heads", "vocab", ...); this module
maps those names onto mesh axes ("data", "fsdp", "tensor") with a rules table, so the same model
runs data-parallel, FSDP or tensor-parallel by changing the config only.

Mesh axes:
  data    pure data parallelism (parameters replicated).
  fsdp    batch is split over it too, and parameters are sharded over it (ZeRO-3 style).
  tensor  Megatron-style tensor parallelism over heads / MLP width / vocab.
The batch dimension is sharded over ("data", "fsdp").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or None = replicated). The first match of a mesh axis wins per
# array, so two logical dims of one array never map onto the same mesh axis.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),  # the fused "heads * head_dim" width of Q/K/V and attention output
    ("kv", None),
    ("positions", None),
    ("types", None),
    ("norm", None),
    ("classes", None),
    ("seq", None),
)


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Fills one -1 entry with the devices left over and checks the product.

    Raises ValueError naming the field when the sizes don't fit the device count.
    """
    sizes = {"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor}
    unknown = [k for k, v in sizes.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"only one of {', '.join(unknown)} may be -1 (the rest of the devices)")
    for name, value in sizes.items():
        if value == 0 or value < -1:
            raise ValueError(f"{name}={value}: must be a positive size or -1")
    known = int(np.prod([v for v in sizes.values() if v != -1]))
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"{unknown[0]}=-1 cannot fill {num_devices} devices: the other axes multiply to {known}, "
                f"which does not divide {num_devices}")
        sizes[unknown[0]] = num_devices // known
    total = int(np.prod(list(sizes.values())))
    if total != num_devices:
        raise ValueError(
            f"mesh data*fsdp*tensor = {sizes['mesh.data']}*{sizes['mesh.fsdp']}*{sizes['mesh.tensor']} = {total} "
            f"but {num_devices} devices are present; set one of them to -1 to take the rest")
    return sizes["mesh.data"], sizes["mesh.fsdp"], sizes["mesh.tensor"]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices, with Auto axis types."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_spec(logical_axes: Sequence[str | None] | None,
                         rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> P:
    """PartitionSpec for an array whose dims carry these logical names (None = replicated dim)."""
    if logical_axes is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        spec.append(targets[0] if len(targets) == 1 else (targets or None))
    return P(*spec)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch-leading arrays: dim 0 over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch_from_local(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's rows into global arrays sharded over the batch axes.

    Each process passes its own share (rows process_index*b .. (process_index+1)*b of the global
    batch); the result is one jax.Array per key whose dim 0 is the global batch.
    """
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(value)), value)
        for key, value in local_batch.items()
    }
