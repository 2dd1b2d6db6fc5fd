"""The study driver (studies/driver.py and its modules) end to end on a tiny real configuration.

A random 4x32 BERT teacher without an MLM head (so OD must fit one first) and the real WordPiece
tokenizer; 2x16 students; the builtin corpus; a toy SST-2 in the glue_data layout. Checked:
  * every record lands (distillation per method, fine-tuning per method x task x seed, the head fit),
    and the table + chart are built;
  * a distillation stopped part-way (preemption) resumes from its checkpoint on the rerun;
  * a rerun trains nothing; with the heavy workdir deleted, records alone still skip every run and
    rebuild the same table (report_only too);
  * bad input is refused with one line naming the field, before anything trains.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import ml_collections
import pytest

from tiny_models import save_tiny_bert


@pytest.fixture(scope="module")
def headless_teacher(tmp_path_factory) -> Path:
    """A random 4x32 BertModel without an MLM head (like sentence-transformers checkpoints)."""
    return save_tiny_bert(tmp_path_factory.mktemp("study_teacher"), num_layers=4, hidden_size=32, num_heads=4,
                          intermediate_size=64, with_mlm_head=False)


def _toy_glue(root: Path) -> Path:
    good = ["a good film", "good and fun", "really good", "so good", "good story", "a good cast", "good", "good fun"]
    bad = ["a bad film", "bad and dull", "really bad", "so bad", "bad story", "a bad cast", "bad", "bad mess"]
    (root / "SST-2").mkdir(parents=True)
    rows = [f"{s}\t1" for s in good] + [f"{s}\t0" for s in bad]
    (root / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood good\t1\nbad bad\t0\ngood film\t1\nbad film\t0\n")
    (root / "STS-B").mkdir()   # the zero-shot pairs
    (root / "STS-B" / "dev.tsv").write_text(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        + "".join(f"{i}\tg\tf\ty\t{i}\tn\tn\t{a}\t{b}\t{v}\n" for i, (a, b, v) in enumerate(
            [("a good film", "a good cast", 4.0), ("a bad film", "good fun", 0.5), ("so good", "really good", 4.5),
             ("bad story", "a bad mess", 3.0)])))
    return root


def study_config(teacher: Path, glue_dir: Path, cache: str):
    from configs import study

    c = study.get_config("preset=cpu,steps=4")
    c.teacher_name = str(teacher)
    d = c.distill
    d.teacher.name = str(teacher)
    d.student.num_layers, d.student.hidden_size, d.student.num_heads, d.student.intermediate_size = 2, 16, 2, 32
    d.data.source, d.data.max_documents, d.data.seq_len, d.data.cache_dir = "builtin", 40, 32, cache
    d.data.mlm.max_predictions = 5
    d.batch_size, d.log_every, d.checkpoint_every = 8, 1, 2
    c.method_objectives.minilmv2_last.minilmv2.relation_heads = 4
    c.methods = ("teacher", "none", "minilmv2_last", "od")
    g = c.glue
    g.tasks, g.seeds, g.learning_rates = "sst2", (0, 1), (1e-3,)
    g.data.glue_dir = str(glue_dir)
    g.max_train_per_task.sst2 = 0
    g.finetune.epochs, g.finetune.batch_size, g.finetune.eval_batch_size = 1, 8, 8
    g.finetune.max_len, g.finetune.pad_multiple = 32, 32
    f = c.fit_head
    f.data.source, f.data.max_documents, f.data.seq_len, f.data.cache_dir = "builtin", 40, 32, cache
    f.eval_data.source, f.eval_data.max_documents, f.eval_data.seq_len, f.eval_data.cache_dir = "builtin", 5, 32, cache
    f.data.mlm.max_predictions = f.eval_data.mlm.max_predictions = 5
    f.batch_size = f.eval_batch_size = 8
    f.total_steps, f.optim.warmup_steps, f.log_every, f.checkpoint_every, f.max_eval_batches = 4, 1, 2, 2, 2
    return c


def _mtimes(records: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}


@pytest.mark.slow
def test_study_end_to_end_resume_skip_and_report(headless_teacher, tmp_path, capsys):
    from studies.driver import run_study

    glue_dir, cache = _toy_glue(tmp_path / "glue"), str(tmp_path / "cache")
    workdir, report_dir = tmp_path / "work", tmp_path / "report"
    config = study_config(headless_teacher, glue_dir, cache)
    config.report_dir = str(report_dir)
    records = report_dir / "records"

    # 1. Two methods; the distillation is preempted at step 2 (of 4).
    first = study_config(headless_teacher, glue_dir, cache)
    first.report_dir, first.only = str(report_dir), "none+minilmv2_last"
    first.distill.stop_after_step = 2
    with pytest.raises(SystemExit, match="minilmv2_last: distillation stopped at step 2"):
        run_study(first, str(workdir))
    assert sorted(p.name for p in records.glob("*.json")) == [
        "distill__none.json", "none__sst2__lr0.001__seed0.json", "none__sst2__lr0.001__seed1.json",
        "zeroshot__none.json"]

    # 2. The full study: minilmv2_last resumes from its step-2 checkpoint; OD fits the head first.
    capsys.readouterr()
    payload = run_study(config, str(workdir))
    log = capsys.readouterr().out
    assert "resumed from checkpoint step 2" in log
    assert "fitting the MLM head" in log
    names = sorted(p.name for p in records.glob("*.json"))
    assert names == sorted(["mlm_head_fit.json"] + [f"distill__{m}.json" for m in ("none", "minilmv2_last", "od")]
                           + [f"{m}__sst2__lr0.001__seed{s}.json" for m in ("teacher", "none", "minilmv2_last", "od")
                              for s in (0, 1)]
                           + [f"zeroshot__{m}.json" for m in ("teacher", "none", "minilmv2_last", "od")])
    zero = json.loads((records / "zeroshot__minilmv2_last.json").read_text())
    assert zero["pairs"] == 4 and -100 <= zero["spearman"] <= 100 and zero["student_sha256"] == json.loads(
        (records / "distill__minilmv2_last.json").read_text())["export_sha256"]
    distil = json.loads((records / "distill__minilmv2_last.json").read_text())
    assert distil["steps"] == 4 and distil["segments"] == 2 and distil["tokens"] == 4 * 8 * 32
    assert distil["cpu_s"] > 0 and distil["cpu_timed_steps"] == 4  # 2 before the preemption, 2 after
    od = json.loads((records / "distill__od.json").read_text())
    assert set(od["loss_last_logged"]) >= {"loss", "loss/od", "loss/mlm"}
    run = json.loads((records / "od__sst2__lr0.001__seed1.json").read_text())
    assert run["method"] == "od" and run["seed"] == 1 and len(run["epochs"]) == 1 and run["cpu_s"] > 0
    card = (workdir / "distill" / "minilmv2_last" / "export" / "README.md").read_text()
    mean_sst2 = sum(json.loads((records / f"minilmv2_last__sst2__lr0.001__seed{s}.json").read_text())["best_score"]
                    for s in (0, 1)) / 2
    assert "## Evaluation" in card and f"| GLUE sst2 dev, best epoch (mean of 2 runs) | {mean_sst2:.4f} |" in card
    assert f"{zero['spearman']:.4f}" in card   # the zero-shot STS-B record's score
    head = json.loads((records / "mlm_head_fit.json").read_text())
    assert head["steps"] == 4 and set(head["before"]) >= {"accuracy", "perplexity"}
    table = (report_dir / "study_results.md").read_text()
    for label in ("teacher", "no distillation (random init)", "MiniLMv2 Q/K/V, teacher last layer",
                  "OD (KL T=2 x5 + MLM x2)", "majority class", "MLM head fitted on the frozen teacher"):
        assert label in table, label
    for ext in ("json", "csv", "png"):
        assert (report_dir / f"study_results.{ext}").stat().st_size > 0
    assert (report_dir / "mlm_head_fit.png").stat().st_size > 0
    assert len((report_dir / "study_results_runs.csv").read_text().splitlines()) == 1 + 8
    assert {s["row"] for s in payload["summaries"]} >= {"teacher (6x384, all-MiniLM-L6-v2)", "majority class"}

    # 3. A rerun trains nothing and rewrites no record.
    before = _mtimes(records)
    capsys.readouterr()
    run_study(config, str(workdir))
    log = capsys.readouterr().out
    assert log.count("every record done, skipped") == 4 and "distilling" not in log
    assert _mtimes(records) == before

    # 3b. One OD run and OD's zero-shot record lost: the rerun redoes only them, from the export,
    # and leaves the head fit's record alone.
    zero = json.loads((records / "zeroshot__od.json").read_text())
    (records / "od__sst2__lr0.001__seed1.json").unlink()
    (records / "zeroshot__od.json").unlink()
    run_study(config, str(workdir))
    log = capsys.readouterr().out
    assert "fitting the MLM head" not in log and "distilling" not in log
    assert "od: 1 fine-tuning runs and the zero-shot record to do" in log
    after = _mtimes(records)
    redone = ("od__sst2__lr0.001__seed1.json", "zeroshot__od.json")
    assert all(after.pop(name) for name in redone) and after == {k: v for k, v in before.items() if k not in redone}
    assert json.loads((records / "zeroshot__od.json").read_text())["spearman"] == zero["spearman"]
    before = _mtimes(records)
    table = (report_dir / "study_results.md").read_text()  # the redone run's CPU time counts

    # 4. Without the heavy workdir (a new machine), the committed records still suffice.
    shutil.rmtree(workdir)
    run_study(config, str(workdir))
    assert _mtimes(records) == before
    assert not (workdir / "distill").exists()
    (report_dir / "study_results.md").unlink()
    config.report_only = True
    run_study(config, str(workdir))
    assert (report_dir / "study_results.md").read_text() == table

    # 5. A record lost with the workdir: the student is distilled again (preempted the first time,
    # uninterrupted now) and comes out with the same weights, which the log and the records show.
    distil = json.loads((records / "distill__minilmv2_last.json").read_text())
    kept = json.loads((records / "minilmv2_last__sst2__lr0.001__seed0.json").read_text())
    assert kept["student_sha256"] == distil["export_sha256"] and len(distil["export_sha256"]) == 64
    (records / "minilmv2_last__sst2__lr0.001__seed1.json").unlink()
    config.report_only = False
    capsys.readouterr()
    run_study(config, str(workdir))
    log = capsys.readouterr().out
    assert "minilmv2_last: distilling" in log and "distilling" not in log.replace("minilmv2_last: distilling", "")
    assert "minilmv2_last: the student made again is bit-identical to the recorded one" in log
    again = json.loads((records / "distill__minilmv2_last.json").read_text())
    assert again["export_sha256"] == distil["export_sha256"] and "earlier_export_sha256" not in again
    redone = json.loads((records / "minilmv2_last__sst2__lr0.001__seed1.json").read_text())
    assert redone["student_sha256"] == distil["export_sha256"]


def test_a_student_made_again_is_compared_with_the_recorded_one(tmp_path, capsys):
    """The three cases of a re-distilled student: same weights, earlier ones never digested,
    different weights (another machine); only the last two leave a field on the record."""
    from studies.stages import compare_students

    for seed in (0, 1):
        (tmp_path / f"hs_last__sst2__lr0.0001__seed{seed}.json").write_text("{}")
    (tmp_path / "hs_last_2__sst2__lr0.0001__seed0.json").write_text("{}")  # another method's record
    new = "b" * 64
    assert compare_students("hs_last", {"export_sha256": new}, new, str(tmp_path)) == {}
    assert "bit-identical to the recorded one (weights sha256 bbbbbbbbbbbbbbbb); its 2 finished" in capsys.readouterr().out
    assert compare_students("hs_last", {}, new, str(tmp_path)) == {"earlier_export_sha256": None}
    assert "were not digested, so the 2 finished fine-tune records cannot be matched" in capsys.readouterr().out
    assert compare_students("hs_last", {"export_sha256": "a" * 64}, new, str(tmp_path)) == {
        "earlier_export_sha256": "a" * 64}
    assert ("warning: hs_last: the student made again differs from the recorded one (weights sha256 "
            "bbbbbbbbbbbbbbbb vs aaaaaaaaaaaaaaaa" in capsys.readouterr().out)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c, "methods", ("teacher", "minilmv3")), r"config.methods: unknown method 'minilmv3'"),
    (lambda c: setattr(c, "only", "hs_lats"), r"config.only: unknown method 'hs_lats'"),
    (lambda c: (setattr(c, "methods", ("minilm_v1",)),), r"config.method_objectives.minilm_v1: .*head"),
    (lambda c: c.method_objectives.minilmv2_last.minilmv2.update(relation_heads=5),
     r"config.method_objectives.minilmv2_last: .*relation"),
    (lambda c: c.fit_head.update(enabled=False), r"od needs the teacher's MLM head .* has none"),
    (lambda c: c.glue.data.update(glue_dir="/nonexistent/glue"), r"/nonexistent/glue"),
    (lambda c: c.zero_shot.update(split="train"), r"STS-B/train.tsv not found"),
])
def test_bad_input_is_one_line_before_training(headless_teacher, tmp_path, change, message):
    from studies.driver import run_study

    config = study_config(headless_teacher, _toy_glue(tmp_path / "glue"), str(tmp_path / "cache"))
    config.report_dir = str(tmp_path / "report")
    change(config)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_study(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists() and not (tmp_path / "report").exists()


def test_pod_preset_dry_run_plans_without_the_hub(tmp_path, capsys):
    """The paper-scale preset checks every objective against bert-base-uncased's shipped shapes and
    prints the plan, offline, training and writing nothing."""
    from configs import study
    from studies.driver import run_study

    payload = run_study(study.get_config("preset=pod,dry_run"), str(tmp_path / "pod"))
    assert payload["plan"] == {m: 8 * 5 * 4 for m in study.get_config("preset=pod").methods}
    log = capsys.readouterr().out
    assert "400000 steps x 1024 x 512 = 209.7 B tokens per method" in log
    assert '"map": "uniform_last"' in log and "bert-base-uncased" in log
    assert not (tmp_path / "pod").exists()
    # The student axis at paper scale: 4x384 under the same recipe, checked and planned alike.
    run_study(study.get_config("preset=pod,student=4x384,dry_run"), str(tmp_path / "pod_4x384"))
    log = capsys.readouterr().out
    assert "student 4x384 (12 heads); 400000 steps x 1024 x 512" in log
    assert not (tmp_path / "pod_4x384").exists()


@pytest.mark.parametrize("report_dir, config_arg", [("study", "preset=cpu"),
                                                    ("study_4000", "preset=cpu,steps=4000"),
                                                    ("study_3x192", "preset=cpu,student=3x192")])
def test_the_committed_study_records_stay_resumable_by_this_code(report_dir, config_arg):
    """docs/study/records were written by the CPU study over several sessions (docs/study_4000 by
    the same study at twice the budget); a config field added since (an operational one left out
    of OPERATIONAL_FIELDS, a changed default) would change the methods' fingerprints, and the
    documented command would then refuse the study's own workdir or redo every finished run. Each
    distillation record's fingerprint is recomputed from the shipped preset, and every
    fine-tuning record must be one the driver skips."""
    import importlib.util

    from studies.identity import digest, method_identity, needs_teacher_head

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("study_config", repo / "configs" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The records are of the study on ../shared/data (its corpus and GLUE files); a clone without
    # it builds the fallback recipe, whose fingerprints differ by design.
    if not os.path.isdir(module.common.SHARED_DATA_DIR):
        pytest.skip(f"the study's data is not present at {module.common.SHARED_DATA_DIR} (only in the shared workspace)")
    config = module.get_config(config_arg)
    if not list((repo / "docs" / report_dir / "records").glob("*.json")):
        pytest.skip("no record committed yet")
    records = sorted((repo / "docs" / report_dir / "records").glob("distill__*.json"))
    for path in records:
        record = json.loads(path.read_text())
        method = record["method"]
        # The cpu preset's teacher (all-MiniLM-L6-v2) has no MLM head: OD methods fit one first.
        identity = method_identity(config, method, fitted_head=needs_teacher_head(config, method))
        assert digest(identity) == record["fingerprint"], (path.name, identity)
    # Every committed fine-tuning record is one this code skips (its run fingerprint matches: same
    # recipe, training rows of the real GLUE files, lr, seed, and the method's fingerprint).
    from studies.records import run_record_path
    from studies.stages import Tasks, missing_runs, zero_shot_missing

    tasks = Tasks(config.glue)
    records_dir = str(repo / "docs" / report_dir / "records")
    for method in config.methods:
        fingerprint = digest(method_identity(config, method, fitted_head=needs_teacher_head(config, method)))
        missing = {run_record_path(records_dir, method, task, lr, seed)
                   for task, lr, seed, _ in missing_runs(config, method, fingerprint, records_dir, tasks)}
        committed = {str(p) for p in (repo / "docs" / report_dir / "records").glob(f"{method}__*.json")}
        assert not committed & missing, sorted(committed & missing)
        zero_shot = repo / "docs" / report_dir / "records" / f"zeroshot__{method}.json"
        if zero_shot.exists():   # and every zero-shot record is one it skips
            assert not zero_shot_missing(config, method, fingerprint, records_dir), zero_shot.name


def test_write_docs_copies_the_table_and_the_measured_cost_between_the_page_markers(tmp_path):
    from studies import write_docs

    report = tmp_path / "docs" / "study"
    (report / "records").mkdir(parents=True)
    (report / "study_results.md").write_text("| model | SST-2 acc |\n|---|---:|\n| x | 70.0 |\n\nDev-set scores ...\n")
    runs = [{"method": "hs_last", "task": "sst2", "best_score": 70.0, "cpu_s": 60.0, "wall_s": 120.0},
            {"method": "hs_last", "task": "sst2", "best_score": 71.0, "cpu_s": 180.0, "wall_s": 240.0},
            {"method": "hs_last", "steps": 2000, "tokens": 4_096_000, "cpu_s": 3600.0, "wall_s": 4500.0,
             "segments": 2, "fingerprint": "f"},
            {"method": "od", "steps": 2000, "tokens": 4_096_000, "cpu_s": 1500.0, "wall_s": 1200.0,
             "segments": 1, "cpu_timed_steps": 750, "fingerprint": "h",  # an earlier process killed
             "host": {"cpu_model": "AMD EPYC"}, "throughput": {"peak_flops": 3.7e11}},
            {"method": "none", "steps": 0, "tokens": 0, "cpu_s": 3.0, "wall_s": 4.0, "fingerprint": "g"}]
    for i, record in enumerate(runs):
        (report / "records" / f"{i}.json").write_text(json.dumps(record))
    page = tmp_path / "docs" / "results" / "study.md"   # the chart is linked relative to the page
    page.parent.mkdir(parents=True)
    page.write_text("intro\n<!-- study-table -->\nold\n<!-- /study-table -->\nafter\n"
                    "<!-- study-cost -->\nold\n<!-- /study-cost -->\nb\n")
    write_docs.main([f"--report_dir={report}", f"--page={page}"])
    text = page.read_text()
    assert text.startswith("intro\n<!-- study-table -->\n| model | SST-2 acc |\n|---|---:|\n| x | 70.0 |\n\n"
                           "![study chart](../study/study_results.png)\n<!-- /study-table -->\nafter\n")
    assert "| hs_last | sst2 | 2 | 2.0 | 3.0 |" in text  # (60 + 180) / 2 s = 2 CPU-min, (120 + 240) / 2 = 3 wall
    assert "- distillation `hs_last`: 2000 steps, 4.10 M tokens, 60.0 CPU-min over 2 recorded segment(s), 75.0 wall-min." in text
    # 1500 s over 750 of 2000 steps: 66.7 CPU-min for all of them, 53.3 wall-min
    assert ("- distillation `od`: 2000 steps, 4.10 M tokens, 66.7 CPU-min over 1 recorded segment(s), 53.3 "
            "wall-min on AMD EPYC (float32 peak measured at its start 0.37 TFLOP/s) (scaled from the 750 steps timed: "
            "25.0 CPU-min measured;") in text
    assert "`none`" not in text  # a reference row has no distillation
    assert text.endswith("- records: 2 fine-tuning runs of 90, 2 distillations of 8.\n<!-- /study-cost -->\nb\n")
    page.write_text("<!-- study-table -->\n<!-- /study-table -->\nno cost markers\n")
    with pytest.raises(ValueError, match="markers <!-- study-cost --> ... <!-- /study-cost --> not found"):
        write_docs.main([f"--report_dir={report}", f"--page={page}"])
    assert page.read_text() == "<!-- study-table -->\n<!-- /study-table -->\nno cost markers\n"  # untouched


def _budget_dir(root, tokens, scores, loss):
    """A report dir as the study's report step leaves it: study_results.json and distill records.
    scores: method -> its three SST-2 seed scores."""
    (root / "records").mkdir(parents=True)
    labels = {"none": "random init", "hs": "HS", "mv2": "MiniLMv2", "od": "OD"}
    summaries = [{"row": labels[m], "task": "sst2", "median_score": sorted(v)[1], "min_score": min(v),
                  "max_score": max(v), "n_seeds": 3, "metrics": {"dev": {"acc": sorted(v)[1]}}}
                 for m, v in scores.items()]
    compute = [{"method": m, "distill_steps": 0 if m == "none" else tokens // 2048,
                "distill_tokens": 0 if m == "none" else tokens} for m in scores]
    (root / "study_results.json").write_text(json.dumps(
        {"tasks": ["sst2"], "teacher": "t", "methods": list(labels), "labels": labels,
         "summaries": summaries, "compute": compute}))
    for m in scores:
        (root / "records" / f"distill__{m}.json").write_text(json.dumps({"loss_last_logged": {"loss": loss[m]}}))


def test_write_docs_budget_block_puts_each_method_beside_itself_at_the_other_budget(tmp_path):
    from studies import write_docs

    small, large = tmp_path / "study", tmp_path / "study_4000"
    _budget_dir(small, 4_096_000, {"none": [.5, .6, .7], "mv2": [.75, .76, .77], "hs": [.79, .78, .80],
                                   "od": [.70, .71, .69]}, {"none": 0.0, "mv2": 0.3056, "hs": 0.1, "od": 2.0})
    _budget_dir(large, 8_192_000, {"none": [.5, .6, .7], "hs": [.81, .80, .82], "mv2": [.80, .79, .78]},
                {"none": 0.0, "mv2": 0.25, "hs": 0.08})
    block = write_docs.budget_block([str(small), str(large)])
    # Rows in the first directory's method order; 'none' (no distillation) and 'od' (one budget only) left out.
    assert block == ("| model | SST-2 acc | mean score |\n|---|---:|---:|\n"
                     "| HS, 4.1 M tokens | 79.0 (78.0–80.0) | 79.0 |\n"
                     "| HS, 8.2 M tokens | 81.0 (80.0–82.0) | 81.0 |\n"
                     "| MiniLMv2, 4.1 M tokens | 76.0 (75.0–77.0) | 76.0 |\n"
                     "| MiniLMv2, 8.2 M tokens | 79.0 (78.0–80.0) | 79.0 |\n\n"
                     "- `hs`: last logged distillation loss 0.1000 at 4.1 M, 0.0800 at 8.2 M.\n"
                     "- `mv2`: last logged distillation loss 0.3056 at 4.1 M, 0.2500 at 8.2 M.")
    page = tmp_path / "study.md"
    (small / "study_results.md").write_text("| t |\n")
    markers = "<!-- study-table -->\n<!-- /study-table -->\n<!-- study-cost -->\n<!-- /study-cost -->\n"
    page.write_text(markers + "<!-- study-budget -->\nold\n<!-- /study-budget -->\n")
    args = [f"--report_dir={small}", f"--page={page}", f"--budget_dirs={large}"]
    write_docs.main(args)
    assert f"<!-- study-budget -->\n{block}\n<!-- /study-budget -->" in page.read_text()
    # Another study (other tasks) in --budget_dirs is one error, and the page is not written.
    data = json.loads((large / "study_results.json").read_text())
    (large / "study_results.json").write_text(json.dumps(data | {"tasks": ["cola"]}))
    page.write_text(markers)
    with pytest.raises(ValueError, match="study_4000: tasks .* differ from .*--budget_dirs must hold the same"):
        write_docs.main(args)
    assert page.read_text() == markers


def test_compute_table_scales_a_distillation_whose_first_segment_went_untimed():
    """A process killed outright (a session's end) records no seconds for the steps it trained:
    the table scales the timed steps' rate to all steps, and says so; complete records stand."""
    from studies.report import compute_table

    config = ml_collections.ConfigDict({"methods": ["od", "hs"], "method_labels": {}})
    distill = {"od": {"steps": 2000, "tokens": 10, "cpu_s": 600.0, "wall_s": 300.0, "cpu_timed_steps": 500,
                      "throughput": {"peak_flops": 1.28e11}},
               "hs": {"steps": 2000, "tokens": 10, "cpu_s": 600.0, "wall_s": 300.0, "cpu_timed_steps": 2101}}
    od, hs = compute_table(config, {}, distill, None)
    assert od["distill_cpu_min"] == 600.0 * 4 / 60 and od["distill_wall_min"] == 300.0 * 4 / 60
    assert od["distill_cpu_extrapolated_from"] == 500
    assert hs["distill_cpu_min"] == 600.0 / 60 and hs["distill_cpu_extrapolated_from"] is None
    assert od["distill_host_peak_tflops"] == pytest.approx(0.128) and hs["distill_host_peak_tflops"] == 0.0


@pytest.mark.parametrize("preset, default, other, dims", [("cpu", "3x384", "3x192", (3, 192, 12, 768)),
                                                          ("pod", "6x384", "4x384", (4, 384, 12, 1536))])
def test_the_student_arg_changes_the_student_shape_and_nothing_else(preset, default, other, dims):
    """student=<shape> sets layers/width/heads/FFN and leaves every other field as the preset's
    (teacher, corpus, budget, optimizer, seed, objectives, fine-tuning recipe); the default shape's
    configs, and so the committed records' identities, are those of the preset without the arg."""
    from configs import study
    from studies.identity import digest, method_identity

    base, same, narrow = (study.get_config(f"preset={preset}{a}") for a in ("", f",student={default}",
                                                                            f",student={other}"))
    assert same.to_dict() == base.to_dict()
    s = narrow.distill.student
    assert (s.num_layers, s.hidden_size, s.num_heads, s.intermediate_size) == dims
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "distill"} | {  # noqa: E731
        "distill": {k: v for k, v in c.distill.to_dict().items() if k != "student"}}
    assert strip(narrow) == strip(base)
    rest = ("num_layers", "hidden_size", "num_heads", "intermediate_size")
    assert ({k: v for k, v in s.to_dict().items() if k not in rest}
            == {k: v for k, v in base.distill.student.to_dict().items() if k not in rest})
    for method in ("none", "minilmv2_last", "hs_uniform_cons"):   # another shape, other records
        assert digest(method_identity(narrow, method)) != digest(method_identity(base, method))
    assert method_identity(narrow, "teacher") == method_identity(base, "teacher")
    with pytest.raises(ValueError, match=f"student='2x64': the {preset} preset's students are {default}, {other}"):
        study.get_config(f"preset={preset},student=2x64")


