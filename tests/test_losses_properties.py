"""Properties every loss must have: zero when the student equals the teacher, non-negative, finite
value and gradient with extreme inputs and all-padding rows, and blind to whatever sits at padded
positions (even NaN). Checked on the single functions and on the composed objective with every term."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from distill_jax.losses import (ModelOutputs, attention_kl_loss, build_objective, direct_minilm_loss, hs_loss,
                                init_linear, layer_map, minilm_loss, minilmv2_loss, mlm_ce_loss, od_from_hidden,
                                od_loss, relation_kl_loss, tinybert_attention_loss)

B, S, V = 3, 6, 9
MASK = np.array([[1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0, 0],
                 [0, 0, 0, 0, 0, 0]], np.int32)        # the last row is entirely padding
ALL_TERMS = {
    "od": {"weight": 1.0, "temperature": 2.0, "chunk_size": 2},
    "mlm": {"weight": 0.5},
    "hs": {"weight": 1.0, "map": "uniform_cons", "embeddings": True},
    "minilmv2": {"weight": 1.0, "relation_heads": 4},
    "minilm": {"weight": 1.0},
    "direct_minilm": {"weight": 1.0},
    "tinybert_attention": {"weight": 1.0, "map": "uniform_last"},
}
MLM_BATCH = {"mlm_positions": np.array([[1, 4], [0, 2], [0, 0]], np.int32),
             "mlm_ids": np.array([[3, 5], [1, 8], [0, 0]], np.int32),
             "mlm_weights": np.array([[1, 1], [1, 0], [0, 0]], np.float32)}


def random_outputs(rng, layers, width, heads, scale=1.0, mask=MASK):
    def states(n):
        return tuple(jnp.asarray(rng.normal(size=(B, S, width)) * scale, jnp.float32) for _ in range(n))
    scores = tuple(jnp.asarray(rng.normal(size=(B, heads, S, S)) * scale, jnp.float32) for _ in range(layers))
    key_valid = jnp.asarray(mask)[:, None, None, :] > 0
    probs = tuple(jax.nn.softmax(jnp.where(key_valid, s, -1e9), axis=-1) for s in scores)
    return ModelOutputs(hidden_states=states(layers + 1), queries=states(layers), keys=states(layers),
                        values=states(layers), attention_scores=scores, attention_probs=probs)


def poison(out: ModelOutputs, value, mask=MASK) -> ModelOutputs:
    """Writes `value` at every padded position: padded tokens, padded query rows and key columns."""
    tok = jnp.asarray(mask)[:, :, None] > 0
    pair = (jnp.asarray(mask)[:, None, :, None] * jnp.asarray(mask)[:, None, None, :]) > 0
    fix_tok = lambda xs: tuple(jnp.where(tok, x, value) for x in xs)
    fix_pair = lambda xs: tuple(jnp.where(pair, x, value) for x in xs)
    return ModelOutputs(hidden_states=fix_tok(out.hidden_states), queries=fix_tok(out.queries),
                        keys=fix_tok(out.keys), values=fix_tok(out.values),
                        attention_scores=fix_pair(out.attention_scores), attention_probs=fix_pair(out.attention_probs))


def heads(rng, ds, dt):
    ws, wt = (jnp.asarray(rng.normal(size=(d, V)), jnp.float32) for d in (ds, dt))
    return (lambda h: h.astype(jnp.float32) @ ws), (lambda h: h.astype(jnp.float32) @ wt)


DS, DT, HEADS, LS, LT = 16, 24, 2, 2, 4
# Built once so the jitted value-and-grad below compiles once for all the tests that share shapes.
OBJECTIVE = build_objective(ALL_TERMS, {"num_layers": LS, "hidden_size": DS, "num_heads": HEADS},
                            {"num_layers": LT, "hidden_size": DT, "num_heads": HEADS})


def objective_and_inputs(rng, scale=1.0):
    aux = OBJECTIVE.init_params(jax.random.key(1))
    student = random_outputs(rng, LS, DS, HEADS, scale)
    teacher = random_outputs(rng, LT, DT, HEADS, scale)
    batch = {"attention_mask": MASK, **MLM_BATCH}
    head_weights = tuple(jnp.asarray(rng.normal(size=(d, V)), jnp.float32) for d in (DS, DT))
    return OBJECTIVE, aux, student, teacher, batch, head_weights


@jax.jit
def _loss_and_grads(aux, student, teacher, batch, head_weights):
    ws, wt = head_weights

    def f(aux, student):
        return OBJECTIVE(aux, student, teacher, batch, lambda h: h @ ws, lambda h: h @ wt)
    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(aux, student)


def loss_and_grads(objective, aux, student, teacher, batch, head_weights):
    assert objective is OBJECTIVE
    (loss, terms), grads = _loss_and_grads(aux, student, teacher, batch, head_weights)
    return loss, terms, grads


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# ---- zero when the student equals the teacher ------------------------------------------------

def test_single_functions_are_zero_for_identical_inputs():
    out = random_outputs(np.random.default_rng(0), 2, 16, 4)
    for name, value in jax.jit(_zero_case_values)(out).items():
        assert abs(float(value)) < 1e-6, (name, float(value))


def _zero_case_values(out):
    rng = np.random.default_rng(0)
    x, logits = out.queries[0], jnp.asarray(rng.normal(size=(B, S, V)) * 3, jnp.float32)
    pairs = layer_map("identity", 2, 2, include_embeddings=True)
    identity = {n: init_linear(jax.random.key(0), 16, 16) for n in "qkv"}
    values = {
        "od": od_loss(logits, logits, MASK, 2.0),
        "relation": relation_kl_loss(x, x, MASK, 4),
        "minilmv2": minilmv2_loss(out.queries, out.queries, MASK, 8)[0],
        "attention_kl": attention_kl_loss(out.attention_probs[0], out.attention_probs[0], MASK),
        "minilm": minilm_loss(out.attention_probs[1], out.attention_probs[1], x, x, MASK, 4)[0],
        "hs_mse": hs_loss(out.hidden_states, out.hidden_states, pairs, MASK),
        "hs_cosine": hs_loss(out.hidden_states, out.hidden_states, pairs, MASK, loss="cosine"),
        "hs_identity_projection": hs_loss(out.hidden_states, out.hidden_states, pairs, MASK,
                                          projections={"shared": identity["q"]}),
        "direct_identity_projection": direct_minilm_loss(out.queries[:3], out.queries[:3], MASK, identity)[0],
        "tinybert": tinybert_attention_loss(out.attention_scores, out.attention_scores,
                                            layer_map("identity", 2, 2), MASK),
    }
    hidden = out.hidden_states[-1]
    w_head = jnp.asarray(rng.normal(size=(16, V)), jnp.float32)
    head = lambda h: h @ w_head
    values["od_from_hidden"] = od_from_hidden(hidden, hidden, MLM_BATCH["mlm_positions"], MLM_BATCH["mlm_weights"],
                                              head, head, temperature=3.0, chunk_size=1)["od"]
    return values


def test_objective_is_zero_when_student_equals_teacher():
    rng = np.random.default_rng(1)
    dims = {"num_layers": 2, "hidden_size": 16, "num_heads": 2}
    terms = {k: v for k, v in ALL_TERMS.items() if k != "mlm"}    # hard labels are not a distillation term
    terms |= {"hs": {"weight": 1.0, "map": "identity"}, "tinybert_attention": {"weight": 1.0, "map": "identity"}}
    objective = build_objective(terms, dims, dims)
    aux = objective.init_params(jax.random.key(0))                # DirectMiniLM starts at identity
    assert "hs" not in aux                                        # equal widths: no HS projection
    out = random_outputs(rng, 2, 16, 2)
    head, _ = heads(rng, 16, 16)
    loss, values = jax.jit(lambda aux, out: objective(aux, out, out, {"attention_mask": MASK, **MLM_BATCH},
                                                      head, head))(aux, out)
    assert set(values) >= set(terms)
    for name, value in values.items():
        assert abs(float(value)) < 1e-6, (name, float(value))
    assert abs(float(loss)) < 1e-5


# ---- non-negative -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_every_term_is_non_negative(seed):
    objective, aux, student, teacher, batch, head_weights = objective_and_inputs(np.random.default_rng(seed),
                                                                                scale=1.0 + 2 * seed)
    loss, terms, _ = loss_and_grads(objective, aux, student, teacher, batch, head_weights)
    for name, value in terms.items():
        assert float(value) >= -1e-6, (name, float(value))
        assert float(value) > 0, f"{name} is exactly 0 on unrelated random models: the test would be blind"
    assert float(loss) > 0


# ---- finite value and gradient: extreme inputs, all-padding rows --------------------------------

@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_finite_value_and_gradient_with_extreme_inputs_and_padding_rows(scale):
    objective, aux, student, teacher, batch, head_weights = objective_and_inputs(np.random.default_rng(3), scale=scale)
    loss, terms, grads = loss_and_grads(objective, aux, student, teacher, batch, head_weights)
    assert all_finite((loss, terms)), terms
    assert all_finite(grads)
    # One-hot attention probabilities (exact zeros for the student's log) stay finite too.
    one_hot = jax.nn.one_hot(jnp.zeros((B, 2, S), jnp.int32), S)
    hard = student._replace(attention_probs=(one_hot, one_hot))
    loss, terms, grads = loss_and_grads(objective, aux, hard, teacher, batch, head_weights)
    assert all_finite((loss, terms)) and all_finite(grads)


def test_extreme_logits_od():
    rng = np.random.default_rng(4)
    s = jnp.asarray(rng.normal(size=(B, S, V)) * 1e4, jnp.float32)
    t = jnp.asarray(rng.normal(size=(B, S, V)) * 1e4, jnp.float32).at[..., 0].set(-1e9)
    value, grad = jax.jit(jax.value_and_grad(od_loss), static_argnums=3)(s, t, MASK, 1.0)
    assert np.isfinite(float(value)) and float(value) > 0 and all_finite(grad)
    value, grad = jax.jit(jax.value_and_grad(lambda x: mlm_ce_loss(x, np.zeros((B, S), np.int32), MASK)))(s)
    assert np.isfinite(float(value)) and all_finite(grad)


def test_entirely_padded_batch_gives_zero_and_zero_gradient():
    empty = np.zeros_like(MASK)
    objective, aux, student, teacher, batch, head_weights = objective_and_inputs(np.random.default_rng(5))
    batch = {**batch, "attention_mask": empty, "mlm_weights": np.zeros_like(MLM_BATCH["mlm_weights"])}
    loss, terms, grads = loss_and_grads(objective, aux, student, teacher, batch, head_weights)
    assert float(loss) == 0.0 and all(float(v) == 0.0 for v in terms.values())
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


# ---- invariance to values at padded positions --------------------------------------------------

@pytest.mark.parametrize("junk", [1e6, -3.0, np.nan])
def test_values_at_padded_positions_do_not_matter(junk):
    objective, aux, student, teacher, batch, head_weights = objective_and_inputs(np.random.default_rng(6))
    clean_loss, clean_terms, clean_grads = loss_and_grads(objective, aux, student, teacher, batch, head_weights)
    # Padded MLM entries may also point at any position.
    junk_batch = {**batch, "mlm_positions": np.where(MLM_BATCH["mlm_weights"] > 0, MLM_BATCH["mlm_positions"], 5)}
    loss, terms, grads = loss_and_grads(objective, aux, poison(student, junk), poison(teacher, junk),
                                        junk_batch, head_weights)
    for name in clean_terms:
        np.testing.assert_allclose(float(terms[name]), float(clean_terms[name]), rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(float(loss), float(clean_loss), rtol=1e-6)
    # Gradients: identical for the projections and at valid positions, exactly 0 at padded ones.
    for clean, dirty in zip(jax.tree.leaves(clean_grads), jax.tree.leaves(grads)):
        assert all_finite(dirty)
        np.testing.assert_allclose(np.asarray(dirty), np.asarray(clean), rtol=1e-5, atol=1e-7)
    for g in jax.tree.leaves(grads[1].hidden_states + grads[1].queries):
        assert float(jnp.abs(jnp.where(MASK[:, :, None] > 0, 0.0, g)).max()) == 0.0


def test_relation_kl_ignores_padded_keys_and_rows_directly():
    rng = np.random.default_rng(7)
    xs, xt = (jnp.asarray(rng.normal(size=(B, S, 8)), jnp.float32) for _ in range(2))
    pad = (MASK == 0)[:, :, None]
    loss = jax.jit(relation_kl_loss, static_argnums=3)
    base = loss(xs, xt, MASK, 2)
    moved = loss(jnp.where(pad, 1e3, xs), jnp.where(pad, -1e3, xt), MASK, 2)
    np.testing.assert_allclose(float(moved), float(base), rtol=1e-6)
