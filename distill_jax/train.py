"""The distillation trainer: `train_and_evaluate(config, workdir)`, in commented phases.

  1. check the config (every impossible value named before anything heavy runs)
  2. mesh and logical-axis rules
  3. teacher: resolve its directory (fails in seconds when it is not reachable), load, cast once
  4. student, objective (+ aux params), optimizer; parameters created already sharded
  5. data iterator (per host)
  6. resume from the newest checkpoint in workdir, if any
  7. compile the step (ahead of time, so its cost is reported apart from the steps)
  8. the loop: step, metrics, NaN check, checkpoints, preemption (SIGTERM)
  9. the end: final checkpoint, export in HF format, summary.json, loss-curve PNG

Workdir layout: checkpoints/<step>/..., tensorboard/events.*, export/ (HF model + tokenizer),
summary.json, loss_curves.png, config.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding

from distill_jax import checkpoint as ckpt_lib
from distill_jax import metrics as metrics_lib
from distill_jax import optim, sharding
from distill_jax import step as step_lib


def log(message: str) -> None:
    """Console output of process 0 (every process in a multi-host job computes the same thing)."""
    if jax.process_index() == 0:
        print(f"[distill] {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# 1. Config checks
# ----------------------------------------------------------------------------------------------

def _positive_int(config, field: str) -> int:
    value = config
    for part in field.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"config.{field}={value!r}: must be a positive integer")
    return int(value)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the config field for values that can never work."""
    for field in ("total_steps", "batch_size", "microbatches", "log_every", "checkpoint_every",
                  "keep_checkpoints", "data.seq_len"):
        _positive_int(config, field)
    for field in ("student.num_layers", "student.hidden_size", "student.num_heads",
                  "student.intermediate_size"):
        _positive_int(config, field)
    if config.student.hidden_size % config.student.num_heads:
        raise ValueError(f"config.student.hidden_size={config.student.hidden_size} is not divisible by "
                         f"config.student.num_heads={config.student.num_heads}")
    if config.student.init not in ("random", "teacher"):
        raise ValueError(f"config.student.init={config.student.init!r}: use 'random' or 'teacher'")
    for field in ("teacher.dtype", "student.dtype", "student.param_dtype"):
        section, name = field.split(".")
        if config[section][name] not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"config.{field}={config[section][name]!r}: use 'float32' or 'bfloat16'")
    if config.batch_size % config.microbatches:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by "
                         f"config.microbatches={config.microbatches}")
    if config.batch_size % jax.process_count():
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                         f"{jax.process_count()} processes (each host feeds an equal share)")
    if config.get("stop_after_step", 0) < 0:
        raise ValueError(f"config.stop_after_step={config.stop_after_step}: must be >= 0 (0 = off)")


def check_batch_fits_mesh(config, mesh) -> None:
    """Each microbatch must split evenly over the batch axes (data x fsdp) of the mesh."""
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = config.batch_size // config.microbatches
    if rows % batch_devices:
        raise ValueError(
            f"config.batch_size={config.batch_size} / config.microbatches={config.microbatches} = {rows} "
            f"rows per microbatch do not split over mesh data*fsdp = {batch_devices} devices; "
            f"make the microbatch a multiple of {batch_devices}")


def axis_rules(config) -> tuple:
    rules = config.get("logical_axis_rules")
    if not rules:
        return sharding.DEFAULT_RULES
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


# ----------------------------------------------------------------------------------------------
# Helpers: pure-dict params <-> shardings
# ----------------------------------------------------------------------------------------------

def pure_shardings(model: nnx.Module, mesh, rules) -> Any:
    """NamedSharding per parameter of `model`, as a pure dict (like nnx.to_pure_dict)."""
    from distill_jax.models.partitioning import state_shardings

    shardings = state_shardings(nnx.state(model, nnx.Param), mesh, rules)
    return nnx.to_pure_dict(shardings)


def _split_params(model: nnx.Module) -> tuple[Any, Any]:
    """(graphdef, params as a pure dict); the encoders hold nothing but nnx.Param."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"{type(model).__name__} holds non-parameter state {list(rest.keys())}; "
                         "the train step expects parameters only")
    return graphdef, nnx.to_pure_dict(params)


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def host_params(params: Any) -> Any:
    """Every array whole on this host (an allgather in multi-process jobs)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


