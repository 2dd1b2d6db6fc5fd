"""The input pipeline's tokens/s for a case, to set next to the step's (which one limits?).

Calls the pipeline's own benchmark (distill_jax.data.bench.run_pipeline_benchmark) on the builtin
corpus with the offline teacher's tokenizer (bert-base-uncased and all-MiniLM-L6-v2 share the same
uncased 30522 WordPiece), at the case's batch and seq_len, with MLM masking (P positions) when the
objective is OD. Two figures come back: iteration from the packed cache (what a training step
waits on: `tokens_per_s`) and the one-off tokenize+pack of a cold cache (`build_tokens_per_s`).
Results are memoised per (seq_len, batch, P), since the cold build dominates the cost.
"""

from __future__ import annotations

import functools

from benchmarks.cases import Case


@functools.lru_cache(maxsize=None)
def _pipeline_rate(seq_len: int, batch_size: int, mlm_positions: int, max_documents: int,
                   batches: int) -> dict:
    from distill_jax.data import default_data_config
    from distill_jax.data.bench import run_pipeline_benchmark

    cfg = default_data_config()
    cfg.source = "builtin"
    cfg.max_documents = max_documents
    return run_pipeline_benchmark(cfg, seq_len=seq_len, batch_size=batch_size, steps=batches,
                                  max_predictions=max(mlm_positions, 1), mlm=mlm_positions > 0)


def data_tokens_per_s(case: Case, *, batches: int = 50, max_documents: int = 0) -> dict:
    """{'tokens_per_s' (cache iteration), 'build_tokens_per_s', ...}; raises if the pipeline fails.

    max_documents: 0 = the whole builtin corpus; tests use a few documents.
    """
    result = dict(_pipeline_rate(case.seq_len, case.batch_size, case.mlm_positions, max_documents,
                                 batches))
    result["tokens_per_s"] = result["iter_tokens_per_s"]
    result["source"] = ("distill_jax.data.bench.run_pipeline_benchmark, builtin corpus"
                        f"{f' (first {max_documents} documents)' if max_documents else ''}, "
                        f"{'MLM masked' if case.mlm_positions else 'unmasked'}")
    return result
