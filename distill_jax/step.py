"""The distillation train step: a pure function of (train state, teacher params, batch).

    new_state, metrics = train_step(state, teacher_params, batch)

state (a plain pytree, what checkpoints hold):
    {"step": int32 [],                       # optimizer updates done so far
     "params": {"student": ..., "aux": ...},  # student params (pure dict) + objective aux params
     "opt_state": ...}                        # optax state over "params"
teacher_params: the frozen teacher's params (pure dict), never part of the state.
batch: the global batch, dict of [B, ...] arrays (input_ids, attention_mask, token_type_ids, and
    the MLM fields for OD), sharded over the mesh's batch axes.
metrics: float32 scalars {"loss", "terms": {name: value}, "grad_norm", "learning_rate"}.

One call is one optimizer update. With `microbatches` M > 1 the batch is split into M microbatches
of B/M rows and their gradients are averaged inside the step with `lax.scan` (gradient
accumulation): the teacher and student forward passes then hold only B/M rows of activations at a
time. Row r belongs to microbatch r % M, so every device keeps an equal share of each microbatch.
The reported loss and terms are the mean over microbatches.

Dropout keys are folded from (seed, step, microbatch), so a resumed run draws the same masks as an
uninterrupted one and nothing random lives in the state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

def _stop_gradient_tree(out: Any) -> Any:
    """stop_gradient on every array of a model output (a pytree, or a dataclass that is not one)."""
    leaves = jax.tree.leaves(out)
    if len(leaves) == 1 and leaves[0] is out and dataclasses.is_dataclass(out):
        return dataclasses.replace(out, **{
            f.name: jax.tree.map(jax.lax.stop_gradient, getattr(out, f.name))
            for f in dataclasses.fields(out) if f.init})
    return jax.tree.map(jax.lax.stop_gradient, out)


def _model_call(model: Any, batch: dict, *, dropout_rng=None, output_attentions: bool = False):
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                 dropout_rng=dropout_rng, output_attentions=output_attentions)


def _split_microbatches(batch: dict, microbatches: int) -> dict:
    """[B, ...] -> [M, B/M, ...] with row r in microbatch r % M (keeps every device busy)."""
    def split(x):
        rows = x.shape[0]
        return jnp.swapaxes(x.reshape(rows // microbatches, microbatches, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def make_train_step(*, student_graphdef: Any, teacher_graphdef: Any, objective: Callable,
                    tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    microbatches: int = 1, seed: int = 0, output_attentions: bool = False,
                    student_has_mlm_head: bool = False, teacher_has_mlm_head: bool = False,
                    ) -> Callable[[Any, Any, dict], tuple[Any, dict]]:
    """Builds the pure train step (not yet jitted: the trainer jits it with shardings).

    student_graphdef / teacher_graphdef: `nnx.split` graph definitions; params are merged back in
    inside the step, so the step's inputs and outputs are plain arrays.
    objective: `losses.build_objective(...)` result, called as
        loss, terms = objective(aux_params, student_out, teacher_out, batch, student_mlm_head=...,
                                teacher_mlm_head=...)
    """
    if microbatches < 1:
        raise ValueError(f"microbatches={microbatches} must be >= 1")
    base_key = jax.random.key(seed)

    def teacher_forward(teacher_params, mb):
        # Outside value_and_grad: no gradient path into the teacher, and under stop_gradient anyway.
        teacher = nnx.merge(teacher_graphdef, jax.lax.stop_gradient(teacher_params))
        out = _model_call(teacher, mb, output_attentions=output_attentions)
        return _stop_gradient_tree(out)

    def loss_fn(params, teacher_params, teacher_out, mb, dropout_rng):
        student = nnx.merge(student_graphdef, params["student"])
        student_out = _model_call(student, mb, dropout_rng=dropout_rng,
                                  output_attentions=output_attentions)
        heads = {}
        if student_has_mlm_head:
            heads["student_mlm_head"] = student.mlm_logits
        if teacher_has_mlm_head:
            teacher = nnx.merge(teacher_graphdef, jax.lax.stop_gradient(teacher_params))
            heads["teacher_mlm_head"] = lambda h: jax.lax.stop_gradient(teacher.mlm_logits(h))
        loss, terms = objective(params["aux"], student_out, teacher_out, mb, **heads)
        terms = {k: jnp.asarray(v, jnp.float32) for k, v in terms.items()}
        return jnp.asarray(loss, jnp.float32), terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_step(params, teacher_params, mb, dropout_rng):
        teacher_out = teacher_forward(teacher_params, mb)
        (loss, terms), grads = grad_fn(params, teacher_params, teacher_out, mb, dropout_rng)
        return loss, terms, grads

    def train_step(state, teacher_params, batch):
        params = state["params"]
        step_key = jax.random.fold_in(base_key, state["step"])
        if microbatches == 1:
            loss, terms, grads = micro_step(params, teacher_params, batch,
                                            jax.random.fold_in(step_key, 0))
        else:
            mbs = _split_microbatches(batch, microbatches)

            def body(carry, xs):
                index, mb = xs
                loss, terms, grads = micro_step(params, teacher_params, mb,
                                                jax.random.fold_in(step_key, index))
                return jax.tree.map(jnp.add, carry, (loss, terms, grads)), None

            first_mb = jax.tree.map(lambda x: x[0], mbs)
            shapes = jax.eval_shape(micro_step, params, teacher_params, first_mb, step_key)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            total, _ = jax.lax.scan(body, zeros, (jnp.arange(microbatches), mbs))
            loss, terms, grads = jax.tree.map(lambda x: x / microbatches, total)

        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        metrics = {"loss": loss, "terms": terms, "grad_norm": grad_norm.astype(jnp.float32),
                   "learning_rate": jnp.asarray(lr_schedule(state["step"]), jnp.float32)}
        return new_state, metrics

    return train_step


def first_non_finite(metrics: dict) -> str | None:
    """Name of the first NaN/Inf entry of host-side step metrics ("loss", "terms/hs", ...), or None
    (a term before the total: the loops' one rule, distill_jax.loop.first_non_finite)."""
    from distill_jax.loop import first_non_finite as first_in

    return first_in({"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                     **{f"terms/{k}": v for k, v in metrics["terms"].items()}})
