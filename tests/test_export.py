"""The run's export (distill_jax/export.py) checked with the clients users load it with: the real
sentence-transformers (module stack, pooling, Normalize, max_seq_length), transformers'
AutoModelForMaskedLM (no UNEXPECTED tensors), huggingface_hub's ModelCard (the metadata header),
and the file modes another user of a shared disk needs."""

import json
import os
import stat
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import quickstart
from distill_jax import export as export_lib
from distill_jax import models
from tiny_models import offline_teacher_dir, save_tiny_bert

SEQ_LEN = 64  # the quickstart's trained length; ST's max_seq_length must become this (not 256/512)
SENTENCES = ["a tiny example", "a longer second example sentence about distillation",
             " ".join(["the student truncates this long sentence at the trained length"] * 12)]


def _summary(teacher: str, student_layers: int, hidden: int) -> dict:
    """A run summary as train._summary writes it, from the real quickstart recipe."""
    config = quickstart.get_config("steps=10").to_dict()
    config["teacher"]["name"] = teacher
    config["student"].update(num_layers=student_layers, hidden_size=hidden)
    return {"config": config, "command": "python main.py --config=configs/quickstart.py:steps=10 --workdir=w",
            "steps": {"final": 10, "total": 10, "this_run": 10, "resumed_from": 0},
            "loss_last_logged": {"loss": 0.1234, "loss/minilmv2": 0.1234}}


@pytest.fixture(scope="module")
def st_export(tmp_path_factory):
    """A 2-layer MLM student of the real all-MiniLM-L6-v2 (a sentence-transformers model), exported."""
    teacher_dir = offline_teacher_dir()
    teacher, cfg, _ = models.load_pretrained(teacher_dir)
    student = models.make_student(cfg, num_layers=2, init="teacher", teacher_model=teacher,
                                  with_mlm_head=True, rngs=nnx.Rngs(0))
    out = tmp_path_factory.mktemp("run") / "export"
    facts = export_lib.export_student(student, str(out), teacher_dir=str(teacher_dir),
                                      summary=_summary("sentence-transformers/all-MiniLM-L6-v2", 2, 384))
    return out, student, facts


def _our_embeddings(export: Path) -> np.ndarray:
    """Mean-pooled (over real tokens), L2-normalized last hidden states of our Flax encoder."""
    from transformers import AutoTokenizer

    model, _, report = models.load_pretrained(export)
    assert not report.unexpected
    tok = AutoTokenizer.from_pretrained(export)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=SEQ_LEN, return_tensors="np")
    assert enc["input_ids"].shape[1] == SEQ_LEN  # the long sentence was cut at the trained length
    h = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).hidden_states[-1]
    mask = jnp.asarray(enc["attention_mask"], jnp.float32)[..., None]
    pooled = (h * mask).sum(1) / mask.sum(1)
    return np.asarray(pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True))


def test_sentence_transformers_loads_the_stack_and_matches_our_embeddings(st_export):
    from sentence_transformers import SentenceTransformer

    out, _, facts = st_export
    assert facts["sentence_transformers"][-1].endswith("Normalize")
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == SEQ_LEN
    names = [type(module).__name__ for module in st]
    assert names == ["Transformer", "Pooling", "Normalize"], names
    assert st[1].pooling_mode == "mean" and st.get_embedding_dimension() == 384
    theirs = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    np.testing.assert_allclose(theirs, _our_embeddings(out), atol=1e-5)


def test_mlm_export_has_no_unexpected_tensors_and_a_readable_card(st_export):
    import transformers
    from huggingface_hub import ModelCard

    out, _, _ = st_export
    _, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"], info

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.library_name == "sentence-transformers" and card.data.license == "apache-2.0"
    assert {"distill_jax", "distillation", "sentence-transformers"} <= set(card.data.tags)
    text = card.text
    for fact in ("2 layers x 384 hidden", "`minilmv2`: weight 1.0", "10 of batch 32 x 64 tokens = 20,480 tokens",
                 "builtin corpus", "`loss` 0.1234", "python main.py --config=configs/quickstart.py:steps=10",
                 "mean pooling, L2-normalized", f"SentenceTransformer({str(out)!r})"):
        assert fact in text, fact
    assert "## Evaluation" not in text  # no numbers were given


