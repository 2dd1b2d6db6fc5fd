"""Tokenization of GLUE examples and per-batch padding.

Sentence pairs are encoded by the model's own HF tokenizer, whose post-processor applies the
family's template: BERT `[CLS] a [SEP] b [SEP]` with token types 0/1, RoBERTa / XLM-R
`<s> a </s></s> b </s>` with token types all 0. Pairs are truncated `longest_first` to max_len.

Batches are padded to the longest row of the batch, rounded up to a multiple of `pad_multiple`
(and capped at max_len): dynamic padding saves most of the compute on short-sentence tasks, and
the rounding bounds how many distinct shapes `jax.jit` compiles (max_len / pad_multiple).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from distill_jax.data.tokenization import load_tokenizer  # noqa: F401 - the one loader, used as encode.load_tokenizer
from distill_jax.evaluate.data import Examples


@dataclasses.dataclass
class EncodedSplit:
    """Token ids per row (ragged, no padding) and labels.

    input_ids / token_type_ids: N int32 arrays of length <= max_len; labels [N]."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray([len(x) for x in self.input_ids], np.int32)


def encode_examples(tokenizer, examples: Examples, max_len: int) -> EncodedSplit:
    """Tokenizes one split with the tokenizer's pair template, truncated to max_len tokens."""
    if max_len < 8:
        raise ValueError(f"config.max_len={max_len} is too short for GLUE sentences (use >= 8, e.g. 128)")
    enc = tokenizer(examples.text_a, examples.text_b, truncation=True, max_length=max_len,
                    padding=False, return_token_type_ids=True, return_attention_mask=False)
    ids = [np.asarray(x, np.int32) for x in enc["input_ids"]]
    types = enc.get("token_type_ids")
    types = ([np.asarray(t, np.int32) for t in types] if types is not None
             else [np.zeros_like(x) for x in ids])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedSplit(ids, types, examples.labels, int(pad_id))


def padded_length(lengths: np.ndarray, max_len: int, pad_multiple: int) -> int:
    """Longest row rounded up to a multiple of pad_multiple, capped at max_len."""
    longest = int(lengths.max())
    return min(max_len, -(-longest // pad_multiple) * pad_multiple)


def make_batch(split: EncodedSplit, rows: np.ndarray, batch_size: int, max_len: int,
               pad_multiple: int) -> dict[str, np.ndarray]:
    """Pads `rows` of the split into one batch of exactly batch_size rows.

    When fewer rows than batch_size are given (the last eval batch) the batch is filled with
    copies of its first row carrying weight 0, so every batch has one shape and divides the mesh.
    Returns input_ids / attention_mask / token_type_ids [B, S] int32, labels [B], weights [B] f32
    and row_index [B] int32 (the split row of each batch row, -1 for fillers).
    """
    n = len(rows)
    if n == 0 or n > batch_size:
        raise ValueError(f"a batch needs 1..{batch_size} rows, got {n}")
    filled = np.concatenate([rows, np.full(batch_size - n, rows[0])]).astype(np.int64)
    seq = padded_length(split.lengths[filled], max_len, pad_multiple)
    input_ids = np.full((batch_size, seq), split.pad_id, np.int32)
    token_type_ids = np.zeros((batch_size, seq), np.int32)
    attention_mask = np.zeros((batch_size, seq), np.int32)
    for b, r in enumerate(filled):
        length = len(split.input_ids[r])
        input_ids[b, :length] = split.input_ids[r]
        token_type_ids[b, :length] = split.token_type_ids[r]
        attention_mask[b, :length] = 1
    weights = np.zeros(batch_size, np.float32)
    weights[:n] = 1.0
    row_index = np.full(batch_size, -1, np.int32)
    row_index[:n] = rows
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "labels": split.labels[filled], "weights": weights, "row_index": row_index}


def train_batches(split: EncodedSplit, batch_size: int, max_len: int, pad_multiple: int,
                  rng: np.random.Generator, group_by_length: bool = True,
                  group_size: int = 50) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of shuffled full batches (the last partial batch is dropped).

    With group_by_length, rows are shuffled, cut into groups of group_size batches, sorted by
    length inside each group and the batches shuffled again (HF Trainer's `group_by_length`):
    batches stay random but rows of similar length share a batch, so less compute goes to padding.
    """
    order = rng.permutation(len(split))
    steps = len(order) // batch_size
    if steps == 0:
        raise ValueError(f"{len(split)} training rows are fewer than config.batch_size={batch_size}")
    order = order[: steps * batch_size]
    if group_by_length:
        lengths = split.lengths
        chunk = batch_size * group_size
        groups = [order[i:i + chunk] for i in range(0, len(order), chunk)]
        order = np.concatenate([g[np.argsort(-lengths[g], kind="stable")] for g in groups])
        batch_order = rng.permutation(steps)
    else:
        batch_order = np.arange(steps)
    for b in batch_order:
        yield make_batch(split, order[b * batch_size:(b + 1) * batch_size], batch_size, max_len, pad_multiple)


def eval_batches(split: EncodedSplit, batch_size: int, max_len: int,
                 pad_multiple: int) -> Iterator[dict[str, np.ndarray]]:
    """Every row once, longest first (so batches pad little); `row_index` maps outputs back."""
    order = np.argsort(-split.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield make_batch(split, order[start:start + batch_size], batch_size, max_len, pad_multiple)
