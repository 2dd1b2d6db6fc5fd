"""`python -m studies` (studies/__main__.py): the study's own entry runs configs/study.py through
the same flags and dispatch as main.py, and refuses a config that is not a study in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "studies", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_python_m_studies_plans_the_pod_preset_and_refuses_other_configs(tmp_path):
    out = _run("--config=configs/study.py:preset=pod,dry_run", f"--workdir={tmp_path / 'pod'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "400000 steps x 1024 x 512 = 209.7 B tokens per method" in out.stdout
    assert not (tmp_path / "pod").exists()   # a dry run writes nothing
    # Without --config: configs/study.py (its cpu preset); --config.* overrides as in main.py.
    out = _run(f"--workdir={tmp_path / 'cpu'}", "--config.dry_run=True")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[study] preset cpu: " in out.stdout and "student 3x384" in out.stdout
    out = _run("--config=configs/quickstart.py", f"--workdir={tmp_path / 'q'}")
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].endswith("config.mode='distill': use one of 'study'"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "q").exists()
