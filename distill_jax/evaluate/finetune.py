"""One fine-tuning run (model x task x learning rate x seed): the jitted, sharded train/eval steps.

The step functions are pure functions of (params, opt_state, batch) under `jax.jit`, with the
batch sharded over the mesh's batch axes (`distill_jax.sharding.global_batch_from_local`) and
parameters placed by their logical axis names, the same machinery as distillation: data parallel
on a laptop, data/FSDP/tensor parallel on a pod by changing `config.mesh` only.

The peak learning rate is a traced scalar, so one compiled step serves every learning rate and seed
of a task: the optimizer is built with a unit peak (warmup to 1.0, linear decay to 0) and its
updates are scaled by the peak learning rate, which for AdamW (decoupled weight decay also scaled
by the learning rate) is exactly AdamW at that peak.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from distill_jax import loop
from distill_jax import sharding as shd
from distill_jax.evaluate import encode, glue_metrics
from distill_jax.evaluate.recipe import FinetuneRecipe
from distill_jax.evaluate.tasks import TaskSpec, task_score


def build_optimizer(recipe: FinetuneRecipe, total_steps: int) -> optax.GradientTransformation:
    """recipe.optim's AdamW (distill_jax.optim, as the distillation's) at a unit peak lr, warmup
    then linear decay to 0. Multiply its updates by the peak lr."""
    from distill_jax import optim

    warmup_steps = int(round(recipe.warmup_ratio * total_steps))
    return optim.adamw(recipe.optim, optim.learning_rate_schedule(1.0, warmup_steps, total_steps))


def loss_per_example(outputs_bk: jax.Array, labels_b: jax.Array, regression: bool) -> jax.Array:
    """Cross-entropy of logits [B, K] against int labels, or squared error of scores [B, 1]; [B] f32."""
    outputs_bk = outputs_bk.astype(jnp.float32)
    if regression:
        return jnp.square(outputs_bk[:, 0] - labels_b.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(outputs_bk, labels_b.astype(jnp.int32))


@dataclasses.dataclass
class StepFunctions:
    """Compiled train/eval steps for one (model architecture, task, step count); reused over lr/seed."""

    train_step: Callable
    eval_step: Callable
    tx: optax.GradientTransformation
    param_shardings: Any
    mesh: Mesh


def make_step_functions(model: nnx.Module, forward: Callable, regression: bool, recipe: FinetuneRecipe,
                        total_steps: int, mesh: Mesh, param_shardings: Any) -> StepFunctions:
    """Builds jitted steps for models with `model`'s graph.

    forward(model, batch, dropout_rng) -> outputs [B, K] runs the classifier (dropout_rng None =
    deterministic). param_shardings: a tree of NamedSharding matching nnx.split(model, nnx.Param).
    """
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    tx = build_optimizer(recipe, total_steps)

    def train_step(params, opt_state, batch, peak_lr, dropout_rng):
        def loss_fn(p):
            outputs = forward(nnx.merge(graphdef, p, rest), batch, dropout_rng)
            per_example = loss_per_example(outputs, batch["labels"], regression)
            w = batch["weights"]
            return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: (u * peak_lr).astype(u.dtype), updates)
        return optax.apply_updates(params, updates), opt_state, loss

    def eval_step(params, batch):
        return forward(nnx.merge(graphdef, params, rest), batch, None).astype(jnp.float32)

    # Batches arrive sharded over the batch axes (global_batch_from_local); jit keeps that layout.
    return StepFunctions(
        train_step=jax.jit(train_step, donate_argnums=(0, 1),
                           out_shardings=(param_shardings, None, shd.replicated(mesh))),
        eval_step=jax.jit(eval_step, out_shardings=shd.replicated(mesh)),
        tx=tx, param_shardings=param_shardings, mesh=mesh)


def _to_host(x: jax.Array) -> np.ndarray:
    """A replicated (out_shardings=replicated) array as numpy; across processes every host holds
    the whole value, so its first local shard is the array."""
    if not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(jax.device_get(x))


def _local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's share of a global batch that every process built identically."""
    count, index = jax.process_count(), jax.process_index()
    size = batch["input_ids"].shape[0] // count
    return {k: v[index * size:(index + 1) * size] for k, v in batch.items()}


