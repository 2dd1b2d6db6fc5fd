"""GLUE readers: local `glue_data` TSV files, HF datasets, tensorflow-datasets.

Every reader returns `Examples` whose labels follow the order fixed in `tasks.py`; labels are mapped
by *name* from each source, and a source whose label names differ from the table is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys

import numpy as np

from distill_jax.evaluate.tasks import TaskSpec

# Long sentences (QNLI passages) exceed csv's default 128 KiB field limit on some rows.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclasses.dataclass
class Examples:
    """One split of one task.

    text_a: first sentences [N]; text_b: second sentences [N] for pair tasks, else None;
    labels: int32 class indices [N] (classification) or float32 targets [N] (regression).
    """

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.text_a)

    def take(self, rows: np.ndarray) -> "Examples":
        return Examples([self.text_a[i] for i in rows],
                        None if self.text_b is None else [self.text_b[i] for i in rows],
                        self.labels[rows])


def subsample(examples: Examples, max_rows: int, seed: int = 0) -> Examples:
    """A fixed random subset of `max_rows` rows (all rows when max_rows <= 0 or >= N).

    The subset depends on `seed` only (not on the fine-tuning seed), so every model and seed of a
    comparison trains on the same rows. Row order is kept.
    """
    if max_rows <= 0 or max_rows >= len(examples):
        return examples
    rows = np.sort(np.random.default_rng(seed).choice(len(examples), size=max_rows, replace=False))
    return examples.take(rows)


def _split_file_stem(spec: TaskSpec, split: str) -> str:
    if split == "train":
        return "train"
    stems = dict(spec.dev_splits)
    if split not in stems:
        raise ValueError(f"{spec.name} has no split {split!r}: use 'train' or one of {', '.join(stems)}")
    return stems[split]


def _label_from_tsv(spec: TaskSpec, raw: str, where: str):
    raw = raw.strip()
    if spec.is_regression:
        return float(raw)
    if spec.tsv_labels_are_names:
        if raw not in spec.label_names:
            raise ValueError(f"{where}: label {raw!r} is not one of {spec.label_names}")
        return spec.label_names.index(raw)
    value = int(raw)
    if not 0 <= value < len(spec.label_names):
        raise ValueError(f"{where}: label {value} outside 0..{len(spec.label_names) - 1}")
    return value


def read_glue_tsv(spec: TaskSpec, split: str, glue_dir: str) -> Examples:
    """Reads `<glue_dir>/<Task>/<split>.tsv` in the standard glue_data layout.

    Files are read with csv.QUOTE_NONE (GLUE text holds unbalanced quotes) and `utf-8-sig`, which
    drops MRPC's byte-order mark and is a no-op elsewhere. CoLA train/dev have no header (columns:
    source, label, original label, sentence). Rows with too few columns (a handful in QQP train)
    are skipped with a note on stderr; MNLI rows whose gold label is '-' (no consensus) are skipped.
    """
    path = os.path.join(glue_dir, spec.glue_dir, _split_file_stem(spec, split) + ".tsv")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: set config.data.glue_dir to a folder in the glue_data layout "
            f"(<dir>/{spec.glue_dir}/train.tsv) or use config.data.source='hf'/'tfds'")
    text_a, text_b, labels = [], [], []
    skipped = 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if spec.tsv_has_header:
            header = next(reader)
            missing = [c for c in (*spec.tsv_text_columns, spec.tsv_label_column) if c not in header]
            if missing:
                raise ValueError(f"{path}: header lacks column(s) {missing}; is this the {spec.display} "
                                 f"{split} file with labels?")
            columns = [header.index(c) for c in spec.tsv_text_columns]
            label_column = header.index(spec.tsv_label_column)
        else:
            columns, label_column = list(spec.tsv_text_columns), int(spec.tsv_label_column)
        needed = max(*columns, label_column) + 1
        for line_no, row in enumerate(reader, start=2 if spec.tsv_has_header else 1):
            if len(row) < needed:
                skipped += 1
                continue
            if spec.name == "mnli" and row[label_column].strip() == "-":
                skipped += 1
                continue
            labels.append(_label_from_tsv(spec, row[label_column], f"{path}:{line_no}"))
            text_a.append(row[columns[0]])
            if spec.is_pair:
                text_b.append(row[columns[1]])
    if skipped:
        print(f"[glue] {path}: skipped {skipped} malformed or unlabelled rows", file=sys.stderr)
    if not text_a:
        raise ValueError(f"{path}: no labelled rows read")
    return Examples(text_a, text_b if spec.is_pair else None, _labels_array(spec, labels))


def _labels_array(spec: TaskSpec, labels) -> np.ndarray:
    return np.asarray(labels, np.float32 if spec.is_regression else np.int32)


def label_index_map(spec: TaskSpec, source_names, source: str) -> np.ndarray:
    """int array m with m[source_index] = our index, matching class names; ValueError on a mismatch."""
    source_names = [str(n) for n in source_names]
    if sorted(source_names) != sorted(spec.label_names):
        raise ValueError(f"{source} labels for {spec.name} are {source_names}, expected the classes "
                         f"{list(spec.label_names)}; update the table in distill_jax/evaluate/tasks.py")
    return np.asarray([spec.label_names.index(n) for n in source_names], np.int32)


def _hf_or_tfds_split(spec: TaskSpec, split: str) -> str:
    if split == "train":
        return "train"
    ours = [s for s, _ in spec.dev_splits]
    if split not in ours:
        raise ValueError(f"{spec.name} has no split {split!r}: use 'train' or one of {', '.join(ours)}")
    return spec.hf_dev_splits[ours.index(split)]


def _from_records(spec: TaskSpec, fields, labels_raw, label_map) -> Examples:
    labels = np.asarray(labels_raw)
    keep = labels >= 0 if not spec.is_regression else np.ones(labels.shape, bool)  # -1 = unlabelled
    rows = np.flatnonzero(keep)
    if spec.is_regression:
        mapped = labels[rows].astype(np.float32)
    else:
        mapped = label_map[labels[rows].astype(np.int64)]
    text_a = [fields[0][i] for i in rows]
    text_b = [fields[1][i] for i in rows] if spec.is_pair else None
    return Examples(text_a, text_b, _labels_array(spec, mapped))


def read_hf(spec: TaskSpec, split: str, hf_path: str = "nyu-mll/glue") -> Examples:
    """Reads a split from HF datasets (`nyu-mll/glue`, config = task name); needs the hub or cache."""
    import datasets  # heavy import, only on this path

    ds = datasets.load_dataset(hf_path, spec.name, split=_hf_or_tfds_split(spec, split))
    label_map = None
    if not spec.is_regression:
        label_map = label_index_map(spec, ds.features["label"].names, f"HF {hf_path}")
    fields = [ds[name] for name in spec.hf_text_fields]
    return _from_records(spec, fields, ds["label"], label_map)


def read_tfds(spec: TaskSpec, split: str, data_dir: str | None = None) -> Examples:
    """Reads a split from tensorflow-datasets `glue/<task>` (downloads unless prepared in data_dir)."""
    from distill_jax.extras import import_tfds

    tfds = import_tfds("config.data.source")  # heavy import (TensorFlow), only on this path

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    builder.download_and_prepare()
    label_map = None
    if not spec.is_regression:
        label_map = label_index_map(spec, builder.info.features["label"].names, f"TFDS {spec.tfds_name}")
    fields = [[] for _ in spec.tfds_text_fields]
    labels = []
    for ex in tfds.as_numpy(builder.as_dataset(split=_hf_or_tfds_split(spec, split))):
        for column, name in zip(fields, spec.tfds_text_fields):
            column.append(ex[name].decode("utf-8"))
        labels.append(ex["label"])
    return _from_records(spec, fields, labels, label_map)


def read_split(spec: TaskSpec, split: str, data_cfg) -> Examples:
    """Dispatches on data_cfg.source: 'tsv' (glue_dir), 'hf' (hf_path) or 'tfds' (tfds_data_dir)."""
    source = data_cfg.source
    if source == "tsv":
        return read_glue_tsv(spec, split, data_cfg.glue_dir)
    if source == "hf":
        return read_hf(spec, split, data_cfg.get("hf_path", "nyu-mll/glue"))
    if source == "tfds":
        return read_tfds(spec, split, data_cfg.get("tfds_data_dir") or None)
    raise ValueError(f"config.data.source={source!r}: use 'tsv', 'hf' or 'tfds'")
