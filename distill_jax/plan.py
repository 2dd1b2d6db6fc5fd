"""python -m distill_jax.plan: compile the real train step for a TPU slice on this machine, before
paying for the pod, and say whether it fits in HBM.

    python -m distill_jax.plan --config=configs/mha_l6_h384.py --topology=v5e-16
    python -m distill_jax.plan --config=configs/mha_l6_h384.py --topology=v5e-16 --search
    python -m distill_jax.plan --config=configs/quickstart.py --topology=cpu:8   # no libtpu needed

The step is built by distill_jax.train_setup.build_train_setup(abstract=True), the builder
train.py runs, from shapes alone: the teacher's config.json (a local directory, or the shapes
shipped in distill_jax/models/hub_configs/ for the hub ids the recipes name), no weights, no data,
nothing placed on a device. It is lowered with jax.ShapeDtypeStructs sharded over a Mesh of the
topology's devices (jax.experimental.topologies + libtpu: `pip install "libtpu==0.0.42.*"`, the
version jax 0.10.2 pins) and compiled by XLA:TPU ahead of time. Printed per chip:

  parameters (student, objective aux, frozen teacher), optimizer state, batch (the array shards
  one chip holds), XLA's temporaries, and the total = arguments + outputs + temporaries - aliased
  (the donated state is updated in place), against the chip's HBM (jax.experimental.pallas.tpu's
  chip table): fits / does not fit, with the headroom;
  the collectives in the compiled step and the bytes each moves per chip per step;
  the analytic matmul FLOPs per step (distill_jax/flops.py) and the step time at 100% of the
  datasheet bf16 peak (a floor, not an estimate: XLA's own cost analysis is no step time here).

--search: the shipped config fits -> the largest per-chip batch that does; it does not -> the
smallest config.microbatches (gradient accumulation, same global batch) and whether
config.student.remat alone makes it fit. Mesh and batch overrides go through the usual
--config.* flags (--config.mesh.fsdp=4, --config.batch_size=512).

Topologies: Cloud TPU names (v4-32, v5p-128 count TensorCores: 2 per chip, one megacore device per
chip; v5e-16, v6e-64 count chips), libtpu names (v5e:4x4, v4:2x2x4, v5:2x2x2 for v5p, v6e:8x8), or
cpu:N (N fake CPU devices; memory without an HBM verdict). A step that does not fit fails to compile
with RESOURCE_EXHAUSTED naming the usable HBM: reported as "does not fit" with XLA's numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------------------
# Topologies
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# The teacher's shapes, without weights
# ----------------------------------------------------------------------------------------------

def teacher_config_json(name: str) -> tuple[dict, str]:
    """(config.json dict, where it came from) for config.teacher.name: a local directory's
    config.json, the shapes shipped for known hub ids, or the locally resolvable model (offline
    teacher package, HF cache). Never reads weights."""
    from distill_jax import models
    from distill_jax.models.hf_io import known_hub_config, read_hf_config

    path = Path(name).expanduser()
    if path.is_dir():
        return read_hf_config(path), str(path / "config.json")
    known = known_hub_config(name)
    if known is not None:
        return known, f"distill_jax/models/hub_configs/{name.split('/')[-1]}.json (the hub config.json's shapes)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a plan never downloads weights
    try:
        model_dir = models.resolve_model_dir(name)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config.teacher.name={name!r}: no local config.json and no shipped shapes for it; "
            f"pass --config.teacher.name=/dir/with/config.json (the weights are not needed)") from None
    return read_hf_config(model_dir), str(model_dir / "config.json")


# ----------------------------------------------------------------------------------------------
# Collectives in the compiled HLO
# ----------------------------------------------------------------------------------------------

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
                "collective-broadcast", "ragged-all-to-all")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1,
                "f8e5m2fnuz": 1}
_ARRAY_RE = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_HEADER_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLED_RE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation|"
                        r"branch_computations|async_wrapped_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_RE = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')


def _array_bytes(shape_text: str) -> list[int]:
    """Bytes of every array in an HLO shape (a tuple lists several)."""
    out = []
    for dtype, dims in _ARRAY_RE.findall(shape_text):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        out.append(int(n * _DTYPE_BYTES[dtype]))
    return out


def _split_shape(rest: str) -> tuple[str, str]:
    """'(f32[2], f32[4]) all-gather-start(...), ...' -> (shape text, the rest from the opcode)."""
    rest = rest.strip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].strip()
    shape, _, tail = rest.partition(" ")
    return shape, tail.strip()


def collectives(hlo_text: str) -> list[dict]:
    """The collectives of a compiled HLO module, each with how often it runs per step and the
    bytes it moves per chip each time: the larger of its operands' total and its largest result
    array (all-gather: the gathered output; reduce-scatter: the input; all-reduce: the buffer).

    Walks the call graph from ENTRY: fusions, calls, conditionals, and while bodies times their
    known_trip_count (a scanned microbatch loop runs its collectives M times). An async pair
    (-start / -done) is one collective, counted at its start; one channel id counts once per
    computation.
    """
    comps: dict[str, list[tuple[str, str, str]]] = {}
    entry = None
    current = None
    for line in hlo_text.splitlines():
        header = _HEADER_RE.match(line)
        if header:
            current = header.group(2)
            comps[current] = []
            if header.group(1):
                entry = current
            continue
        if current is None:
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR_RE.match(line)
        if m:
            shape, tail = _split_shape(m.group(2))  # tail: 'opcode(operands), attributes'
            comps[current].append((m.group(1), shape, tail))
    if entry is None:
        return []

    found: dict[tuple, dict] = {}

    def walk(comp: str, times: int, stack: tuple) -> None:
        if comp not in comps or comp in stack:
            return
        shapes = {name: shape for name, shape, _ in comps[comp]}
        seen_channels: set[str] = set()
        for name, shape, text in comps[comp]:
            opcode = text.split("(", 1)[0]
            kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
            if kind in _COLLECTIVES:
                channel = re.search(r"channel_id=(\d+)", text)
                if channel and channel.group(1) in seen_channels:
                    continue
                if channel:
                    seen_channels.add(channel.group(1))
                args = text.split("(", 1)[1]
                depth, end = 1, 0
                for end, ch in enumerate(args):
                    depth += ch == "("
                    depth -= ch == ")"
                    if depth == 0:
                        break
                operands = re.findall(r"%?([\w.\-]+)", args[:end])
                operand_bytes = sum(sum(_array_bytes(shapes[o])) for o in operands if o in shapes)
                moved = max([operand_bytes] + _array_bytes(shape))
                key = (comp, name)
                found[key] = {"op": kind, "name": name, "computation": comp, "times": times,
                              "bytes": moved, "dtype_shape": shape.split("{")[0]}
            if opcode.endswith(("-done", "-update")):
                continue  # the second half of an async op: its work was counted at the start
            trip = 1
            if opcode == "while":
                m = _TRIP_RE.search(text)
                trip = int(m.group(1)) if m else 1
            for field, target in _CALLED_RE.findall(text):
                names = re.findall(r"%?([\w.\-]+)", target)
                for called in names:
                    walk(called, times * (trip if field == "body" else 1), stack + (comp,))

    walk(entry, 1, ())
    return sorted(found.values(), key=lambda c: -c["bytes"] * c["times"])


def summarise_collectives(found: list[dict]) -> dict[str, dict]:
    """{op: {"count": runs per step, "bytes_per_step": per chip}} over `collectives()` output."""
    out: dict[str, dict] = {}
    for c in found:
        entry = out.setdefault(c["op"], {"count": 0, "bytes_per_step": 0})
        entry["count"] += c["times"]
        entry["bytes_per_step"] += c["bytes"] * c["times"]
    return out


# ----------------------------------------------------------------------------------------------
# One plan
# ----------------------------------------------------------------------------------------------

_OOM_RE = re.compile(r"([\d.]+)([KMGT]?)\s*(?:i?B)?\)?\s*exceeds available HBM \(([\d.]+)([KMGT]?)")
_USED_RE = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_out_of_memory(message: str) -> dict:
    """XLA:TPU's RESOURCE_EXHAUSTED text -> {"required_bytes", "usable_bytes", "message"}."""
    first = next((line.strip() for line in message.splitlines() if "RESOURCE_EXHAUSTED" in line
                  or "memory" in line.lower()), message.strip().splitlines()[0] if message.strip() else "")
    out: dict[str, Any] = {"message": first[:400]}
    m = _OOM_RE.search(message) or _USED_RE.search(message)
    if m:
        out["required_bytes"] = int(float(m.group(1)) * _UNITS[m.group(2)])
        out["usable_bytes"] = int(float(m.group(3)) * _UNITS[m.group(4)])
    return out


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def plan_config(config, topo: Topology, devices: list | None = None, *, teacher_hf: dict | None = None,
                teacher_source: str = "", with_collectives: bool = True) -> dict:
    """Compiles the train step of `config` for `topo` from abstract shapes; returns the figures
    (bytes per chip) as a dict: fits / does not fit, memory parts, collectives, FLOPs."""
    import ml_collections

    from distill_jax import metrics as metrics_lib
    from distill_jax import train_setup
    from distill_jax.memory import memory_bytes, tree_bytes_per_device

    config = ml_collections.ConfigDict(config)
    train_setup.check_config(config)
    if teacher_hf is None:
        teacher_hf, teacher_source = teacher_config_json(config.teacher.name)
    devices = devices if devices is not None else topology_devices(topo)
    mesh = train_setup.make_config_mesh(config, devices)
    setup = train_setup.build_train_setup(config, mesh, teacher_hf=teacher_hf, abstract=True,
                                          teacher_source=teacher_source or "config.json")
    chip = chip_info(topo)
    usable = usable_hbm_bytes(devices[0]) if chip is not None else None
    batch = setup.batch_spec()
    per_chip = {
        "student_params": tree_bytes_per_device(
            setup.state["params"]["student"], setup.state_shardings["params"]["student"]),
        "aux_params": tree_bytes_per_device(
            setup.state["params"]["aux"], setup.state_shardings["params"]["aux"]),
        "teacher_params": tree_bytes_per_device(setup.teacher_params, setup.teacher_shardings),
        "optimizer_state": tree_bytes_per_device(
            setup.state["opt_state"], setup.state_shardings["opt_state"]),
        "batch": tree_bytes_per_device(batch, {k: v.sharding for k, v in batch.items()}),
    }
    flops = setup.step_flops()
    peak = metrics_lib.device_peak_flops(devices[0]) if topo.platform == "tpu" else None
    result: dict[str, Any] = {
        "topology": topo.name, "libtpu_topology": topo.libtpu_name, "platform": topo.platform,
        "chips": len(devices), "mesh": dict(mesh.shape),
        "teacher": config.teacher.name, "teacher_shapes_from": teacher_source,
        "batch_size": int(config.batch_size), "microbatches": int(config.microbatches),
        "rows_per_chip": int(config.batch_size) // (mesh.shape["data"] * mesh.shape["fsdp"]),
        "seq_len": int(config.data.seq_len), "remat": bool(config.student.remat),
        "attention": setup.attention_paths(),
        "per_chip": per_chip, "flops_per_step": flops,
        "hbm_bytes": chip.hbm_bytes if chip else None,  # the chip table's capacity
        "hbm_usable_bytes": usable,                      # what XLA lets a program use
        "peak_bf16_flops_per_chip": peak,
        "step_s_at_peak": (flops / (peak * len(devices))) if flops and peak else None,
    }
    t0 = time.time()
    try:
        compiled = setup.lower().compile()
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is a result; the rest re-raises
        if not _is_out_of_memory(exc):
            raise
        result.update(compile_s=time.time() - t0, fits=False, out_of_memory=parse_out_of_memory(str(exc)))
        return result
    result["compile_s"] = time.time() - t0
    memory = memory_bytes(compiled)
    result["memory"] = memory
    if memory is not None:
        per_chip["temporaries"] = memory["temporaries"]
        per_chip["total"] = memory["total"]
    if chip is not None and memory is not None:
        limit = usable or chip.hbm_bytes
        result["fits"] = memory["total"] <= limit
        result["headroom_bytes"] = limit - memory["total"]
    else:
        result["fits"] = None  # no HBM figure for CPU devices
    if with_collectives:
        found = collectives(compiled.as_text())
        result["collectives"] = summarise_collectives(found)
    return result


