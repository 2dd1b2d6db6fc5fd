"""attention_impl='heads_first' (CPU's 'auto'): the same attention as jax.nn.dot_product_attention.

Values against a float64 numpy softmax(q k^T / sqrt(K)) v over the real keys; gradients against
jax.nn.dot_product_attention's own autodiff; the whole encoder against its default path.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill_jax.models import Encoder, EncoderConfig
from distill_jax.models.attention import heads_first_attention

MASK = np.array([[1] * 12, [1] * 7 + [0] * 5, [1, 0, 1, 1, 0, 1] + [0] * 6], np.int32)


def numpy_attention(q, k, v, mask, scale):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.einsum("bshk,bthk->bhst", q, k) * scale
    scores = np.where(mask.astype(bool)[:, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhst,bthk->bshk", probs, v)


def test_heads_first_matches_numpy_and_dot_product_attention_gradients():
    ks = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (3, 12, 4, 8), jnp.float32) for key in ks[:3])
    cot = jax.random.normal(ks[3], q.shape, jnp.float32) * (MASK[:, :, None, None] > 0)
    scale = 8 ** -0.5
    out = heads_first_attention(q, k, v, MASK, scale)
    assert out.shape == q.shape and out.dtype == jnp.float32
    real = MASK.astype(bool)
    np.testing.assert_allclose(np.asarray(out)[real], numpy_attention(q, k, v, MASK, scale)[real],
                               rtol=1e-5, atol=1e-6)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v) * cot)

    mask_b11s = MASK.astype(bool)[:, None, None, :]
    grads = jax.grad(loss(lambda q, k, v: heads_first_attention(q, k, v, MASK, scale)), (0, 1, 2))(q, k, v)
    expected = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask_b11s, scale=scale)),
                        (0, 1, 2))(q, k, v)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-6)


def test_encoder_heads_first_matches_its_default_path():
    base = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                         max_position_embeddings=16, attention_dropout=0.0)
    ids = jax.random.randint(jax.random.key(1), MASK.shape, 1, 64)
    graphdef, params = nnx.split(Encoder(base, rngs=nnx.Rngs(0)))
    heads_first_graph, _ = nnx.split(Encoder(base.replace(attention_impl="heads_first"), rngs=nnx.Rngs(0)))
    out = nnx.merge(graphdef, params)(ids, MASK)
    out_hf = nnx.merge(heads_first_graph, params)(ids, MASK)
    real = MASK.astype(bool)
    for h, h_hf in zip(out.hidden_states[1:], out_hf.hidden_states[1:]):
        np.testing.assert_allclose(np.asarray(h_hf)[real], np.asarray(h)[real], rtol=1e-5, atol=1e-5)
