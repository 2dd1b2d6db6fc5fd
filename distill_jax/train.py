"""The distillation trainer: `train_and_evaluate(config, workdir)`, in commented phases.

  0. one writer per workdir (<workdir>/LOCK, distill_jax/workdir_lock.py) and one config per
     workdir (a resume that changes what the checkpoints mean is refused: distill_jax/run_config.py)
  1. check the config (every impossible value named before anything heavy runs); resolve the
     teacher's directory (fails in seconds when it is not reachable; a gs:// teacher is copied
     once per host); SIGTERM is heard from here on (distill_jax/preemption.py)
  2. mesh; the persistent compilation cache (default <workdir>/compilation_cache, so a restart
     loads the compiled step)
  3-4. teacher (loaded once, cast once), student, objective (+ aux params), optimizer state, all
     created already sharded, and the jitted step: distill_jax.train_setup.build_train_setup,
     the builder the benchmark and the TPU plan (python -m distill_jax.plan) call too
  5. compile the step from the abstract batch, before any data work: a compile error or an OOM
     shows within minutes, not after an hour of tokenizing
  6. data iterator (per host; the cache built once, by all hosts together when none is prepared)
  7. resume from the newest checkpoint in workdir, if any; then workdir/config.json (the config
     this run started with: written only once every check above passed)
  8. the loop: step, metrics, divergence check (NaN or a loss spike: distill_jax/divergence.py,
     before any save), checkpoints (a failed save stops the run), preemption (SIGTERM, every step)
  9. the end: final checkpoint, export in HF format, summary.json, loss-curve PNG

Workdir layout: LOCK (while a run holds it), config.json, checkpoints/<step>/... (+
checkpoints/history.json, checkpoints/divergence.json after a detected divergence),
tensorboard/events.*, export/ (HF model + tokenizer + model card: distill_jax/export.py),
summary.json, loss_curves.png.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from distill_jax import checkpoint as ckpt_lib
from distill_jax import divergence, run_config
from distill_jax import commands
from distill_jax import preemption as preemption_lib
from distill_jax import metrics as metrics_lib
from distill_jax import sharding, train_setup
from distill_jax.evaluate import during_training  # config.eval: scores logged with the losses
from distill_jax.atomic import write_atomic
from distill_jax.memory import memory_bytes
from distill_jax.train_setup import abstract_like as _abstract
from distill_jax.workdir_lock import WorkdirLock


def log(message: str) -> None:
    """Console output of process 0 (every process in a multi-host job computes the same thing)."""
    if jax.process_index() == 0:
        print(f"[distill] {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def host_params(params: Any) -> Any:
    """Every array whole on this host (an allgather in multi-process jobs)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
    """Distils config.teacher into a student as config says; checkpoints/logs/exports in workdir."""
    config = ml_collections.ConfigDict(config)  # never mutate the caller's config
    workdir = workdir.rstrip("/") if "://" in workdir else os.path.abspath(workdir)
    train_setup.check_config(config, jax.process_count())
    during_training.check(config)  # config.eval, before the compile (its files are read after it)
    # One writer per workdir (process 0 holds <workdir>/LOCK for the run's life), and a workdir
    # belongs to one config: both refused in one line before anything is written there.
    lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
    stop = None
    try:
        stored_config = run_config.check_resume(config, workdir)
        stop = preemption_lib.StopSignal()  # SIGTERM from here on: before the loop, one line and out
        return _train(config, workdir, stop, stored_config)
    finally:
        if stop is not None:
            stop.close()
        if lock is not None:
            lock.release()


def compilation_cache_dir(config, workdir: str) -> str | None:
    """config.compilation_cache_dir: '' = <workdir>/compilation_cache (gs:// works: every host
    and every restart of the run share it), 'off' = no persistent cache, else that directory."""
    choice = str(config.get("compilation_cache_dir", "") or "")
    if choice.lower() in ("off", "none", "false"):
        return None
    return choice or f"{workdir}/compilation_cache"


def data_cache_dir(config, workdir: str) -> str | None:
    """Where the data cache is read/built: config.data.cache_dir when set; else, in a multi-process
    job, <workdir>/data_cache (the workdir is shared by every host, so the hosts can share the
    build); else None (the local default, $DISTILL_JAX_CACHE or ~/.cache/distill_jax/data)."""
    if config.data.get("cache_dir"):
        return None  # the data config's own field
    if jax.process_count() > 1:
        shared = f"{workdir}/data_cache"
        log(f"data.cache_dir unset in a {jax.process_count()}-process job: the hosts share the "
            f"build in {shared} (prepare it once instead: python -m distill_jax.data.prepare "
            f"--config=<recipe> --cache_dir=<dir>, then --config.data.cache_dir=<dir>)")
        return shared
    return None


