"""The distillation trainer: `run_training(config, workdir)`, in commented phases.

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

The workdir's layout: distill_jax/workdir_layout.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from distill_jax import checkpoint as ckpt_lib
from distill_jax import divergence, loop, run_config
from distill_jax import commands
from distill_jax import preemption as preemption_lib
from distill_jax import metrics as metrics_lib
from distill_jax import sharding, train_setup, workdir_layout
from distill_jax.evaluate import during_training  # config.eval: scores logged with the losses
from distill_jax.atomic import write_atomic
from distill_jax.memory import memory_bytes
from distill_jax.train_setup import abstract_like
from distill_jax.workdir_layout import Workdir
from distill_jax.workdir_lock import WorkdirLock

if TYPE_CHECKING:  # annotations only: the data package and hf_io load inside the phases
    from distill_jax.data import DataConfig
    from distill_jax.models.hf_io import ResolvedModel


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
class TrainingResult:
    """What run_training returns (also written to summary.json, as `summary`)."""
    final_step: int
    final_metrics: dict       # the last step's exact values (loss, loss/<term>, grad_norm, lr)
    preempted: bool
    summary: dict


def run_training(config: ml_collections.ConfigDict, workdir: str) -> TrainingResult:
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
    """config.compilation_cache_dir: '' = $JAX_COMPILATION_CACHE_DIR when set (JAX's own variable:
    one cache for every run on the machine), else <workdir>/compilation_cache (gs:// works: every
    host and every restart of the run share it); 'off' = no persistent cache; else that directory."""
    choice = str(config.get("compilation_cache_dir", "") or "")
    if choice.lower() in ("off", "none", "false"):
        return None
    return choice or os.environ.get("JAX_COMPILATION_CACHE_DIR") or Workdir(workdir).compilation_cache


def data_cache_dir(config, workdir: str) -> str | None:
    """Where the data cache is read/built: config.data.cache_dir when set; else, in a multi-process
    job, <workdir>/data_cache (the workdir is shared by every host, so the hosts can share the
    build); else None (the local default, $DISTILL_JAX_CACHE or ~/.cache/distill_jax/data)."""
    if config.data.get("cache_dir"):
        return None  # the data config's own field
    if jax.process_count() > 1:
        shared = Workdir(workdir).data_cache
        log(f"data.cache_dir unset in a {jax.process_count()}-process job: the hosts share the "
            f"build in {shared} (prepare it once instead: python -m distill_jax.data.prepare "
            f"--config=<recipe> --cache_dir=<dir>, then --config.data.cache_dir=<dir>)")
        return shared
    return None


def _train(config: ml_collections.ConfigDict, workdir: str, stop, stored_config: dict | None) -> TrainingResult:
    """The phases of the module docstring, in order, each one named function below."""
    t_start = time.time()
    # 1. The teacher's whereabouts: fails in seconds with one line (the config was checked).
    teacher, data = _resolve_teacher(config)
    teacher_dir = str(teacher.model_dir)

    # 2. Mesh, and the persistent compilation cache (shared by every host when on gs://).
    mesh = train_setup.make_config_mesh(config, jax.devices())
    log(f"mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} devices, "
        f"{jax.process_count()} process(es); workdir {workdir}")
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # config.json: once every check passed
    compilation_cache = compilation_cache_dir(config, workdir)
    _use_compilation_cache(compilation_cache)
    stop.check("start-up")

    # 3-4. Teacher, student, objective, optimizer, shardings and the jitted step.
    setup = _build_setup(config, workdir, mesh, teacher)
    stop.check("the model build")

    # 5. Compile ahead of time from the abstract batch, before any data work.
    compiled, compile_s, memory = _compile(setup, stop, compilation_cache)

    # 6. config.eval's scorer (its files read before the data build), the data: this host's rows
    # of every global batch.
    periodic_eval = during_training.build(config, setup.student_graphdef, teacher_dir)
    data_iter = _data_iterator(config, workdir, setup, data, teacher_dir, stop)

    # 7. Resume; then the workdir belongs to this config (every check passed).
    checkpointer = ckpt_lib.Checkpointer(
        Workdir(workdir).checkpoints, max_to_keep=config.keep_checkpoints,
        async_save=config.async_checkpoints)
    from distill_jax import distributed
    distributed.note_checkpoint_dir(checkpointer.directory)  # named when a peer process is lost
    state, start_step, elapsed_before, resumed = _restore(checkpointer, setup, data_iter)
    stop.check("the restore")
    if jax.process_index() == 0:
        run_config.write(config, workdir, stored_config)
    perf = _Perf.measure(config, setup)

    # 8. The loop.
    end = _loop(config, workdir, setup, compiled, state, data_iter, checkpointer, stop, perf, periodic_eval,
                start_step=start_step, elapsed_before=elapsed_before, resumed=resumed)
    checkpointer.close()

    # 9. The end: export, summary, plot.
    summary = _summary(config, workdir, end, start_step, compile_s, elapsed_before, t_start, perf, teacher_dir)
    summary["memory_per_device_bytes"] = memory  # XLA's analysis of the compiled step (plan: same)
    summary.update(during_training.summary_fields(end.history))
    _finish(config, workdir, setup, end, summary, teacher_dir)
    return TrainingResult(final_step=end.step, final_metrics=end.last_metrics or {}, preempted=end.preempted,
                     summary=summary)


# ----------------------------------------------------------------------------------------------
# Phases 1-7: everything before the first step
# ----------------------------------------------------------------------------------------------

def _resolve_teacher(config) -> tuple[ResolvedModel, DataConfig]:
    """Phase 1: (the teacher resolved: its local directory and config.json, hf_io.resolve_model;
    config.data read once, the DataConfig the pipeline gets), one line when either is wrong."""
    from distill_jax.data import DataConfig
    from distill_jax.models.hf_io import resolve_model

    return resolve_model(config.teacher.name), DataConfig.from_config(config.data)


def _build_setup(config, workdir: str, mesh, teacher: ResolvedModel) -> train_setup.TrainSetup:
    """Phases 3-4: teacher, student, objective, optimizer, shardings and the jitted step through the
    one builder the benchmark and the TPU plan use (distill_jax/train_setup.py). Everything that
    depends only on shapes (sequence length, objective, schedule) is checked from the teacher's
    config.json before any weight is read."""
    t0 = time.time()
    teacher_dir = str(teacher.model_dir)
    setup = train_setup.build_train_setup(config, mesh, teacher_hf=teacher.hf_config, teacher_dir=teacher_dir,
                                          teacher_source=teacher.source)
    teacher_cfg, student_cfg = setup.teacher_cfg, setup.student_cfg
    setup.teacher_model = None  # the params live on in teacher_params; the module is not needed
    log(f"teacher {config.teacher.name} ({teacher_cfg.num_layers}x{teacher_cfg.hidden_size}, "
        f"{teacher_cfg.family}, {teacher_cfg.dtype}) and student built in {time.time() - t0:.1f}s "
        f"from {teacher_dir}")
    log(f"student {student_cfg.num_layers}x{student_cfg.hidden_size} ({student_cfg.num_heads} heads, "
        f"FFN {student_cfg.intermediate_size}), init={config.student.init}; objective {setup.objective}")
    log("attention: " + ", ".join(f"{k} {v}" for k, v in setup.attention_paths().items()))
    params = setup.state["params"]
    if jax.process_index() == 0:
        # The per-parameter table goes to a file (it is 30+ lines); the console gets the totals.
        table = metrics_lib.parameter_overview(params["student"])
        epath.Path(Workdir(workdir).parameters).write_text(table + "\n")
        if config.print_parameters:
            print(table, flush=True)
        log(f"trainable parameters: student {metrics_lib.count_parameters(params['student']):,}, "
            f"objective aux {metrics_lib.count_parameters(params['aux']):,}; teacher (frozen) "
            f"{metrics_lib.count_parameters(setup.teacher_params):,}; table in {Workdir(workdir).parameters}")
    return setup


def _compile(setup, stop, compilation_cache: str | None) -> tuple[Any, float, dict | None]:
    """Phase 5: (compiled step, seconds, XLA's per-device memory). Compiled from the abstract batch
    before any data work (the plan compiles this same jitted step the same way), so a compile
    error or an OOM shows within minutes; a SIGTERM during the compile stops at once."""
    t0 = time.time()
    compiled = stop.run("the compile", lambda: setup.lower().compile())
    compile_s = time.time() - t0
    memory = memory_bytes(compiled)
    log(f"step compiled in {compile_s:.1f}s{_memory_line(memory)}"
        + (f"; compilation cache {compilation_cache}" if compilation_cache else ""))
    return compiled, compile_s, memory


def _data_iterator(config, workdir: str, setup, data: DataConfig, teacher_dir: str, stop):
    """Phase 6: this host's rows of every global batch of `data` (config.data, read once in phase 1;
    the cache built once, by all hosts together when none is prepared), with the teacher's tokenizer."""
    from distill_jax import data as data_lib

    tokenizer = data_lib.load_tokenizer(teacher_dir)
    data_lib.check_vocab(tokenizer, setup.teacher_cfg.vocab_size)
    t0 = time.time()
    try:
        data_iter = data_lib.build_train_iterator(
            data, tokenizer, per_host_batch_size=config.batch_size // jax.process_count(),
            process_index=jax.process_index(), process_count=jax.process_count(), seed=int(config.seed),
            mlm=data.mlm if setup.objective.needs_mlm_batch else None,
            cache_dir=data_cache_dir(config, workdir), stop_requested=stop.stop_requested)
    except InterruptedError:
        raise preemption_lib.Stopped("the data build") from None
    log(f"data ready in {time.time() - t0:.1f}s: {data_iter.corpus.num_blocks:,} blocks of "
        f"{data_iter.corpus.seq_len} in {data_iter.corpus.path}")
    stop.check("the data build")
    return data_iter


