"""One plan and the search: `plan_config` compiles the real train step of a config for a
topology from abstract shapes (distill_jax.train_setup.build_train_setup(abstract=True), the
builder train.py runs) and returns its figures per chip; `search` compiles variants of it to find
what fits (see the package docstring). The teacher's shapes come from its config.json alone.
"""

from __future__ import annotations

import time
from typing import Any

from distill_jax.plan.hlo import collectives, is_out_of_memory, parse_out_of_memory, summarise_collectives
from distill_jax.plan.report import verdict
from distill_jax.plan.topology import Topology, chip_info, topology_devices, usable_hbm_bytes


def teacher_config_json(name: str) -> tuple[dict, str]:
    """(config.json dict, where it came from) for config.teacher.name, shapes only
    (models.hf_io.resolve_model): never reads or downloads weights."""
    from distill_jax.models.hf_io import resolve_model

    teacher = resolve_model(name, shapes_only=True)
    return teacher.hf_config, teacher.source


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
        if not is_out_of_memory(exc):
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
        log(f"  search: {_describe(changes)} -> {verdict(r)}")
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
