"""The GLUE task table: the one place that fixes each task's columns, label order and metrics.

Label order (the integer a model is trained to predict) is the order of `TaskSpec.label_names`,
whatever the source. It is the order of HF datasets `nyu-mll/glue` and tensorflow-datasets
`glue/*`; every reader maps source labels *by name* onto it and checks the source's own names, so
a source with another order cannot silently flip classes. The classic trap: the original BERT
`run_classifier.py` MNLI processor (and checkpoints trained with it) uses
[contradiction, entailment, neutral], while HF/TFDS use [entailment, neutral, contradiction] —
here MNLI is always 0=entailment, 1=neutral, 2=contradiction.

| task  | labels (index: name)                                  | TSV label column / values        | dev split(s)                  | metrics (first = main)   |
|-------|-------------------------------------------------------|----------------------------------|-------------------------------|--------------------------|
| cola  | 0 unacceptable, 1 acceptable                          | col 1 (no header) / 0,1          | dev                           | mcc                      |
| sst2  | 0 negative, 1 positive                                | `label` / 0,1                    | dev                           | acc                      |
| mrpc  | 0 not_equivalent, 1 equivalent                        | `Quality` / 0,1                  | dev                           | f1, acc (score = mean)   |
| qqp   | 0 not_duplicate, 1 duplicate                          | `is_duplicate` / 0,1             | dev                           | acc, f1 (score = mean)   |
| stsb  | regression, score in [0, 5]                           | `score` / float                  | dev                           | pearson, spearman (mean) |
| mnli  | 0 entailment, 1 neutral, 2 contradiction              | `gold_label` / names             | dev_matched, dev_mismatched   | acc (matched = main)     |
| qnli  | 0 entailment, 1 not_entailment                        | `label` / names                  | dev                           | acc                      |
| rte   | 0 entailment, 1 not_entailment                        | `label` / names                  | dev                           | acc                      |
| wnli  | 0 not_entailment, 1 entailment                        | `label` / 0,1 (1 = entailment)   | dev                           | acc                      |

For binary tasks F1 is computed with class 1 as the positive class (MRPC: equivalent, QQP: duplicate).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: where its text lives in each source, its labels and its metrics.

    Attributes:
      name: short id used in configs ('rte', 'sst2', ...).
      glue_dir: folder name in the standard `glue_data` layout ('RTE', 'SST-2', ...).
      label_names: class names in model-index order; empty for regression.
      tsv_text_columns: header names of the one or two text columns (CoLA: column indices).
      tsv_label_column: header name (or index for header-less CoLA) of the label.
      tsv_labels_are_names: True when TSV labels are strings ('entailment'), False when integers
        that index `label_names` (or floats for regression).
      hf_text_fields / tfds_text_fields: example field names in HF datasets / TFDS.
      dev_splits: {our split name: TSV file stem}; MNLI has two. The first is the main one.
      hf_dev_splits / tfds_dev_splits: the same splits' names in HF datasets / TFDS.
      metrics: metric names in report order; `score_metrics` are averaged into the task score.
    """

    name: str
    display: str
    glue_dir: str
    label_names: tuple[str, ...]
    tsv_text_columns: tuple[str | int, ...]
    tsv_label_column: str | int
    tsv_labels_are_names: bool
    tsv_has_header: bool
    hf_text_fields: tuple[str, ...]
    dev_splits: tuple[tuple[str, str], ...]
    hf_dev_splits: tuple[str, ...]
    metrics: tuple[str, ...]
    score_metrics: tuple[str, ...]

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        """Width of the classifier output: number of classes, or 1 for regression."""
        return len(self.label_names) or 1

    @property
    def is_pair(self) -> bool:
        return len(self.tsv_text_columns) == 2

    @property
    def tfds_name(self) -> str:
        return f"glue/{self.name}"

    @property
    def tfds_text_fields(self) -> tuple[str, ...]:
        # TFDS and HF datasets name the GLUE example fields identically.
        return self.hf_text_fields

    @property
    def tfds_dev_splits(self) -> tuple[str, ...]:
        return self.hf_dev_splits

    @property
    def main_dev_split(self) -> str:
        return self.dev_splits[0][0]


