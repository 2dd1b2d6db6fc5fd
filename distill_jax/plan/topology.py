"""The slices the plan compiles for: Cloud TPU / libtpu topology names and cpu:N parsed into a
Topology, the compile-only devices of one (libtpu, no TPU needed), and each chip's HBM, bandwidth
and bf16 peak (jax.experimental.pallas.tpu's chip table) plus the HBM XLA lets a program use.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from distill_jax.plan.hlo import parse_out_of_memory

# Cloud TPU generation -> (libtpu name prefix, the name counts TensorCores (2 per chip)?, 3-D torus?)
GENERATIONS = {"v4": ("v4", True, True), "v5p": ("v5", True, True),
               "v5e": ("v5e", False, False), "v6e": ("v6e", False, False)}
_LIBTPU_PREFIX = {prefix: gen for gen, (prefix, _, _) in GENERATIONS.items()}
_CLOUD_ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice to compile for. platform 'tpu' (libtpu topology) or 'cpu' (fake devices)."""

    name: str                       # as the user wrote it
    platform: str
    chips: int
    generation: str | None = None   # v4 / v5p / v5e / v6e
    libtpu_name: str | None = None  # e.g. "v5e:4x4"
    megacore: bool = False          # v4 / v5p: both TensorCores of a chip form one device


def _torus(chips: int, three_d: bool) -> list[int] | None:
    """MaxText's slice shapes (accelerator_to_spec_map): 2x2(x1) for 4 chips, then double the
    smallest dimension (the last of equal ones): 2x2x2, 2x2x4, 2x4x4, 4x4x4 ... / 2x4, 4x4, 4x8 ...
    None when `chips` is not such a size."""
    dims = [2, 2, 1] if three_d else [2, 2]
    if chips == 1 and not three_d:
        return [1, 1]
    if chips < 4 or chips & (chips - 1):
        return None
    while math.prod(dims) < chips:
        smallest = min(dims)
        i = max(j for j, d in enumerate(dims) if d == smallest)
        dims[i] *= 2
    return dims


def parse_topology(name: str) -> Topology:
    """A Topology from a Cloud TPU name, a libtpu name or cpu:N; one-line ValueError otherwise."""
    text = name.strip()
    usage = ("use a Cloud TPU name (v4-32, v5p-128, v5e-16, v6e-64), a libtpu topology "
             "(v5e:4x4, v4:2x2x4, v5:2x2x2) or cpu:N")
    m = re.fullmatch(r"cpu:(\d+)", text)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ValueError(f"--topology={name!r}: cpu:N needs N >= 1")
        return Topology(name=text, platform="cpu", chips=n)
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", text)
    if m:
        gen, count = _CLOUD_ALIASES.get(m.group(1), m.group(1)), int(m.group(2))
        prefix, counts_cores, three_d = GENERATIONS[gen]
        chips = count // 2 if counts_cores else count
        dims = _torus(chips, three_d) if not counts_cores or count % 2 == 0 else None
        if dims is None:
            sizes = ("8, 16, 32, 64, ..., 4096 (TensorCores, 2 per chip)" if counts_cores
                     else "1, 4, 8, 16, 32, 64, 128, 256 (chips)")
            raise ValueError(f"--topology={name!r}: {gen} slices come in sizes {sizes}; "
                             f"or give a libtpu topology such as {prefix}:{'2x2x4' if three_d else '4x4'}")
        return Topology(name=text, platform="tpu", chips=chips, generation=gen,
                        libtpu_name=f"{prefix}:{'x'.join(map(str, dims))}", megacore=counts_cores)
    m = re.fullmatch(r"(v4|v5|v5e|v6e):(\d+(?:x\d+){1,2})", text)
    if m:
        gen = _LIBTPU_PREFIX[m.group(1)]
        dims = [int(d) for d in m.group(2).split("x")]
        if min(dims) < 1:
            raise ValueError(f"--topology={name!r}: every dimension must be >= 1")
        return Topology(name=text, platform="tpu", chips=math.prod(dims), generation=gen,
                        libtpu_name=text, megacore=GENERATIONS[gen][1])
    raise ValueError(f"--topology={name!r} unknown: {usage}")