# ----------------------------------------------------------------------------------------------
# Preemption
# ----------------------------------------------------------------------------------------------

class PreemptionWatch:
    """Stops the loop cleanly on SIGTERM (what TPU VMs and SLURM send before preempting): the loop
    finishes the current step, saves and exits; rerunning the same command resumes.

    Multi-process jobs must stop at the same step everywhere. When jax.distributed runs its
    preemption sync manager (it hears SIGTERM through the coordination service), every process asks
    it each step; otherwise each process's flag is all-gathered at log/checkpoint steps.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._jax_sync = jax.process_count() > 1 and _jax_preemption_sync_available()
        if not self._jax_sync:  # a Python handler would replace the coordination service's one
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread: no handler
                self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def should_stop(self, step: int, at_sync_point: bool) -> bool:
        from jax.experimental import multihost_utils

        if self._jax_sync:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        if jax.process_count() == 1:
            return self.requested
        if not at_sync_point:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _jax_preemption_sync_available() -> bool:
    try:
        from jax._src import distributed
        return distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RunResult:
    """What train_and_evaluate returns (also written to summary.json, as `summary`)."""
    final_step: int
    final_metrics: dict       # the last step's exact values (loss, loss/<term>, grad_norm, lr)
    preempted: bool
    summary: dict


def _objective_flops(config, objective, teacher_cfg, student_cfg) -> float | None:
    """Matmul FLOPs of one step (teacher fwd + student fwd/bwd + objective), from flops.py."""
    try:
        from distill_jax import flops
    except ImportError:
        return None
    names = {"od": "od", "hs": "hs", "minilmv2": "minilmv2", "minilm": "minilm",
             "direct_minilm": "direct_minilm", "tinybert_attention": "tinybert_attn"}
    cfg = objective.config
    terms = [names[t] for t in cfg if t in names]
    if not terms:  # only the hard-label "mlm" term: the student forward/backward + head
        terms = ["od"]
    kwargs: dict[str, Any] = {}
    mha = next((cfg[t] for t in ("minilmv2", "minilm", "direct_minilm") if t in cfg), None)
    if mha is not None:
        kwargs["teacher_layer"] = mha["teacher_layer"]
        kwargs["student_layer"] = mha["student_layer"]
        kwargs["num_relations"] = 3 if "minilmv2" in cfg else 1
    pairs = (cfg.get("hs") or cfg.get("tinybert_attention") or {}).get("pairs")
    if pairs is not None:
        kwargs["hs_pairs"] = [(s, list(t) if isinstance(t, (list, tuple)) else [t]) for s, t in pairs]
    if "od" in terms:
        positions = config.data.seq_len if cfg.get("od", {}).get("positions") == "all" else \
            config.data.mlm.max_predictions
        kwargs["mlm_positions"] = int(positions)
    try:
        return float(flops.distill_step_flops(teacher_cfg, student_cfg, config.batch_size,
                                              config.data.seq_len, terms=terms, **kwargs).total)
    except Exception as exc:  # MFU is a report, never a reason to stop training
        log(f"FLOPs count unavailable ({exc}); MFU not reported")
        return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
    """Distils config.teacher into a student as config says; checkpoints/logs/exports in workdir."""
    from distill_jax import models
    from distill_jax.losses import build_objective

    t_start = time.time()
    config = ml_collections.ConfigDict(config)  # never mutate the caller's config
    workdir = workdir.rstrip("/") if "://" in workdir else os.path.abspath(workdir)

    # 1. Config checks, then the teacher's whereabouts: both fail in seconds with one line.
    check_config(config)
    if config.get("compilation_cache_dir"):
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    try:
        teacher_dir = str(models.resolve_model_dir(config.teacher.name))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"config.teacher.name={config.teacher.name!r}: {exc} "
                                f"(--config.teacher.name=/path/to/dir)") from None
    from distill_jax.data import validate_data_config
    from distill_jax.models.hf_io import read_hf_config
    validate_data_config(config.data)

    # Everything that depends only on shapes is checked from the teacher's config.json, before any
    # weight is read or any device touched: sequence length, objective (layer maps, relation heads,
    # head counts), optimizer schedule.
    seed = int(config.seed)
    teacher_dtype = config.teacher.dtype
    teacher_shape = models.EncoderConfig.from_hf_dict(
        read_hf_config(Path(teacher_dir)), source=f"{teacher_dir}/config.json")
    if config.data.seq_len > teacher_shape.max_seq_len:
        raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds the teacher's position "
                         f"table ({teacher_shape.max_seq_len} tokens)")
    student_kwargs = dict(
        num_layers=config.student.num_layers, hidden_size=config.student.hidden_size,
        num_heads=config.student.num_heads, intermediate_size=config.student.intermediate_size)
    objective = build_objective(config.objective, ml_collections.ConfigDict(student_kwargs),
                                teacher_shape)
    tx, lr_schedule = optim.make_optimizer(config.optim, config.total_steps)

    # 2. Mesh.
    num_devices = int(config.mesh.get("devices", 0))
    if num_devices < 0 or num_devices > jax.device_count():
        raise ValueError(f"config.mesh.devices={num_devices}: must be 0 (all) or at most the "
                         f"{jax.device_count()} devices present")
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                              devices=jax.devices()[:num_devices] if num_devices else None)
    rules = axis_rules(config)
    check_batch_fits_mesh(config, mesh)
    log(f"mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} devices, "
        f"{jax.process_count()} process(es); workdir {workdir}")
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)

    # 3. Teacher: loaded once, cast once to its compute dtype, placed sharded, never checkpointed.
    t0 = time.time()
    teacher, teacher_cfg, _ = models.load_pretrained(
        teacher_dir, dtype=teacher_dtype, param_dtype=teacher_dtype,
        with_mlm_head=objective.needs_teacher_mlm_head, mesh=mesh, rules=rules)
    log(f"teacher {config.teacher.name} ({teacher_cfg.num_layers}x{teacher_cfg.hidden_size}, "
        f"{teacher_cfg.family}, {teacher_dtype}) loaded in {time.time() - t0:.1f}s from {teacher_dir}")

    # 4. The student (its shapes were checked above), its shardings, the optimizer state.
    student_overrides = dict(
        init=config.student.init,
        teacher_layers=(list(config.student.teacher_layers)
                        if config.student.get("teacher_layers") else None),
        dtype=config.student.dtype, param_dtype=config.student.param_dtype,
        with_mlm_head=objective.needs_mlm_head)
    for field in ("hidden_dropout", "attention_dropout"):
        if config.student.get(field) is not None:
            student_overrides[field] = float(config.student[field])
    if config.student.get("remat"):
        student_overrides["remat"] = True
    student, student_graphdef, student_params, student_shardings = _make_student(
        models, teacher_cfg, teacher_dir,
        teacher if teacher_dtype == "float32" else None, student_kwargs, student_overrides,
        mesh, rules, seed)
    # load_pretrained placed the params sharded and already in teacher_dtype (the one cast).
    teacher_shardings = pure_shardings(teacher, mesh, rules)
    teacher_graphdef, teacher_params = _split_params(teacher)
    teacher_params = jax.device_put(teacher_params, teacher_shardings)  # no-op when placed
    del teacher
    student_cfg = student.cfg
    log(f"student {student_cfg.num_layers}x{student_cfg.hidden_size} ({student_cfg.num_heads} heads, "
        f"FFN {student_cfg.intermediate_size}), init={config.student.init}; objective {objective}")

    aux_params = objective.init_params(jax.random.fold_in(jax.random.key(seed), 1))
    repl = sharding.replicated(mesh)
    params = {"student": student_params, "aux": jax.device_put(aux_params, repl)}
    param_shardings = {"student": student_shardings,
                       "aux": jax.tree.map(lambda _: repl, aux_params)}
    abstract_opt = jax.eval_shape(tx.init, params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_shardings,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    state = {"step": jax.device_put(jnp.zeros((), jnp.int32), repl), "params": params,
             "opt_state": opt_state}
    state_shardings = {"step": repl, "params": param_shardings, "opt_state": opt_shardings}
    if jax.process_index() == 0:
        # The per-parameter table goes to a file (it is 30+ lines); the console gets the totals.
        table = metrics_lib.parameter_overview(params["student"])
        epath.Path(f"{workdir}/parameters.txt").write_text(table + "\n")
        if config.get("print_parameters", False):
            print(table, flush=True)
        log(f"trainable parameters: student {metrics_lib.count_parameters(params['student']):,}, "
            f"objective aux {metrics_lib.count_parameters(params['aux']):,}; teacher (frozen) "
            f"{metrics_lib.count_parameters(teacher_params):,}; table in {workdir}/parameters.txt")

    # 5. Data: this host's rows of every global batch.
    from distill_jax import data as data_lib
    tokenizer = data_lib.load_tokenizer(teacher_dir)
    data_lib.check_vocab(tokenizer, teacher_cfg.vocab_size)
    data_iter = data_lib.build_train_iterator(
        config.data, tokenizer, per_host_batch_size=config.batch_size // jax.process_count(),
        process_index=jax.process_index(), process_count=jax.process_count(), seed=seed,
        mlm=data_lib.MlmConfig.from_config(config.data.mlm) if objective.needs_mlm_batch else None)

    # 6. Resume.
    checkpointer = ckpt_lib.Checkpointer(
        f"{workdir}/checkpoints", max_to_keep=config.keep_checkpoints,
        async_save=config.get("async_checkpoints", True))
    from distill_jax import distributed
    distributed.note_checkpoint_dir(checkpointer.directory)  # named when a peer process is lost
    restored = checkpointer.restore_latest(_abstract(state, state_shardings))
    elapsed_before = 0.0
    if restored is not None:
        state = restored.state
        data_iter.set_state(restored.data_state)
        elapsed_before = float(restored.meta.get("elapsed_s", 0.0))
        log(f"resumed from checkpoint step {restored.step} in {checkpointer.directory}")
    start_step = int(jax.device_get(state["step"]))

    # 7. Compile ahead of time.
    train_step = step_lib.make_train_step(
        student_graphdef=student_graphdef, teacher_graphdef=teacher_graphdef, objective=objective,
        tx=tx, lr_schedule=lr_schedule, microbatches=config.microbatches, seed=seed,
        output_attentions=objective.needs_attentions,
        student_has_mlm_head=objective.needs_mlm_head,
        teacher_has_mlm_head=objective.needs_teacher_mlm_head)
    metric_sharding = repl
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, teacher_shardings, sharding.batch_sharding(mesh, 1)),
        out_shardings=(state_shardings, metric_sharding),
        donate_argnums=(0,))
    # Listen for SIGTERM from here on: a preemption during compilation stops after the first step.
    preemption = PreemptionWatch()
    first_local = next(data_iter)
    first_batch = sharding.global_batch_from_local(first_local, mesh)
    t0 = time.time()
    try:
        compiled = jitted.lower(state, teacher_params, first_batch).compile()
    except BaseException:
        preemption.close()
        raise
    compile_s = time.time() - t0
    log(f"step compiled in {compile_s:.1f}s{_memory_line(compiled)}")

    tokens_per_step = config.batch_size * config.data.seq_len
    flops_per_step = _objective_flops(config, objective, teacher_cfg, student_cfg)
    peak, peak_source = metrics_lib.machine_peak_flops(config.get("peak_flops_per_device", 0.0))
    if flops_per_step:
        log(f"{flops_per_step / 1e9:.1f} GFLOPs per step (teacher fwd + student fwd/bwd); peak "
            f"{peak / 1e12:.2f} TFLOP/s ({peak_source})")

    # 8. The loop.
    writer = metrics_lib.create_writer(workdir)
    if start_step == 0:
        writer.write_hparams({k: v for k, v in _flat_config(config).items()
                              if isinstance(v, (int, float, str, bool))})
    throughput = metrics_lib.Throughput(total_steps=config.total_steps, tokens_per_step=tokens_per_step,
                                        flops_per_step=flops_per_step, peak_flops=peak,
                                        start_step=start_step)
    # The curve up to the restored step (newer rows belong to a checkpoint that was moved aside).
    history: list[dict] = ([row for row in _load_history(workdir) if row["step"] <= start_step]
                           if restored is not None else [])
    pending: list[dict] = []        # device metrics of the steps since the last log
    last_metrics: dict | None = None
    stop_after = int(config.get("stop_after_step", 0))
    preempted = False
    step = start_step
    batch = first_batch
    loop_start = time.time()

    def save(at_step: int):
        checkpointer.save(at_step, state, data_iter.get_state(),
                          {"seed": seed, "elapsed_s": elapsed_before + time.time() - loop_start})
        _save_history(workdir, history)

    peer_lost = None
    try:
        while step < config.total_steps:
            if batch is None:
                batch = sharding.global_batch_from_local(next(data_iter), mesh)
            state, step_metrics = compiled(state, teacher_params, batch)
            batch = None
            step += 1
            distributed.note_step(step)
            pending.append(step_metrics)

            log_now = step % config.log_every == 0 or step == config.total_steps or step == start_step + 1
            save_now = step % config.checkpoint_every == 0 or step == config.total_steps
            stop_now = (preemption.should_stop(step, at_sync_point=log_now or save_now)
                        or bool(stop_after and step >= stop_after))
            if log_now or save_now or stop_now:
                host_metrics = jax.device_get(pending)
                pending = []
                last_metrics = metrics_lib.flatten_step_metrics(host_metrics[-1])
                for index, m in enumerate(host_metrics):
                    bad = step_lib.first_non_finite(m)
                    if bad is not None:
                        bad_step = step - len(host_metrics) + index + 1
                        raise FloatingPointError(
                            f"non-finite {bad} at step {bad_step}: training stopped, last good "
                            f"checkpoint step {checkpointer.latest_step()}; lower optim.learning_rate "
                            f"or check the data")
                if log_now:
                    scalars = _mean_scalars(host_metrics)
                    scalars.update(throughput.report(step))
                    writer.write_scalars(step, {k: v for k, v in scalars.items() if k != "perf/eta_s"})
                    history.append({"step": step, **{k: v for k, v in scalars.items()
                                                     if not k.startswith("perf/")}})
                    log(metrics_lib.console_line(step, config.total_steps, scalars))
                if save_now or stop_now:
                    save(step)
                    throughput.reset(step)
            if stop_now:
                preempted = step < config.total_steps
                if preempted:
                    log(f"stopping at step {step} ({'SIGTERM' if preemption.requested else 'stop_after_step'})"
                        f"; checkpoint saved, rerun the same command to resume")
                break
    except Exception as exc:
        if not distributed.is_peer_failure(exc):
            raise
        # A peer process is gone: nothing collective can finish (an async save in flight stays
        # unfinalized, so orbax ignores it); name the newest complete checkpoint and stop.
        peer_lost = distributed.PeerLost(step, checkpointer.latest_complete_step(), exc)
        raise peer_lost from exc
    finally:
        preemption.close()
        if peer_lost is None:  # waiting would block on the dead peer
            checkpointer.wait()
            writer.flush()
            writer.close()

    train_s = time.time() - loop_start
    checkpointer.close()

    # 9. The end: export, summary, plot.
    summary = _summary(config, workdir, step, start_step, history, last_metrics, compile_s, train_s,
                       elapsed_before, t_start, tokens_per_step, flops_per_step, peak, peak_source,
                       preempted, teacher_dir)
    if not preempted and config.get("export", True):
        export_dir = f"{workdir}/export"
        final_student = host_params(state["params"]["student"])
        if jax.process_index() == 0:
            model = nnx.merge(student_graphdef, final_student)
            with _local_dir(export_dir) as local:
                models.export_pretrained(model, local, tokenizer_dir=teacher_dir)
            summary["export_dir"] = export_dir
            log(f"student exported (HF format) to {export_dir}")
    if jax.process_index() == 0:
        epath.Path(f"{workdir}/summary.json").write_text(json.dumps(summary, indent=1))
        if history and not preempted:
            from distill_jax.plots import plot_loss_curves
            with _local_dir(workdir, only="loss_curves.png") as local:
                plot_loss_curves(history, f"{local}/loss_curves.png",
                                 title=f"{config.teacher.name} -> {student_cfg.num_layers}x{student_cfg.hidden_size}")
        log(f"summary written to {workdir}/summary.json")
    return RunResult(final_step=step, final_metrics=last_metrics or {}, preempted=preempted,
                     summary=summary)


def _make_student(models, teacher_cfg, teacher_dir, teacher_f32, student_kwargs, overrides,
                  mesh, rules, seed):
    """Builds the student with every parameter created in its sharding. Random init runs under
    jax.jit with out_shardings (nothing materialised whole on one device); 'teacher' init copies
    teacher layers (from `teacher_f32`, or a float32 load when the teacher runs in bf16), then
    places the result."""
    teacher_model = None
    if overrides["init"] == "teacher":
        teacher_model = teacher_f32
        if teacher_model is None:  # the bf16 teacher is for forwards; copy weights in float32
            teacher_model, _, _ = models.load_pretrained(teacher_dir, dtype="float32", param_dtype="float32")

    def make():
        return models.make_student(teacher_cfg, **student_kwargs, **overrides,
                                   teacher_model=teacher_model, rngs=nnx.Rngs(seed))

    if teacher_model is None:
        abstract = nnx.eval_shape(make)
        shardings = pure_shardings(abstract, mesh, rules)
        graphdef, _ = _split_params(abstract)
        params = jax.jit(lambda: _split_params(make())[1], out_shardings=shardings)()
        student = nnx.merge(graphdef, params)
    else:
        student = make()
        shardings = pure_shardings(student, mesh, rules)
        graphdef, params = _split_params(student)
        params = jax.device_put(params, shardings)
    return student, graphdef, params, shardings


def _memory_line(compiled) -> str:
    """Per-device memory of the compiled step (XLA's analysis), when the backend reports it."""
    try:
        mem = compiled.memory_analysis()
        parts = {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
                 "temporaries": mem.temp_size_in_bytes}
    except Exception:  # not every backend implements it
        return ""
    return "; per-device memory " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in parts.items())


