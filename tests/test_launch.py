"""launch/ scripts: --dry-run prints the exact commands a TPU pod, a SLURM cluster or this machine
would run; checked by parsing them back with shlex (what a shell would execute)."""

import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dry_run(script: str, *args: str) -> list[list[str]]:
    proc = subprocess.run(["bash", str(REPO / "launch" / script), *args, "--dry-run"],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line and not line.startswith("#")]


def dry_run_with_extra(script: str, args: list[str], extra: list[str]) -> list[list[str]]:
    proc = subprocess.run(["bash", str(REPO / "launch" / script), *args, "--dry-run", "--", *extra],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line and not line.startswith("#")]


def test_tpu_pod_setup_and_run_on_every_worker():
    cmds = dry_run_with_extra(
        "tpu_pod.sh",
        ["--tpu=my-v4-32", "--zone=us-central2-b", "--project=proj", "--config=configs/mha_l6_h384.py",
         "--workdir=gs://bucket/runs/mha", "--setup"],
        ["--config.total_steps=1000", "--config.teacher.name=/ckpt dir/bert"])
    assert len(cmds) == 3
    scp, install, train = cmds
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5:8] == ["--recurse", str(REPO), "my-v4-32:~/distill_jax"]
    for cmd in cmds:
        assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd and "--project=proj" in cmd
    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
    assert "scripts/env.sh" in next(a for a in install if a.startswith("--command="))
    assert train[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
    remote = next(a for a in train if a.startswith("--command="))[len("--command="):]
    # What each worker's shell runs: cd, activate, then main.py with every flag intact.
    assert remote.startswith("cd ~/distill_jax && source .venv/bin/activate && ")
    python_cmd = shlex.split(remote.split(" && ")[-1])
    assert python_cmd == ["python", "main.py", "--config=configs/mha_l6_h384.py",
                          "--workdir=gs://bucket/runs/mha", "--distributed=on",
                          "--config.total_steps=1000", "--config.teacher.name=/ckpt dir/bert"]


def test_tpu_pod_without_setup_runs_only_the_trainer():
    cmds = dry_run("tpu_pod.sh", "--tpu=t", "--zone=z", "--config=configs/quickstart.py", "--workdir=gs://b/w")
    assert len(cmds) == 1 and cmds[0][4] == "ssh"
    assert not any(a.startswith("--project") for a in cmds[0])


def test_slurm_submits_the_batch_script_with_the_job_settings():
    cmds = dry_run_with_extra(
        "slurm.sh", ["--config=configs/hs_l6_h384.py:map=last,runlocal", "--workdir=/shared/runs/hs",
                     "--nodes=4", "--gpus_per_node=8", "--time=12:00:00", "--partition=gpu"],
        ["--config.total_steps=10", "--config.teacher.name=/a b"])
    sbatch, srun = cmds
    env = dict(a.split("=", 1) for a in sbatch[1:5])
    assert sbatch[0] == "env" and sbatch[5] == "sbatch"
    assert env["CONFIG"] == "configs/hs_l6_h384.py:map=last,runlocal"  # the comma survives
    assert env["WORKDIR"] == "/shared/runs/hs" and env["REPO_DIR"] == str(REPO)
    assert shlex.split(env["EXTRA"]) == ["--config.total_steps=10", "--config.teacher.name=/a b"]
    assert sbatch[6:] == ["--nodes=4", "--gpus-per-node=8", "--time=12:00:00", "--partition=gpu",
                          str(REPO / "launch" / "slurm_gpu.sbatch")]
    assert srun == ["srun", "--kill-on-bad-exit=1", "python", "main.py",
                    "--config=configs/hs_l6_h384.py:map=last,runlocal", "--workdir=/shared/runs/hs",
                    "--distributed=on", "--config.total_steps=10", "--config.teacher.name=/a b"]


def test_slurm_batch_script_rebuilds_the_extra_flags_and_asks_for_sigterm():
    """The batch script evaluates EXTRA (shell-quoted by slurm.sh) back into the same argv."""
    text = (REPO / "launch" / "slurm_gpu.sbatch").read_text()
    assert "#SBATCH --signal=TERM@120" in text and "#SBATCH --ntasks-per-node=1" in text
    eval_line = next(line for line in text.splitlines() if line.startswith("eval "))
    extra = shlex.join(["--config.total_steps=10", "--config.teacher.name=/a b"])
    proc = subprocess.run(["bash", "-c", eval_line.split("#")[0] + '; printf "%s\\n" "${extra[@]}"'],
                          env={"EXTRA": extra, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.stdout.splitlines() == ["--config.total_steps=10", "--config.teacher.name=/a b"]


def test_local_single_and_multi_process():
    (single,) = dry_run("local.sh", "--config=configs/quickstart.py", "--workdir=runs/q")
    assert single == ["python", str(REPO / "main.py"), "--config=configs/quickstart.py", "--workdir=runs/q"]
    cmds = dry_run("local.sh", "--config=configs/mha_l6_h384.py:runlocal", "--workdir=/tmp/m",
                   "--processes=2", "--devices_per_process=4", "--port=23456")
    assert cmds[-1] == ["wait"]
    for i, cmd in enumerate(cmds[:2]):
        assert cmd[-1] == "&"
        assert cmd[:-1] == ["env", "JAX_NUM_CPU_DEVICES=4", "python", str(REPO / "main.py"),
                            "--config=configs/mha_l6_h384.py:runlocal", "--workdir=/tmp/m",
                            "--distributed=on", "--coordinator_address=127.0.0.1:23456",
                            "--num_processes=2", f"--process_id={i}"]


@pytest.mark.parametrize("script, args, message", [
    ("tpu_pod.sh", ["--zone=z", "--config=c", "--workdir=w"], "--tpu=... is required"),
    ("slurm.sh", ["--config=c"], "--workdir=... is required"),
    ("local.sh", ["--workdir=w"], "--config=... is required"),
    ("local.sh", ["--config=c", "--workdir=w", "--bogus"], "unknown argument '--bogus'"),
])
def test_missing_or_unknown_arguments_are_refused(script, args, message):
    proc = subprocess.run(["bash", str(REPO / "launch" / script), *args, "--dry-run"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr and not proc.stdout