def compile_only_environment() -> None:
    """libtpu settings for compiling without TPUs: no TPU-host probe (worker hostnames and the
    local accelerator type are what libtpu would otherwise ask the VM metadata for; the topology
    compiled for is always named explicitly, so these change no figure), and no claim on the
    machine-wide libtpu lockfile (another JAX process may hold it; nothing runs on a chip here)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topo: Topology) -> list:
    """The devices to build the mesh over: compile-only TPU devices from libtpu, or the first N CPU
    devices of this process (jax_num_cpu_devices must allow N: the CLI sets it)."""
    import jax

    if topo.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < topo.chips:
            raise ValueError(f"--topology={topo.name}: this process has {len(devices)} CPU devices; "
                             f"run the plan as its own process (it sets jax_num_cpu_devices)")
        return devices[:topo.chips]
    try:
        from jax.experimental import topologies
    except ImportError as exc:  # pragma: no cover - part of jax
        raise ValueError(f"jax.experimental.topologies unavailable: {exc}") from None
    compile_only_environment()
    # One slice: a multi-slice mesh (data over DCN) needs mesh_utils.create_hybrid_device_mesh,
    # which distill_jax.sharding.make_mesh does not build yet.
    kwargs = {"chip_config_name": "megacore"} if topo.megacore else {}
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.libtpu_name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - libtpu missing or the name refused
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ('; install libtpu: pip install "libtpu==0.0.42.*" (the version jax 0.10.2 pins)'
                if "libtpu" in first.lower() or "not found" in first.lower() or "plugin" in first.lower()
                else "")
        raise ValueError(f"--topology={topo.name} ({topo.libtpu_name}): libtpu could not describe "
                         f"it: {first[:300]}{hint}") from None
    return list(desc.devices)


@dataclasses.dataclass(frozen=True)
class ChipInfo:
    """One device's HBM, bandwidth and bf16 peak, from jax.experimental.pallas.tpu's chip table."""

    kind: str
    hbm_bytes: int
    hbm_bytes_per_s: float
    bf16_flops_per_s: float


def chip_info(topo: Topology) -> ChipInfo | None:
    """Per device (a megacore v4/v5p device is the whole chip). None for CPU topologies."""
    if topo.platform != "tpu":
        return None
    from jax.experimental.pallas import tpu as pltpu

    version = {"v4": pltpu.ChipVersion.TPU_V4, "v5p": pltpu.ChipVersion.TPU_V5P,
               "v5e": pltpu.ChipVersion.TPU_V5E, "v6e": pltpu.ChipVersion.TPU_V6E}[topo.generation]
    cores = 2 if topo.megacore else 1
    info = pltpu.get_tpu_info_for_chip(version, cores)  # per TensorCore: times the cores
    return ChipInfo(kind=f"TPU {topo.generation}", hbm_bytes=int(info.hbm_capacity_bytes * cores),
                    hbm_bytes_per_s=float(info.mem_bw_bytes_per_second * cores),
                    bf16_flops_per_s=float(info.bf16_ops_per_second * cores))


def usable_hbm_bytes(device) -> int | None:
    """The HBM XLA:TPU lets one program use on `device` (less than the chip table's capacity: the
    runtime keeps some), read off the RESOURCE_EXHAUSTED of a probe that asks for 1 TiB; compiling
    it takes well under a second. None when the message does not say."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    x = jax.ShapeDtypeStruct((2**18, 2**20), jnp.float32, sharding=SingleDeviceSharding(device))
    try:
        jax.jit(lambda a: jnp.tanh(a) * 2).lower(x).compile()
    except Exception as exc:  # noqa: BLE001 - the out-of-memory is the answer
        return parse_out_of_memory(str(exc)).get("usable_bytes")
    return None
