"""The JAX side: build the project's distillation step for a Case, compile it ahead of time, time it.

Models come from distill_jax.models (the real MiniLM-L6 teacher through load_pretrained, or a
random teacher of the case's shape), the objective from distill_jax.losses.build_objective, the
optimizer from distill_jax.optim.make_optimizer (AdamW, BERT's decay mask, global-norm clipping
at 1.0, as configs/common.py), and the step is the training system's own
`distill_jax.step.make_train_step`, jitted with the state donated as train.py does (one device,
so no shardings). `fallback_train_step` is the bench's own build of the same step (used only with
step="fallback", e.g. to compare): teacher forward outside value_and_grad under stop_gradient,
value_and_grad over the student and the objective's projections, optax AdamW.
`BuiltStep.step_source` records which one ran.

Dropout is off (both here and in the PyTorch baseline), so both sides do the same arithmetic.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from distill_jax.bench.cases import Case

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0)
# configs/common.py's optimizer, with no warmup so every timed step does a full update.
OPTIM = dict(learning_rate=1e-4, warmup_steps=0, end_learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-6,
             weight_decay=0.01, grad_clip_norm=1.0)


def objective_config(case: Case) -> dict:
    """The distill_jax.losses config of the case's objective (uniform_cons for HS, as the issue)."""
    if case.objective == "minilmv2":
        block = {} if case.relation_block_size is None else {"block_size": case.relation_block_size}
        return {"minilmv2": {"weight": 1.0, "relation_heads": case.relation_heads, **block}}
    if case.objective == "hs":
        return {"hs": {"weight": 1.0, "map": "uniform_cons", "loss": "mse"}}
    return {"od": {"weight": 1.0, "temperature": 1.0, "positions": "mlm"}}


def build_models(case: Case, seed: int = 0):
    """(teacher, student) nnx Encoders of the case's shapes, dtype and heads; dropout off."""
    from distill_jax.models import EncoderConfig, Encoder, load_pretrained, make_student

    with_head = case.objective == "od"
    if case.teacher_dir is not None:
        teacher, t_cfg, _ = load_pretrained(case.teacher_dir, dtype=case.teacher_dtype, with_mlm_head=with_head,
                                            rngs=nnx.Rngs(seed), with_pooler=False, **NO_DROPOUT)
    else:
        ts = case.teacher_shape
        t_cfg = EncoderConfig(vocab_size=ts.vocab_size, hidden_size=ts.hidden_size,
                              num_layers=ts.num_layers, num_heads=ts.num_heads,
                              intermediate_size=ts.intermediate_size, with_mlm_head=with_head,
                              with_pooler=False, dtype=case.teacher_dtype, **NO_DROPOUT)
        teacher = Encoder(t_cfg, rngs=nnx.Rngs(seed))
    ss = case.student_shape
    student = make_student(t_cfg, num_layers=ss.num_layers, hidden_size=ss.hidden_size,
                           num_heads=ss.num_heads, intermediate_size=ss.intermediate_size,
                           with_mlm_head=with_head, dtype=case.dtype, rngs=nnx.Rngs(seed + 1))
    return teacher, student


