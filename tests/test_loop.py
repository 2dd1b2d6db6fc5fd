"""The loop toolkit (distill_jax/loop.py) the three training loops share: cadence, rate and ETA
against a fake clock, the finite-loss policy's one line, the history rows and their file."""

from __future__ import annotations

import math

import pytest

from distill_jax import loop


def test_log_due_every_n_the_last_and_the_first_step():
    due = [s for s in range(1, 11) if loop.log_due(s, 4, 10)]
    assert due == [4, 8, 10]
    assert [s for s in range(6, 11) if loop.log_due(s, 4, 10, first_step=6)] == [6, 8, 10]
    assert not any(loop.log_due(s, 0, 10) for s in range(1, 11))  # 0 = never (finetune: per epoch only)


def test_progress_rate_over_the_interval_and_eta_over_the_run(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    progress = loop.Progress(total_steps=100, start_step=20)   # a resumed run: 80 steps to go
    clock[0] = 110.0                                            # 10 steps in 10 s
    assert progress.report(30) == {"steps_per_sec": 1.0, "eta_s": 70.0}
    clock[0] = 130.0                                            # a 20 s save: the rate leaves it out ...
    progress.reset(30)
    clock[0] = 135.0                                            # ... 10 steps in 5 s
    rates = progress.report(40)
    assert rates["steps_per_sec"] == 2.0
    assert rates["eta_s"] == pytest.approx(35.0 / 20 * 60)      # ... the ETA counts it: 20 steps in 35 s
    assert progress.report(40) == {}                            # no step since the last report
    assert loop.Progress(10).eta_s(0) is None


def test_progress_line_and_duration():
    line = loop.progress_line(40, 100, ["loss 1.2500", "lr 1.00e-04"], {"steps_per_sec": 1.614, "eta_s": 3725.9})
    assert line == "step 40/100 (40%) | loss 1.2500 | lr 1.00e-04 | 1.61 steps/s | ETA 1h02m05s"
    assert loop.progress_line(1, 3, ["loss 2.0000"], {}) == "step 1/3 (33%) | loss 2.0000"
    assert loop.format_duration(125.9) == "2m05s" and loop.format_duration(-3) == "0m00s"


def test_the_finite_loss_policy_names_the_term_the_step_and_the_fix():
    assert loop.first_non_finite({"loss": 1.0, "grad_norm": 0.5, "terms/hs": 0.2}) is None
    # The term is the cause (the total only inherits it): it is named first.
    assert loop.first_non_finite({"loss": math.nan, "grad_norm": math.inf, "terms/hs": math.nan}) == "terms/hs"
    assert loop.first_non_finite({"loss": math.nan, "grad_norm": math.inf}) == "grad_norm"
    loop.check_finite(3, {"loss": 0.7}, hint="lower the learning rate")
    with pytest.raises(loop.Diverged) as info:
        loop.check_finite(7, {"loss": float("nan")}, hint="lower the learning rate", run="tiny sst2 lr=1 seed=0")
    assert str(info.value) == ("training diverged: non-finite loss at step 7 of tiny sst2 lr=1 seed=0; "
                               "lower the learning rate")
    assert isinstance(info.value, FloatingPointError)   # the commands' one-line error, exit 1


def test_history_rows_and_their_file(tmp_path):
    import numpy as np

    row = loop.history_row(5, {"loss": np.float32(0.5), "loss/hs": 0.25, "perf/steps_per_sec": 3.0})
    assert row == {"step": 5, "loss": 0.5, "loss/hs": 0.25} and type(row["loss"]) is float
    path = str(tmp_path / "checkpoints" / "history.json")
    rows = [loop.history_row(s, {"loss": 1.0 / s}) for s in (1, 2, 4, 6)]
    loop.write_history(path, rows)
    assert loop.read_history(path) == rows
    assert loop.read_history(path, until_step=4) == rows[:3]   # rows of a checkpoint moved aside
    assert loop.read_history(str(tmp_path / "missing.json")) == []
