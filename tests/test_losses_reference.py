"""Every loss against the independent numpy references (test_losses_numpy_refs.py), on random
inputs with padding (a full row, a suffix-padded row, a row with holes), float32 and bfloat16.

Tolerances: the references run in float64 on exactly the values the function received (bf16
inputs are rounded first, then compared), so any gap is the function's own arithmetic. Float32
math must then agree to rtol 2e-5 / atol 2e-6 for both input dtypes; bf16 arithmetic would miss
this by far (measured: computing od_loss or relation_kl_loss in bf16 is off by ~1.5e-3 relative).
"""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from distill_jax.losses import (attention_kl_loss, direct_minilm_loss, hs_loss, init_hs_projections,
                                layer_map, minilm_loss, minilmv2_loss, mlm_ce_loss, od_from_hidden, od_loss,
                                relation_kl_loss, tinybert_attention_loss)
from test_losses_numpy_refs import (ref_attention_kl, ref_hs, ref_mlm_ce, ref_od, ref_projected_mse,
                                    ref_relation_kl, ref_tinybert)

RTOL, ATOL = 2e-5, 2e-6
DTYPES = [jnp.float32, jnp.bfloat16]
MASK = np.array([[1, 1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 1, 1, 0, 0],
                 [1, 1, 0, 1, 0, 0, 0]], np.int32)
B, S = MASK.shape


def cast(x, dtype):
    """(array for the function, float64 numpy of exactly those values for the reference)."""
    arr = jnp.asarray(np.asarray(x, np.float32)).astype(dtype)
    return arr, np.asarray(arr.astype(jnp.float32), np.float64)


def close(actual, expected):
    np.testing.assert_allclose(float(actual), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_od_loss_and_mlm_ce(dtype, temperature):
    rng = np.random.default_rng(1)
    s, s_np = cast(rng.normal(size=(B, S, 11)) * 3, dtype)
    t, t_np = cast(rng.normal(size=(B, S, 11)) * 3, dtype)
    labels = rng.integers(0, 11, size=(B, S))
    out = jax.jit(od_loss, static_argnums=3)(s, t, MASK, temperature)
    assert out.dtype == jnp.float32
    close(out, ref_od(s_np, t_np, MASK, temperature))
    close(mlm_ce_loss(s, labels, MASK), ref_mlm_ce(s_np, labels, MASK))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_od_from_hidden_gathers_and_chunks(dtype, chunk_size):
    rng = np.random.default_rng(2)
    ds, dt, vocab, p = 6, 10, 13, 4
    hs, hs_np = cast(rng.normal(size=(B, S, ds)), dtype)
    ht, ht_np = cast(rng.normal(size=(B, S, dt)), dtype)
    ws, bs = rng.normal(size=(ds, vocab)), rng.normal(size=(vocab,))
    wt, bt = rng.normal(size=(dt, vocab)), rng.normal(size=(vocab,))
    positions = np.array([[0, 3, 6, 2], [1, 4, 0, 0], [0, 3, 0, 0]], np.int32)
    weights = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], np.float32)
    labels = rng.integers(0, vocab, size=(B, p))

    def head(w, b):
        return lambda h: jnp.dot(h.astype(jnp.float32), jnp.asarray(w, jnp.float32),
                                 precision="highest") + jnp.asarray(b, jnp.float32)

    out = jax.jit(lambda a, c: od_from_hidden(a, c, positions, weights, head(ws, bs), head(wt, bt),
                                              temperature=2.0, labels_bp=labels, chunk_size=chunk_size))(hs, ht)
    take = np.arange(B)[:, None], positions
    s_logits = hs_np[take] @ ws + bs
    t_logits = ht_np[take] @ wt + bt
    close(out["od"], ref_od(s_logits, t_logits, weights, 2.0))
    close(out["mlm"], ref_mlm_ce(s_logits, labels, weights))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("relation_heads", [1, 4, 12])
def test_relation_kl_each_model_splits_its_own_width(dtype, relation_heads):
    rng = np.random.default_rng(3)
    xs, xs_np = cast(rng.normal(size=(B, S, 24)) * 2, dtype)   # d_r = 24 / R
    xt, xt_np = cast(rng.normal(size=(B, S, 36)) * 2, dtype)   # d_r = 36 / R
    out = jax.jit(relation_kl_loss, static_argnums=3)(xs, xt, MASK, relation_heads)
    assert out.dtype == jnp.float32
    close(out, ref_relation_kl(xs_np, xt_np, MASK, relation_heads))