def test_tokenizer_names_the_student_and_every_file_is_world_readable(st_export):
    out, _, _ = st_export
    assert json.loads((out / "tokenizer_config.json").read_text())["name_or_path"] == str(out)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert modes["model.safetensors"] == 0o644 and modes["1_Pooling"] == 0o755
    assert all(m == (0o755 if (out / p).is_dir() else 0o644) for p, m in modes.items()), modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_a_plain_teacher_gives_a_transformers_card_with_evaluation_and_the_export_is_atomic(tmp_path, monkeypatch):
    teacher_dir = save_tiny_bert(tmp_path / "teacher", num_layers=2, hidden_size=32, num_heads=2,
                                 intermediate_size=64, with_mlm_head=False)
    teacher, cfg, _ = models.load_pretrained(teacher_dir)
    student = models.make_student(cfg, num_layers=1, init="teacher", teacher_model=teacher, rngs=nnx.Rngs(0))
    summary = _summary(str(teacher_dir), 1, 32)
    out = tmp_path / "run" / "export"
    facts = export_lib.export_student(student, str(out), teacher_dir=str(teacher_dir), summary=summary,
                                      evaluation={"GLUE sst2 acc": 0.5})
    assert "no modules.json" in facts["sentence_transformers"] and not (out / "modules.json").exists()
    readme = (out / "README.md").read_text()
    assert "library_name: transformers" in readme and "| GLUE sst2 acc | 0.5000 |" in readme
    assert "base_model" not in readme and f"`{teacher_dir}`" in readme  # a path is no hub id

    # A failing rewrite leaves the previous export whole and no staging directory behind.
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(export_lib.model_card, "render_model_card", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            export_lib.export_student(student, str(out), teacher_dir=str(teacher_dir), summary=summary)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(out.parent)) == ["export"]
    # A successful rewrite replaces it whole.
    export_lib.export_student(student, str(out), teacher_dir=str(teacher_dir), summary=summary)
    assert "## Evaluation" not in (out / "README.md").read_text()
    assert sorted(os.listdir(out.parent)) == ["export"]

    # Numbers measured later (the study's fine-tunes) go into the card alone: weights untouched.
    weights = (out / "model.safetensors").read_bytes()
    export_lib.rewrite_model_card(str(out), summary, {"GLUE sst2 dev (mean of 3 runs)": 0.8125})
    readme = (out / "README.md").read_text()
    assert "| GLUE sst2 dev (mean of 3 runs) | 0.8125 |" in readme and "library_name: transformers" in readme
    assert (out / "model.safetensors").read_bytes() == weights
    assert stat.S_IMODE((out / "README.md").stat().st_mode) == 0o644
    assert sorted(os.listdir(out)) == sorted(before)   # no temporary left beside the card


def test_a_gs_export_is_copied_then_marked_complete(tmp_path):
    from fake_gcs import fake_gcs

    teacher_dir = save_tiny_bert(tmp_path / "teacher", num_layers=1, hidden_size=32, num_heads=2,
                                 intermediate_size=64, with_mlm_head=False)
    teacher, cfg, _ = models.load_pretrained(teacher_dir)
    student = models.make_student(cfg, num_layers=1, init="teacher", teacher_model=teacher, rngs=nnx.Rngs(0))
    with fake_gcs(str(tmp_path / "root")) as root:
        export_lib.export_student(student, "gs://bucket/run/export", teacher_dir=str(teacher_dir),
                                  summary=_summary(str(teacher_dir), 1, 32))
        written = Path(root) / "bucket" / "run" / "export"
        assert (written / export_lib.COMPLETE_MARKER).is_file()
        assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(os.listdir(written))
        name = json.loads((written / "tokenizer_config.json").read_text())["name_or_path"]
        assert name == "gs://bucket/run/export"
    loaded, _, report = models.load_pretrained(written)
    assert not report.missing and not report.unexpected


def test_the_documented_push_command_matches_the_installed_hf_cli():
    """docs/export.md's `hf upload <user>/<repo-name> <export>`: huggingface_hub's CLI takes REPO_ID then
    LOCAL_PATH (checked offline against its own usage line; the upload itself needs the hub)."""
    import re
    import shutil
    import subprocess
    import sys

    from doc_blocks import page_text

    documented = re.search(r"^hf upload (\S+) (\S+)", page_text("docs/export.md"), re.MULTILINE)
    assert documented and documented.group(1) == "<user>/<repo-name>"
    assert documented.group(2).endswith("/export")
    hf = shutil.which("hf") or str(Path(sys.executable).parent / "hf")  # the venv's own
    usage = subprocess.run([hf, "upload", "--help"], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, HF_HUB_OFFLINE="1")).stdout
    assert re.search(r"Usage: hf upload \[OPTIONS\] REPO_ID \[LOCAL_PATH\]", usage), usage[:300]
