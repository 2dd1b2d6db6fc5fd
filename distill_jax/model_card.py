"""The export's model card: README.md with the Hugging Face metadata header, from the run's facts.

The hub shows the YAML header (base_model = the teacher when it is a hub id, library_name, tags, license) as the
model's metadata and the markdown below it as its page. Everything in the card comes from the
run's summary (summary.json: config, steps, logged losses, command), never typed by hand:
teacher, objective and its weights, student shape, steps, tokens seen, corpus, final losses, the
exact command, and, when given, evaluation numbers (e.g. the study's GLUE table).

    card = render_model_card(summary, export_dir=..., evaluation={"GLUE sst2 (acc)": 0.91})
"""

from __future__ import annotations

import json
from collections.abc import Mapping

# What the export is released under when the run says nothing else: the teacher's licence is the
# user's to check (the card says so); ours is Apache-2.0 (LICENSE).
DEFAULT_LICENSE = "apache-2.0"


def _yaml_str(value: str) -> str:
    return json.dumps(str(value))  # a JSON string is a valid YAML scalar


def is_hub_id(name: str) -> bool:
    """'owner/model' names a hub model (base_model and the link need one); a path does not."""
    return "://" not in name and not name.startswith((".", "/", "~")) and name.count("/") == 1


def corpus_description(data: Mapping) -> str:
    """One phrase for config.data: the source and what it reads."""
    source = data.get("source", "builtin")
    if source == "builtin":
        what = "the builtin corpus (English prose from CPython's docstrings)"
    elif source in ("text", "wikiextractor"):
        what = f"{source} files {data.get('paths')}"
    elif source == "hf":
        name = data.get("hf_name", "")
        what = f"HF dataset {name}" + (f" ({data['hf_config']})" if data.get("hf_config") else "") + \
            (f" files {data['hf_data_files']}" if data.get("hf_data_files") else "")
        what += f", split {data.get('hf_split', 'train')}"
    elif source == "tfds":
        what = f"TFDS {data.get('tfds_name', '')}, split {data.get('tfds_split', 'train')}"
    else:
        what = str(source)
    if data.get("max_documents"):
        what += f", first {data['max_documents']:,} documents"
    return what


def objective_rows(objective: Mapping) -> list[str]:
    """'- minilmv2: weight 1.0 (relation_heads=48, ...)' per enabled term of config.objective."""
    rows = []
    for name, spec in sorted(objective.items()):
        if not isinstance(spec, Mapping) or not spec.get("weight"):
            continue
        extra = ", ".join(f"{k}={v}" for k, v in sorted(spec.items()) if k != "weight")
        rows.append(f"- `{name}`: weight {spec['weight']}" + (f" ({extra})" if extra else ""))
    return rows


def _student_line(student: Mapping) -> str:
    return (f"{student.get('num_layers')} layers x {student.get('hidden_size')} hidden, "
            f"{student.get('num_heads')} heads, FFN {student.get('intermediate_size')}, "
            f"init={student.get('init')}")


def render_model_card(summary: Mapping, *, export_dir: str, architecture: str,
                      sentence_transformers: str = "", evaluation: Mapping[str, float] | None = None,
                      license: str = DEFAULT_LICENSE) -> str:
    """README.md text for an export.

    summary: the run's summary (train._summary: config, steps, loss_last_logged, command, ...).
    export_dir: where the export lives (named in the usage snippet).
    architecture: config.json's architectures[0] (e.g. BertForMaskedLM).
    sentence_transformers: the stack's description ('mean pooling, L2-normalized'), '' = none.
    evaluation: {metric name: value} to list (GLUE / study numbers), None = none measured.
    """
    config = summary["config"]
    teacher = config["teacher"]["name"]
    data = config["data"]
    steps = summary["steps"]["final"]
    seq_len, batch = int(data["seq_len"]), int(config["batch_size"])
    tokens = steps * batch * seq_len
    library = "sentence-transformers" if sentence_transformers else "transformers"
    tags = ["distill_jax", "distillation", "jax", "flax"] + (
        ["sentence-transformers", "feature-extraction", "sentence-similarity"] if sentence_transformers
        else ["fill-mask" if architecture.endswith("ForMaskedLM") else "feature-extraction"])
    hub_id = is_hub_id(teacher)
    header = ["---"] + ([f"base_model: {_yaml_str(teacher)}"] if hub_id else []) + [f"library_name: {library}",
              f"license: {license}", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]

    student = config["student"]
    losses = summary.get("loss_last_logged") or {}
    lines = [
        f"# {student.get('num_layers')}x{student.get('hidden_size')} student of {teacher}",
        "",
        "A task-agnostic distillation of "
        + (f"[{teacher}](https://huggingface.co/{teacher})" if hub_id else f"`{teacher}`") + " by "
        f"distill_jax (`{architecture}`"
        + (f"; a sentence-transformers model: {sentence_transformers}" if sentence_transformers else "")
        + ").",
        "",
        "## Training",
        "",
        f"- Teacher: `{teacher}`",
        f"- Student: {_student_line(student)}",
        "- Objective:",
        *[f"  {row}" for row in objective_rows(config.get("objective", {}))],
        f"- Steps: {steps:,} of batch {batch} x {seq_len} tokens = {tokens:,} tokens"
        + (f" (resumed from step {summary['steps']['resumed_from']})"
           if summary["steps"].get("resumed_from") else ""),
        f"- Corpus: {corpus_description(data)}",
        f"- Optimizer: peak learning rate {config['optim']['learning_rate']}, "
        f"warmup {config['optim']['warmup_steps']} steps, seed {config.get('seed')}",
        "- Final losses (last logged step): "
        + (", ".join(f"`{k}` {v:.4f}" for k, v in sorted(losses.items())) or "none logged"),
        "",
        "Command:",
        "",
        "```bash",
        summary.get("command") or "run_training(config, workdir) from Python (no command line)",
        "```",
        "",
    ]
    if evaluation:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in evaluation.items()]
        lines.append("")
    usage = (["```python", "from sentence_transformers import SentenceTransformer",
              f"model = SentenceTransformer({export_dir!r})",
              "embeddings = model.encode([\"a first sentence\", \"a second one\"])", "```"]
             if sentence_transformers else
             ["```python", "from transformers import AutoModel, AutoTokenizer",
              f"tokenizer = AutoTokenizer.from_pretrained({export_dir!r})",
              f"model = AutoModel.from_pretrained({export_dir!r})", "```"])
    lines += ["## Use", "", *usage, "",
              f"Licence: the card says {license}; the teacher's own licence and the training corpus's "
              f"terms apply to the weights too. The run's full record is `summary.json` beside the export.",
              ""]
    return "\n".join(header + lines)