def _restore(checkpointer, setup, data_iter) -> tuple[Any, int, float, bool]:
    """Phase 7: (state, its step, loop seconds of the earlier runs, whether it was restored) from
    the newest checkpoint in the workdir, else the fresh state; the data iterator resumes too."""
    restored = checkpointer.restore_latest(abstract_like(setup.state, setup.state_shardings))
    if restored is None:
        return setup.state, int(jax.device_get(setup.state["step"])), 0.0, False
    data_iter.set_state(restored.data_state)
    log(f"resumed from checkpoint step {restored.step} in {checkpointer.directory}")
    return (restored.state, int(jax.device_get(restored.state["step"])),
            float(restored.meta.get("elapsed_s", 0.0)), True)


@dataclasses.dataclass(frozen=True)
class _Perf:
    """What the throughput figures rest on: tokens and analytic FLOPs per step, the peak FLOP/s."""

    tokens_per_step: int
    flops_per_step: float   # every objective term has a FLOPs model (flops.py)
    peak: float
    peak_source: str

    @classmethod
    def measure(cls, config, setup) -> _Perf:
        flops_per_step = setup.step_flops()
        peak, peak_source = metrics_lib.machine_peak_flops(config.peak_flops_per_device)
        if flops_per_step:
            log(f"{flops_per_step / 1e9:.1f} GFLOPs per step (teacher fwd + student fwd/bwd); peak "
                f"{peak / 1e12:.2f} TFLOP/s ({peak_source})")
        return cls(int(config.batch_size * config.data.seq_len), flops_per_step, peak, peak_source)

    def scalars(self, steps_per_sec: float | None) -> dict[str, float]:
        """perf/steps_per_sec, perf/tokens_per_sec (global batch tokens incl. padding), perf/mfu."""
        if not steps_per_sec:
            return {}
        out = {"perf/steps_per_sec": steps_per_sec, "perf/tokens_per_sec": steps_per_sec * self.tokens_per_step}
        if self.flops_per_step and self.peak:
            out["perf/mfu"] = steps_per_sec * self.flops_per_step / self.peak
        return out


