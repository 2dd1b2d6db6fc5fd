"""GLUE fine-tuning of encoders (exported students, the teacher, random-init references).

One task, one model:
  python main.py --config=configs/glue.py:task=rte,model=<dir> --workdir=/tmp/glue_rte
Comparison (side-by-side table .md/.json/.csv and a .png bar chart in the workdir), with the
teacher and a random-init model of each compared shape added as reference rows:
  python main.py --config=configs/glue.py:tasks=rte+mrpc+cola+sst2,models=<dir1>+<dir2>,refs=1 \
      --workdir=/tmp/glue_cmp
The same without main.py:  python -m distill_jax.evaluate --config=configs/glue.py:... --workdir=...

A model is an HF-format directory (config.json, model.safetensors, tokenizer files), a hub id the
offline resolver knows ('sentence-transformers/all-MiniLM-L6-v2'), or 'random:<dir>' (same shape and
tokenizer as <dir>, weights drawn fresh per seed).

Arg keys (comma-separated; lists joined with '+'): task/tasks, model/models, labels, refs (add the
teacher and random-init rows; default 1 with models= and 0 with model=), teacher, lrs, seeds, epochs, batch, max_len, max_train (cap every
task's training rows), cap (per-task caps, 'sst2:4000+qnli:20000'), epochs_per_task ('rte:4+cola:3'), source ('tsv'|'hf'|'tfds'),
glue_dir, out (output folder; default the workdir), name (table file stem), runlocal (a tiny CPU
smoke recipe), report_only (table from finished runs, no training). Any field can also be set with --config.<field>=... .
"""

import os

import ml_collections

from configs.common import GLUE_DIR, parse_arg
from distill_jax import optim
from distill_jax.evaluate.recipe import LEGACY_OPTIM_NAMES
from distill_jax.evaluate.tasks import TASKS


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split("+") if v)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("+") if v)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, task="", tasks="", model="", models="", labels="", refs=-1,
                  teacher="sentence-transformers/all-MiniLM-L6-v2", lrs="", seeds="", epochs=0, batch=0,
                  max_len=0, max_train=0, cap="", epochs_per_task="", source="tsv", glue_dir=GLUE_DIR, out="",
                  name="glue_results", runlocal=False, report_only=False)
    c = ml_collections.ConfigDict()
    c.mode = "glue"               # main.py dispatches to distill_jax.evaluate.run_from_config
    c.tasks = a.tasks or a.task or "rte"  # '+'-separated task ids (see distill_jax/evaluate/tasks.py)
    c.models = a.models or a.model  # '+'-separated model dirs / hub ids / 'random:<dir>'
    c.model_labels = a.labels     # optional '+'-separated table names, one per model
    c.teacher = a.teacher         # reference row (and default model) in comparisons
    # Teacher + random-init rows of the same shape; default on in comparisons (models=, or no model).
    c.add_references = bool(a.refs) if a.refs >= 0 else (bool(a.models) or not c.models)
    c.output_dir = a.out          # '' = the --workdir
    c.table_name = a.name         # <out>/<name>.{md,json,csv,png}
    c.chart_title = ""
    c.report_only = a.report_only  # build the table from finished runs in <out>/runs only; train nothing

    c.data = ml_collections.ConfigDict()
    c.data.source = a.source      # 'tsv' (glue_dir) | 'hf' (needs the hub) | 'tfds' (downloads)
    c.data.glue_dir = os.path.normpath(a.glue_dir)  # folder with CoLA/, SST-2/, MRPC/, ... each holding train.tsv / dev.tsv
    c.data.hf_path = "nyu-mll/glue"
    c.data.tfds_data_dir = ""     # '' = TFDS default (~/tensorflow_datasets)
    # Training-row caps (0 = all rows). A fixed random subset (subsample_seed) shared by every model
    # and seed, so CPU runs of the big tasks stay feasible; the table says when a task was capped.
    c.max_train_examples = a.max_train or (256 if a.runlocal else 0)
    c.max_train_per_task = ml_collections.ConfigDict({t: 0 for t in TASKS})
    for item in a.cap.split("+"):
        if item:
            task, _, rows = item.partition(":")
            if task not in TASKS or not rows.isdigit():
                raise ValueError(f"config arg cap={a.cap!r}: use task:rows pairs joined by '+', e.g. sst2:4000")
            c.max_train_per_task[task] = int(rows)
    c.subsample_seed = 0

    # Per-task recipe overrides {task: {finetune field: value}}, as papers tune epochs per task
    # (small data sets such as RTE need more). Arg form: epochs_per_task=rte:4+cola:3.
    c.finetune_per_task = ml_collections.ConfigDict({t: ml_collections.ConfigDict() for t in TASKS})
    for item in a.epochs_per_task.split("+"):
        if item:
            task, _, epochs = item.partition(":")
            if task not in TASKS or not epochs.isdigit():
                raise ValueError(f"config arg epochs_per_task={a.epochs_per_task!r}: use task:epochs pairs joined "
                                 "by '+', e.g. rte:4")
            c.finetune_per_task[task].epochs = int(epochs)

    # Grid: every learning rate x every seed; BERT-paper style small-model grid by default.
    c.learning_rates = _floats(a.lrs) or ((5e-5,) if a.runlocal else (2e-5, 3e-5, 5e-5))
    c.seeds = _ints(a.seeds) or ((0,) if a.runlocal else (0, 1, 2))

    c.finetune = ml_collections.ConfigDict()
    c.finetune.epochs = a.epochs or (1 if a.runlocal else 3)
    c.finetune.batch_size = a.batch or (16 if a.runlocal else 32)  # global batch; divisible by mesh data*fsdp
    c.finetune.eval_batch_size = 64              # fixed shape per padded length; last batch padded, weight 0
    c.finetune.max_len = a.max_len or (64 if a.runlocal else 128)  # tokens after the family's pair template, longest_first
    c.finetune.pad_multiple = 16                 # pad batches to a multiple of this: few compiled shapes
    c.finetune.group_by_length = True            # similar lengths share a batch: less padding compute
    c.finetune.warmup_ratio = 0.1                # fraction of all steps spent warming up, then linear decay to 0
    # AdamW (b1, b2, eps, weight_decay, grad_clip_norm; BERT's defaults): the schema of the
    # distillation's config.optim (distill_jax/optim.py AdamW); the peak lr is the grid's.
    c.finetune.optim = optim.adamw_config()
    # The names these fields had before, still accepted (--config.finetune.adam_b1=0.98): each is a
    # reference to the shared field, so both names hold one value.
    for old, new in LEGACY_OPTIM_NAMES.items():
        c.finetune[old] = c.finetune.optim.get_ref(new)
    c.finetune.log_every_steps = 4 if a.runlocal else 50  # console line with loss and s/step; 0 = per epoch only

    c.dtype = "float32"           # compute dtype ('bfloat16' on TPU/GPU)
    c.param_dtype = "float32"     # master weights stay float32 for AdamW

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1              # data parallel over all devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c
