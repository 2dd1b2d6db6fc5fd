"""Tokenize and pack a recipe's corpus once, into the cache the trainer reads.

    python -m distill_jax.data.prepare --config=configs/mha_l6_h384.py [--cache_dir=gs://bucket/cache]
        [--workers=N] [--process_index=i --process_count=n] [--config.data.<field>=...]

Uses every core of the machine (one tokenizer process per core, --workers to change it). The
cache may live on gs:// (etils.epath) or any local/shared disk; the trainer then reads it with
`--config.data.cache_dir=<the same dir>` (each host mirrors it locally once, verifying every shard).
Resumable: a rerun skips the shards already written. Several machines can split one build:
run it on each with --process_index/--process_count and the same gs:// --cache_dir (machine 0
writes the entry's meta.json once every shard is there).

The recipe's teacher gives the tokenizer (a gs:// teacher is copied once per host); its data config
is `config.data` (or `config.distill.data` for the study). Prints the entry and the trainer flag.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The recipe, e.g. configs/mha_l6_h384.py[:arg].",
                                lock_config=False)
flags.DEFINE_string("cache_dir", None, "Where to write the cache (default: the recipe's "
                    "data.cache_dir, else $DISTILL_JAX_CACHE or ~/.cache/distill_jax/data); gs:// works.")
flags.DEFINE_integer("workers", None, "Tokenizer processes on this machine (default: data.build_workers, 0 = one per core).")
flags.DEFINE_integer("process_index", 0, "This machine's share of a build split across machines.")
flags.DEFINE_integer("process_count", 1, "Machines splitting the build (same --cache_dir on each).")
flags.mark_flags_as_required(["config"])


def data_config_of(config):
    """The data config of a recipe: config.data, or config.distill.data (the study)."""
    if "data" in config and "source" in config.data:
        return config.data
    if "distill" in config and "data" in config.distill:
        return config.distill.data
    raise ValueError("the config has no data section (config.data or config.distill.data)")


def teacher_of(config) -> str:
    if "teacher" in config and "name" in config.teacher:
        return config.teacher.name
    if "distill" in config:
        return config.distill.teacher.name
    raise ValueError("the config names no teacher (config.teacher.name): the tokenizer comes from it")


def prepare(config, *, cache_dir: str | None = None, workers: int | None = None,
            process_index: int = 0, process_count: int = 1):
    """Builds (or finds) the cache entry of a recipe's corpus; returns the PackedCorpus."""
    from distill_jax import data as data_lib
    from distill_jax.models import resolve_model_dir

    if not 0 <= process_index < process_count:
        raise ValueError(f"--process_index={process_index} must be in [0, --process_count={process_count})")
    data = data_lib.DataConfig.from_config(data_config_of(config))  # read once, handed to the build
    if workers is not None:
        data = dataclasses.replace(data, build_workers=int(workers))
    teacher = teacher_of(config)
    teacher_dir = str(resolve_model_dir(teacher))
    tokenizer = data_lib.load_tokenizer(teacher_dir)
    stop = _StopOnSigterm()
    t0 = time.time()
    corpus = data_lib.build_packed_corpus(data, tokenizer, cache_dir=cache_dir,
                                          process_index=process_index, process_count=process_count,
                                          stop_requested=stop)
    meta = corpus.meta
    print(f"[prepare] {corpus.path}: {meta['num_documents']:,} documents, {meta['text_tokens']:,} "
          f"tokens, {corpus.num_blocks:,} blocks of {corpus.seq_len}, {len(meta['shard_files'])} "
          f"shard(s); {time.time() - t0:.1f} s", flush=True)
    root = cache_dir or data.cache_dir
    if root:
        print(f"[prepare] train with: --config.data.cache_dir={root}", flush=True)
    return corpus


class _StopOnSigterm:
    """SIGTERM (or Ctrl-C) ends the build between shards/batches: finished shards stay, the rest
    is rebuilt by the next run."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        prepare(FLAGS.config, cache_dir=FLAGS.cache_dir, workers=FLAGS.workers,
                process_index=FLAGS.process_index, process_count=FLAGS.process_count)
    except InterruptedError:
        print("[prepare] stopped by SIGTERM; finished shards are kept, rerun the same command to "
              "continue", file=sys.stderr, flush=True)
        sys.exit(143)


def run(argv=None) -> None:
    from distill_jax.commands import run_with_one_line_errors, with_resolved_config

    argv = with_resolved_config(list(argv if argv is not None else sys.argv))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_with_one_line_errors(lambda: app.run(main, argv=argv))


if __name__ == "__main__":
    run()
