"""Input pipeline: real text in, packed (and MLM-masked) per-host batches out, resumable.

    text source (in shards) -> documents -> HF fast tokenizer (batched, one worker process per
    core) -> token stream per shard, cached as .npy (local or gs://, memory-mapped; cache.py) ->
    [CLS] .. [SEP] blocks of seq_len framed on read -> per-epoch permutation by (seed, epoch) ->
    this process's rows of each global batch -> optional MLM masking keyed by (seed, step, row)

Prepare the cache once, before a pod job (every host then only reads it):

    python -m distill_jax.data.prepare --config=configs/<recipe>.py --cache_dir=gs://bucket/cache

Without a prepared cache, the processes of a multi-host job share the build (each tokenizes 1/N
of the shards into a cache_dir they all see; load_or_build).

Entry point (what the trainer calls):

    data = DataConfig.from_config(config.data)      # read once: typed, validated (one-line errors)
    tokenizer = load_tokenizer(teacher_dir)        # AutoTokenizer, fast only
    check_vocab(tokenizer, teacher_cfg.vocab_size)  # refuses a mismatched vocabulary
    it = build_train_iterator(data, tokenizer, per_host_batch_size=b,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              seed=config.seed, mlm=data.mlm if od else None)
    batch = next(it)     # dict of numpy arrays, this process's rows
    state = it.get_state(); it.set_state(state)     # JSON-serialisable dicts

Batch: input_ids, attention_mask, token_type_ids int32 [b, S]; segment_ids int32 [b, S] when
data.segment_ids (1-based document index within the block, 0 on padding); with MLM also
mlm_positions, mlm_ids int32 [b, P] and mlm_weights float32 [b, P] (input_ids then masked).

Data config: `DataConfig` (data/config.py) lists every field with its default and meaning;
`default_data_config()` is the same as a ConfigDict for `config.data`.

Packing: documents back to back, each followed by [SEP] (</s>); cut every seq_len-2 tokens into
[CLS] chunk [SEP] blocks; long documents split, never dropped; only the corpus's very last block
is padded ([PAD], attention_mask 0). Invalid UTF-8 in files is replaced by U+FFFD and counted
(logged, and in the cache's meta.json as replaced_invalid_utf8).
"""

from __future__ import annotations

import os
from typing import Any

from distill_jax.data.cache import PackedCorpus, load_or_build
from distill_jax.data.config import DataConfig, MlmConfig, default_cache_dir, default_data_config
from distill_jax.data.iterator import BatchIterator, batch_shapes
from distill_jax.data.sources import make_source
from distill_jax.data.tokenization import (SpecialTokens, check_vocab, load_tokenizer,
                                           tokenizer_fingerprint)

__all__ = [
    "BatchIterator", "DataConfig", "MlmConfig", "PackedCorpus", "SpecialTokens", "batch_shapes", "build_packed_corpus",
    "build_train_iterator", "check_vocab", "default_data_config", "load_tokenizer",
    "tokenizer_fingerprint",
]


def _resolve_cache_dir(data: DataConfig, cache_dir: str | None) -> str:
    chosen = cache_dir or data.cache_dir or default_cache_dir()
    return chosen.rstrip("/") if "://" in chosen else os.path.expanduser(chosen)


def build_packed_corpus(data_cfg: DataConfig | Any, tokenizer, *, seq_len: int | None = None,
                        cache_dir: str | None = None, process_index: int = 0, process_count: int = 1,
                        stop_requested=None) -> PackedCorpus:
    """Tokenized, packed corpus for a data config: from the cache, else built (with progress).

    data_cfg: a DataConfig (read once by the caller), or a config block read into one here.
    process_index/process_count: this process's share of a shared build (cache.load_or_build);
    stop_requested: a callable polled during the build (SIGTERM)."""
    if tokenizer is None:
        raise ValueError("tokenizer is None: load the teacher's with data.load_tokenizer(model_dir)")
    data = DataConfig.from_config(data_cfg)
    cache_dir = _resolve_cache_dir(data, cache_dir)
    # HF datasets' own download cache stays on local disk even when our cache is on gs://.
    source = make_source(data, default_cache_dir() if "://" in cache_dir else cache_dir)
    return load_or_build(source, tokenizer, seq_len=int(seq_len or data.seq_len), cache_dir=cache_dir,
                         max_documents=data.max_documents, batch_documents=data.tokenize_batch_documents,
                         process_index=process_index, process_count=process_count,
                         workers=data.build_workers, stop_requested=stop_requested)


def build_train_iterator(data_cfg: DataConfig | Any, tokenizer, *, seq_len: int | None = None,
                         per_host_batch_size: int, process_index: int | None = None,
                         process_count: int | None = None, seed: int = 0,
                         mlm: MlmConfig | None = None, cache_dir: str | None = None,
                         num_epochs: int | None = None, stop_requested=None) -> BatchIterator:
    """This process's iterator of training batches (see the module docstring).

    Args:
      data_cfg: a DataConfig (read once by the caller: DataConfig.from_config), or a ConfigDict /
        dict with the fields of default_data_config() (missing = default) read into one here.
      tokenizer: the teacher's HF fast tokenizer (load_tokenizer).
      seq_len: overrides data_cfg.seq_len.
      per_host_batch_size: rows per process; the global batch is this times process_count.
      process_index, process_count: default jax.process_index() / jax.process_count().
      seed: fixes the epoch permutations and the MLM masks.
      mlm: None = no masking (HS/MHA objectives); an MlmConfig for OD.
      cache_dir: overrides data_cfg.cache_dir.
      num_epochs: overrides data_cfg.num_epochs; None/0 = infinite.
      stop_requested: polled while the cache is built (a SIGTERM then ends the build).
    """
    if process_index is None or process_count is None:
        import jax  # only when the caller leaves the process layout to JAX

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    data = DataConfig.from_config(data_cfg)
    corpus = build_packed_corpus(data, tokenizer, seq_len=seq_len, cache_dir=cache_dir,
                                 process_index=process_index, process_count=process_count,
                                 stop_requested=stop_requested)
    if mlm is not None:
        mlm = MlmConfig.from_config(mlm)
    epochs = num_epochs if num_epochs is not None else data.num_epochs
    return BatchIterator(corpus, per_host_batch_size=per_host_batch_size,
                         process_index=process_index, process_count=process_count, seed=seed,
                         mlm=mlm, num_epochs=epochs or None, shuffle=data.shuffle,
                         segment_ids=data.segment_ids, prefetch=data.prefetch)
