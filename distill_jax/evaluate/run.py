"""The GLUE driver: models x tasks x learning rates x seeds -> runs -> summaries -> table + chart.

`run_from_config(config, workdir)` is what `main.py` calls for `config.mode == 'glue'`. Each run's
result is written to <out>/runs/<model>__<task>__lr<lr>__seed<seed>.json as soon as it ends, and
a later call with the same recipe reuses it, so a killed comparison resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import sys

import jax

from distill_jax import sharding as shd
from distill_jax.data.tokenization import load_tokenizer
from distill_jax.evaluate import data as data_lib
from distill_jax.evaluate import encode, finetune, model_io, report
from distill_jax.evaluate.recipe import FinetuneRecipe
from distill_jax.evaluate.tasks import get_task


def split_list(value) -> list[str]:
    """'a+b' / 'a,b' / ('a', 'b') -> ['a', 'b'] (empty entries dropped)."""
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = re.split(r"[+]", str(value))
    return [s.strip() for s in items if s.strip()]


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def model_specs(config) -> list[tuple[str, str | None]]:
    """(spec, label or None) for every row: the given models, then the references (teacher and a
    random-init model of each distinct given shape) when config.add_references is on."""
    models = split_list(config.models)
    labels = split_list(config.get("model_labels", ""))
    if labels and len(labels) != len(models):
        raise ValueError(f"config.model_labels has {len(labels)} names for {len(models)} models; give one per model")
    if not models and not config.add_references:
        raise ValueError("config.models is empty: set model=<dir> (or models=<dir1>+<dir2>), or refs=1 for the "
                         "teacher and its random-init reference")
    specs = list(zip(models, labels or [None] * len(models)))
    if config.add_references:
        if config.teacher and config.teacher not in models:
            specs.append((config.teacher, None))
        for spec in [s for s, _ in specs]:
            random_init, name = model_io.split_spec(spec)
            if not random_init and f"random:{name}" not in [s for s, _ in specs]:
                specs.append((f"random:{name}", None))
    return specs


def _dedupe_random_shapes(loaded: list[model_io.GlueModel]) -> list[model_io.GlueModel]:
    """Drops random-init references whose shape another random reference already covers."""
    seen, kept = set(), []
    for m in loaded:
        if m.random_init:
            if m.shape in seen:
                continue
            seen.add(m.shape)
        kept.append(m)
    return kept


def _task_caps(config, task: str) -> int:
    per_task = config.get("max_train_per_task") or {}
    cap = int(per_task.get(task, 0) or 0)
    return cap if cap > 0 else int(config.max_train_examples)


@dataclasses.dataclass(frozen=True)
class TaskExamples:
    """One task's text as a GLUE config reads it: train (capped), every dev split, and the whole
    training split (its size and labels, for the table's notes and the majority-class row)."""

    train: data_lib.Examples
    dev: dict[str, data_lib.Examples]
    train_full: data_lib.Examples


def read_task(config, task: str) -> TaskExamples:
    """The one GLUE task reader: config.data's source, training rows capped as config says
    (_task_caps; a fixed subset by config.subsample_seed), every dev split whole."""
    spec = get_task(task)
    train_full = data_lib.read_split(spec, "train", config.data)
    train = data_lib.subsample(train_full, _task_caps(config, spec.name), int(config.subsample_seed))
    dev = {s: data_lib.read_split(spec, s, config.data) for s, _ in spec.dev_splits}
    return TaskExamples(train, dev, train_full)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:80]


def task_recipe(config, task: str) -> FinetuneRecipe:
    """config.finetune with the task's overrides from config.finetune_per_task applied, read once."""
    recipe = copy.deepcopy(config.finetune)  # deep: the legacy names stay references to recipe.optim's fields
    overrides = (config.get("finetune_per_task") or {}).get(task) or {}
    for field, value in dict(overrides).items():
        if field not in recipe:
            raise ValueError(f"config.finetune_per_task.{task}.{field}: no such finetune field; use one of "
                             f"{', '.join(sorted(recipe))}")
        recipe[field] = value
    return FinetuneRecipe.from_config(recipe)


