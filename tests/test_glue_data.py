"""GLUE task table and readers: label maps, every TSV quirk, and the real glue_data files."""

import os

import numpy as np
import pytest

from distill_jax.evaluate import data, tasks
from distill_jax.evaluate.tasks import TASKS, get_task

REAL_GLUE = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue"))


def test_label_maps_are_the_documented_ones():
    expected = {
        "cola": ("unacceptable", "acceptable"),
        "sst2": ("negative", "positive"),
        "mrpc": ("not_equivalent", "equivalent"),
        "qqp": ("not_duplicate", "duplicate"),
        "stsb": (),
        "mnli": ("entailment", "neutral", "contradiction"),
        "qnli": ("entailment", "not_entailment"),
        "rte": ("entailment", "not_entailment"),
        "wnli": ("not_entailment", "entailment"),
    }
    assert {name: spec.label_names for name, spec in TASKS.items()} == expected
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mnli"].num_labels == 3
    assert [s for s, _ in TASKS["mnli"].dev_splits] == ["dev_matched", "dev_mismatched"]


def test_table_matches_tensorflow_datasets_label_order():
    """TFDS's own GLUE builder configs are an independent statement of each source's label order."""
    glue = pytest.importorskip("tensorflow_datasets.text.glue")
    tfds_labels = {c.name: c.label_classes for c in glue.Glue.BUILDER_CONFIGS}
    for name, spec in TASKS.items():
        assert tuple(tfds_labels[name] or ()) == spec.label_names, name


def test_label_index_map_remaps_by_name():
    mnli = TASKS["mnli"]
    # Original BERT run_classifier order: contradiction, entailment, neutral.
    np.testing.assert_array_equal(
        data.label_index_map(mnli, ["contradiction", "entailment", "neutral"], "bert"), [2, 0, 1])
    np.testing.assert_array_equal(data.label_index_map(mnli, list(mnli.label_names), "hf"), [0, 1, 2])
    with pytest.raises(ValueError, match="expected the classes"):
        data.label_index_map(TASKS["rte"], ["yes", "no"], "somewhere")


def test_get_task_aliases_and_errors():
    assert get_task("SST-2").name == "sst2" and get_task("sts-b").name == "stsb"
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        get_task("squad")


def _write(path, text, encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


def test_tsv_quirks(tmp_path):
    glue = str(tmp_path)
    # CoLA: no header, label in column 1, sentence in column 3, no final newline; a stray quote.
    _write(f"{glue}/CoLA/dev.tsv", 'gj04\t1\t\tThe "sailors rode.\ngj04\t0\t*\tRode the the.')
    cola = data.read_glue_tsv(TASKS["cola"], "dev", glue)
    assert cola.text_a == ['The "sailors rode.', "Rode the the."] and cola.text_b is None
    np.testing.assert_array_equal(cola.labels, [1, 0])

    # MRPC: header starts with a UTF-8 BOM; labels 0/1 under 'Quality'.
    _write(f"{glue}/MRPC/train.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
           "1\t1\t2\tHe said \" hi .\tHe said hi .\n0\t3\t4\tA b .\tC d .\n")
    mrpc = data.read_glue_tsv(TASKS["mrpc"], "train", glue)
    assert mrpc.text_a == ['He said " hi .', "A b ."] and mrpc.text_b == ["He said hi .", "C d ."]
    np.testing.assert_array_equal(mrpc.labels, [1, 0])

    # RTE: string labels mapped by name.
    _write(f"{glue}/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tnot_entailment\n"
           "1\tC.\tD.\tentailment\n")
    np.testing.assert_array_equal(data.read_glue_tsv(TASKS["rte"], "dev", glue).labels, [1, 0])

    # MNLI (original glue_data columns): names in any order land on entailment/neutral/contradiction;
    # the '-' (no gold label) row is skipped.
    cols = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
    rows = [[str(i), "p", "q", "g", "b1", "b2", "p1", "p2", f"premise {i}", f"hyp {i}", lab, lab]
            for i, lab in enumerate(["contradiction", "entailment", "neutral", "-"])]
    _write(f"{glue}/MNLI/dev_mismatched.tsv", "\n".join("\t".join(r) for r in [cols] + rows) + "\n")
    mnli = data.read_glue_tsv(TASKS["mnli"], "dev_mismatched", glue)
    np.testing.assert_array_equal(mnli.labels, [2, 0, 1])
    assert mnli.text_a[0] == "premise 0" and mnli.text_b[2] == "hyp 2"

    # QQP: a malformed row (too few columns) is skipped, not misread.
    _write(f"{glue}/QQP/train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
           "0\t1\t2\tWhy?\tHow?\t0\n1\t3\tbroken row\n2\t5\t6\tWho?\tWhom?\t1\n")
    qqp = data.read_glue_tsv(TASKS["qqp"], "train", glue)
    assert qqp.text_a == ["Why?", "Who?"]
    np.testing.assert_array_equal(qqp.labels, [0, 1])

    # STS-B: float targets.
    _write(f"{glue}/STS-B/dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
           "sentence2\tscore\n0\tg\tf\ty\t0\ts\ts\tA man.\tA guy.\t4.75\n")
    stsb = data.read_glue_tsv(TASKS["stsb"], "dev", glue)
    assert stsb.labels.dtype == np.float32 and stsb.labels[0] == pytest.approx(4.75)


def test_tsv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.data.glue_dir"):
        data.read_glue_tsv(TASKS["rte"], "train", str(tmp_path))
    _write(f"{tmp_path}/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    with pytest.raises(ValueError, match="label 'maybe'"):
        data.read_glue_tsv(TASKS["rte"], "dev", str(tmp_path))
    with pytest.raises(ValueError, match="has no split 'test_matched'"):
        data.read_glue_tsv(TASKS["mnli"], "test_matched", str(tmp_path))


def test_subsample_is_fixed_and_sorted():
    ex = data.Examples([str(i) for i in range(100)], None, np.arange(100, dtype=np.int32))
    a, b = data.subsample(ex, 10, seed=3), data.subsample(ex, 10, seed=3)
    assert a.text_a == b.text_a and len(a) == 10
    assert list(a.labels) == sorted(a.labels) and [int(t) for t in a.text_a] == list(a.labels)
    assert data.subsample(ex, 0) is ex


# Row counts from ../shared/data/PROVENANCE.md (train, dev).
REAL_COUNTS = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "rte": (2490, 277),
               "wnli": (635, 71), "qnli": (None, 5463)}


@pytest.mark.skipif(not os.path.isdir(REAL_GLUE), reason=f"real GLUE data not present at {REAL_GLUE}")
@pytest.mark.parametrize("task", sorted(REAL_COUNTS))
def test_real_glue_files(task):
    spec = TASKS[task]
    for split, expected in zip(("train", "dev"), REAL_COUNTS[task]):
        if expected is None:
            continue
        ex = data.read_glue_tsv(spec, split, REAL_GLUE)
        assert len(ex) == expected
        assert all(ex.text_a) and (ex.text_b is None) == (not spec.is_pair)
        assert set(np.unique(ex.labels)) == set(range(spec.num_labels))
    if spec.tsv_labels_are_names:
        # Independent count: raw lines whose last field is the name of class 1.
        with open(os.path.join(REAL_GLUE, spec.glue_dir, "dev.tsv"), encoding="utf-8") as f:
            raw = sum(line.rstrip("\n").split("\t")[-1] == spec.label_names[1] for line in f)
        assert int(np.sum(data.read_glue_tsv(spec, "dev", REAL_GLUE).labels == 1)) == raw