def _mean_scalars(host_metrics: list[dict]) -> dict[str, float]:
    flat = [metrics_lib.flatten_step_metrics(m) for m in host_metrics]
    out = {k: float(np.mean([f[k] for f in flat])) for k in flat[0]}
    out["learning_rate"] = flat[-1]["learning_rate"]
    return out


def _flat_config(config) -> dict:
    out = {}

    def walk(prefix, node):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, (dict, ml_collections.ConfigDict)):
                walk(name + ".", value)
            else:
                out[name] = value
    walk("", config)
    return out


def _history_path(workdir: str) -> str:
    return f"{workdir}/checkpoints/history.json"


def _save_history(workdir: str, history: list[dict]) -> None:
    # The logged curve survives restarts, so summary.json and the PNG cover the whole run.
    if jax.process_index() == 0:
        path = epath.Path(_history_path(workdir))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(history))


def _load_history(workdir: str) -> list[dict]:
    try:
        return json.loads(epath.Path(_history_path(workdir)).read_text())
    except (OSError, ValueError):
        return []


@contextlib.contextmanager
def _local_dir(target: str, only: str | None = None):
    """A local directory to write into; for a remote target (gs://...) a temporary one whose files
    (or just `only`) are copied to `target` afterwards. Writers that need real files (safetensors,
    matplotlib) then work for any workdir."""
    if "://" not in target:
        os.makedirs(target, exist_ok=True)
        yield target
        return
    with tempfile.TemporaryDirectory() as local:
        yield local
        out = epath.Path(target)
        out.mkdir(parents=True, exist_ok=True)
        for file in sorted(Path(local).iterdir()):
            if only is None or file.name == only:
                (out / file.name).write_bytes(file.read_bytes())