def test_every_method_of_the_narrow_cpu_student_builds_against_the_teacher():
    """At 3x192 under the 6x384 teacher: MiniLMv2's 48 relation heads split 192 into 4 dims, HS
    learns 192 -> 384 projections (one per mapped student layer), MiniLM v1 has 12 heads on both."""
    import jax

    from configs import study
    from distill_jax.losses import build_objective
    from distill_jax.losses.hs import init_hs_projections
    from distill_jax.losses.layer_maps import layer_map
    from distill_jax.models import EncoderConfig

    config = study.get_config("preset=cpu,student=3x192")
    teacher = EncoderConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
    for method, objective in config.method_objectives.items():
        build_objective(objective, config.distill.student, teacher)   # raises on a misfit
    pairs = layer_map("uniform", 3, 6)
    projections = init_hs_projections(jax.random.key(0), pairs, 192, 384)
    assert len(projections) == 3 and {p["kernel"].shape for p in projections.values()} == {(192, 384)}


def test_a_report_dir_holds_one_student_shape(tmp_path):
    """Records of one shape never overwrite another's: a dir marked for 3x384 (as docs/study is)
    refuses the 3x192 study before anything runs; a dir with records and no marker is refused too."""
    from configs import study
    from studies.checks import STUDENT_MARKER, check_report_shape

    wide, narrow = study.get_config("preset=cpu"), study.get_config("preset=cpu,student=3x192")
    check_report_shape(narrow, str(tmp_path / "new"), write=True)
    check_report_shape(narrow, str(tmp_path / "new"), write=False)
    with pytest.raises(ValueError, match=r"holds the records of student .*'hidden_size': 192.* docs/study_3x384"):
        check_report_shape(wide, str(tmp_path / "new"), write=True)
    repo = Path(__file__).resolve().parents[1]
    for committed in ("study", "study_4000"):   # the committed 3x384 dirs are marked as such
        check_report_shape(wide, str(repo / "docs" / committed), write=False)
        with pytest.raises(ValueError, match="give each shape its own report dir"):
            check_report_shape(narrow, str(repo / "docs" / committed), write=False)
    (tmp_path / "old" / "records").mkdir(parents=True)
    (tmp_path / "old" / "records" / "distill__none.json").write_text("{}")
    with pytest.raises(ValueError, match=f"holds records but no {STUDENT_MARKER}"):
        check_report_shape(narrow, str(tmp_path / "old"), write=True)
    assert not (tmp_path / "old" / STUDENT_MARKER).exists()