def fingerprint(config, model_key: str, task: str, train_rows: int, lr: float, seed: int) -> str:
    """16 hex digits identifying one run: model (its spec, or any key the caller chooses), task,
    recipe, training rows, lr, seed, data source. A saved run is reused only when it matches."""
    recipe = task_recipe(config, task).identity()
    key = json.dumps({"recipe": recipe, "model": model_key, "task": task, "train_rows": train_rows,
                      "lr": lr, "seed": seed, "source": config.data.source,
                      "subsample_seed": config.subsample_seed}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _load_run(path: str, fingerprint: str) -> dict | None:
    """A saved run with this fingerprint (same model, task, recipe, rows, lr, seed), else None."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved if saved.get("fingerprint") == fingerprint else None


def run_or_reuse(config, model: model_io.GlueModel, task: str, train, dev, lr: float, seed: int, path: str,
                 fingerprint: str, *, steps_cache: dict, report_only: bool = False,
                 extra: dict | None = None) -> dict | None:
    """The record of one fine-tuning run: the one saved at `path` when its fingerprint matches,
    else (unless report_only) a new run, written to `path` (atomically) as soon as it ends.

    train / dev: encode.EncodedSplit (dev: {split: EncodedSplit}); extra: fields added to a new
    record (e.g. a study's method name). Returns None for a missing run under report_only.
    """
    saved = _load_run(path, fingerprint)
    if saved is not None:
        _log(f"[glue] reusing {path}")
        return saved
    if report_only:
        return None
    spec = get_task(task)
    result = finetune.finetune(
        lambda s: model.make_classifier(spec.num_labels, s), model_io.forward, spec, train, dev,
        task_recipe(config, task), float(lr), int(seed), _mesh(config), model_label=model.label,
        steps_cache=steps_cache, cache_key=model.cfg, log=_log)
    record = result.to_json() | {"fingerprint": fingerprint, "model_spec": model.spec} | (extra or {})
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)   # a killed run never leaves half a record
    return record


def _mesh(config):
    """The fine-tuning mesh of config.mesh."""
    return shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)


def _recipe_notes(config, task_names, train_info, source_desc) -> str:
    ft = FinetuneRecipe.from_config(config.finetune)
    lines = [f"Dev-set scores in percent: median over seeds {list(config.seeds)} of each run's best epoch, at the "
             f"learning rate (of {list(config.learning_rates)}) with the best median; (min–max) over seeds when "
             f"there are several. Recipe: AdamW (wd {ft.optim.weight_decay}, no decay on LayerNorm/bias), linear warmup "
             f"{ft.warmup_ratio:.0%} then linear decay, clip {ft.optim.grad_clip_norm}, {ft.epochs} epochs, batch "
             f"{ft.batch_size}, max length {ft.max_len}. Data: {source_desc}.", ""]
    for task in task_names:
        used, total = train_info[task]
        spec = get_task(task)
        capped = f" — **capped** at {used} of {total} training rows" if used < total else ""
        epochs = task_recipe(config, task).epochs
        own_epochs = f", {epochs} epochs" if epochs != ft.epochs else ""
        lines.append(f"- {spec.display}: {used} training rows{capped}{own_epochs}; dev rows "
                     f"{', '.join(str(n) for n in train_info[task + ':dev'])}")
    lines.append("- 'majority class': always predicting the most frequent training label (chance level).")
    return "\n".join(lines) + "\n"


def run_from_config(config, workdir: str) -> dict:
    """Fine-tunes every model on every task of the config and writes the comparison table.

    Returns the payload written to <out>/<table_name>.json: recipe, summaries and runs.
    """
    task_names = [get_task(t).name for t in split_list(config.tasks)]
    if not task_names:
        raise ValueError("config.tasks is empty: set task=rte (or tasks=rte+mrpc)")
    out_dir = config.get("output_dir") or workdir
    if not out_dir:
        raise ValueError("no output folder: pass --workdir=<dir> or set config.output_dir")
    runs_dir = os.path.join(out_dir, "runs")
    is_writer = jax.process_index() == 0
    if is_writer:
        os.makedirs(runs_dir, exist_ok=True)
    mesh = _mesh(config)
    _log(f"[glue] tasks {task_names}; mesh {dict(mesh.shape)}; lrs {list(config.learning_rates)}; "
         f"seeds {list(config.seeds)}; out {out_dir}")

    # Phase 1: load every model first, so a bad path fails before any data is read or step compiled.
    loaded = []
    for spec, label in model_specs(config):
        _log(f"[glue] loading {spec}")
        loaded.append(model_io.load_glue_model(spec, dtype=config.dtype, param_dtype=config.param_dtype,
                                               label=label))
    loaded = _dedupe_random_shapes(loaded)

    # Phase 2: read each task once (text is tokenizer-independent).
    examples = {}
    train_info = {}
    train_labels_full = {}
    for task in task_names:
        read = read_task(config, task)
        train, dev, train_full = read.train, read.dev, read.train_full
        examples[task] = (train, dev)
        train_labels_full[task] = train_full.labels
        train_info[task] = (len(train), len(train_full))
        train_info[task + ":dev"] = [len(d) for d in dev.values()]
        _log(f"[glue] {task}: {len(train)} / {len(train_full)} train rows, dev " +
             ", ".join(f"{k} {len(v)}" for k, v in dev.items()))

    # Phase 3: fine-tune, task-major so that a cut-short comparison still has every model on the
    # first tasks. Models with equal EncoderConfigs (a checkpoint and its random-init twin) share
    # compiled steps.
    tokenizers = {}
    for model in loaded:
        tokenizers[model.spec] = load_tokenizer(model.model_dir)
        model_io.check_tokenizer(model, tokenizers[model.spec])
    steps_cache: dict = {}
    all_runs: list[dict] = []
    summaries: dict = {}
    report_only = bool(config.get("report_only", False))
    for task in task_names:
        spec = get_task(task)
        train_ex, dev_ex = examples[task]
        for model in loaded:
            tokenizer = tokenizers[model.spec]
            max_len = int(task_recipe(config, task).max_len)
            train = encode.encode_examples(tokenizer, train_ex, max_len)
            dev = {s: encode.encode_examples(tokenizer, d, max_len) for s, d in dev_ex.items()}
            pair_runs = []
            for lr in config.learning_rates:
                for seed in config.seeds:
                    fp = fingerprint(config, model.spec, task, len(train), float(lr), int(seed))
                    path = os.path.join(runs_dir, f"{_slug(model.label)}__{task}__lr{float(lr):g}__seed{seed}.json")
                    record = run_or_reuse(config, model, task, train, dev, lr, seed, path, fp,
                                          steps_cache=steps_cache, report_only=report_only)
                    if record is not None:
                        pair_runs.append(record)
            if not pair_runs:
                _log(f"[glue] {model.label} {task}: no finished runs (report_only), left out of the table")
                continue
            summary = report.summarise_runs(pair_runs)
            summaries[(model.label, task)] = summary
            all_runs.extend(pair_runs)
            _log(f"[glue] {model.label} {task}: score {100 * summary['median_score']:.1f} "
                 f"(seeds {summary['n_seeds']}, best lr {summary['best_lr']:g}, {summary['seconds']:.0f} s)")

    row_names = [m.label for m in loaded]
    for task in task_names:
        spec = get_task(task)
        train_ex, dev_ex = examples[task]
        summaries[("majority class", task)] = report.majority_baseline(
            spec, train_labels_full[task], {s: d.labels for s, d in dev_ex.items()})
    row_names.append("majority class")

    # The folder's last two components ('data/glue'): the table reads the same on every machine.
    glue_dir = "/".join(os.path.normpath(config.data.glue_dir).split(os.sep)[-2:])
    source_desc = {"tsv": f"glue_data TSV files ({glue_dir})", "hf": f"HF datasets {config.data.hf_path}",
                   "tfds": "tensorflow-datasets glue/*"}.get(config.data.source, config.data.source)
    notes = _recipe_notes(config, task_names, train_info, source_desc)
    payload = {
        "recipe": FinetuneRecipe.from_config(config.finetune).as_dict(),
        "recipe_per_task": {t: task_recipe(config, t).as_dict() for t in task_names}, "learning_rates": list(config.learning_rates),
        "seeds": list(config.seeds), "tasks": task_names, "data_source": source_desc,
        "train_rows": {t: {"used": train_info[t][0], "total": train_info[t][1]} for t in task_names},
        "models": [{"label": m.label, "spec": m.spec, "random_init": m.random_init, "shape": m.shape}
                   for m in loaded],
        "summaries": [v | {"row": k[0]} for k, v in summaries.items()],
        "runs": all_runs,
    }
    if is_writer:
        paths = report.write_outputs(out_dir, config.table_name, task_names, row_names, summaries, notes, payload,
                                     chart_title=config.get("chart_title", ""))
        _log("[glue] wrote " + ", ".join(paths.values()))
        _log(report.markdown_table(task_names, row_names, summaries))
    sys.stdout.flush()
    return payload