def _summary(config, workdir, step, start_step, history, last_metrics, compile_s, train_s,
             elapsed_before, t_start, tokens_per_step, flops_per_step, peak, peak_source, preempted,
             teacher_dir) -> dict:
    terms = sorted({k for row in history for k in row if k == "loss" or k.startswith("loss/")})
    first = {k: next(row[k] for row in history if k in row) for k in terms}
    last = {k: next(row[k] for row in reversed(history) if k in row) for k in terms}
    steps_run = step - start_step
    steps_per_sec = steps_run / train_s if train_s > 0 else 0.0
    return {
        "config": config.to_dict(),
        "teacher_dir": teacher_dir,
        "workdir": workdir,
        "steps": {"final": step, "total": int(config.total_steps), "this_run": steps_run,
                  "resumed_from": start_step},
        "preempted": preempted,
        "loss_first_logged": first,
        "loss_last_logged": last,
        "final_step_metrics": last_metrics,
        "throughput": {"steps_per_sec": steps_per_sec,
                       "tokens_per_sec": steps_per_sec * tokens_per_step,
                       "flops_per_step": flops_per_step,
                       "peak_flops": peak, "peak_source": peak_source,
                       "mfu": (steps_per_sec * flops_per_step / peak) if flops_per_step and peak else None},
        "times_s": {"compile": compile_s, "train_loop_this_run": train_s,
                    "train_loop_all_runs": elapsed_before + train_s,
                    "wall_this_run": time.time() - t_start},
        "devices": {"platform": jax.devices()[0].platform, "count": jax.device_count(),
                    "processes": jax.process_count()},
    }
