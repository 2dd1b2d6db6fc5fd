"""Input-pipeline throughput, alone (no model): `python -m distill_jax.data.bench`.

Measures (a) tokenize + pack from the raw source into a fresh (cold) cache, and (b) iteration from
that cache: gather this process's rows, attention mask, MLM masking. Both in tokens/s (packed
block tokens for (b), tokenizer output tokens for (a)). Examples:

    python -m distill_jax.data.bench                                  # builtin corpus, seq 128
    python -m distill_jax.data.bench --source=wikiextractor \
        --paths=../shared/data/corpus/wikipedia_en_sample/text --seq_len=512 --max_predictions=80
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from typing import Any

from distill_jax.data import (MlmConfig, build_packed_corpus, default_data_config, load_tokenizer)
from distill_jax.data.iterator import BatchIterator


def _default_tokenizer_dir() -> str:
    from distill_jax.models.hf_io import OFFLINE_TEACHER_PACKAGE, offline_teacher_dir

    model_dir = offline_teacher_dir()
    if model_dir is None:
        raise FileNotFoundError(f"no --tokenizer given and the offline teacher package {OFFLINE_TEACHER_PACKAGE} "
                                "is not installed")
    return str(model_dir)


def run_pipeline_benchmark(data_cfg: Any = None, *, tokenizer_dir: str | None = None,
                           seq_len: int = 128, batch_size: int = 32, steps: int = 200,
                           max_predictions: int = 20, mlm: bool = True) -> dict[str, float]:
    """Pipeline tokens/s, for the main benchmark and docs/results/bench.md.

    Returns a dict: build_tokens_per_s (tokenize+pack, cold cache, source read included),
    build_seconds, corpus_tokens, corpus_documents, corpus_blocks, iter_tokens_per_s (batches of
    batch_size x seq_len from the cache, masking on if mlm), iter_ms_per_batch, seq_len,
    batch_size.
    """
    data_cfg = data_cfg if data_cfg is not None else default_data_config()
    tokenizer = load_tokenizer(tokenizer_dir or _default_tokenizer_dir())
    cache_dir = tempfile.mkdtemp(prefix="distill_jax_data_bench_")
    try:
        start = time.perf_counter()
        corpus = build_packed_corpus(data_cfg, tokenizer, seq_len=seq_len, cache_dir=cache_dir)
        build_s = time.perf_counter() - start
        it = BatchIterator(corpus, per_host_batch_size=batch_size, process_index=0,
                           process_count=1, seed=0,
                           mlm=MlmConfig(max_predictions=max_predictions) if mlm else None)
        next(it)  # first touch of the memmap and the permutation, outside the timing
        start = time.perf_counter()
        for _ in range(steps):
            next(it)
        iter_s = time.perf_counter() - start
        return {
            "seq_len": seq_len, "batch_size": batch_size, "mlm": bool(mlm),
            "corpus_documents": corpus.meta["num_documents"],
            "corpus_tokens": corpus.meta["text_tokens"], "corpus_blocks": corpus.num_blocks,
            "build_seconds": build_s, "build_tokens_per_s": corpus.meta["text_tokens"] / build_s,
            "iter_ms_per_batch": 1e3 * iter_s / steps,
            "iter_tokens_per_s": steps * batch_size * seq_len / iter_s,
        }
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="builtin", help="builtin|text|wikiextractor|hf|tfds")
    parser.add_argument("--paths", default="", help="files/dirs/globs for text or wikiextractor")
    parser.add_argument("--hf_name", default="")
    parser.add_argument("--hf_data_files", default=None)
    parser.add_argument("--tfds_name", default="")
    parser.add_argument("--max_documents", type=int, default=0)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="batches timed in (b)")
    parser.add_argument("--max_predictions", type=int, default=20)
    parser.add_argument("--no_mlm", action="store_true", help="time (b) without masking")
    parser.add_argument("--tokenizer", default=None, help="model dir (default: offline teacher)")
    args = parser.parse_args(argv)
    cfg = default_data_config()
    cfg.source, cfg.paths, cfg.max_documents = args.source, args.paths or None, args.max_documents
    cfg.hf_name, cfg.hf_data_files, cfg.tfds_name = args.hf_name, args.hf_data_files, args.tfds_name
    result = run_pipeline_benchmark(cfg, tokenizer_dir=args.tokenizer, seq_len=args.seq_len,
                                    batch_size=args.batch_size, steps=args.steps,
                                    max_predictions=args.max_predictions, mlm=not args.no_mlm)
    print(f"corpus: {args.source}, {result['corpus_documents']} documents, "
          f"{result['corpus_tokens']:,} tokens, {result['corpus_blocks']} blocks of {args.seq_len}")
    print(f"(a) tokenize+pack, cold cache: {result['build_tokens_per_s']:,.0f} tokens/s "
          f"({result['build_seconds']:.1f} s)")
    print(f"(b) iterate from cache{' + MLM masking' if not args.no_mlm else ''}, batch "
          f"{args.batch_size}x{args.seq_len}: {result['iter_tokens_per_s']:,.0f} tokens/s "
          f"({result['iter_ms_per_batch']:.2f} ms/batch)")
    return result


if __name__ == "__main__":
    main()