def _device_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    model_keys = ("input_ids", "attention_mask", "token_type_ids", "labels", "weights")
    return shd.global_batch_from_local(_local_rows({k: batch[k] for k in model_keys}), mesh)


def predict(steps: StepFunctions, params, split: encode.EncodedSplit, batch_size: int, max_len: int,
            pad_multiple: int) -> np.ndarray:
    """Model outputs for every row of `split`, in row order: [N, K] float32."""
    outputs = None
    for batch in encode.eval_batches(split, batch_size, max_len, pad_multiple):
        out_bk = _to_host(steps.eval_step(params, _device_batch(batch, steps.mesh)))
        if outputs is None:
            outputs = np.zeros((len(split), out_bk.shape[-1]), np.float32)
        valid = batch["row_index"] >= 0
        outputs[batch["row_index"][valid]] = out_bk[valid]
    return outputs


def evaluate_splits(steps: StepFunctions, params, spec: TaskSpec, dev: dict[str, encode.EncodedSplit],
                    recipe: FinetuneRecipe) -> dict[str, dict[str, float]]:
    """{dev split: {metric: value}} for each dev split of the task."""
    result = {}
    for name, split in dev.items():
        outputs = predict(steps, params, split, recipe.eval_batch_size, recipe.max_len, recipe.pad_multiple)
        result[name] = glue_metrics.compute_metrics(spec.metrics, outputs, split.labels, spec.is_regression)
    return result


@dataclasses.dataclass
class RunResult:
    """One fine-tuning run; `epochs` holds per-epoch loss, dev metrics, score and seconds."""

    model: str
    task: str
    learning_rate: float
    seed: int
    train_rows: int
    steps_per_epoch: int
    epochs: list[dict]
    seconds: float

    @property
    def best(self) -> dict:
        """The epoch with the highest task score on the main dev split (first one on ties)."""
        return max(self.epochs, key=lambda e: (e["score"], -e["epoch"]))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["best_epoch"] = self.best["epoch"]
        d["best_score"] = self.best["score"]
        return d


def _steps_per_epoch(recipe: FinetuneRecipe, mesh: Mesh, spec: TaskSpec, train_rows: int) -> int:
    """Full batches per epoch; one line naming the field when the batches cannot split over the
    mesh's batch axes and the processes, or the task has fewer rows than one batch."""
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    for field in ("batch_size", "eval_batch_size"):
        if getattr(recipe, field) % data_parallel or getattr(recipe, field) % jax.process_count():
            raise ValueError(f"config.{field}={getattr(recipe, field)} must be divisible by the mesh's batch "
                             f"axes data*fsdp={data_parallel} and by the process count")
    steps_per_epoch = train_rows // recipe.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{spec.name}: {train_rows} training rows < config.batch_size={recipe.batch_size}")
    return steps_per_epoch


