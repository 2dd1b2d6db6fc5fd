"""Per-host batch iterator over a packed corpus, resumable to the batch.

Why a plain numpy iterator and not grain: after packing, the corpus is one memory-mapped array of
fixed-length rows, so the whole pipeline is index arithmetic — a permutation per epoch and a slice
per step — plus masking keyed by the *global* (step, row), which grain's per-host slicing
(`dataset[process_index::process_count]`) would hide from the map function. The state is two
integers (epoch, step in epoch) that checkpoints as JSON, and the gather + mask of a batch takes
well under a millisecond per row, so grain's worker processes would buy nothing here; one
background thread (`prefetch` batches ahead) hides that time behind the train step.

Order: epoch e visits the blocks in `permutation(num_blocks)` of a generator seeded by
(seed, e) (identity when shuffle=False). Global step t of the epoch takes rows
[t*B, (t+1)*B) of that order (B = per_host_batch_size * process_count; the remainder of an epoch
that does not fill a global batch is skipped), and process p keeps rows [p*b, (p+1)*b) of them, so
the processes' shares are disjoint and together cover the epoch, in the order
`jax.make_array_from_process_local_data` concatenates them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from typing import Any

import numpy as np

from distill_jax.data.cache import PackedCorpus, _log, find_cached
from distill_jax.data.config import MlmConfig
from distill_jax.data.masking import mask_batch
from distill_jax.data.packing import attention_mask_from_lengths, segment_ids_from_ids

STATE_VERSION = 1


def batch_shapes(batch_size: int, seq_len: int, mlm_positions: int = 0,
                 segment_ids: bool = False) -> dict[str, tuple[tuple[int, ...], type]]:
    """{field: (shape, numpy dtype)} of a batch of `batch_size` rows as `BatchIterator.batch_at`
    yields it: MLM fields when mlm_positions P > 0, segment_ids when asked. The TPU plan compiles
    the step from these shapes without reading any data."""
    rows = (batch_size, seq_len)
    shapes = {"input_ids": (rows, np.int32), "attention_mask": (rows, np.int32),
              "token_type_ids": (rows, np.int32)}
    if segment_ids:
        shapes["segment_ids"] = (rows, np.int32)
    if mlm_positions:
        slots = (batch_size, mlm_positions)
        shapes.update(mlm_positions=(slots, np.int32), mlm_ids=(slots, np.int32),
                      mlm_weights=(slots, np.float32))
    return shapes


class BatchIterator:
    """Iterator of this process's batches: dicts of numpy arrays (see the package docstring)."""

    def __init__(self, corpus: PackedCorpus, *, per_host_batch_size: int, process_index: int,
                 process_count: int, seed: int, mlm: MlmConfig | None = None,
                 num_epochs: int | None = None, shuffle: bool = True, segment_ids: bool = False,
                 prefetch: int = 2):
        if per_host_batch_size < 1:
            raise ValueError(f"per_host_batch_size={per_host_batch_size}: must be >= 1")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
        self.corpus = corpus
        self.per_host_batch_size = int(per_host_batch_size)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.global_batch_size = self.per_host_batch_size * self.process_count
        self.seed, self.mlm = int(seed), mlm
        self.num_epochs = num_epochs if num_epochs else None  # None / 0 = infinite
        self.shuffle, self.with_segment_ids = shuffle, segment_ids
        self.steps_per_epoch = corpus.num_blocks // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the corpus packs into {corpus.num_blocks} blocks of {corpus.seq_len}, fewer than "
                f"one global batch of {self.global_batch_size}: add data or lower the batch size")
        self._epoch, self._step_in_epoch = 0, 0
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        # Prefetch: futures of the batches at the next positions. The state stays the consumer's
        # position, so a restore simply drops them.
        self.prefetch = max(0, int(prefetch))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._ahead: collections.deque = collections.deque()

    # ---- state -----------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        """Batches consumed so far (per process = global batches, they move in lockstep)."""
        return self._epoch * self.steps_per_epoch + self._step_in_epoch

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: the next batch `next()` returns."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "step_in_epoch": self._step_in_epoch,
                "global_step": self.global_step, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "corpus_key": self.corpus.key,
                "corpus_sha256": self.corpus.content_sha256, "num_blocks": self.corpus.num_blocks}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at a position saved by get_state (any process count with the same global batch).

        The corpus must hold the same packed tokens. Its cache key also covers the files' sizes and
        modification times, so a corpus copied or re-extracted since the checkpoint has a new key:
        that resumes when the tokens' sha256 matches (states from before the sha256 was saved are
        compared through the old cache entry, when it is still in the cache directory)."""
        expected = {"seed": self.seed, "global_batch_size": self.global_batch_size}
        for name, value in expected.items():
            if state.get(name) != value:
                raise ValueError(
                    f"data iterator state was saved with {name}={state.get(name)!r} but this run has "
                    f"{value!r}: resume with the same data config, seed and global batch size")
        if state.get("corpus_key") != self.corpus.key:
            self._check_same_tokens(state)
        elif state.get("corpus_sha256") not in (None, self.corpus.content_sha256):
            # Same cache entry, other tokens: the entry was rebuilt or its files replaced since the
            # checkpoint (the cache verifies the shards against their own sha256 when opened, so this
            # compares the checkpoint's record with what this run actually reads).
            raise ValueError(
                f"data iterator state was saved on packed tokens with sha256 "
                f"{state['corpus_sha256'][:16]} but the cache entry {self.corpus.path} now holds "
                f"{self.corpus.content_sha256[:16]}: the cached data changed since the checkpoint; "
                f"restore the corpus it was trained on, or start a fresh --workdir")
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"data iterator state step_in_epoch={step} outside [0, {self.steps_per_epoch}]")
        self._drop_prefetched()
        self._epoch, self._step_in_epoch = epoch, step

    def _check_same_tokens(self, state: dict[str, Any]) -> None:
        saved_key, saved_sha = state.get("corpus_key"), state.get("corpus_sha256")
        if saved_sha is None and saved_key:
            old = find_cached(os.path.dirname(self.corpus.path), saved_key, self.corpus.special)
            saved_sha = old.content_sha256 if old is not None else None
        if saved_sha is None:
            raise ValueError(
                f"data iterator state was saved with corpus_key={saved_key!r}, this run's corpus has "
                f"{self.corpus.key!r}, and the checkpoint's corpus is not in the cache to compare "
                f"tokens: resume with the same data files and tokenizer, or start a fresh --workdir")
        if saved_sha != self.corpus.content_sha256:
            raise ValueError(
                f"data iterator state was saved on other packed tokens (sha256 {saved_sha[:16]}, this "
                f"corpus {self.corpus.content_sha256[:16]}): the data files or the tokenizer changed; "
                f"resume with the same data, or start a fresh --workdir")
        _log(f"the corpus's cache key changed since the checkpoint (its files were copied or "
             f"touched: {str(saved_key)[:16]} -> {self.corpus.key[:16]}) but its packed tokens are "
             f"the same (sha256 {saved_sha[:16]}): resuming at the same position")

    # ---- iteration ---------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> np.ndarray:
        with self._orders_lock:  # the prefetch thread and the caller may both ask
            if epoch not in self._orders:
                if self.shuffle:
                    order = np.random.default_rng([self.seed, epoch]).permutation(self.corpus.num_blocks)
                else:
                    order = np.arange(self.corpus.num_blocks)
                if len(self._orders) >= 2:  # keep the current and the next epoch only
                    self._orders.pop(min(self._orders))
                self._orders[epoch] = order
            return self._orders[epoch]

    def global_rows(self, epoch: int, step_in_epoch: int) -> np.ndarray:
        """Corpus row indices of the whole global batch at (epoch, step): int64 [B]."""
        start = step_in_epoch * self.global_batch_size
        return self._epoch_order(epoch)[start:start + self.global_batch_size]

    def local_rows(self, epoch: int, step_in_epoch: int) -> np.ndarray:
        """This process's slice of global_rows: int64 [b]."""
        b = self.per_host_batch_size
        return self.global_rows(epoch, step_in_epoch)[self.process_index * b:(self.process_index + 1) * b]

    def __iter__(self):
        return self

    def _position_after(self, epoch: int, step: int) -> tuple[int, int]:
        return (epoch + 1, 0) if step + 1 >= self.steps_per_epoch else (epoch, step + 1)

    def _finished(self, epoch: int) -> bool:
        return self.num_epochs is not None and epoch >= self.num_epochs

    def _drop_prefetched(self) -> None:
        for _, future in self._ahead:
            future.cancel()
        self._ahead.clear()

    def __next__(self) -> dict[str, np.ndarray]:
        if self._step_in_epoch >= self.steps_per_epoch:
            self._epoch, self._step_in_epoch = self._epoch + 1, 0
        position = (self._epoch, self._step_in_epoch)
        if self._finished(self._epoch):
            raise StopIteration
        if self.prefetch == 0:
            batch = self.batch_at(*position)
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="data")
            if self._ahead and self._ahead[0][0] != position:
                self._drop_prefetched()
            if not self._ahead:
                self._ahead.append((position, self._pool.submit(self.batch_at, *position)))
            nxt = self._ahead[-1][0]
            while len(self._ahead) < self.prefetch + 1:
                nxt = self._position_after(*nxt)
                if self._finished(nxt[0]):
                    break
                self._ahead.append((nxt, self._pool.submit(self.batch_at, *nxt)))
            batch = self._ahead.popleft()[1].result()
        self._step_in_epoch += 1
        return batch

    def close(self) -> None:
        """Stops the prefetch thread (also safe to skip: it idles when nobody asks)."""
        self._drop_prefetched()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def batch_at(self, epoch: int, step_in_epoch: int) -> dict[str, np.ndarray]:
        """The batch at a position, without moving the iterator."""
        rows = self.local_rows(epoch, step_in_epoch)
        ids_bs = self.corpus.rows(rows)
        lengths_b = self.corpus.lengths(rows)
        attention_bs = attention_mask_from_lengths(lengths_b, self.corpus.seq_len)
        batch = {"input_ids": ids_bs, "attention_mask": attention_bs,
                 "token_type_ids": np.zeros_like(ids_bs)}
        if self.with_segment_ids:
            batch["segment_ids"] = segment_ids_from_ids(ids_bs, lengths_b, self.corpus.special)
        if self.mlm is not None:
            global_step = epoch * self.steps_per_epoch + step_in_epoch
            first = self.process_index * self.per_host_batch_size
            row_ids = np.arange(first, first + self.per_host_batch_size)
            batch.update(mask_batch(ids_bs, lengths_b, self.corpus.special, self.mlm,
                                    seed=self.seed, step=global_step, rows_b=row_ids))
        return batch
