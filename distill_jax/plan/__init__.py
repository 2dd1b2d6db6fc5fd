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

from distill_jax.plan.hlo import collectives, is_out_of_memory, parse_out_of_memory, summarise_collectives
from distill_jax.plan.planner import plan_config, search, teacher_config_json
from distill_jax.plan.report import format_report, format_search, gib, verdict
from distill_jax.plan.topology import (GENERATIONS, ChipInfo, Topology, chip_info, compile_only_environment,
                                       parse_topology, topology_devices, usable_hbm_bytes)

__all__ = ["GENERATIONS", "ChipInfo", "Topology", "chip_info", "collectives", "compile_only_environment",
           "format_report", "format_search", "gib", "is_out_of_memory", "parse_out_of_memory", "parse_topology",
           "plan_config", "search", "summarise_collectives", "teacher_config_json", "topology_devices",
           "usable_hbm_bytes", "verdict"]
