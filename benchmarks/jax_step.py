"""The JAX side: the project's own distillation step for a Case, compiled ahead of time and timed.

The step is built by distill_jax.train_setup.build_train_setup, the builder train.py and the TPU
plan use: the config is configs/common.py's defaults with the case's shapes, dtypes, objective
and batch (`bench_config`), on a one-device mesh. The teacher is the real MiniLM-L6 (its
safetensors, through the builder's real load) or random weights of the case's shape; the step is
train.py's, jitted with the state donated.

Dropout is off (both here and in the PyTorch baseline), so both sides do the same arithmetic.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks.cases import Case


def objective_config(case: Case) -> dict:
    """The distill_jax.losses config of the case's objective (uniform_cons for HS, as the issue)."""
    if case.objective == "minilmv2":
        block = {} if case.relation_block_size is None else {"block_size": case.relation_block_size}
        return {"minilmv2": {"weight": 1.0, "relation_heads": case.relation_heads, **block}}
    if case.objective == "hs":
        return {"hs": {"weight": 1.0, "map": "uniform_cons", "loss": "mse"}}
    return {"od": {"weight": 1.0, "temperature": 1.0, "positions": "mlm"}}


def bench_config(case: Case, seed: int = 0) -> ml_collections.ConfigDict:
    """configs/common.py's defaults with the case's shapes, dtypes, objective and batch; no
    dropout, no warmup (every timed step is a full update), one device."""
    from configs import common

    c = common.base_config()
    c.seed = seed
    c.teacher.dtype = case.teacher_dtype
    ss = case.student_shape
    c.student.num_layers, c.student.hidden_size = ss.num_layers, ss.hidden_size
    c.student.num_heads, c.student.intermediate_size = ss.num_heads, ss.intermediate_size
    c.student.dtype = case.dtype
    c.student.hidden_dropout = c.student.attention_dropout = 0.0
    c.objective = objective_config(case)
    c.batch_size, c.data.seq_len = case.batch_size, case.seq_len
    if case.mlm_positions:
        c.data.mlm.max_predictions = case.mlm_positions
    c.total_steps, c.optim.warmup_steps = 1_000_000, 0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    return c


def teacher_config_json(case: Case) -> dict:
    """The case's teacher as a config.json dict: the real checkpoint's, or a BERT of its shape."""
    if case.teacher_dir is not None:
        from pathlib import Path

        from distill_jax.models.hf_io import read_hf_config
        return read_hf_config(Path(case.teacher_dir))
    ts = case.teacher_shape
    return {"model_type": "bert", "vocab_size": ts.vocab_size, "hidden_size": ts.hidden_size,
            "num_hidden_layers": ts.num_layers, "num_attention_heads": ts.num_heads,
            "intermediate_size": ts.intermediate_size, "max_position_embeddings": 512}


class BuiltStep:
    """The setup (distill_jax.train_setup.TrainSetup), its jitted step, state and other inputs."""

    step_source = "distill_jax.train_setup.build_train_setup (train.py's step)"

    def __init__(self, setup, batch):
        self.setup = setup
        self.step = setup.jitted            # step(state, teacher_params, batch), state donated
        self.state = setup.state
        self.args = (setup.teacher_params, batch)

    def models(self):
        """(teacher, student) nnx modules over the current parameters."""
        from flax import nnx

        return (nnx.merge(self.setup.teacher_graphdef, self.setup.teacher_params),
                nnx.merge(self.setup.student_graphdef, self.state["params"]["student"]))


def build_step(case: Case, batch_np: dict[str, np.ndarray], *, seed: int = 0, device=None) -> BuiltStep:
    """The case's train step through the shared builder, everything placed on `device`."""
    from distill_jax import sharding
    from distill_jax.train_setup import build_train_setup

    device = device or jax.devices()[0]
    mesh = sharding.make_mesh(1, 1, 1, devices=[device])
    setup = build_train_setup(bench_config(case, seed), mesh, teacher_hf=teacher_config_json(case),
                              teacher_dir=case.teacher_dir)
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, np.ndim(v))) for k, v in batch_np.items()}
    return BuiltStep(setup, batch)


def memory_figures(compiled) -> dict:
    """Per-device bytes of the compiled step (distill_jax.memory.memory_bytes, what train.py
    logs and the plan reports) plus peak_bytes = the larger of XLA's own peak_memory_in_bytes and
    that total (XLA:CPU's peak has been seen to leave temporaries out)."""
    from distill_jax.memory import memory_bytes

    out = memory_bytes(compiled)
    if out is None:
        return {"available": False}
    reported = int(getattr(compiled.memory_analysis(), "peak_memory_in_bytes", 0) or 0)
    out["peak_memory_in_bytes"] = reported
    out["peak_bytes"] = max(reported, out["total"])
    return out


def compile_step(built: BuiltStep) -> tuple[Any, dict]:
    """Ahead-of-time lower() and compile(), timed separately; memory and XLA's FLOP count."""
    t0 = time.perf_counter()
    lowered = built.step.lower(built.state, *built.args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return compiled, {"lower_s": t1 - t0, "compile_s": t2 - t1,
                      "memory": memory_figures(compiled),
                      "xla_flops_per_step": float(cost.get("flops", -1)) if cost else None}


def time_compiled(compiled, built: BuiltStep, *, warmup: int, steps: int, progress=None) -> dict:
    """warm-up steps, then `steps` steps each timed to completion (block_until_ready on the loss).

    Also the process CPU time of each step (all threads): on a shared machine wall time grows
    with other processes' load while CPU time mostly does not (spin-waiting aside)."""
    state = built.state
    metrics = None
    for _ in range(warmup):
        state, metrics = compiled(state, *built.args)
    if metrics is not None:
        jax.block_until_ready(metrics["loss"])
    times, cpu_times = [], []
    for i in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, *built.args)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if progress:
            progress(i + 1, steps, times[-1])
    built.state = state  # the old buffers were donated
    return {"step_times_s": times, "step_cpu_s": cpu_times,
            "final_loss": float(metrics["loss"]) if metrics else None}