def test_committed_records_and_docs_name_models_and_data_portably():
    """Records and generated docs read the same on every machine: no absolute path (a venv's
    site-packages, a home directory's workdir, the workspace's data folder). model_spec names the
    teacher by its id and a student by its export relative to the study's workdir (the migration of
    the earlier records rewrote only that field: the fingerprints test above still passes)."""
    from configs import study
    from studies.identity import portable_model_spec

    repo = Path(__file__).resolve().parents[1]
    config = study.get_config("preset=cpu")
    assert portable_model_spec(config, "teacher") == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_model_spec(config, "od") == "distill/od/export"
    files = ([p for p in (repo / "docs").rglob("*") if p.suffix in (".json", ".md", ".csv")]
             + [repo / "README.md", repo / "BUILD_NOTES.md"])
    for path in files:
        text = path.read_text()
        for bad in ('"/root/', '"/home/', '"/work/', "(/work/", "(/root/"):
            assert bad not in text, f"{path.relative_to(repo)} holds a machine path ({bad!r})"
    for path in (repo / "docs").glob("study*/records/*__seed*.json"):
        record = json.loads(path.read_text())
        assert record["model_spec"] == portable_model_spec(config, record["method"]), path.name


def test_write_docs_shapes_block_puts_each_method_at_each_shape(tmp_path):
    """The shapes table: the teacher once, each method per student shape, SST-2 from the
    summaries, zero-shot and cost from the report's zero_shot_and_cost rows, '–' where missing."""
    from studies import write_docs

    def shape_dir(root, shape, rows, sst2):
        root.mkdir(parents=True)
        labels = {"teacher": "teacher", "none": "random init", "hs": "HS"}
        summaries = [{"row": labels[m], "task": "sst2", "median_score": v[1], "min_score": v[0], "max_score": v[2]}
                     for m, v in sst2.items()]
        (root / "study_results.json").write_text(json.dumps(
            {"tasks": ["sst2"], "methods": list(labels), "labels": labels, "summaries": summaries,
             "student_shape": shape, "zero_shot_and_cost": rows}))

    cost = {"params_total": 11_000_000, "latency_32x128_ms": 100.0, "speedup_32x128": 2.0}
    shape_dir(tmp_path / "wide", "3x384", [{"method": "teacher", "shape": "6x384", "stsb_spearman": 86.7,
                                            "params_total": 22_565_376, "latency_32x128_ms": 200.0,
                                            "speedup_32x128": 1.0},
                                           {"method": "hs", "shape": "3x384", "stsb_spearman": 70.0} | cost],
              {"teacher": [.83, .84, .85], "hs": [.78, .79, .80]})
    shape_dir(tmp_path / "narrow", "3x192", [{"method": "teacher", "shape": "6x384", "stsb_spearman": 86.7}],
              {"teacher": [.83, .84, .85], "none": [.5, .6, .7]})
    block = write_docs.shapes_block([str(tmp_path / "wide"), str(tmp_path / "narrow")])
    assert block.splitlines()[2:] == [
        "| teacher | 6x384 | 84.0 (83.0–85.0) | 86.7 | 22.6 | 200 | 1.00 |",
        "| HS | 3x384 | 79.0 (78.0–80.0) | 70.0 | 11.0 | 100 | 2.00 |",
        "| random init | 3x192 | 60.0 (50.0–70.0) | – | – | – | – |"]
