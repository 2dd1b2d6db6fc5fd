"""Downstream evaluation: GLUE fine-tuning of encoders, metrics, result tables and charts.

    from distill_jax.evaluate import run_from_config      # what main.py calls for mode 'glue'
    from distill_jax.evaluate import TASKS, get_task, glue_metrics

Modules: tasks (the task table: columns, label order, metrics), glue_metrics (numpy), data (TSV / HF /
TFDS readers), encode (tokenization, per-batch padding), model_io (model dirs, random-init
references), finetune (jitted sharded steps, one run), report (summaries, table, chart), run (driver).

The names below load on first use, so that `distill_jax.evaluate.tasks` (the task ids the GLUE
recipe reads) imports without JAX.
"""

import importlib

_EXPORTS = {"run_from_config": "distill_jax.evaluate.run", "TASKS": "distill_jax.evaluate.tasks",
            "TaskSpec": "distill_jax.evaluate.tasks", "get_task": "distill_jax.evaluate.tasks"}

__all__ = ["run_from_config", "glue_metrics", "TASKS", "TaskSpec", "get_task"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name == "glue_metrics":
        return importlib.import_module("distill_jax.evaluate.glue_metrics")
    raise AttributeError(f"module 'distill_jax.evaluate' has no attribute {name!r}")
