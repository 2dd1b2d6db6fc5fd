"""Optimizer: schedule and AdamW (+ clipping, + no decay on biases/LayerNorm) against numpy written
from the formulas (Loshchilov & Hutter's decoupled weight decay; Adam with bias correction)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from distill_jax import optim


def optim_config(**overrides):
    c = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=3, end_learning_rate=1e-3,
                                       b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=1.0))
    c.update(overrides)
    return c


def test_schedule_warms_up_then_decays_linearly():
    schedule = optim.learning_rate_schedule(1e-2, warmup_steps=4, total_steps=12, end_lr=2e-3)
    expected = [1e-2 * s / 4 for s in range(5)] + [1e-2 + (2e-3 - 1e-2) * (s - 4) / 8 for s in range(5, 13)]
    got = [float(schedule(s)) for s in range(13)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert float(schedule(100)) == pytest.approx(2e-3)  # stays at the end value


def test_schedule_without_warmup_starts_at_peak():
    schedule = optim.learning_rate_schedule(3e-4, warmup_steps=0, total_steps=10)
    assert float(schedule(0)) == pytest.approx(3e-4)
    assert float(schedule(5)) == pytest.approx(1.5e-4)


def reference_adamw(params, grads_seq, cfg, total_steps):
    """numpy AdamW: global-norm clip, Adam moments with bias correction, decoupled decay on rank>=2."""
    lr_at = lambda s: (cfg.learning_rate * s / cfg.warmup_steps if s < cfg.warmup_steps else  # noqa: E731
                       cfg.learning_rate + (cfg.end_learning_rate - cfg.learning_rate)
                       * (s - cfg.warmup_steps) / (total_steps - cfg.warmup_steps))
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
        scale = min(1.0, cfg.grad_clip_norm / norm)
        t = step + 1
        for k in p:
            g = grads[k] * scale
            m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * g
            v[k] = cfg.b2 * v[k] + (1 - cfg.b2) * g * g
            m_hat, v_hat = m[k] / (1 - cfg.b1 ** t), v[k] / (1 - cfg.b2 ** t)
            update = m_hat / (np.sqrt(v_hat) + cfg.eps)
            if p[k].ndim >= 2:
                update = update + cfg.weight_decay * p[k]
            p[k] = p[k] - lr_at(step) * update
    return p


def test_adamw_matches_numpy_reference_with_clipping_and_masked_decay():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(4, 3)).astype(np.float32),   # decays
              "embedding": rng.normal(size=(5, 4)).astype(np.float32),  # decays
              "bias": rng.normal(size=(3,)).astype(np.float32),          # no decay
              "ln_scale": rng.normal(size=(4,)).astype(np.float32)}      # no decay
    grads_seq = [{k: (rng.normal(size=x.shape) * 3).astype(np.float32) for k, x in params.items()}
                 for _ in range(5)]  # norm well above the clip of 1.0
    cfg = optim_config()
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    state = tx.init(params)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    for grads in grads_seq:
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    expected = reference_adamw(params, grads_seq, cfg, total_steps=10)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_weight_decay_skips_vectors_only():
    mask = optim.weight_decay_mask({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3), "s": jnp.zeros(())})
    assert mask == {"w": True, "b": False, "s": False}
    # With zero gradients only the decayed parameter moves: w <- w - lr * wd * w.
    cfg = optim_config(warmup_steps=0, grad_clip_norm=0.0)
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -1e-2 * 0.1 * np.ones((2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], np.zeros(3))


@pytest.mark.parametrize("field, value, message", [
    ("warmup_steps", 20, r"optim\.warmup_steps=20"),
    ("b2", 1.0, r"optim\.b2=1\.0"),
    ("learning_rate", -1.0, r"optim\.learning_rate=-1\.0"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        optim.make_optimizer(optim_config(**{field: value}), total_steps=10)
