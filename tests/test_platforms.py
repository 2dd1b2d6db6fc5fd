"""distill_jax/platforms.py: libtpu is kept from starting on a machine without a TPU, and nothing
is changed when the user chose, a TPU is present, or the caller asks for TPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill_jax import platforms

REPO = Path(__file__).resolve().parents[1]


def test_the_choice_is_left_alone_when_set_wanted_present_or_libtpu_absent(monkeypatch):
    monkeypatch.setattr(platforms, "libtpu_installed", lambda: True)
    monkeypatch.setattr(platforms, "tpu_present", lambda: False)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert platforms.choose_platforms() is None and os.environ["JAX_PLATFORMS"] == "cuda"
    monkeypatch.delenv("JAX_PLATFORMS")
    assert platforms.choose_platforms(wants_tpu=True) is None and "JAX_PLATFORMS" not in os.environ
    monkeypatch.setattr(platforms, "tpu_present", lambda: True)
    assert platforms.choose_platforms() is None and "JAX_PLATFORMS" not in os.environ
    monkeypatch.setattr(platforms, "tpu_present", lambda: False)
    monkeypatch.setattr(platforms, "libtpu_installed", lambda: False)
    assert platforms.choose_platforms() is None and "JAX_PLATFORMS" not in os.environ


def test_without_a_tpu_jax_starts_on_this_machines_platforms_and_prints_nothing():
    """A fresh interpreter without JAX_PLATFORMS, as the CLI starts: libtpu (installed in the test
    venv) is not initialized, JAX runs on the CPU, stderr stays empty."""
    if not platforms.libtpu_installed() or platforms.tpu_present():
        pytest.skip("needs libtpu installed on a machine without a TPU (the test venv on CPU)")
    code = ("from distill_jax import platforms; chosen = platforms.choose_platforms()\n"
            "import jax; print(chosen, jax.default_backend(), sorted(jax._src.xla_bridge.backends()))\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "cpu", "['cpu']"], proc.stdout
    assert proc.stderr == "", proc.stderr
