"""The benchmark: the PyTorch baseline computes the same objective as the JAX step on the same
weights, and `python -m benchmarks` runs end to end on a tiny config and writes valid JSON."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks import jax_step
from benchmarks.cases import make_case, synthetic_batch
from benchmarks.torch_baseline import TorchDistillStep, torch_batch
from distill_jax.flops import Shape

TINY_TEACHER = Shape(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, vocab_size=500)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("objective", ["minilmv2", "hs", "od"])
def test_torch_baseline_loss_equals_jax_objective_on_same_weights(objective, tmp_path):
    from distill_jax.models import export_pretrained

    case = make_case(objective, "tiny", "2x32", 2, 16, relation_heads=4, teacher_shape=TINY_TEACHER)
    batch_np = synthetic_batch(case)
    batch_np["attention_mask"][1, 11:] = 0  # padding must be handled alike on both sides
    built = jax_step.build_step(case, batch_np)  # through train.py's builder
    teacher, student = built.models()
    objective_fn = built.setup.objective
    aux = built.state["params"]["aux"]
    inputs = (batch_np["input_ids"], batch_np["attention_mask"], batch_np["token_type_ids"])
    heads = dict(student_mlm_head=student.mlm_logits, teacher_mlm_head=teacher.mlm_logits) \
        if objective == "od" else {}
    jax_loss, _ = objective_fn(aux, student(*inputs), teacher(*inputs), batch_np, **heads)

    export_pretrained(teacher, tmp_path / "teacher")
    export_pretrained(student, tmp_path / "student")
    step = TorchDistillStep(dataclasses.replace(case, teacher_dir=str(tmp_path / "teacher")),
                            student_dir=str(tmp_path / "student"))
    if objective == "hs":  # the HS projections: the JAX objective's initial ones
        for proj, (s_layer, _) in zip(step.projections, case.hs_pairs()):
            p = aux["hs"][f"layer_{s_layer}"]
            proj.weight.data = torch.from_numpy(np.asarray(p["kernel"]).T.copy())
            proj.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())
    torch_loss = float(step.loss(torch_batch(batch_np)).detach())
    assert float(jax_loss) > 0
    # float32 on both sides; different summation orders (XLA vs MKL/SDPA) -> a few ulps of drift.
    np.testing.assert_allclose(torch_loss, float(jax_loss), rtol=2e-4, atol=1e-6)


def test_cli_runs_tiny_matrix_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "DISTILL_JAX_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "benchmarks", "--objective=minilmv2", "--teacher=2x64",
           "--student=1x32", "--vocab=500", "--relation_heads=4", "--batch=2", "--seq_len=16",
           "--steps=2", "--warmup=1", "--torch=eager", "--peak_n=256", "--data_max_documents=8",
           f"--out={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours/theirs" in proc.stdout  # the console table
    payload = json.loads(out.read_text())
    assert payload["peak"]["jax"]["flops_per_s"] > 0 and payload["peak"]["torch"]["flops_per_s"] > 0
    assert payload["gpu"].startswith("not measured")
    assert [r["case"]["objective"] for r in payload["results"]] == ["minilmv2"]
    for r in payload["results"]:
        jx, th = r["jax"], r["torch_eager"]
        assert jx["steps_timed"] == 2 and th["steps_timed"] == 2
        assert jx["compile_s"] > 0 and jx["memory"]["peak_bytes"] > 0
        assert 0 < jx["mfu"] < 1 and np.isfinite(r["jax_final_loss"])
        assert r["ratio_jax_over_torch_eager"] == pytest.approx(jx["tokens_per_s"] / th["tokens_per_s"])
        assert r["case"]["flops_per_step"]["total"] > 0 and jx["xla_flops_per_step"] > 0
        assert r["data"]["tokens_per_s"] > 0, r["data"]


def test_bad_flags_fail_with_one_line_naming_the_flag():
    from benchmarks.__main__ import build_cases, parse_args

    with pytest.raises(ValueError, match="--objective='kd'"):
        build_cases(parse_args(["--objective=kd"]))
    with pytest.raises(ValueError, match="--student='6by384'"):
        build_cases(parse_args(["--student=6by384"]))
    with pytest.raises(ValueError, match="--relation_heads=5"):
        build_cases(parse_args(["--relation_heads=5"]))
    with pytest.raises(SystemExit):
        parse_args(["--torch=jit"])


def test_case_geometry():
    case = make_case("od", "bert-base", "6x384", 32, 512)
    assert case.mlm_positions == 77  # ceil(0.15 * 512), BERT's max_predictions_per_seq is 76-80
    assert case.student_shape == Shape(6, 384, 12, 1536, 30522)
    # uniform_cons 12 -> 6: consecutive teacher blocks of 2.
    assert make_case("hs", "bert-base", "6x384", 2, 8).hs_pairs() == [
        (1, [1, 2]), (2, [3, 4]), (3, [5, 6]), (4, [7, 8]), (5, [9, 10]), (6, [11, 12])]
    assert make_case("hs", "bert-base", "3x384", 2, 8).hs_pairs()[0] == (1, [1, 2, 3, 4])


def test_relation_block_sizes_run_one_case_each():
    from benchmarks.__main__ import build_cases, parse_args
    from benchmarks.jax_step import objective_config

    cases = build_cases(parse_args(["--relation_block_size=0,128"]))
    assert [objective_config(c)["minilmv2"]["block_size"] for c in cases] == [0, 128]
    assert cases[0].name.endswith("block0")
    assert "block_size" not in objective_config(build_cases(parse_args([]))[0])["minilmv2"]  # the default


def test_the_benchmark_and_the_trainer_divide_by_one_cpu_peak(monkeypatch):
    """One definition of the measured CPU peak (distill_jax.metrics.measured_matmul_peak, float32
    PEAK_MATMUL_SIZE^2 matmuls): the trainer's MFU (machine_peak_flops) and the benchmark's
    (benchmarks.peak) both measure through it, at the same size by default."""
    import jax

    from benchmarks import peak as peak_lib
    from distill_jax import metrics

    calls = []

    def fake(n=metrics.PEAK_MATMUL_SIZE, repeats=5, device=None):
        calls.append(n)
        return metrics.MatmulRate(flops_per_s=3e9, flops_per_cpu_s=2e9)

    monkeypatch.setattr(metrics, "measured_matmul_peak", fake)
    metrics._host_cpu_peak.cache_clear()
    cpu = jax.devices("cpu")[0]
    assert peak_lib.peak_for(cpu)["flops_per_s"] == 3e9
    if jax.devices()[0].platform == "cpu":
        peak, source = metrics.machine_peak_flops()
        assert peak == 3e9 * jax.process_count() and f"{metrics.PEAK_MATMUL_SIZE}x" in source
    metrics._host_cpu_peak.cache_clear()
    assert set(calls) == {metrics.PEAK_MATMUL_SIZE}
    # The real measurement: a plausible rate, wall clock and per CPU-second.
    monkeypatch.undo()
    real = metrics.measured_matmul_peak(128, repeats=2)
    assert real.flops_per_s > 1e6 and real.flops_per_cpu_s > 1e6