# ----------------------------------------------------------------------------------------------
# --search
# ----------------------------------------------------------------------------------------------

def search(config, topo: Topology, devices: list, *, teacher_hf: dict, teacher_source: str,
           first: dict, max_compiles: int = 10, log=print) -> dict:
    """What fits (see the module docstring). `first` is the shipped config's plan."""
    import ml_collections

    def attempt(**changes) -> dict:
        c = ml_collections.ConfigDict(config)
        for key, value in changes.items():
            if key == "remat":
                c.student.remat = value
            else:
                c[key] = value
        r = plan_config(c, topo, devices, teacher_hf=teacher_hf, teacher_source=teacher_source,
                        with_collectives=False)
        log(f"  search: {_describe(changes)} -> {_verdict(r)}")
        return r

    batch_devices = first["mesh"]["data"] * first["mesh"]["fsdp"]
    micro = int(config.microbatches)
    out: dict[str, Any] = {}
    if _fits(first):
        # Largest per-chip rows r (a multiple of microbatches): double until it fails, then bisect
        # until the gap is at most 1/8 of r (each probe is a full compile).
        good, bad, compiles = first["rows_per_chip"], None, 0
        while bad is None and compiles < max_compiles:
            trial = good * 2
            compiles += 1
            if _fits(attempt(batch_size=trial * batch_devices)):
                good = trial
            else:
                bad = trial
        while bad is not None and bad - good > max(micro, good // 8) and compiles < max_compiles:
            mid = (good + bad) // 2 // micro * micro
            if mid <= good:
                break
            compiles += 1
            if _fits(attempt(batch_size=mid * batch_devices)):
                good = mid
            else:
                bad = mid
        out["largest_rows_per_chip"] = good          # compiled and fits
        out["failing_rows_per_chip"] = bad           # compiled and does not fit (None: not reached)
        out["largest_batch_size"] = good * batch_devices
        return out
    rows = first["rows_per_chip"]
    if not bool(config.student.remat):
        out["remat_fits"] = _fits(attempt(remat=True))
    m = micro * 2
    compiles = 0
    while m <= rows and compiles < max_compiles:
        if rows % m == 0:
            compiles += 1
            if _fits(attempt(microbatches=m)):
                out["smallest_microbatches"] = m
                break
        m *= 2
    return out


def _fits(result: dict) -> bool:
    return result.get("fits") is not False and "out_of_memory" not in result


def _describe(changes: dict) -> str:
    return ", ".join(f"{'student.remat' if k == 'remat' else k}={v}" for k, v in changes.items())


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def gib(n: float | None) -> str:
    """Bytes as GiB (MiB below 1 GiB), for the report."""
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def _verdict(r: dict) -> str:
    if "out_of_memory" in r:
        oom = r["out_of_memory"]
        if "required_bytes" in oom:
            return (f"does not fit: XLA needs {gib(oom['required_bytes'])} per chip where "
                    f"{gib(oom['usable_bytes'])} are usable ({oom['message']})")
        return f"does not fit: {oom['message']}"
    if r.get("fits") is None:
        return f"total {gib(r['per_chip'].get('total'))} per device (no HBM figure for {r['platform']})"
    verdict = "fits" if r["fits"] else "does not fit"
    limit = r.get("hbm_usable_bytes") or r["hbm_bytes"]
    return (f"{verdict}: {gib(r['per_chip']['total'])} of {gib(limit)} usable HBM per chip, "
            f"headroom {gib(r['headroom_bytes'])} ({100 * r['headroom_bytes'] / limit:.0f}%)")


def format_report(r: dict) -> str:
    lines = [f"plan: {r['teacher']} -> student, {r['topology']}"
             + (f" ({r['libtpu_topology']}, {r['chips']} chips)" if r["libtpu_topology"] else
                f" ({r['chips']} devices)")
             + f", mesh {r['mesh']}",
             f"batch {r['batch_size']} x {r['seq_len']} ({r['rows_per_chip']} rows per chip, "
             f"microbatches {r['microbatches']}, remat {r['remat']}); teacher shapes from "
             f"{r['teacher_shapes_from']}"]
    if r.get("attention"):
        lines.append("attention: " + ", ".join(f"{k} {v}" for k, v in r["attention"].items()))
    p = r["per_chip"]
    lines.append("per chip:")
    for key, label in (("student_params", "student parameters"), ("aux_params", "objective aux params"),
                       ("teacher_params", "teacher parameters (frozen)"),
                       ("optimizer_state", "optimizer state"), ("batch", "batch"),
                       ("temporaries", "temporaries (XLA)"), ("total", "total")):
        if key in p:
            lines.append(f"  {label:<30} {gib(p[key]):>12}")
    if r.get("hbm_bytes"):
        lines.append(f"  {'HBM (chip table)':<30} {gib(r['hbm_bytes']):>12}"
                     + (f"   usable by XLA {gib(r['hbm_usable_bytes'])}" if r.get("hbm_usable_bytes") else ""))
    lines.append(_verdict(r))
    if r.get("collectives"):
        lines.append("collectives per step (bytes per chip):")
        for op, c in sorted(r["collectives"].items()):
            lines.append(f"  {op:<20} {c['count']:>5} x  {c['bytes_per_step'] / 2**20:10.1f} MiB")
    elif "collectives" in r:
        lines.append("collectives per step: none")
    if r.get("flops_per_step"):
        line = f"analytic FLOPs per step: {r['flops_per_step'] / 1e12:.1f} TFLOP"
        if r.get("step_s_at_peak"):
            line += (f"; at 100% of the {r['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16 peak "
                     f"per chip a step takes {r['step_s_at_peak'] * 1e3:.0f} ms (a floor)")
        lines.append(line)
    if "compile_s" in r:
        lines.append(f"compiled in {r['compile_s']:.0f} s")
    return "\n".join(lines)


def format_search(s: dict) -> str:
    """The --search verdict as lines naming the --config flags to use."""
    if "largest_rows_per_chip" in s:
        above = (f", not at {s['failing_rows_per_chip']}" if s["failing_rows_per_chip"]
                 else ", larger batches not tried")
        return (f"search: fits at {s['largest_rows_per_chip']} rows per chip{above}: "
                f"--config.batch_size={s['largest_batch_size']}")
    lines = []
    if "remat_fits" in s:
        lines.append(f"search: --config.student.remat=True alone {'fits' if s['remat_fits'] else 'does not fit'}")
    if "smallest_microbatches" in s:
        lines.append(f"search: the smallest microbatch count that fits: "
                     f"--config.microbatches={s['smallest_microbatches']}")
    else:
        lines.append("search: no microbatch count up to the per-chip rows fits")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    """The command line (absl flags as main.py: --config=file[:arg] and --config.* overrides)."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    argv = list(sys.argv if argv is None else argv)
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mha_l6_h384.py[:arg].",
                                    flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("topology", None, "v5e-16, v4-32, v5p-128, v6e-64, v5e:4x4, cpu:8", flag_values=fv)
    flags.DEFINE_bool("search", False, "find the largest batch (or microbatches / remat) that fits",
                      flag_values=fv)
    flags.DEFINE_string("json", "", "also write the figures to this JSON file", flag_values=fv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__ + "\nflags:\n" + fv.module_help(fv.find_module_defining_flag("topology")))
        return 0
    try:
        fv(argv)
    except flags.Error as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    if fv.config is None or not fv.topology:
        raise ValueError("--config=configs/<recipe>.py and --topology=<v5e-16 | v4-32 | cpu:8 ...> "
                         "are both required")
    topo = parse_topology(fv.topology)
    from distill_jax import stack_limit

    if stack_limit.needs_hard_stack_limit(bool(fv.config.student.remat) or fv.search, topo.platform == "tpu"):
        stack_limit.reexec_with_hard_stack_limit()  # --search tries remat too
    if topo.platform == "cpu":
        import jax

        jax.config.update("jax_num_cpu_devices", max(topo.chips, 1))
    devices = topology_devices(topo)
    config = fv.config
    teacher_hf, source = teacher_config_json(config.teacher.name)
    result = plan_config(config, topo, devices, teacher_hf=teacher_hf, teacher_source=source)
    print(format_report(result), flush=True)
    if fv.search:
        result["search"] = search(config, topo, devices, teacher_hf=teacher_hf, teacher_source=source,
                                  first=result)
        print(format_search(result["search"]), flush=True)
    if fv.json:
        Path(fv.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


def _run() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The plan's own arrays (keys, shapes) live on the host CPU: it never claims a local
    # accelerator (on a TPU VM a training job may be using the chips).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    compile_only_environment()
    from distill_jax.commands import run_with_one_line_errors

    run_with_one_line_errors(main)


if __name__ == "__main__":
    _run()