@pytest.mark.parametrize("heads_per_chunk", [2, 3])
def test_relation_kl_chunked_over_heads_is_the_same(heads_per_chunk):
    rng = np.random.default_rng(9)
    xs, xs_np = cast(rng.normal(size=(B, S, 24)) * 2, jnp.float32)
    xt, xt_np = cast(rng.normal(size=(B, S, 36)) * 2, jnp.float32)
    loss = jax.jit(jax.value_and_grad(relation_kl_loss), static_argnums=3, static_argnames="heads_per_chunk")
    value, grad = loss(xs, xt, MASK, 6, heads_per_chunk=heads_per_chunk)
    close(value, ref_relation_kl(xs_np, xt_np, MASK, 6))
    whole_value, whole_grad = loss(xs, xt, MASK, 6)
    close(value, float(whole_value))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(whole_grad), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_minilmv2_weighted_sum_of_qq_kk_vv(dtype):
    rng = np.random.default_rng(4)
    s = [cast(rng.normal(size=(B, S, 16)), dtype) for _ in range(3)]
    t = [cast(rng.normal(size=(B, S, 32)), dtype) for _ in range(3)]
    total, parts = minilmv2_loss([a for a, _ in s], [a for a, _ in t], MASK, 4, weights=(1.0, 0.5, 2.0))
    refs = [ref_relation_kl(sn, tn, MASK, 4) for (_, sn), (_, tn) in zip(s, t)]
    for name, ref in zip(("qq", "kk", "vv"), refs):
        close(parts[name], ref)
    close(total, refs[0] + 0.5 * refs[1] + 2.0 * refs[2])


def masked_softmax_probs(rng, heads):
    """Attention probabilities as a model produces them: padded keys get ~0 probability."""
    scores = rng.normal(size=(B, heads, S, S)) * 2
    scores = np.where(MASK[:, None, None, :] > 0, scores, -1e9)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_attention_kl_and_minilm_v1(dtype):
    rng = np.random.default_rng(5)
    ps, ps_np = cast(masked_softmax_probs(rng, 4), dtype)
    pt, pt_np = cast(masked_softmax_probs(rng, 4), dtype)
    vs, vs_np = cast(rng.normal(size=(B, S, 16)), dtype)
    vt, vt_np = cast(rng.normal(size=(B, S, 24)), dtype)
    close(attention_kl_loss(ps, pt, MASK), ref_attention_kl(ps_np, pt_np, MASK))
    total, parts = minilm_loss(ps, pt, vs, vt, MASK, num_heads=4, weights=(1.0, 3.0))
    ref_att, ref_val = ref_attention_kl(ps_np, pt_np, MASK), ref_relation_kl(vs_np, vt_np, MASK, 4)
    close(parts["attention"], ref_att)
    close(parts["value"], ref_val)
    close(total, ref_att + 3.0 * ref_val)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("loss", ["mse", "cosine"])
@pytest.mark.parametrize("projection", ["per_layer", "shared", "equal_widths"])
@pytest.mark.parametrize("one_to_many", ["mean_target", "mean_loss"])
def test_hs_loss_over_layer_map(dtype, loss, projection, one_to_many):
    rng = np.random.default_rng(6)
    ds = 12 if projection == "equal_widths" else 8
    student = [cast(rng.normal(size=(B, S, ds)), dtype) for _ in range(3)]   # 2 layers + embeddings
    teacher = [cast(rng.normal(size=(B, S, 12)), dtype) for _ in range(5)]   # 4 layers + embeddings
    pairs = layer_map("uniform_cons", 2, 4, include_embeddings=True)       # 0->0, 1->(1,2), 2->(3,4)
    params = init_hs_projections(jax.random.key(0), pairs, ds, 12, "shared" if projection == "shared" else "per_layer")
    if projection == "equal_widths":
        assert params == {}
        proj_np = None
    else:
        # Non-zero biases so the reference really checks that they are added.
        params = jax.tree.map(lambda x: x + 0.1 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size, params)

        def proj_np(s, x):
            p = params["shared"] if projection == "shared" else params[f"layer_{s}"]
            return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)

    out = jax.jit(lambda st, te, pr: hs_loss(st, te, pairs, MASK, projections=pr, loss=loss,
                                             one_to_many=one_to_many))(
        [a for a, _ in student], [a for a, _ in teacher], params)
    assert out.dtype == jnp.float32
    close(out, ref_hs([n for _, n in student], [n for _, n in teacher], pairs, MASK, proj_np, loss, one_to_many))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_direct_minilm_projected_mse(dtype):
    rng = np.random.default_rng(7)
    s = [cast(rng.normal(size=(B, S, 8)), dtype) for _ in range(3)]
    t = [cast(rng.normal(size=(B, S, 12)), dtype) for _ in range(3)]
    projections = {n: {"kernel": jnp.asarray(rng.normal(size=(8, 12)), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=(12,)), jnp.float32)} for n in "qkv"}
    total, parts = direct_minilm_loss([a for a, _ in s], [a for a, _ in t], MASK, projections, (1.0, 2.0, 0.5))
    refs = [ref_projected_mse(sn, tn, MASK, projections[n]["kernel"], projections[n]["bias"])
            for (_, sn), (_, tn), n in zip(s, t, "qkv")]
    for name, ref in zip("qkv", refs):
        close(parts[name], ref)
    close(total, refs[0] + 2.0 * refs[1] + 0.5 * refs[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("strategy", ["uniform", "uniform_last"])
def test_tinybert_attention_scores_mse(dtype, strategy):
    rng = np.random.default_rng(8)
    s = [cast(rng.normal(size=(B, 2, S, S)) * 3, dtype) for _ in range(2)]
    t = [cast(rng.normal(size=(B, 2, S, S)) * 3, dtype) for _ in range(4)]
    pairs = layer_map(strategy, 2, 4)
    out = jax.jit(lambda a, b: tinybert_attention_loss(a, b, pairs, MASK))([a for a, _ in s], [a for a, _ in t])
    close(out, ref_tinybert([n for _, n in s], [n for _, n in t], pairs, MASK))
