"""The input pipeline's tokens/s for a case, to set next to the step's (which one limits?).

Measures what the training loop sees: `next()` on the pipeline's iterator
(distill_jax.data.build_train_iterator) over the packed builtin corpus with the offline teacher's
tokenizer (bert-base-uncased and all-MiniLM-L6-v2 share the same uncased 30522 WordPiece), batch
and seq_len of the case, with MLM masking when the objective is OD. The one-off tokenize+pack
(or cache load) is timed separately and not counted in the steady-state rate.
"""

from __future__ import annotations

import time

from distill_jax.bench.cases import Case, offline_teacher_dir


def data_tokens_per_s(case: Case, *, batches: int = 20, cache_dir: str | None = None,
                      max_documents: int = 0) -> dict:
    """{'tokens_per_s', 'build_s', 'batches', 'source'}; raises if the pipeline is unavailable.

    cache_dir: the pipeline's packed-corpus cache (None = its default, so the builtin corpus is
    tokenized once per seq_len and reused); max_documents: 0 = the whole builtin corpus.
    """
    from distill_jax.data import MlmConfig, build_train_iterator, load_tokenizer

    tokenizer = load_tokenizer(str(offline_teacher_dir()))
    mlm = MlmConfig(max_predictions=case.mlm_positions) if case.mlm_positions else None
    t0 = time.perf_counter()
    it = build_train_iterator({"source": "builtin", "seq_len": case.seq_len, "max_documents": max_documents},
                              tokenizer, per_host_batch_size=case.batch_size, process_index=0,
                              process_count=1, seed=0, mlm=mlm, cache_dir=cache_dir)
    next(it)  # first batch: any lazy set-up
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": batches * case.tokens_per_step / seconds, "build_s": build_s,
            "batches": batches,
            "source": "distill_jax.data.build_train_iterator, builtin corpus"
                      f"{f' (first {max_documents} documents)' if max_documents else ''}, "
                      f"{'MLM masked' if mlm else 'unmasked'}"}