def finetune(make_model: Callable[[int], nnx.Module], forward: Callable, spec: TaskSpec,
             train: encode.EncodedSplit, dev: dict[str, encode.EncodedSplit], recipe,
             learning_rate: float, seed: int, mesh: Mesh, model_label: str = "model",
             steps_cache: dict | None = None, cache_key=None, log=print) -> RunResult:
    """Fine-tunes a fresh model (make_model(seed)) on `train`, evaluating every dev split each epoch.

    steps_cache: dict shared between calls whose models have the same graph; cache_key must then
    identify that graph (None: calls sharing a cache must use one architecture).

    recipe: a FinetuneRecipe, or the config.finetune block it is read from (recipe.py).
    """
    from distill_jax.evaluate.model_io import param_shardings_for

    recipe = FinetuneRecipe.from_config(recipe)
    batch_size = recipe.batch_size
    steps_per_epoch = _steps_per_epoch(recipe, mesh, spec, len(train))
    epochs = recipe.epochs
    total_steps = steps_per_epoch * epochs

    model = make_model(seed)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    # Compiled steps depend on the architecture (cache_key, e.g. the EncoderConfig), the task's
    # head and loss, and the schedule length; not on the learning rate or seed.
    key = (cache_key, spec.name, spec.num_labels, total_steps)
    steps = (steps_cache or {}).get(key)
    if steps is None:
        steps = make_step_functions(model, forward, spec.is_regression, recipe, total_steps, mesh,
                                    param_shardings_for(params, mesh))
        if steps_cache is not None:
            steps_cache[key] = steps
    params = jax.device_put(params, steps.param_shardings)
    # The optimizer's step counters are created on one device; the step returns them replicated
    # over the mesh. Placing them there first keeps the second step on the first step's compiled
    # program (otherwise every (model, task) compiles its train step twice).
    opt_state = jax.tree.map(lambda x: jax.device_put(x, shd.replicated(mesh)) if x.ndim == 0 else x,
                             steps.tx.init(params))
    peak_lr = jnp.float32(learning_rate)
    base_rng = jax.random.key(seed)
    data_rng = np.random.default_rng(seed)

    history = []   # one row per epoch: the run's record (the committed study records hold it as is)
    run_start = time.perf_counter()
    progress = loop.Progress(total_steps)
    step = 0
    tag = f"{model_label} {spec.name} lr={learning_rate:g} seed={seed}"
    hint = "lower the learning rate (config.learning_rates)"
    log_every = recipe.log_every_steps
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        progress.reset(step)   # the rate counts training steps, not the dev evaluation before them
        pending, losses = [], []   # device losses not fetched yet; this epoch's fetched ones
        for batch in encode.train_batches(train, batch_size, recipe.max_len, recipe.pad_multiple,
                                          data_rng, recipe.group_by_length):
            dropout_rng = jax.random.fold_in(base_rng, step)
            params, opt_state, loss = steps.train_step(params, opt_state, _device_batch(batch, mesh),
                                                       peak_lr, dropout_rng)
            pending.append(loss)
            step += 1
            if loop.log_due(step, log_every, total_steps):
                recent = _fetch_checked(pending, step, tag, hint)
                losses += recent
                pending = []
                rates = progress.report(step)
                log(f"[glue] {tag} step {step}/{total_steps} loss {float(np.mean(recent)):.4f} "
                    f"({1 / rates['steps_per_sec']:.2f} s/step, "
                    f"ETA {loop.format_duration(progress.eta_s(step))})")
        losses += _fetch_checked(pending, step, tag, hint)
        train_loss = float(np.mean(losses))
        train_seconds = time.perf_counter() - epoch_start
        dev_metrics = evaluate_splits(steps, params, spec, dev, recipe)
        score = task_score(spec, dev_metrics[spec.main_dev_split])
        seconds = time.perf_counter() - epoch_start
        history.append({"epoch": epoch, "train_loss": train_loss, "dev": dev_metrics, "score": score,
                        "train_seconds": train_seconds, "seconds": seconds})
        shown = "  ".join(f"{split} " + ",".join(f"{m}={v:.4f}" for m, v in ms.items())
                          for split, ms in dev_metrics.items())  # 'dev acc=...', 'dev_matched acc=...'
        log(f"[glue] {tag} epoch {epoch}/{epochs}: train loss {train_loss:.4f}  {shown}  "
            f"({train_seconds:.1f} s train, {seconds:.1f} s total"
            + (f", ETA {loop.format_duration(progress.eta_s(step))})" if epoch < epochs else ")"))
        sys.stdout.flush()
    return RunResult(model=model_label, task=spec.name, learning_rate=float(learning_rate), seed=int(seed),
                     train_rows=len(train), steps_per_epoch=steps_per_epoch, epochs=history,
                     seconds=time.perf_counter() - run_start)


def _fetch_checked(pending: list[jax.Array], step: int, tag: str, hint: str) -> list[np.ndarray]:
    """The losses of the steps up to `step` (the last len(pending)) on the host (float32 scalars:
    their mean is the logged train loss), each checked by the loops' finite-loss policy
    (loop.check_finite) before the run goes on."""
    values = [_to_host(x) for x in pending]
    for index, value in enumerate(values):
        loop.check_finite(step - len(values) + index + 1, {"loss": value}, hint=hint, run=tag)
    return values