def _train(config: ml_collections.ConfigDict, workdir: str, stop, stored_config: dict | None) -> RunResult:
    from distill_jax import models
    from distill_jax.models.hf_io import read_hf_config

    t_start = time.time()
    # 1. The teacher's whereabouts: fails in seconds with one line (the config was checked).
    try:
        teacher_dir = str(models.resolve_model_dir(config.teacher.name))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"config.teacher.name={config.teacher.name!r}: {exc} "
                                f"(--config.teacher.name=/path/to/dir)") from None
    from distill_jax.data import validate_data_config
    validate_data_config(config.data)
    teacher_hf = read_hf_config(Path(teacher_dir))

    # 2. Mesh, and the persistent compilation cache (shared by every host when on gs://).
    mesh = train_setup.make_config_mesh(config, jax.devices())
    log(f"mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} devices, "
        f"{jax.process_count()} process(es); workdir {workdir}")
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # config.json: once every check passed
    compilation_cache = compilation_cache_dir(config, workdir)
    _use_compilation_cache(compilation_cache)
    stop.check("start-up")

    # 3-4. Teacher, student, objective, optimizer, shardings and the jitted step, through the one
    # builder the benchmark and the TPU plan use (distill_jax/train_setup.py). Everything that
    # depends only on shapes (sequence length, objective, schedule) is checked from the teacher's
    # config.json before any weight is read.
    t0 = time.time()
    setup = train_setup.build_train_setup(config, mesh, teacher_hf=teacher_hf, teacher_dir=teacher_dir,
                                          teacher_source=f"{teacher_dir}/config.json")
    seed = int(config.seed)
    teacher_cfg, student_cfg, objective = setup.teacher_cfg, setup.student_cfg, setup.objective
    teacher_params, student_graphdef = setup.teacher_params, setup.student_graphdef
    state, state_shardings = setup.state, setup.state_shardings
    setup.teacher_model = None  # the params live on in teacher_params; the module is not needed
    log(f"teacher {config.teacher.name} ({teacher_cfg.num_layers}x{teacher_cfg.hidden_size}, "
        f"{teacher_cfg.family}, {teacher_cfg.dtype}) and student built in {time.time() - t0:.1f}s "
        f"from {teacher_dir}")
    log(f"student {student_cfg.num_layers}x{student_cfg.hidden_size} ({student_cfg.num_heads} heads, "
        f"FFN {student_cfg.intermediate_size}), init={config.student.init}; objective {objective}")
    log("attention: " + ", ".join(f"{k} {v}" for k, v in setup.attention_paths().items()))
    params = state["params"]
    if jax.process_index() == 0:
        # The per-parameter table goes to a file (it is 30+ lines); the console gets the totals.
        table = metrics_lib.parameter_overview(params["student"])
        epath.Path(f"{workdir}/parameters.txt").write_text(table + "\n")
        if config.print_parameters:
            print(table, flush=True)
        log(f"trainable parameters: student {metrics_lib.count_parameters(params['student']):,}, "
            f"objective aux {metrics_lib.count_parameters(params['aux']):,}; teacher (frozen) "
            f"{metrics_lib.count_parameters(teacher_params):,}; table in {workdir}/parameters.txt")
    stop.check("the model build")

    # 5. Compile ahead of time from the abstract batch, before any data work (the plan compiles
    # this same jitted step the same way); a SIGTERM during the compile stops at once.
    t0 = time.time()
    compiled = stop.run("the compile", lambda: setup.lower().compile())
    compile_s = time.time() - t0
    memory = memory_bytes(compiled)
    log(f"step compiled in {compile_s:.1f}s{_memory_line(memory)}"
        + (f"; compilation cache {compilation_cache}" if compilation_cache else ""))

    # 6. Data: this host's rows of every global batch.
    from distill_jax import data as data_lib
    tokenizer = data_lib.load_tokenizer(teacher_dir)
    data_lib.check_vocab(tokenizer, teacher_cfg.vocab_size)
    periodic_eval = during_training.build(config, student_graphdef, teacher_dir)
    t0 = time.time()
    try:
        data_iter = data_lib.build_train_iterator(
            config.data, tokenizer, per_host_batch_size=config.batch_size // jax.process_count(),
            process_index=jax.process_index(), process_count=jax.process_count(), seed=seed,
            mlm=data_lib.MlmConfig.from_config(config.data.mlm) if objective.needs_mlm_batch else None,
            cache_dir=data_cache_dir(config, workdir), stop_requested=stop.stop_requested)
    except InterruptedError:
        raise preemption_lib.Stopped("the data build") from None
    log(f"data ready in {time.time() - t0:.1f}s: {data_iter.corpus.num_blocks:,} blocks of "
        f"{data_iter.corpus.seq_len} in {data_iter.corpus.path}")
    stop.check("the data build")

    # 7. Resume.
    checkpointer = ckpt_lib.Checkpointer(
        f"{workdir}/checkpoints", max_to_keep=config.keep_checkpoints,
        async_save=config.async_checkpoints)
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
    stop.check("the restore")
    if jax.process_index() == 0:  # every check passed: the workdir now belongs to this config
        run_config.write(config, workdir, stored_config)
    first_batch = sharding.global_batch_from_local(next(data_iter), mesh)

    tokens_per_step = config.batch_size * config.data.seq_len
    flops_per_step = setup.step_flops()
    if flops_per_step is None:
        log("FLOPs count unavailable for this objective; MFU not reported")
    peak, peak_source = metrics_lib.machine_peak_flops(config.peak_flops_per_device)
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
    stop_after = int(config.stop_after_step)
    preempted = False
    step = start_step
    batch = first_batch
    loop_start = time.time()

    in_flight = None  # the previous step's metrics: waited for, so no process runs ahead (preemption.py)
    guard = divergence.DivergenceGuard(history)  # stops a blow-up before it is saved (divergence.py)

    def save(at_step: int):
        checkpointer.save(at_step, state, data_iter.get_state(),
                          {"seed": seed, "elapsed_s": elapsed_before + time.time() - loop_start})
        try:
            _save_history(workdir, history)
        except OSError as exc:  # a full or read-only disk: one line, like the checkpoint's own files
            raise checkpointer.storage_failure(exc) from None

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
            preemption_lib.wait_for_step(in_flight)
            in_flight = step_metrics
            checkpointer.check_saves()  # a failed async save stops the run here, not at the next save

            log_now = step % config.log_every == 0 or step == config.total_steps or step == start_step + 1
            save_now = step % config.checkpoint_every == 0 or step == config.total_steps
            stop_now = stop.should_stop(step) or bool(stop_after and step >= stop_after)
            if log_now or save_now or stop_now:
                host_metrics = jax.device_get(pending)
                pending = []
                last_metrics = metrics_lib.flatten_step_metrics(host_metrics[-1])
                for index, m in enumerate(host_metrics):
                    bad_step = step - len(host_metrics) + index + 1
                    reason = guard.check(bad_step, m)
                    if reason is not None:
                        checkpointer.wait()  # the newest save (all predate the spike) is complete
                        good = checkpointer.latest_step()
                        if jax.process_index() == 0:
                            divergence.record(checkpointer.directory, spike_step=bad_step, good_step=good,
                                              reason=reason)
                        raise divergence.Diverged(
                            divergence.diverged_message(reason, good, checkpointer.directory))
                if log_now:
                    scalars = _mean_scalars(host_metrics)
                    scalars.update(throughput.report(step))
                    scalars.update(periodic_eval(step, state["params"]["student"]))
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
                    log(f"stopping at step {step} ({'SIGTERM' if stop.stop_at is not None or stop.requested else 'stop_after_step'})"
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
    summary["memory_per_device_bytes"] = memory  # XLA's analysis of the compiled step (plan: same)
    summary.update(during_training.summary_fields(history))
    if not preempted and config.export:
        export_dir = f"{workdir}/export"
        final_student = host_params(state["params"]["student"])
        if jax.process_index() == 0:
            from distill_jax.export import export_student  # model card, ST stack, atomic
            model = nnx.merge(student_graphdef, final_student)
            summary["export"] = export_student(model, export_dir, teacher_dir=teacher_dir, summary=summary)
            summary["export_dir"] = export_dir
            log(f"student exported (HF format) to {export_dir}")
    if jax.process_index() == 0:
        write_atomic(f"{workdir}/summary.json", json.dumps(summary, indent=1))  # whole or absent
        if history and not preempted:
            from distill_jax.plots import plot_loss_curves
            with _local_dir(workdir, only="loss_curves.png") as local:
                plot_loss_curves(history, f"{local}/loss_curves.png",
                                 title=f"{config.teacher.name} -> {student_cfg.num_layers}x{student_cfg.hidden_size}")
        log(f"summary written to {workdir}/summary.json")
    return RunResult(final_step=step, final_metrics=last_metrics or {}, preempted=preempted,
                     summary=summary)


def _use_compilation_cache(directory: str | None) -> None:
    if directory == jax.config.jax_compilation_cache_dir:
        return
    from jax._src import compilation_cache as jax_cache
    jax.config.update("jax_compilation_cache_dir", directory)
    jax_cache.reset_cache()  # the cache object keeps the first directory it opened otherwise


def _memory_line(memory: dict | None) -> str:
    """The compiled step's per-device memory (distill_jax/memory.py), when the backend reports it."""
    if memory is None:
        return ""
    return "; per-device memory " + ", ".join(
        f"{k} {memory[k] / 2**20:.0f} MiB" for k in ("arguments", "outputs", "temporaries"))


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
        write_atomic(str(path), json.dumps(history))


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
        "command": commands.invocation(),  # the command line that ran (None: called from Python)
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
