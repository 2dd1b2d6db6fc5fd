"""Per-host batch iterator over a packed corpus, resumable to the batch.

Why a plain numpy iterator and not grain: after packing, the corpus is one memory-mapped array of
fixed-length rows, so the whole pipeline is index arithmetic — a permutation per epoch and a slice
per step — plus masking keyed by the *global* (step, row), which grain's per-host slicing
(`dataset[process_index::process_count]`) would hide from the map function. The state is two
integers (epoch, step in epoch) that checkpoints as JSON, and the gather + mask of a batch takes
well under a millisecond per row, so grain's worker processes would buy nothing here.

Order: epoch e visits the blocks in `permutation(num_blocks)` of a generator seeded by
(seed, e) (identity when shuffle=False). Global step t of the epoch takes rows
[t*B, (t+1)*B) of that order (B = per_host_batch_size * process_count; the remainder of an epoch
that does not fill a global batch is skipped), and process p keeps rows [p*b, (p+1)*b) of them, so
the processes' shares are disjoint and together cover the epoch, in the order
`jax.make_array_from_process_local_data` concatenates them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill_jax.data.cache import PackedCorpus
from distill_jax.data.config import MlmConfig
from distill_jax.data.masking import mask_batch
from distill_jax.data.packing import attention_mask_from_lengths, segment_ids_from_ids

STATE_VERSION = 1


class BatchIterator:
    """Iterator of this process's batches: dicts of numpy arrays (see the package docstring)."""

    def __init__(self, corpus: PackedCorpus, *, per_host_batch_size: int, process_index: int,
                 process_count: int, seed: int, mlm: MlmConfig | None = None,
                 num_epochs: int | None = None, shuffle: bool = True, segment_ids: bool = False):
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
        self._order_epoch, self._order = -1, None

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
                "num_blocks": self.corpus.num_blocks}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at a position saved by get_state (any process count with the same global batch)."""
        expected = {"seed": self.seed, "global_batch_size": self.global_batch_size,
                    "corpus_key": self.corpus.key}
        for name, value in expected.items():
            if state.get(name) != value:
                raise ValueError(
                    f"data iterator state was saved with {name}={state.get(name)!r} but this run has "
                    f"{value!r}: resume with the same data config, seed and global batch size")
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"data iterator state step_in_epoch={step} outside [0, {self.steps_per_epoch}]")
        self._epoch, self._step_in_epoch = epoch, step

    # ---- iteration ---------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                self._order = rng.permutation(self.corpus.num_blocks)
            else:
                self._order = np.arange(self.corpus.num_blocks)
            self._order_epoch = epoch
        return self._order

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

    def __next__(self) -> dict[str, np.ndarray]:
        if self._step_in_epoch >= self.steps_per_epoch:
            self._epoch, self._step_in_epoch = self._epoch + 1, 0
        if self.num_epochs is not None and self._epoch >= self.num_epochs:
            raise StopIteration
        batch = self.batch_at(self._epoch, self._step_in_epoch)
        self._step_in_epoch += 1
        return batch

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
