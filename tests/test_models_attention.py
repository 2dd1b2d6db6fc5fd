"""attention_impl='splash': the Pallas splash kernel against the explicit softmax path.

Numerics run the real kernel in the Pallas interpreter on CPU ('splash_interpret'); the TPU build
of the same kernel is compiled for a v5e chip through libtpu (skipped when libtpu is absent).
Tolerance: bf16 inputs, outputs compared at real tokens within 2 bf16 roundings of the output
scale (both paths accumulate in float32 but round q*scale / probabilities / outputs to bf16 at
different points). Padded rows are not compared: real tokens never attend them and losses mask
them (models/attention.py says why they differ).
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill_jax.models import Encoder, EncoderConfig
from distill_jax.models.attention import splash_attention
from distill_jax.sharding import batch_sharding, make_mesh, replicated

pytestmark = pytest.mark.slow  # the Pallas interpreter takes tens of seconds per kernel on 2 cores

MASK = np.array([[1] * 20, [1] * 13 + [0] * 7, [1, 1, 0, 1, 1, 1, 0, 1] + [0] * 12], np.int32)


def explicit_attention(q, k, v, mask, scale):
    """softmax over real keys in float32, as SelfAttention's explicit path computes it."""
    scores = jnp.einsum("bshk,bthk->bhst", q, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(jnp.where(mask.astype(bool)[:, None, None, :], scores, jnp.finfo(jnp.float32).min), -1)
    return jnp.einsum("bhst,bthk->bshk", probs.astype(q.dtype), v)


def close_at_real_tokens(actual, expected, mask, rel=2 * 2.0 ** -8):
    real = np.asarray(mask, bool)
    actual, expected = np.asarray(actual, np.float32)[real], np.asarray(expected, np.float32)[real]
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * np.abs(expected).max())


def test_splash_kernel_matches_explicit_attention_and_gradients():
    ks = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (3, 20, 2, 32), jnp.bfloat16) for key in ks[:3])
    cot = jax.random.normal(ks[3], (3, 20, 2, 32), jnp.float32) * (MASK[:, :, None, None] > 0)
    scale = 32 ** -0.5
    out = splash_attention(q, k, v, MASK, scale, interpret=True)
    assert out.shape == q.shape and out.dtype == jnp.bfloat16
    close_at_real_tokens(out, explicit_attention(q, k, v, MASK, scale), MASK)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * cot)  # real rows only

    grads = jax.grad(loss(lambda q, k, v: splash_attention(q, k, v, MASK, scale, interpret=True)),
                     argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(loss(lambda q, k, v: explicit_attention(q, k, v, MASK, scale)), argnums=(0, 1, 2))(q, k, v)
    for g, e in zip(grads, expected):
        close_at_real_tokens(g, e, MASK, rel=4 * 2.0 ** -8)


def test_encoder_splash_matches_explicit_path():
    base = EncoderConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                         max_position_embeddings=32, dtype="bfloat16", attention_dropout=0.0)
    ids = jax.random.randint(jax.random.key(1), MASK.shape, 1, 64)
    graphdef, params = nnx.split(Encoder(base, rngs=nnx.Rngs(0)))
    splash_graph, _ = nnx.split(Encoder(base.replace(attention_impl="splash_interpret"), rngs=nnx.Rngs(0)))
    key = jax.random.key(2)  # hidden dropout on, attention dropout 0: the fused path is taken
    out = nnx.merge(graphdef, params)(ids, MASK, dropout_rng=key)
    out_splash = nnx.merge(splash_graph, params)(ids, MASK, dropout_rng=key)
    for h, h_splash in zip(out.hidden_states[1:], out_splash.hidden_states[1:]):
        close_at_real_tokens(h_splash, h, MASK, rel=4 * 2.0 ** -8)


def test_splash_runs_per_batch_shard_under_a_mesh():
    mesh = make_mesh(data=4, devices=jax.devices()[:4])
    ks = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(key, (4, 20, 2, 32), jnp.bfloat16) for key in ks)
    mask = np.concatenate([MASK, MASK[1:2]])
    alone = splash_attention(q, k, v, mask, 0.25, interpret=True)
    with jax.set_mesh(mesh):
        sharded = jax.jit(lambda *a: splash_attention(*a, 0.25, interpret=True),
                          in_shardings=(batch_sharding(mesh, 4),) * 3 + (batch_sharding(mesh, 2),))(q, k, v, mask)
    np.testing.assert_array_equal(np.asarray(sharded, np.float32), np.asarray(alone, np.float32))


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed")
def test_splash_encoder_compiles_for_tpu_per_shard_and_keeps_no_probabilities():
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile only: no chip is claimed
    from jax.experimental import topologies

    mesh = make_mesh(data=-1, devices=topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices)
    cfg = EncoderConfig(vocab_size=256, hidden_size=256, num_layers=2, num_heads=4, intermediate_size=512,
                        max_position_embeddings=1024, dtype="bfloat16", attention_dropout=0.0)
    per_chip, s = 8, 1024
    ids = jax.ShapeDtypeStruct((per_chip * 4, s), jnp.int32, sharding=batch_sharding(mesh, 2))

    def compile_grad(attention_impl):
        graphdef, params = nnx.split(nnx.eval_shape(lambda: Encoder(cfg.replace(attention_impl=attention_impl),
                                                                    rngs=nnx.Rngs(0))))

        def loss(params, ids, mask):
            out = nnx.merge(graphdef, params)(ids, mask)
            return jnp.mean(out.hidden_states[-1].astype(jnp.float32))

        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), params)
        with jax.set_mesh(mesh):
            return jax.jit(jax.grad(loss)).lower(params, ids, ids).compile()

    xla, splash = compile_grad(None), compile_grad("splash")
    hlo = splash.as_text()
    assert "tpu_custom_call" in hlo
    assert "all-gather" not in hlo  # each chip runs the kernel on its own rows
    # One layer's [B, H, S, S] float32 probabilities are 128 MiB per chip here; XLA's attention keeps
    # such tensors for the backward pass (measured: 310 MiB of temporaries, 43 MiB with the kernel;
    # with smaller B or S this model's XLA temporaries stay under one layer's probabilities), the
    # kernel only [B, H, S] statistics.
    probs_bytes = per_chip * cfg.num_heads * s * s * 4
    xla_temp, splash_temp = (c.memory_analysis().temp_size_in_bytes for c in (xla, splash))
    assert xla_temp > probs_bytes and splash_temp < xla_temp / 4, (xla_temp, splash_temp)
