"""config.eval.stsb_every: the trainer scores the student zero-shot on STS-B while it distils,
logged like the loss terms (history, TensorBoard, summary). Checked on a tiny run against the same
score computed afresh from the exported student (distill_jax/evaluate/stsb.py's directory path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_evaluate_stsb import _write_stsb
from tiny_models import save_tiny_bert


def _config(teacher: Path, glue_dir: Path, cache: str):
    from configs import common

    c = common.base_config()
    c.teacher.name = str(teacher)
    s = c.student
    s.num_layers, s.hidden_size, s.num_heads, s.intermediate_size = 2, 16, 2, 32
    c.objective.hs = dict(weight=1.0, map="uniform_cons")
    c.data.source, c.data.max_documents, c.data.seq_len, c.data.cache_dir = "builtin", 40, 32, cache
    c.batch_size, c.total_steps, c.log_every, c.checkpoint_every = 8, 4, 1, 4
    c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 1
    c.eval.stsb_every, c.eval.glue_dir = 2, str(glue_dir)
    return c


@pytest.mark.slow
def test_stsb_every_logs_the_students_score_like_a_loss_term(tmp_path):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distill_jax.evaluate import stsb
    from distill_jax.evaluate.during_training import STSB_KEY
    from distill_jax.train import run_training

    teacher = save_tiny_bert(tmp_path / "teacher", num_layers=4, hidden_size=32, num_heads=4, intermediate_size=64,
                             with_mlm_head=False)
    glue_dir = tmp_path / "glue"
    _write_stsb(glue_dir)
    workdir = tmp_path / "run"
    result = run_training(_config(teacher, glue_dir, str(tmp_path / "cache")), str(workdir))

    history = json.loads((workdir / "checkpoints" / "history.json").read_text())   # the resumable curve
    scored = {row["step"]: row[STSB_KEY] for row in history if STSB_KEY in row}
    events = EventAccumulator(str(workdir / "tensorboard")).Reload()   # scalars, the documented way
    logged = {e.step: e.value for e in events.Scalars(STSB_KEY)}
    assert sorted(logged) == [2, 4], logged          # every 2 steps (and the last), not at 1 and 3
    assert scored == pytest.approx(logged)
    # The last score is the exported student's, computed again from its directory.
    again = stsb.zero_shot_stsb_dir(str(workdir / "export"), str(glue_dir), max_len=128)
    assert logged[4] == pytest.approx(again["spearman"], abs=1e-3)
    assert result.summary["eval_last_logged"][STSB_KEY] == pytest.approx(logged[4])
    assert result.summary["eval_first_logged"][STSB_KEY] == pytest.approx(logged[2])


def test_stsb_every_not_a_multiple_of_log_every_is_one_line(tmp_path):
    from distill_jax.evaluate import during_training

    config = _config(tmp_path, tmp_path, str(tmp_path))
    config.log_every, config.eval.stsb_every = 2, 3
    with pytest.raises(ValueError, match=r"config.eval.stsb_every=3 must be a multiple of config.log_every=2"):
        during_training.check(config)
    config.eval.stsb_every = 0
    assert during_training.build(config, None, str(tmp_path))(4, None) == {}   # off: nothing read, nothing logged
