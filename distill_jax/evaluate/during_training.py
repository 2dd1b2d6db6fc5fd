"""Scores of the student taken while it distils (config.eval), logged beside the loss terms.

A user distilling a sentence-embedding teacher watches the student embed sentences as it trains:
with `config.eval.stsb_every=N` the trainer scores the current student zero-shot on STS-B
(distill_jax/evaluate/stsb.py: Spearman x 100 of the cosine of mean-pooled last hidden states)
every N steps and at the last step, as the scalar `eval/stsb_spearman` in TensorBoard, the console,
the loss history, and the run's summary (`eval_first_logged` / `eval_last_logged`).

The trainer's side is three calls (train.py): `build(...)` before the loop, `periodic(step,
student_params)` at a log step, `summary_fields(history)` at the end.
"""

from __future__ import annotations

import time
from typing import Callable

STSB_KEY = "eval/stsb_spearman"


def _log(message: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(f"[eval] {message}", flush=True)


def check(config) -> None:
    """One-line errors for config.eval, before anything compiles."""
    e = config.get("eval")
    if e is None or not e.get("stsb_every", 0):
        return
    every = e.stsb_every
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"config.eval.stsb_every={every!r}: a number of steps >= 0 (0 = off)")
    if every % config.log_every:
        raise ValueError(f"config.eval.stsb_every={every} must be a multiple of config.log_every="
                         f"{config.log_every} (scores are logged at log steps)")


def build(config, student_graphdef, tokenizer_dir: str) -> Callable[[int, object], dict]:
    """The periodic evaluation: a function (step, student params as the trainer holds them) ->
    {name: value} to add to that step's logged scalars ({} on steps without an evaluation, and
    always when config.eval.stsb_every is 0). Reads the STS-B pairs and the tokenizer now, so a
    missing file fails before the first step."""
    check(config)
    e = config.get("eval")
    every = int(e.stsb_every) if e is not None else 0
    if not every:
        return lambda step, params: {}
    from distill_jax.evaluate import stsb
    from distill_jax.data.tokenization import load_tokenizer

    examples = stsb.read_stsb(e.glue_dir, e.stsb_split)
    embedder = stsb.SentenceEmbedder.from_graphdef(student_graphdef, load_tokenizer(tokenizer_dir))
    total = int(config.total_steps)
    _log(f"zero-shot STS-B {e.stsb_split} ({len(examples.labels)} pairs) every {every} steps as {STSB_KEY}")

    def periodic(step: int, params) -> dict:
        if step % every and step != total:
            return {}
        start = time.perf_counter()
        score = embedder.score(examples, params)
        _log(f"step {step}: zero-shot STS-B Spearman x 100 = {score['spearman']:.2f} "
             f"({time.perf_counter() - start:.1f} s)")
        return {STSB_KEY: score["spearman"]}

    return periodic


def summary_fields(history: list[dict]) -> dict:
    """{"eval_first_logged": {...}, "eval_last_logged": {...}} over the logged rows, or {}."""
    keys = sorted({k for row in history for k in row if k.startswith("eval/")})
    if not keys:
        return {}
    return {"eval_first_logged": {k: next(row[k] for row in history if k in row) for k in keys},
            "eval_last_logged": {k: next(row[k] for row in reversed(history) if k in row) for k in keys}}
