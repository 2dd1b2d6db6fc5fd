"""The step's CPU fast paths compute what the reference paths compute (issue 21): a 20-step
training trajectory of the tiny MiniLMv2 + HS step with the defaults (the one-block relation kernel
that computes its gradient in the forward pass; at this size the CPU rule keeps all 4 heads in one
chunk), with one-head chunks, and with two blocks, against the plain autodiff reference (dense [B, R, S, S] relations, all heads at once): losses
within 1e-5 relative at every step (the issue's bound), final parameters within 1e-5 absolute
(Adam divides by the gradient's own scale, so float32 noise in a near-zero gradient moves its
parameter by up to ~lr per step; 20 steps at lr <= 1e-3 stay far below 1e-5 in practice).
The same holds for CPU's heads-first attention (attention_impl='heads_first') against
jax.nn.dot_product_attention in both models."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from distill_jax import step as step_lib
from distill_jax.losses import build_objective, mha
from distill_jax.models import Encoder
from test_step import BATCH, fresh, make_batch, tiny_models

RELATION_HEADS = 4


def trajectory(minilmv2_options: dict, steps: int = 20, attention_impl: str | None = None):
    teacher, student, _ = tiny_models()
    if attention_impl:  # the same parameters under models that run the other attention kernel
        teacher, student = (nnx.merge(nnx.split(Encoder(m.cfg.replace(attention_impl=attention_impl),
                                                        rngs=nnx.Rngs(0)))[0], nnx.split(m)[1])
                            for m in (teacher, student))
    objective = build_objective({"minilmv2": {"weight": 1.0, "relation_heads": RELATION_HEADS, **minilmv2_options},
                                 "hs": {"weight": 0.5, "map": "uniform_cons"}}, student.cfg, teacher.cfg)
    t_graph, t_params = nnx.split(teacher, nnx.Param)
    s_graph, s_params = nnx.split(student, nnx.Param)
    schedule = optax.linear_schedule(1e-3, 0.0, steps)
    tx = optax.adamw(schedule, weight_decay=0.01)
    params = {"student": nnx.to_pure_dict(s_params), "aux": objective.init_params(jax.random.key(3))}
    state = {"step": np.int32(0), "params": params, "opt_state": tx.init(params)}
    train_step = jax.jit(step_lib.make_train_step(student_graphdef=s_graph, teacher_graphdef=t_graph,
                                                  objective=objective, tx=tx, lr_schedule=schedule))
    teacher_params = nnx.to_pure_dict(t_params)
    losses = []
    state = fresh(state)
    for i in range(steps):
        state, metrics = train_step(state, teacher_params, make_batch(seed=i))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state["params"]


@pytest.fixture(scope="module")
def reference():
    return trajectory({"block_size": 0, "heads_per_chunk": RELATION_HEADS})


@pytest.mark.parametrize("options", [{}, {"heads_per_chunk": 1}, {"heads_per_chunk": 2, "block_size": 8}],
                         ids=["defaults", "one-head-chunks", "two-blocks"])
def test_fast_paths_follow_the_reference_trajectory(reference, options):
    ref_losses, ref_params = reference
    losses, params = trajectory(options)
    assert ref_losses[-1] < ref_losses[0]  # it trains: the comparison is not between two constants
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_heads_first_attention_follows_the_dot_product_attention_trajectory():
    ref_losses, ref_params = trajectory({}, attention_impl="xla")
    losses, params = trajectory({}, attention_impl="heads_first")
    assert ref_losses[-1] < ref_losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_default_heads_per_chunk_fits_one_relation_tensor_in_a_mebibyte_on_cpu():
    # one head's [B, block, block] float32 relation: 16*128*128*4 = 1 MiB, 32*64*64*4 = 0.5 MiB.
    assert mha.default_heads_per_chunk(16, 128, 48, "cpu") == 1
    assert mha.default_heads_per_chunk(32, 64, 48, "cpu") == 2
    assert mha.default_heads_per_chunk(64, 128, 48, "cpu") == 1  # over budget even alone: one head
    assert mha.default_heads_per_chunk(BATCH, 16, RELATION_HEADS, "cpu") == RELATION_HEADS
    assert mha.default_heads_per_chunk(1, 128, 12, "cpu") == 12
    assert mha.default_heads_per_chunk(2, 128, 12, "cpu") == 6  # 12 would be 1.5 MiB; 6 divides 12
    for platform in ("tpu", "gpu"):
        assert mha.default_heads_per_chunk(64, 128, 48, platform) == 48


def test_the_traced_platform_not_the_host_decides_the_chunks():
    # The TPU plan compiles for TPU topologies from this CPU host: the builder traces under
    # target_platform(mesh platform), so the CPU cache rule must not leak into the TPU program.
    # That the builder does so is checked end to end by tests/test_plan.py's HBM-fit test.
    assert mha.default_heads_per_chunk(16, 128, 48) == (1 if jax.default_backend() == "cpu" else 48)
    with mha.target_platform("tpu"):
        assert mha.default_heads_per_chunk(16, 128, 48) == 48
    with mha.target_platform("cpu"):
        assert mha.default_heads_per_chunk(16, 128, 48) == 1