# ----------------------------------------------------------------------------------------------
# Phase 8: the loop
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _LoopEnd:
    """Where the loop stopped."""

    step: int
    state: Any
    history: list[dict]          # the logged curve of the whole run (loop.history_row rows)
    last_metrics: dict | None    # the last fetched step's exact values (flat)
    preempted: bool
    train_s: float               # this run's loop seconds


def _loop(config, workdir: str, setup, compiled, state, data_iter, checkpointer, stop, perf: _Perf,
          periodic_eval, *, start_step: int, elapsed_before: float, resumed: bool) -> _LoopEnd:
    """Steps to config.total_steps. Each step's metrics stay on device until a log, save or stop
    step fetches them; then every fetched step is checked for divergence (NaN or a loss spike:
    distill_jax/divergence.py) before anything is saved. Saves follow config.checkpoint_every (a
    failed save stops the run); a SIGTERM or config.stop_after_step stops with a checkpoint."""
    from distill_jax import distributed

    writer = _open_writer(config, workdir, start_step)
    progress = loop.Progress(config.total_steps, start_step)
    # The curve up to the restored step (newer rows belong to a checkpoint that was moved aside).
    history = loop.read_history(Workdir(workdir).history, until_step=start_step) if resumed else []
    guard = divergence.DivergenceGuard(history)  # stops a blow-up before it is saved
    pending: list[dict] = []        # device metrics of the steps since the last fetch
    last_metrics: dict | None = None
    in_flight = None  # the previous step's metrics: waited for, so no process runs ahead (preemption.py)
    stop_after = int(config.stop_after_step)
    step, preempted = start_step, False
    batch = sharding.global_batch_from_local(next(data_iter), setup.mesh)
    loop_start = time.time()

    peer_lost = None
    try:
        while step < config.total_steps:
            if batch is None:
                batch = sharding.global_batch_from_local(next(data_iter), setup.mesh)
            state, step_metrics = compiled(state, setup.teacher_params, batch)
            batch = None
            step += 1
            distributed.note_step(step)
            pending.append(step_metrics)
            preemption_lib.wait_for_step(in_flight)
            in_flight = step_metrics
            checkpointer.check_saves()  # a failed async save stops the run here, not at the next save

            log_now = loop.log_due(step, config.log_every, config.total_steps, first_step=start_step + 1)
            save_now = step % config.checkpoint_every == 0 or step == config.total_steps
            stop_now = stop.should_stop(step) or bool(stop_after and step >= stop_after)
            if log_now or save_now or stop_now:
                host_metrics, pending = jax.device_get(pending), []
                last_metrics = metrics_lib.flatten_step_metrics(host_metrics[-1])
                _check_divergence(guard, host_metrics, step, checkpointer)
                if log_now:
                    rates = progress.report(step)
                    scalars = _mean_scalars(host_metrics) | perf.scalars(rates.get("steps_per_sec"))
                    scalars.update(periodic_eval(step, state["params"]["student"]))
                    writer.write_scalars(step, scalars)
                    history.append(loop.history_row(step, scalars))
                    log(_console_line(step, config.total_steps, scalars, rates))
                if save_now or stop_now:
                    _save(checkpointer, workdir, step, state, data_iter, history,
                          {"seed": int(config.seed), "elapsed_s": elapsed_before + time.time() - loop_start})
                    progress.reset(step)
            if stop_now:
                preempted = step < config.total_steps
                if preempted:
                    why = "SIGTERM" if stop.stop_at is not None or stop.requested else "stop_after_step"
                    log(f"stopping at step {step} ({why}); checkpoint saved, rerun the same command to resume")
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
    return _LoopEnd(step=step, state=state, history=history, last_metrics=last_metrics, preempted=preempted,
                    train_s=time.time() - loop_start)