_BIN_NLI = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("cola", "CoLA", "CoLA", ("unacceptable", "acceptable"),
             tsv_text_columns=(3,), tsv_label_column=1, tsv_labels_are_names=False,
             tsv_has_header=False, hf_text_fields=("sentence",),
             dev_splits=(("dev", "dev"),), hf_dev_splits=("validation",),
             metrics=("mcc",), score_metrics=("mcc",)),
    TaskSpec("sst2", "SST-2", "SST-2", ("negative", "positive"),
             tsv_text_columns=("sentence",), tsv_label_column="label", tsv_labels_are_names=False,
             tsv_has_header=True, hf_text_fields=("sentence",),
             dev_splits=(("dev", "dev"),), hf_dev_splits=("validation",),
             metrics=("acc",), score_metrics=("acc",)),
    TaskSpec("mrpc", "MRPC", "MRPC", ("not_equivalent", "equivalent"),
             tsv_text_columns=("#1 String", "#2 String"), tsv_label_column="Quality",
             tsv_labels_are_names=False, tsv_has_header=True,
             hf_text_fields=("sentence1", "sentence2"),
             dev_splits=(("dev", "dev"),), hf_dev_splits=("validation",),
             metrics=("f1", "acc"), score_metrics=("f1", "acc")),
    TaskSpec("qqp", "QQP", "QQP", ("not_duplicate", "duplicate"),
             tsv_text_columns=("question1", "question2"), tsv_label_column="is_duplicate",
             tsv_labels_are_names=False, tsv_has_header=True,
             hf_text_fields=("question1", "question2"),
             dev_splits=(("dev", "dev"),), hf_dev_splits=("validation",),
             metrics=("acc", "f1"), score_metrics=("acc", "f1")),
    TaskSpec("stsb", "STS-B", "STS-B", (),
             tsv_text_columns=("sentence1", "sentence2"), tsv_label_column="score",
             tsv_labels_are_names=False, tsv_has_header=True,
             hf_text_fields=("sentence1", "sentence2"),
             dev_splits=(("dev", "dev"),), hf_dev_splits=("validation",),
             metrics=("pearson", "spearman"), score_metrics=("pearson", "spearman")),
    TaskSpec("mnli", "MNLI", "MNLI", ("entailment", "neutral", "contradiction"),
             tsv_text_columns=("sentence1", "sentence2"), tsv_label_column="gold_label",
             tsv_labels_are_names=True, tsv_has_header=True,
             hf_text_fields=("premise", "hypothesis"),
             dev_splits=(("dev_matched", "dev_matched"), ("dev_mismatched", "dev_mismatched")),
             hf_dev_splits=("validation_matched", "validation_mismatched"),
             metrics=("acc",), score_metrics=("acc",)),
    TaskSpec("qnli", "QNLI", "QNLI", _BIN_NLI,
             tsv_text_columns=("question", "sentence"), tsv_label_column="label",
             tsv_labels_are_names=True, tsv_has_header=True,
             hf_text_fields=("question", "sentence"),
             dev_splits=(("dev", "dev"),), hf_dev_splits=("validation",),
             metrics=("acc",), score_metrics=("acc",)),
    TaskSpec("rte", "RTE", "RTE", _BIN_NLI,
             tsv_text_columns=("sentence1", "sentence2"), tsv_label_column="label",
             tsv_labels_are_names=True, tsv_has_header=True,
             hf_text_fields=("sentence1", "sentence2"),
             dev_splits=(("dev", "dev"),), hf_dev_splits=("validation",),
             metrics=("acc",), score_metrics=("acc",)),
    TaskSpec("wnli", "WNLI", "WNLI", ("not_entailment", "entailment"),
             tsv_text_columns=("sentence1", "sentence2"), tsv_label_column="label",
             tsv_labels_are_names=False, tsv_has_header=True,
             hf_text_fields=("sentence1", "sentence2"),
             dev_splits=(("dev", "dev"),), hf_dev_splits=("validation",),
             metrics=("acc",), score_metrics=("acc",)),
)}

# Spellings users type for a task, mapped onto the table's ids.
_ALIASES = {"sst-2": "sst2", "sst": "sst2", "sts-b": "stsb", "sts": "stsb", "mnli-m": "mnli",
            "mnli_matched": "mnli"}


def get_task(name: str) -> TaskSpec:
    """TaskSpec by (case-insensitive) name; ValueError listing the known tasks otherwise."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[key]


def task_score(spec: TaskSpec, metrics: dict[str, float]) -> float:
    """The single number runs are ranked by: mean of the task's score metrics on the main dev split.

    `metrics` maps '<metric>' (main dev split) to values, as returned by `evaluate_split`.
    """
    return float(sum(metrics[m] for m in spec.score_metrics) / len(spec.score_metrics))