def fallback_train_step(teacher_graph, student_graph, objective, tx: optax.GradientTransformation,
                        with_heads: bool) -> Callable:
    """step(state, batch) -> (state, metrics); state = {teacher, student, aux, opt}.

    The teacher's params travel in `state` (never updated) rather than as closed-over constants,
    so XLA does not fold 100+ MB of weights into the program (slow compiles, big executables).
    """

    def step(state, batch):
        teacher = nnx.merge(teacher_graph, state["teacher"])
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        t_out = jax.lax.stop_gradient(teacher(*inputs))

        def loss_fn(trainable):
            student = nnx.merge(student_graph, trainable["student"])
            s_out = student(*inputs)
            heads = dict(student_mlm_head=student.mlm_logits, teacher_mlm_head=teacher.mlm_logits) \
                if with_heads else {}
            return objective(trainable["aux"], s_out, t_out, batch, **heads)

        trainable = {"student": state["student"], "aux": state["aux"]}
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt = tx.update(grads, state["opt"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        new_state = {"teacher": state["teacher"], "student": trainable["student"],
                     "aux": trainable["aux"], "opt": opt}
        return new_state, {"loss": loss, **terms}

    return step


@dataclasses.dataclass
class BuiltStep:
    step: Callable  # jitted step(state, *args) -> (state, metrics), state donated
    state: Any
    args: tuple  # the other inputs after the state: (teacher_params, batch) or (batch,)
    step_source: str


def _pure_params(model) -> tuple[Any, Any]:
    """(graphdef, params as a pure dict), as train.py splits its models."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def build_step(case: Case, batch_np: dict[str, np.ndarray], *, seed: int = 0, step: str = "project",
               device=None) -> BuiltStep:
    """Models, objective, optimizer state and the jitted step, all placed on `device`.

    step: "project" (distill_jax.step.make_train_step, what train.py runs) or "fallback".
    """
    import ml_collections

    from distill_jax.losses import build_objective
    from distill_jax.optim import make_optimizer

    if step not in ("project", "fallback"):
        raise ValueError(f"--step={step!r}: use project or fallback")
    device = device or jax.devices()[0]
    teacher, student = build_models(case, seed)
    objective = build_objective(objective_config(case), student.cfg, teacher.cfg)
    aux = objective.init_params(jax.random.key(seed + 2))
    batch = jax.device_put({k: jnp.asarray(v) for k, v in batch_np.items()}, device)
    total_steps = 1_000_000
    tx, lr_schedule = make_optimizer(ml_collections.ConfigDict(OPTIM), total_steps)
    if step == "project":
        from distill_jax import step as step_lib

        t_graph, t_params = _pure_params(teacher)
        s_graph, s_params = _pure_params(student)
        params = {"student": s_params, "aux": aux}
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        fn = step_lib.make_train_step(
            student_graphdef=s_graph, teacher_graphdef=t_graph, objective=objective, tx=tx,
            lr_schedule=lr_schedule, seed=seed, output_attentions=objective.needs_attentions,
            student_has_mlm_head=objective.needs_mlm_head,
            teacher_has_mlm_head=objective.needs_teacher_mlm_head)
        state, t_params = jax.device_put((state, t_params), device)
        return BuiltStep(step=jax.jit(fn, donate_argnums=0), state=state, args=(t_params, batch),
                         step_source="distill_jax.step.make_train_step")
    t_graph, t_state = nnx.split(teacher)
    s_graph, s_state = nnx.split(student)
    trainable = {"student": s_state, "aux": aux}
    state = {"teacher": t_state, "student": s_state, "aux": aux, "opt": tx.init(trainable)}
    state = jax.device_put(state, device)
    fn = fallback_train_step(t_graph, s_graph, objective, tx, with_heads=case.objective == "od")
    return BuiltStep(step=jax.jit(fn, donate_argnums=0), state=state, args=(batch,),
                     step_source="distill_jax.bench.jax_step.fallback_train_step")


def memory_figures(compiled) -> dict:
    """Bytes from compiled.memory_analysis(); peak_bytes = the larger of XLA's own
    peak_memory_in_bytes and arguments + outputs + temporaries - aliased (donated state reuses
    its input buffers)."""
    m = compiled.memory_analysis()
    if m is None:
        return {"available": False}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    out = {f: int(getattr(m, f, 0) or 0) for f in fields}
    summed = (out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"]
              - out["alias_size_in_bytes"])
    reported = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    # XLA:CPU's peak_memory_in_bytes has been seen to leave temporaries out; report the larger.
    out["peak_memory_in_bytes"] = reported
    out["peak_bytes"] = max(reported, summed)
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
