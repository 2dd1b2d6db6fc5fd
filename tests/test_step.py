"""The pure train step on tiny random encoders: against a hand-wired update, gradient accumulation
against the full batch, dropout keys from (seed, step), sharded against unsharded, NaN naming."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from distill_jax import sharding
from distill_jax import step as step_lib
from distill_jax.losses import build_objective
from distill_jax.models import Encoder, EncoderConfig

VOCAB, SEQ, BATCH = 97, 16, 8


def tiny_models(dropout: float = 0.0, remat: bool = False):
    teacher_cfg = EncoderConfig(vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=4,
                                intermediate_size=64, max_position_embeddings=32,
                                hidden_dropout=0.0, attention_dropout=0.0)
    student_cfg = teacher_cfg.replace(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                                      hidden_dropout=dropout, attention_dropout=dropout, remat=remat)
    teacher = Encoder(teacher_cfg, rngs=nnx.Rngs(1))
    student = Encoder(student_cfg, rngs=nnx.Rngs(2))
    objective = build_objective({"minilmv2": {"weight": 1.0, "relation_heads": 4},
                                 "hs": {"weight": 0.5, "map": "uniform_cons"}}, student_cfg, teacher_cfg)
    return teacher, student, objective


def make_batch(seed=0, padding=True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(BATCH, SEQ)).astype(np.int32)
    mask = np.ones((BATCH, SEQ), np.int32)
    if padding:
        lengths = rng.integers(SEQ // 2, SEQ + 1, size=BATCH)
        mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def setup(microbatches=1, dropout=0.0, seed=0, remat=False):
    teacher, student, objective = tiny_models(dropout, remat)
    t_graph, t_params = nnx.split(teacher, nnx.Param)
    s_graph, s_params = nnx.split(student, nnx.Param)
    tx = optax.adamw(optax.linear_schedule(1e-3, 0.0, 10), weight_decay=0.01)
    schedule = optax.linear_schedule(1e-3, 0.0, 10)
    params = {"student": nnx.to_pure_dict(s_params), "aux": objective.init_params(jax.random.key(3))}
    state = {"step": jnp.asarray(0, jnp.int32), "params": params, "opt_state": tx.init(params)}
    train_step = step_lib.make_train_step(
        student_graphdef=s_graph, teacher_graphdef=t_graph, objective=objective, tx=tx,
        lr_schedule=schedule, microbatches=microbatches, seed=seed)
    return train_step, state, nnx.to_pure_dict(t_params), (teacher, student, objective, tx)


@pytest.fixture(scope="module")
def base():
    """The default tiny step (no microbatching, dropout off), jitted once for the tests that share it."""
    train_step, state, teacher_params, parts = setup()
    return jax.jit(train_step), train_step, state, teacher_params, parts


def fresh(state):
    return jax.tree.map(jnp.array, state)  # the jitted steps donate nothing, but stay safe


def close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_step_equals_a_hand_wired_update(base):
    step, _, state, teacher_params, (teacher, student, objective, tx) = base
    batch = make_batch()
    new_state, metrics = step(fresh(state), teacher_params, batch)

    # The same update written out: teacher forward, student loss, grad, AdamW.
    s_graph, _ = nnx.split(student, nnx.Param)

    @jax.jit
    def hand_wired(params, opt_state):
        t_out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

        def loss_fn(params):
            s_out = nnx.merge(s_graph, params["student"])(batch["input_ids"], batch["attention_mask"],
                                                          batch["token_type_ids"])
            return objective(params["aux"], s_out, t_out, batch)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, _ = tx.update(grads, opt_state, params)
        return loss, terms, grads, optax.apply_updates(params, updates)

    loss, terms, grads, expected_params = hand_wired(state["params"], state["opt_state"])

    assert int(new_state["step"]) == 1
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert set(metrics["terms"]) == set(terms)
    assert float(metrics["grad_norm"]) == pytest.approx(float(optax.global_norm(grads)), rel=1e-5)
    assert float(metrics["learning_rate"]) == pytest.approx(1e-3)
    close(new_state["params"], expected_params, atol=1e-5)  # Adam's first step is ~lr*sign(g)
    assert float(loss) > 0 and float(optax.global_norm(grads["aux"])) > 0  # HS projections learn


def test_microbatches_accumulate_to_the_full_batch_update(base):
    """Without padding every microbatch has the same number of valid rows, so the mean of the
    microbatch losses/gradients equals the full-batch one."""
    batch = make_batch(padding=False)
    step, _, state, teacher_params, _ = base
    ref_state, ref_metrics = step(fresh(state), teacher_params, batch)
    train_step4, state4, _, _ = setup(microbatches=4)
    for new_state, metrics in [jax.jit(train_step4)(state4, teacher_params, batch)]:
        assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-5)
        assert float(metrics["grad_norm"]) == pytest.approx(float(ref_metrics["grad_norm"]), rel=1e-4)
        close(new_state["params"], ref_state["params"], rtol=1e-4, atol=1e-5)


def test_remat_student_gives_the_same_update(base):
    step, _, state, teacher_params, _ = base
    batch = make_batch()
    ref_state, ref_metrics = step(fresh(state), teacher_params, batch)
    remat_step, remat_state, _, _ = setup(remat=True)
    jaxpr = str(jax.make_jaxpr(remat_step)(remat_state, teacher_params, batch))
    assert jaxpr.count("checkpoint[") + jaxpr.count("remat") >= 2  # each student layer
    assert "checkpoint" not in str(jax.make_jaxpr(base[1])(state, teacher_params, batch))
    new_state, metrics = jax.jit(remat_step)(remat_state, teacher_params, batch)
    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-6)
    close(new_state["params"], ref_state["params"], atol=1e-5)


def test_microbatch_split_interleaves_rows():
    split = step_lib._split_microbatches({"x": jnp.arange(8)}, 2)["x"]
    np.testing.assert_array_equal(split, [[0, 2, 4, 6], [1, 3, 5, 7]])


def test_dropout_masks_come_from_seed_and_step():
    train_step, state, teacher_params, _ = setup(dropout=0.3, seed=5)
    step = jax.jit(train_step)
    batch = make_batch()
    _, a = step(fresh(state), teacher_params, batch)
    _, b = step(fresh(state), teacher_params, batch)
    assert float(a["loss"]) == float(b["loss"])  # same (seed, step): same masks
    later = dict(fresh(state), step=jnp.asarray(3, jnp.int32))
    _, c = step(later, teacher_params, batch)
    assert float(c["loss"]) != float(a["loss"])  # another step: other masks


def test_sharded_step_equals_single_device(base):
    step, train_step, state, teacher_params, _ = base
    batch = make_batch()
    ref_state, ref_metrics = step(fresh(state), teacher_params, batch)

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    repl = sharding.replicated(mesh)
    sharded = jax.jit(train_step, in_shardings=(repl, repl, sharding.batch_sharding(mesh, 1)),
                      out_shardings=(repl, repl), donate_argnums=(0,))
    global_batch = sharding.global_batch_from_local(batch, mesh)
    new_state, metrics = sharded(jax.device_put(fresh(state), repl), teacher_params, global_batch)
    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(float(ref_metrics["grad_norm"]), rel=1e-4)
    close(new_state["params"], ref_state["params"], rtol=1e-4, atol=1e-5)  # Adam step ~ lr*sign(g)


def test_non_finite_values_are_named_by_term(base):
    """NaN in the teacher's last FFN reaches the last hidden state (read by hs) but not that layer's
    Q/K/V (read by minilmv2, computed from the layer's input): the check must name hs."""
    step, _, state, teacher_params, _ = base
    poisoned = jax.tree.map(lambda x: x, teacher_params)
    kernel = poisoned["layers"][3]["ffn_out"]["kernel"]
    poisoned["layers"][3]["ffn_out"]["kernel"] = jnp.full_like(kernel, jnp.nan)
    _, metrics = step(fresh(state), poisoned, make_batch())
    host = jax.device_get(metrics)
    assert not np.isfinite(host["loss"]) and not np.isfinite(host["terms"]["hs"])
    assert np.isfinite(host["terms"]["minilmv2"])
    assert step_lib.first_non_finite(host) == "terms/hs"


def test_finite_metrics_pass():
    host = {"loss": np.float32(1.0), "grad_norm": np.float32(0.5), "learning_rate": np.float32(1e-3),
            "terms": {"hs": np.float32(1.0)}}
    assert step_lib.first_non_finite(host) is None
    host["grad_norm"] = np.float32(np.inf)
    assert step_lib.first_non_finite(host) == "grad_norm"
