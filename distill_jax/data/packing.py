"""Packing token streams into fixed-length blocks.

Layout of the packed stream: every document's tokens followed by one separator ([SEP] / </s>),
documents back to back. The stream is cut every S-2 tokens; each cut becomes a block
`[CLS] chunk [SEP]` of exactly S tokens. Long documents continue into the next block (split, never
dropped); short ones share a block. Only the very last block of a corpus can be partial: it is
`[CLS] rest [SEP]` followed by [PAD] (attention_mask 0 there) — at most S-3 padded positions in the
whole corpus, so concatenating all blocks minus their first and last real token gives back the
stream exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distill_jax.data.tokenization import SpecialTokens


class Packer:
    """Streams documents' token ids in, full [n, S] blocks out; `finish()` flushes the rest."""

    def __init__(self, seq_len: int, special: SpecialTokens, dtype=np.int32):
        if seq_len < 4:
            raise ValueError(f"data.seq_len={seq_len}: must be >= 4 ([CLS], 2 tokens, [SEP])")
        self.seq_len, self.special, self.dtype = seq_len, special, np.dtype(dtype)
        self.body = seq_len - 2
        self._pending = np.zeros([0], self.dtype)
        self.stream_tokens = 0   # document tokens + separators fed so far
        self.documents = 0
        self.final_length = 0    # real tokens of the block finish() returned (0 if none)

    def _frame(self, body_nx: np.ndarray) -> np.ndarray:
        n = body_nx.shape[0]
        blocks_ns = np.empty([n, self.seq_len], self.dtype)
        blocks_ns[:, 0] = self.special.cls
        blocks_ns[:, 1:-1] = body_nx
        blocks_ns[:, -1] = self.special.sep
        return blocks_ns

    def add(self, docs_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Appends documents (each followed by a separator); returns the full blocks [n, S]."""
        parts = [self._pending]
        sep = np.array([self.special.sep], self.dtype)
        for ids in docs_ids:
            parts.append(np.asarray(ids, self.dtype))
            parts.append(sep)
            self.stream_tokens += len(ids) + 1
            self.documents += 1
        stream = np.concatenate(parts)
        n = len(stream) // self.body
        self._pending = stream[n * self.body:].copy()
        return self._frame(stream[:n * self.body].reshape(n, self.body))

    def finish(self) -> np.ndarray:
        """The final partial block ([CLS] rest [SEP] [PAD]...) as [1, S], or [0, S] if none."""
        rest = self._pending
        self._pending = np.zeros([0], self.dtype)
        if len(rest) == 0:
            return np.zeros([0, self.seq_len], self.dtype)
        block = np.full([1, self.seq_len], self.special.pad, self.dtype)
        block[0, 0] = self.special.cls
        block[0, 1:1 + len(rest)] = rest
        block[0, 1 + len(rest)] = self.special.sep
        self.final_length = len(rest) + 2
        return block


def unpack_stream(blocks_ns: np.ndarray, lengths_n: np.ndarray) -> np.ndarray:
    """Inverse of packing: the stream (documents + separators) that produced these blocks, in order.

    lengths_n: real (non-padding) tokens per block; drops each block's leading CLS and closing SEP.
    """
    out = [np.asarray(block[1:length - 1]) for block, length in zip(blocks_ns, lengths_n)]
    return np.concatenate(out) if out else np.zeros([0], np.int64)


def attention_mask_from_lengths(lengths_b: np.ndarray, seq_len: int) -> np.ndarray:
    """1 for the first lengths_b[i] positions of row i, else 0. int32 [b, S]."""
    return (np.arange(seq_len)[None, :] < np.asarray(lengths_b)[:, None]).astype(np.int32)


def segment_ids_from_ids(ids_bs: np.ndarray, lengths_b: np.ndarray,
                         special: SpecialTokens) -> np.ndarray:
    """Per-block document index, 1-based: a separator belongs to the document it closes, [CLS] to
    the first, the closing [SEP] to the last; padding 0. int32 [b, S]."""
    b, s = ids_bs.shape
    pos = np.arange(s)[None, :]
    lengths = np.asarray(lengths_b)[:, None]
    # Separators inside the body only (not [CLS] at 0, not the closing [SEP] at length-1).
    is_sep = (ids_bs == special.sep) & (pos >= 1) & (pos < lengths - 1)
    # A token after k body separators belongs to document k+1; the separator itself to document k.
    seg = np.cumsum(is_sep, axis=1) - is_sep + 1
    last = np.take_along_axis(seg, np.maximum(lengths - 2, 0), axis=1)
    seg = np.where(pos == lengths - 1, last, seg)
    return np.where(pos < lengths, seg, 0).astype(np.int32)