def _save(checkpointer, workdir: str, step: int, state, data_iter, history: list[dict], meta: dict) -> None:
    """A checkpoint of `state` at `step` (with the data iterator's position and `meta`), and the
    logged curve beside it, so the curve survives restarts (summary.json, the PNG)."""
    checkpointer.save(step, state, data_iter.get_state(), meta)
    try:
        if jax.process_index() == 0:
            loop.write_history(Workdir(workdir).history, history)
    except OSError as exc:  # a full or read-only disk: one line, like the checkpoint's own files
        raise checkpointer.storage_failure(exc) from None


def _open_writer(config, workdir: str, start_step: int):
    """The TensorBoard writer (metrics.create_writer); a fresh run records the config as hparams."""
    writer = metrics_lib.create_writer(workdir)
    if start_step == 0:
        writer.write_hparams({k: v for k, v in _flat_config(config).items()
                              if isinstance(v, (int, float, str, bool))})
    return writer


def _check_divergence(guard: divergence.DivergenceGuard, host_metrics: list[dict], step: int,
                      checkpointer) -> None:
    """Feeds the fetched steps (the last one is `step`) to the guard, in order; on a divergence
    records the newest checkpoint (which predates it: every save follows a check) as the last good
    one and raises Diverged naming it."""
    for index, metrics in enumerate(host_metrics):
        bad_step = step - len(host_metrics) + index + 1
        reason = guard.check(bad_step, metrics)
        if reason is not None:
            checkpointer.wait()  # the newest save (all predate the spike) is complete
            good = checkpointer.latest_step()
            if jax.process_index() == 0:
                divergence.record(checkpointer.directory, spike_step=bad_step, good_step=good, reason=reason)
            raise divergence.Diverged(divergence.diverged_message(reason, good, checkpointer.directory))


