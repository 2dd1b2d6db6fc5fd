"""BERT MLM corruption on packed batches, as a pure function of (seed, step, global row).

Randomness comes from a counter-based hash (splitmix64) of (seed, step, global row, position,
purpose), not from a stateful generator: the masking of a row is the same whichever process holds
it, however many processes there are, and after any resume — nothing needs saving.
"""

from __future__ import annotations

import functools

import numpy as np

from distill_jax.data.config import MlmConfig
from distill_jax.data.tokenization import SpecialTokens

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Odd multipliers that spread each counter over all 64 bits before mixing.
_K_SEED, _K_STEP, _K_ROW, _K_POS, _K_PURPOSE = (np.uint64(x) for x in (
    0xD1B54A32D192ED03, 0xABC98388FB8FAC03, 0x8CB92BA72F3D8DD7, 0xCA5A826395121157,
    0x9FB21C651E98DF25))
_PURPOSE_SELECT, _PURPOSE_ACTION, _PURPOSE_RANDOM_TOKEN = 1, 2, 3


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_bits(seed: int, step: int, rows_b: np.ndarray, pos_bs: np.ndarray, purpose: int) -> np.ndarray:
    """64 random bits per (row, position): uint64 [b, S], a pure function of the arguments."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        x = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _K_SEED
             + np.uint64(step) * _K_STEP + np.uint64(purpose) * _K_PURPOSE)
        x = x + np.asarray(rows_b, np.uint64)[:, None] * _K_ROW
        x = x + np.asarray(pos_bs, np.uint64) * _K_POS
        return _splitmix64(_splitmix64(x))


def _uniform(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@functools.lru_cache(maxsize=8)
def _replacement_ids(special: SpecialTokens) -> np.ndarray:
    """Ids a random replacement may take: the tokenizer's vocabulary minus its special tokens."""
    ids = np.arange(special.vocab_size, dtype=np.int64)
    return ids[~np.isin(ids, np.asarray(special.all_ids))]


def mask_batch(ids_bs: np.ndarray, lengths_b: np.ndarray, special: SpecialTokens, mlm: MlmConfig,
               *, seed: int, step: int, rows_b: np.ndarray) -> dict[str, np.ndarray]:
    """Masks a batch of packed blocks.

    Args:
      ids_bs: int32 [b, S] packed ids (not modified).
      lengths_b: real tokens per row (positions >= length are padding).
      seed, step: the run's data seed and the global step this batch is for.
      rows_b: global row index of each row within the global batch (0 .. B-1).
    Returns:
      input_ids int32 [b, S] (corrupted), mlm_positions int32 [b, P] (ascending, padded with 0),
      mlm_ids int32 [b, P] (original ids there), mlm_weights float32 [b, P] (1 real, 0 padding).
    """
    if special.mask is None:
        raise ValueError("MLM masking needs a tokenizer with a mask token ([MASK] / <mask>)")
    b, s = ids_bs.shape
    p = mlm.max_predictions
    pos_bs = np.broadcast_to(np.arange(s), (b, s))
    maskable = (pos_bs < np.asarray(lengths_b)[:, None]) & ~np.isin(ids_bs, np.asarray(special.all_ids))
    n_maskable = maskable.sum(axis=1)
    # BERT: max(1, round(...)) predictions, capped at P; round half up for a fixed rule.
    n_pred = np.minimum(np.minimum(p, s), np.maximum(1, np.floor(mlm.mask_prob * n_maskable + 0.5)))
    n_pred = np.where(n_maskable > 0, np.minimum(n_pred, n_maskable), 0).astype(np.int64)

    scores = _uniform(hash_bits(seed, step, rows_b, pos_bs, _PURPOSE_SELECT))
    scores[~maskable] = 2.0  # never chosen ahead of a maskable token
    k = min(p, s)
    # The k lowest scores per row, then ordered by score: O(S) per row instead of a full sort.
    lowest = np.argpartition(scores, k - 1, axis=1)[:, :k] if k < s else np.broadcast_to(
        np.arange(s), (b, s))
    order = np.take_along_axis(
        lowest, np.argsort(np.take_along_axis(scores, lowest, axis=1), axis=1, kind="stable"), axis=1)
    chosen = np.arange(order.shape[1])[None, :] < n_pred[:, None]
    positions = np.sort(np.where(chosen, order, s), axis=1)  # ascending; unchosen (= s) last
    valid = positions < s
    positions = np.where(valid, positions, 0)
    if positions.shape[1] < p:  # P > S: pad the slots
        pad = p - positions.shape[1]
        positions = np.pad(positions, ((0, 0), (0, pad)))
        valid = np.pad(valid, ((0, 0), (0, pad)))

    original = np.take_along_axis(ids_bs, positions, axis=1)
    action = _uniform(hash_bits(seed, step, rows_b, positions, _PURPOSE_ACTION))
    pool = _replacement_ids(special)
    random_ids = pool[hash_bits(seed, step, rows_b, positions, _PURPOSE_RANDOM_TOKEN)
                      % np.uint64(len(pool))]
    new = np.where(action < mlm.mask_token_prob, special.mask,
                   np.where(action < mlm.mask_token_prob + mlm.random_token_prob, random_ids, original))
    input_ids = np.array(ids_bs, dtype=np.int32, copy=True)
    rows_idx, slot_idx = np.nonzero(valid)
    input_ids[rows_idx, positions[rows_idx, slot_idx]] = new[rows_idx, slot_idx]
    return {
        "input_ids": input_ids,
        "mlm_positions": positions.astype(np.int32),
        "mlm_ids": np.where(valid, original, 0).astype(np.int32),
        "mlm_weights": valid.astype(np.float32),
    }
