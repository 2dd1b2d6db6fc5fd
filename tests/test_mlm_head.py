"""The MLM-head fit (distill_jax/mlm_head.py) on a tiny headless BERT with the real WordPiece tokenizer.

Checked against independent references:
  * the fitted head raises masked-token accuracy and lowers perplexity on held-out text;
  * the encoder stays frozen: every encoder tensor of the export equals the teacher's, bit for bit;
  * the export loads in transformers (PyTorch) as BertForMaskedLM with no missing weights, and its
    logits equal ours within 1e-4; accuracy and perplexity recomputed from the PyTorch logits equal
    what the fit reported;
  * OD on a headless teacher is refused with one line that points at this mode.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tiny_models import save_tiny_bert


@pytest.fixture(scope="module")
def headless_teacher(tmp_path_factory) -> Path:
    """A random 2x32 BertModel without an MLM head (like sentence-transformers checkpoints)."""
    return save_tiny_bert(tmp_path_factory.mktemp("headless_teacher"), num_layers=2, hidden_size=32, num_heads=2,
                          intermediate_size=64, with_mlm_head=False)


HELD_OUT = """The river runs through the old town and under three stone bridges before it reaches the sea.
In the spring the market in the main square sells flowers, bread and cheese from the farms nearby.
Most of the houses were built in the nineteenth century, when the port was one of the busiest in the country.
The museum has a small collection of paintings and a large number of maps of the coast.
A railway line was opened in 1870 and the station is still in use today.
The town has two schools, a hospital and a library that is open every day of the week.
Visitors can walk along the walls of the castle, which give a good view of the harbour.
The local football club was founded in 1902 and plays its home games in a park by the river.
"""


def fit_config(teacher: Path, cache_dir: str, eval_text: Path, steps: int = 40):
    from configs import fit_mlm_head

    c = fit_mlm_head.get_config("runlocal")
    c.teacher.name = str(teacher)
    c.data.max_documents = 60            # builtin corpus: Python's own documentation
    c.data.cache_dir = c.eval_data.cache_dir = cache_dir
    c.data.seq_len = c.eval_data.seq_len = 32
    c.data.mlm.max_predictions = c.eval_data.mlm.max_predictions = 5
    # Held-out evaluation text (never trained on): plain English prose, one document per line.
    eval_text.write_text(HELD_OUT * 4)
    c.eval_data.source, c.eval_data.paths, c.eval_data.doc_split = "text", str(eval_text), "line"
    c.batch_size = c.eval_batch_size = 16
    c.total_steps = steps
    # A fresh head on a random 32-wide encoder learns mostly token frequencies (the output bias):
    # a high rate shows the effect within 40 steps.
    c.optim.learning_rate = 5e-2
    c.optim.warmup_steps = 2
    c.log_every = 10
    c.checkpoint_every = 20
    c.max_eval_batches = 0
    return c


def test_fit_raises_accuracy_and_exports_a_frozen_teacher_with_head(headless_teacher, tmp_path):
    import torch
    import transformers

    from distill_jax.mlm_head import fit_mlm_head
    from distill_jax.models.hf_io import has_mlm_head, read_checkpoint

    assert not has_mlm_head(headless_teacher)
    config = fit_config(headless_teacher, str(tmp_path / "cache"), tmp_path / "held_out.txt")
    record = fit_mlm_head(config, str(tmp_path / "fit"))
    before, after = record["before"], record["after"]
    assert after["accuracy"] > before["accuracy"] + 2.0, (before, after)
    assert after["perplexity"] < 0.5 * before["perplexity"], (before, after)
    assert record["history"][-1]["loss"] < record["history"][0]["loss"]

    export = Path(record["export_dir"])
    assert has_mlm_head(export)
    original, fitted = read_checkpoint(headless_teacher), read_checkpoint(export)
    encoder_names = [k for k in fitted if not k.startswith("cls.")]
    assert len(encoder_names) > 30
    for name in encoder_names:
        source = original.get(name, original.get(name.removeprefix("bert.")))
        np.testing.assert_array_equal(fitted[name], source, err_msg=name)

    # transformers loads the export as a masked LM; its logits are ours.
    hf = transformers.AutoModelForMaskedLM.from_pretrained(export)
    assert type(hf).__name__ == "BertForMaskedLM"
    hf.eval()
    from distill_jax.models import load_pretrained
    ours, _, report = load_pretrained(export)
    assert sorted(report.missing) == ["pooler.dense.bias", "pooler.dense.weight"]  # *ForMaskedLM: no pooler
    tok = transformers.AutoTokenizer.from_pretrained(export)
    batch = tok(["The cat sat on the mat.", "A second, longer sentence for the masked head."],
                padding=True, return_tensors="np")
    with torch.no_grad():
        theirs = hf(**{k: torch.as_tensor(v) for k, v in batch.items()}).logits.numpy()
    mine = np.asarray(ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           output_mlm_logits=True).mlm_logits)
    keep = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(mine[keep], theirs[keep], atol=1e-4, rtol=1e-4)

    # The reported accuracy / perplexity, recomputed from PyTorch logits on the same masked batches.
    c = config
    from distill_jax import data as data_lib
    from distill_jax.mlm_head import _eval_batches
    batches = _eval_batches(c, data_lib.DataConfig.from_config(c.eval_data, "eval_data"),
                            data_lib.load_tokenizer(str(export)))
    ce_sum = correct = count = 0.0
    for b in batches:
        with torch.no_grad():
            logits = hf(input_ids=torch.as_tensor(b["input_ids"]), attention_mask=torch.as_tensor(b["attention_mask"]),
                        token_type_ids=torch.as_tensor(b["token_type_ids"])).logits.double()
        picked = logits[torch.arange(len(b["input_ids"]))[:, None], torch.as_tensor(b["mlm_positions"])]
        logp = torch.log_softmax(picked, -1)
        ids = torch.as_tensor(b["mlm_ids"]).long()
        w = torch.as_tensor(b["mlm_weights"]).double()
        ce_sum += float(-(logp.gather(-1, ids[..., None])[..., 0] * w).sum())
        correct += float(((picked.argmax(-1) == ids).double() * w).sum())
        count += float(w.sum())
    assert after["positions"] == int(count)
    assert after["accuracy"] == pytest.approx(100 * correct / count, abs=1e-6)
    assert after["perplexity"] == pytest.approx(np.exp(ce_sum / count), rel=1e-4)

    # A rerun of a finished fit changes nothing.
    again = fit_mlm_head(c, str(tmp_path / "fit"))
    assert again == json.loads((tmp_path / "fit" / "fit_record.json").read_text())


@pytest.mark.slow
def test_fit_resumes_from_its_checkpoint(headless_teacher, tmp_path, capsys):
    """A fit killed after its step-20 checkpoint (of 40) continues to the uninterrupted result."""
    from distill_jax.mlm_head import fit_mlm_head

    config = fit_config(headless_teacher, str(tmp_path / "cache"), tmp_path / "held_out.txt")
    workdir = tmp_path / "fit"
    full = fit_mlm_head(config, str(workdir))
    # What a kill right after the step-20 save leaves: no step-40 checkpoint, no record, no export.
    shutil.rmtree(workdir / "checkpoints" / "40")
    (workdir / "fit_record.json").unlink()
    shutil.rmtree(workdir / "export")
    capsys.readouterr()
    resumed = fit_mlm_head(config, str(workdir))
    assert "resumed from checkpoint step 20" in capsys.readouterr().out
    assert resumed["before"] == full["before"]
    assert resumed["history"] == full["history"]
    assert resumed["after"]["accuracy"] == pytest.approx(full["after"]["accuracy"], abs=1e-9)
    assert resumed["after"]["perplexity"] == pytest.approx(full["after"]["perplexity"], rel=1e-6)


def test_od_on_a_headless_teacher_points_at_the_fit_mode(headless_teacher, tmp_path):
    from configs import common
    from distill_jax.train import run_training

    c = common.runlocal(common.base_config())
    c.teacher.name = str(headless_teacher)
    c.student.num_layers, c.student.hidden_size, c.student.num_heads, c.student.intermediate_size = 1, 16, 2, 32
    c.objective = {"od": {"weight": 1.0}}
    with pytest.raises(ValueError, match=r"has no MLM head, which objective.od needs.*configs/fit_mlm_head.py"):
        run_training(c, str(tmp_path / "od"))
    assert not (tmp_path / "od" / "checkpoints").exists()
