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

    tokenizer = load_tokenizer(teacher_dir)        # AutoTokenizer, fast only
    check_vocab(tokenizer, teacher_cfg.vocab_size)  # refuses a mismatched vocabulary
    it = build_train_iterator(config.data, tokenizer, per_host_batch_size=b,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              seed=config.seed,
                              mlm=MlmConfig.from_config(config.data.mlm) if od else None)
    batch = next(it)     # dict of numpy arrays, this process's rows
    state = it.get_state(); it.set_state(state)     # JSON-serialisable dicts

Batch: input_ids, attention_mask, token_type_ids int32 [b, S]; segment_ids int32 [b, S] when
data.segment_ids (1-based document index within the block, 0 on padding); with MLM also
mlm_positions, mlm_ids int32 [b, P] and mlm_weights float32 [b, P] (input_ids then masked).

Data config (`default_data_config()`; every field optional in a user dict):
    source          'builtin' | 'text' | 'wikiextractor' | 'hf' | 'tfds'          ('builtin')
    paths           text/wikiextractor: files, dirs (recursive), globs; list or 'a,b'   (None)
    doc_split       text: 'blank_line' | 'file' | 'line'                           ('blank_line')
    hf_name, hf_config, hf_split, hf_data_files, hf_text_field, hf_streaming
                    HF datasets: hub name (+config) or 'text'/'json'/'parquet'/'arrow'
                    with local data_files                ('', '', 'train', None, 'text', False)
    tfds_name, tfds_data_dir, tfds_split, tfds_text_field
                    tensorflow-datasets prepared builder            ('', '', 'train', 'text')
    max_documents   0 = all, else the first N documents                                 (0)
    seq_len         block length including [CLS]/[SEP]                                  (128)
    cache_dir       '' = $DISTILL_JAX_CACHE or ~/.cache/distill_jax/data                 ('')
    segment_ids     also yield segment_ids                                           (False)
    shuffle         permute blocks per epoch by (seed, epoch)                         (True)
    num_epochs      0 = infinite                                                         (0)
    prefetch        batches prepared ahead by a background thread; 0 = inline            (2)
    tokenize_batch_documents, build_workers   build knobs (docs per tokenizer call;
                    tokenizer processes per host, 0 = one per core)                  (256, 0)
    mlm             mask_prob 0.15, max_predictions 20, mask_token_prob 0.8,
                    random_token_prob 0.1 (used only when the trainer passes mlm=)

Packing: documents back to back, each followed by [SEP] (</s>); cut every seq_len-2 tokens into
[CLS] chunk [SEP] blocks; long documents split, never dropped; only the corpus's very last block
is padded ([PAD], attention_mask 0). Invalid UTF-8 in files is replaced by U+FFFD and counted
(logged, and in the cache's meta.json as replaced_invalid_utf8).
"""

from __future__ import annotations

import os
from typing import Any

from distill_jax.data.cache import PackedCorpus, load_or_build
from distill_jax.data.config import (MlmConfig, config_value, default_cache_dir,
                                     default_data_config, validate_data_config)
from distill_jax.data.iterator import BatchIterator, batch_shapes
from distill_jax.data.sources import make_source
from distill_jax.data.tokenization import (SpecialTokens, check_vocab, load_tokenizer,
                                           tokenizer_fingerprint)

__all__ = [
    "BatchIterator", "MlmConfig", "PackedCorpus", "SpecialTokens", "batch_shapes", "build_packed_corpus",
    "build_train_iterator", "check_vocab", "default_data_config", "load_tokenizer",
    "tokenizer_fingerprint", "validate_data_config",
]


def _resolve_cache_dir(data_cfg: Any, cache_dir: str | None) -> str:
    chosen = cache_dir or config_value(data_cfg, "cache_dir") or default_cache_dir()
    return chosen.rstrip("/") if "://" in chosen else os.path.expanduser(chosen)


def build_packed_corpus(data_cfg: Any, tokenizer, *, seq_len: int | None = None,
                        cache_dir: str | None = None, process_index: int = 0, process_count: int = 1,
                        stop_requested=None) -> PackedCorpus:
    """Tokenized, packed corpus for a data config: from the cache, else built (with progress).

    process_index/process_count: this process's share of a shared build (cache.load_or_build);
    stop_requested: a callable polled during the build (SIGTERM)."""
    if tokenizer is None:
        raise ValueError("tokenizer is None: load the teacher's with data.load_tokenizer(model_dir)")
    seq_len = int(seq_len or config_value(data_cfg, "seq_len"))
    cache_dir = _resolve_cache_dir(data_cfg, cache_dir)
    # HF datasets' own download cache stays on local disk even when our cache is on gs://.
    source = make_source(data_cfg, default_cache_dir() if "://" in cache_dir else cache_dir)
    return load_or_build(source, tokenizer, seq_len=seq_len, cache_dir=cache_dir,
                         max_documents=int(config_value(data_cfg, "max_documents") or 0),
                         batch_documents=int(config_value(data_cfg, "tokenize_batch_documents")),
                         process_index=process_index, process_count=process_count,
                         workers=int(config_value(data_cfg, "build_workers") or 0),
                         stop_requested=stop_requested)


def build_train_iterator(data_cfg: Any, tokenizer, *, seq_len: int | None = None,
                         per_host_batch_size: int, process_index: int | None = None,
                         process_count: int | None = None, seed: int = 0,
                         mlm: MlmConfig | None = None, cache_dir: str | None = None,
                         num_epochs: int | None = None, stop_requested=None) -> BatchIterator:
    """This process's iterator of training batches (see the module docstring).

    Args:
      data_cfg: a ConfigDict / dict with the fields of default_data_config() (missing = default).
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
    corpus = build_packed_corpus(data_cfg, tokenizer, seq_len=seq_len, cache_dir=cache_dir,
                                 process_index=process_index, process_count=process_count,
                                 stop_requested=stop_requested)
    if mlm is not None and not isinstance(mlm, MlmConfig):
        mlm = MlmConfig.from_config(mlm)
    epochs = num_epochs if num_epochs is not None else int(config_value(data_cfg, "num_epochs") or 0)
    return BatchIterator(corpus, per_host_batch_size=per_host_batch_size,
                         process_index=process_index, process_count=process_count, seed=seed,
                         mlm=mlm, num_epochs=epochs or None,
                         shuffle=bool(config_value(data_cfg, "shuffle")),
                         segment_ids=bool(config_value(data_cfg, "segment_ids")),
                         prefetch=int(config_value(data_cfg, "prefetch")))
