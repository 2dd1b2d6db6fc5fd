"""What a model costs to run: parameter counts and forward latency through our own Flax encoder.

Both depend on the model's shape only (layers, width, heads, FFN, vocabulary), not on its weights,
so every student of one shape shares one figure; models are built at a random init.

Latency protocol (`measure_latency`): in one process, every model's forward (input ids + attention
mask -> last hidden states, float32, no dropout) is compiled and run `warmup` times per input
shape; then `repeats` rounds, each calling every model once, in an order rotated every round
(teacher and students alternate, so a burst of load from elsewhere on the machine hits them all
alike); each call is timed to `block_until_ready`. Reported per (model, batch x length): the
median, the quartiles and the count of calls, in milliseconds.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SHAPES = ((1, 128), (32, 128))   # (batch, tokens): one request; a batch of them


def shape_key(batch: int, length: int) -> str:
    return f"{batch}x{length}"


def _encoder_only(cfg):
    """The encoder body a fine-tuned or embedding model runs: no pooler, no MLM head."""
    return cfg.replace(with_pooler=False, with_mlm_head=False, hidden_dropout=0.0, attention_dropout=0.0,
                       dtype="float32", param_dtype="float32")


def parameter_counts(cfg) -> dict:
    """{"total", "embeddings", "without_embeddings"}: parameters of the encoder body (embeddings
    + layers; no pooler, no MLM head). embeddings = the word, position and token-type tables and
    their LayerNorm. Counted from abstract shapes: nothing is allocated."""
    from distill_jax.models import Encoder

    abstract = nnx.eval_shape(lambda: Encoder(_encoder_only(cfg), rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
    total, embeddings = count(params), count(params["embeddings"])
    return {"total": total, "embeddings": embeddings, "without_embeddings": total - embeddings}


def rotation(names: list[str], round_index: int) -> list[str]:
    """The call order of one round: names rotated by the round's index."""
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


def measure_latency(configs: dict, *, shapes=SHAPES, repeats: int = 20, warmup: int = 2, seed: int = 0) -> dict:
    """{name: {"<batch>x<len>": {"median_ms", "p25_ms", "p75_ms", "calls"}}} for every EncoderConfig
    in `configs` (name -> cfg), measured as the module docstring says."""
    from distill_jax.models import Encoder

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    runners = {}
    for name, cfg in configs.items():
        cfg = _encoder_only(cfg)
        graphdef, state = nnx.split(Encoder(cfg, rngs=nnx.Rngs(seed)))

        def forward(state, ids, mask, graphdef=graphdef):
            return nnx.merge(graphdef, state)(ids, mask).hidden_states[-1]

        runners[name] = (jax.jit(forward), state, cfg)
    names = list(runners)
    out: dict = {name: {} for name in names}
    rng = np.random.default_rng(seed)
    for batch, length in shapes:
        inputs = {}
        for name, (fn, state, cfg) in runners.items():
            if length > cfg.max_position_embeddings:
                raise ValueError(f"{name}: {length} tokens exceed its {cfg.max_position_embeddings} positions")
            ids = jnp.asarray(rng.integers(1, cfg.vocab_size, (batch, length)), jnp.int32)
            inputs[name] = (ids, jnp.ones((batch, length), jnp.int32))
            for _ in range(max(warmup, 1)):   # compile, then settle caches
                fn(state, *inputs[name]).block_until_ready()
        times = {name: [] for name in names}
        for r in range(repeats):
            for name in rotation(names, r):
                fn, state, _ = runners[name]
                start = time.perf_counter()
                fn(state, *inputs[name]).block_until_ready()
                times[name].append(1000.0 * (time.perf_counter() - start))
        for name in names:
            t = np.asarray(times[name])
            out[name][shape_key(batch, length)] = {
                "median_ms": float(np.median(t)), "p25_ms": float(np.percentile(t, 25)),
                "p75_ms": float(np.percentile(t, 75)), "calls": int(t.size)}
    return out
