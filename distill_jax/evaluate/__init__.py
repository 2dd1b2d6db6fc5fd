"""Downstream evaluation: GLUE fine-tuning of encoders, metrics, result tables and charts.

    from distill_jax.evaluate import run_from_config      # what main.py calls for mode 'glue'
    from distill_jax.evaluate import TASKS, get_task, glue_metrics

Modules: tasks (the task table: columns, label order, metrics), glue_metrics (numpy), data (TSV / HF /
TFDS readers), encode (tokenization, per-batch padding), model_io (model dirs, random-init
references), finetune (jitted sharded steps, one run), report (summaries, table, chart), run (driver).
"""

from distill_jax.evaluate import glue_metrics
from distill_jax.evaluate.run import run_from_config
from distill_jax.evaluate.tasks import TASKS, TaskSpec, get_task

__all__ = ["run_from_config", "glue_metrics", "TASKS", "TaskSpec", "get_task"]