def _console_line(step: int, total_steps: int, scalars: dict[str, float], rates: dict[str, float]) -> str:
    """The distillation's progress line: loss, every term, lr, grad norm, tokens/s, MFU, then the
    loops' shared rate and ETA (loop.progress_line)."""
    fields = [f"loss {scalars['loss']:.4f}"]
    terms = [f"{k[len('loss/'):]} {v:.4f}" for k, v in scalars.items() if k.startswith("loss/")]
    if terms:
        fields.append("[" + ", ".join(terms) + "]")
    fields += [f"lr {scalars['learning_rate']:.2e}", f"gnorm {scalars['grad_norm']:.3f}"]
    if "perf/tokens_per_sec" in scalars:
        fields.append(f"{scalars['perf/tokens_per_sec']:.0f} tok/s")
    if "perf/mfu" in scalars:
        fields.append(f"MFU {100 * scalars['perf/mfu']:.1f}%")
    return loop.progress_line(step, total_steps, fields, rates)


# ----------------------------------------------------------------------------------------------
# Phase 9: export, summary, plot
# ----------------------------------------------------------------------------------------------

def _finish(config, workdir: str, setup, end: _LoopEnd, summary: dict, teacher_dir: str) -> None:
    """The student exported in HF format (a finished run with config.export), summary.json, the
    loss-curve PNG (process 0 writes; every process joins the allgather of the weights)."""
    if not end.preempted and config.export:
        export_dir = Workdir(workdir).export
        final_student = host_params(end.state["params"]["student"])
        if jax.process_index() == 0:
            from distill_jax.export import export_student  # model card, ST stack, atomic
            model = nnx.merge(setup.student_graphdef, final_student)
            summary["export"] = export_student(model, export_dir, teacher_dir=teacher_dir, summary=summary)
            summary["export_dir"] = export_dir
            log(f"student exported (HF format) to {export_dir}")
    if jax.process_index() == 0:
        write_atomic(Workdir(workdir).summary, json.dumps(summary, indent=1))  # whole or absent
        if end.history and not end.preempted:
            from distill_jax.plots import plot_loss_curves
            student_cfg = setup.student_cfg
            with _local_dir(workdir, only=workdir_layout.LOSS_CURVES) as local:
                plot_loss_curves(end.history, Workdir(local).loss_curves,
                                 title=f"{config.teacher.name} -> {student_cfg.num_layers}x{student_cfg.hidden_size}")
        log(f"summary written to {Workdir(workdir).summary}")

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

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


def _summary(config, workdir: str, end: _LoopEnd, start_step: int, compile_s: float, elapsed_before: float,
             t_start: float, perf: _Perf, teacher_dir: str) -> dict:
    history = end.history
    terms = sorted({k for row in history for k in row if k == "loss" or k.startswith("loss/")})
    first = {k: next(row[k] for row in history if k in row) for k in terms}
    last = {k: next(row[k] for row in reversed(history) if k in row) for k in terms}
    steps_run = end.step - start_step
    steps_per_sec = steps_run / end.train_s if end.train_s > 0 else 0.0
    flops_per_step, peak = perf.flops_per_step, perf.peak
    return {
        "config": config.to_dict(),
        "command": commands.invocation(),  # the command line that ran (None: called from Python)
        "teacher_dir": teacher_dir,
        "workdir": workdir,
        "steps": {"final": end.step, "total": int(config.total_steps), "this_run": steps_run,
                  "resumed_from": start_step},
        "preempted": end.preempted,
        "loss_first_logged": first,
        "loss_last_logged": last,
        "final_step_metrics": end.last_metrics,
        "throughput": {"steps_per_sec": steps_per_sec,
                       "tokens_per_sec": steps_per_sec * perf.tokens_per_step,
                       "flops_per_step": flops_per_step,
                       "peak_flops": peak, "peak_source": perf.peak_source,
                       "mfu": (steps_per_sec * flops_per_step / peak) if flops_per_step and peak else None},
        "times_s": {"compile": compile_s, "train_loop_this_run": end.train_s,
                    "train_loop_all_runs": elapsed_before + end.train_s,
                    "wall_this_run": time.time() - t_start},
        "devices": {"platform": jax.devices()[0].platform, "count": jax.device_count(),
                    "processes": jax.process_count()},
    }
