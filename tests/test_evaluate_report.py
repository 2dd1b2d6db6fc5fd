"""Summaries over epochs, seeds and learning rates, and the table / CSV / chart outputs."""

import csv
import json
import os

import numpy as np
import pytest

from distill_jax.evaluate import report
from distill_jax.evaluate.tasks import TASKS


def _run(lr, seed, accs, model="m", task="rte"):
    epochs = [{"epoch": i + 1, "train_loss": 0.5, "dev": {"dev": {"acc": a}}, "score": a, "seconds": 1.0}
              for i, a in enumerate(accs)]
    best = max(epochs, key=lambda e: (e["score"], -e["epoch"]))
    return {"model": model, "task": task, "learning_rate": lr, "seed": seed, "train_rows": 100,
            "steps_per_epoch": 3, "epochs": epochs, "seconds": 10.0, "best_epoch": best["epoch"],
            "best_score": best["score"]}


def test_summary_picks_best_epoch_median_seed_and_best_lr():
    runs = [
        # lr 1e-4: best epochs 0.60 (ep 2), 0.70 (ep 1), 0.62 (ep 3) -> median 0.62
        _run(1e-4, 0, [0.55, 0.60, 0.58]), _run(1e-4, 1, [0.70, 0.65, 0.60]), _run(1e-4, 2, [0.50, 0.52, 0.62]),
        # lr 5e-5: best 0.64, 0.61, 0.66 -> median 0.64 (wins)
        _run(5e-5, 0, [0.64, 0.63, 0.60]), _run(5e-5, 1, [0.61, 0.61, 0.60]), _run(5e-5, 2, [0.60, 0.66, 0.65]),
    ]
    s = report.summarise_runs(runs)
    assert s["per_lr"][1e-4]["median"] == pytest.approx(0.62)
    assert s["best_lr"] == 5e-5
    assert (s["median_score"], s["min_score"], s["max_score"]) == pytest.approx((0.64, 0.61, 0.66))
    assert s["best_epochs"] == [1, 1, 2]  # the tie in seed 1 goes to the earlier epoch
    assert s["metrics"]["dev"]["acc"] == pytest.approx(0.64)
    assert s["n_seeds"] == 3 and s["seconds"] == pytest.approx(60.0)


def test_majority_baseline():
    # MRPC-like: train mostly positive, dev 3 positive of 4 -> acc 0.75, F1 = 6 / (6 + 1) ; score mean
    s = report.majority_baseline(TASKS["mrpc"], np.array([1, 1, 0]), {"dev": np.array([1, 1, 1, 0])})
    assert s["metrics"]["dev"] == pytest.approx({"f1": 6 / 7, "acc": 0.75})
    assert s["median_score"] == pytest.approx((6 / 7 + 0.75) / 2)
    cola = report.majority_baseline(TASKS["cola"], np.array([1, 1, 0]), {"dev": np.array([1, 0, 0])})
    assert cola["metrics"]["dev"]["mcc"] == 0.0


def test_outputs_table_csv_json_png(tmp_path):
    summaries = {("m", "rte"): report.summarise_runs([_run(1e-4, 0, [0.6]), _run(1e-4, 1, [0.7])]),
                 ("m", "mrpc"): report.majority_baseline(TASKS["mrpc"], np.array([1]), {"dev": np.array([1, 0])}),
                 ("ref", "rte"): report.summarise_runs([_run(1e-4, 0, [0.5], model="ref")])}
    paths = report.write_outputs(str(tmp_path), "t", ["rte", "mrpc"], ["m", "ref"], summaries, "notes\n",
                                 {"k": 1})
    table = open(paths["md"]).read()
    assert "| model | RTE acc | MRPC f1/acc | mean score |" in table
    # RTE median of (0.6, 0.7) = 65.0 with spread; MRPC majority f1 2/3, acc 1/2; mean of 0.65 and 7/12
    assert "| m | 65.0 (60.0–70.0) | 66.7/50.0 | 61.7 |" in table
    assert "| ref | 50.0 | – | – |" in table and table.endswith("notes\n")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [(r["model"], r["task"]) for r in rows] == [("m", "rte"), ("m", "mrpc"), ("ref", "rte")]
    assert float(rows[0]["dev_acc"]) == pytest.approx(0.65)
    assert json.load(open(paths["json"])) == {"k": 1}
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["png"]) < 200_000
