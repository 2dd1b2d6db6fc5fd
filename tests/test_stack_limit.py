"""The restart with the hard stack limit that libtpu's compile of a remat step needs
(distill_jax/stack_limit.py): a process started at the default soft 8 MiB replaces itself by the
same command started with the hard limit, once, keeping its pid and arguments; and the plan
command does it for a remat step on a TPU topology (and compiles it through libtpu)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill_jax.stack_limit import needs_hard_stack_limit

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import os, resource, sys
sys.path.insert(0, {repo!r})
print("start", os.getpid(), resource.getrlimit(resource.RLIMIT_STACK)[0], sys.argv[1:], flush=True)
from distill_jax.stack_limit import reexec_with_hard_stack_limit
reexec_with_hard_stack_limit()
print("running", os.getpid(), resource.getrlimit(resource.RLIMIT_STACK)[0], flush=True)
"""


def _at_8_mib(*command: str, **kwargs) -> subprocess.CompletedProcess:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    if hard != resource.RLIM_INFINITY and hard <= 8 * 2**20:
        pytest.skip(f"the hard stack limit here ({hard} bytes) leaves nothing to raise")
    return subprocess.run(["bash", "-c", 'ulimit -S -s 8192 && exec "$@"', "bash", *command],
                          capture_output=True, text=True, **kwargs)


def test_needs_the_restart_only_to_compile_remat_with_libtpu():
    assert needs_hard_stack_limit(remat=True, tpu=True)
    assert not needs_hard_stack_limit(remat=True, tpu=False)
    assert not needs_hard_stack_limit(remat=False, tpu=True)


def test_restarts_once_with_the_hard_limit_same_pid_and_arguments():
    import resource

    env = {k: v for k, v in os.environ.items() if k != "DISTILL_JAX_STACK_LIMIT_RAISED"}
    proc = _at_8_mib(sys.executable, "-c", PROBE.format(repo=str(REPO)), "a", "--b=1", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    pid = lines[0].split()[1]
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    assert lines[:3] == [f"start {pid} {8 * 2**20} ['a', '--b=1']", f"start {pid} {hard} ['a', '--b=1']",
                         f"running {pid} {hard}"]
    assert proc.stderr.count("restarting with the hard stack limit") == 1


@pytest.mark.slow  # one libtpu compile of a tiny remat step
def test_the_plan_restarts_for_a_remat_step_on_tpu_and_compiles_it(tmp_path):
    pytest.importorskip("libtpu")
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64}))
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_JAX_STACK_LIMIT_RAISED"}
    proc = _at_8_mib(sys.executable, "-m", "distill_jax.plan", "--config=configs/quickstart.py",
                     "--topology=v5e-4", f"--config.teacher.name={teacher}", "--config.student.remat=True",
                     "--config.batch_size=8", "--config.data.seq_len=64", "--config.student.hidden_size=32",
                     "--config.student.num_heads=4", "--config.student.intermediate_size=64",
                     "--config.objective.minilmv2.relation_heads=4",
                     cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("restarting with the hard stack limit") == 1
    assert "remat True" in proc.stdout and "fits:" in proc.stdout
