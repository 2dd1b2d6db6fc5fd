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


def remote_command(cmd: list[str]) -> str:
    return next(a for a in cmd if a.startswith("--command="))[len("--command="):]


def test_tpu_pod_setup_ships_the_committed_tree_then_starts_detached_runs():
    cmds = dry_run_with_extra(
        "tpu_pod.sh",
        ["--tpu=my-v4-32", "--zone=us-central2-b", "--project=proj", "--config=configs/mha_l6_h384.py",
         "--workdir=gs://bucket/runs/mha", "--setup", "--allow-dirty"],
        ["--config.total_steps=1000", "--config.teacher.name=/ckpt dir/bert"])
    assert len(cmds) == 4
    archive, scp, install, start = cmds
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    # Only tracked files travel: a tarball of HEAD, not a recursive copy of the checkout.
    assert archive[:6] == ["git", "-C", str(REPO), "archive", "--format=tar", "-o"]
    assert archive[6].endswith(f"/distill_jax-{commit}.tar") and archive[7] == "HEAD"
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--recurse" not in scp
    assert scp[5:7] == [archive[6], f"my-v4-32:~/distill_jax-{commit}.tar"]
    for cmd in cmds[1:]:
        assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd and "--project=proj" in cmd
    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
    assert remote_command(install) == (
        f"tar -xOf ~/distill_jax-{commit}.tar launch/pod_worker.sh > ~/.distill_jax_pod_worker.sh"
        f" && bash ~/.distill_jax_pod_worker.sh setup --commit={commit}")
    assert start[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
    # What each worker's shell runs: the worker script's detached start, then main.py with every
    # flag intact after the `--`.
    worker = shlex.split(remote_command(start))
    assert worker[:8] == ["bash", "~/distill_jax/launch/pod_worker.sh", "start", "--run=mha", "--kind=train",
                          "--logs_to=gs://bucket/runs/mha/logs", "--", "python"]
    assert worker[8:] == ["main.py", "--config=configs/mha_l6_h384.py", "--workdir=gs://bucket/runs/mha",
                          "--distributed=on", "--config.total_steps=1000", "--config.teacher.name=/ckpt dir/bert"]


def test_tpu_pod_without_setup_only_starts_the_run():
    cmds = dry_run("tpu_pod.sh", "--tpu=t", "--zone=z", "--config=configs/quickstart.py", "--workdir=gs://b/w/")
    assert len(cmds) == 1 and cmds[0][4] == "ssh"
    assert not any(a.startswith("--project") for a in cmds[0])
    assert "--run=w" in shlex.split(remote_command(cmds[0]))  # the workdir's last part names the run


def test_tpu_pod_setup_alone_starts_nothing():
    cmds = dry_run("tpu_pod.sh", "--tpu=t", "--zone=z", "--setup", "--allow-dirty")
    assert [c[0] for c in cmds] == ["git", "gcloud", "gcloud"] and "setup" in remote_command(cmds[-1])


@pytest.mark.parametrize("args, worker_args", [
    (["--status"], ["status"]),
    (["--status", "--run=r1"], ["status", "--run=r1"]),
    (["--logs"], ["logs", "--lines=20"]),
    (["--logs", "--lines=5", "--follow"], ["logs", "--follow", "--lines=5"]),
    (["--stop"], ["stop", "--timeout=300"]),
    (["--stop", "--timeout=30", "--force"], ["stop", "--timeout=30", "--force"]),
])
def test_tpu_pod_status_logs_stop_run_the_worker_script(args, worker_args):
    (cmd,) = dry_run("tpu_pod.sh", "--tpu=t", "--zone=z", *args)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t"]
    # --follow tails process 0 only (the one that prints progress); the rest ask every worker.
    assert ("--worker=0" if "--follow" in args else "--worker=all") in cmd
    assert shlex.split(remote_command(cmd)) == ["bash", "~/distill_jax/launch/pod_worker.sh", *worker_args]


def test_tpu_pod_prepare_runs_the_prepare_module_detached():
    (cmd,) = dry_run_with_extra("tpu_pod.sh", ["--tpu=t", "--zone=z", "--prepare", "--config=configs/mha_l6_h384.py",
                                               "--cache_dir=gs://b/cache", "--worker=0"], ["--config.data.seq_len=128"])
    assert "--worker=0" in cmd
    assert shlex.split(remote_command(cmd)) == [
        "bash", "~/distill_jax/launch/pod_worker.sh", "start", "--run=prepare", "--kind=prepare", "--",
        "python", "-m", "distill_jax.data.prepare", "--config=configs/mha_l6_h384.py", "--cache_dir=gs://b/cache",
        "--config.data.seq_len=128"]


def _interpreters_on_path(tmp_path: Path, versions: dict[str, str]) -> str:
    """A PATH of one folder holding links named like an image's interpreters (name -> pyenv version)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, version in versions.items():
        target = Path(f"/root/.pyenv/versions/{version}/bin/python{version.rsplit('.', 1)[0]}")
        if not target.is_file():
            pytest.skip(f"this machine has no pyenv Python {version} ({target})")
        (folder / name).symlink_to(target)
    return str(folder)


def choose_python(path: str, *extra: str) -> str:
    proc = subprocess.run(["/bin/bash", str(REPO / "launch" / "pod_worker.sh"), "python", *extra],
                          env={"PATH": path, "HOME": "/nonexistent"}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_worker_setup_picks_the_newest_python_3_11_or_later_on_path(tmp_path):
    path = _interpreters_on_path(tmp_path, {"python3": "3.10.13", "python3.12": "3.12.1", "python3.11": "3.11.7"})
    assert choose_python(path) == f"{path}/python3.12"


def test_worker_setup_takes_python3_when_it_is_new_enough(tmp_path):
    path = _interpreters_on_path(tmp_path, {"python3": "3.13.0"})
    assert choose_python(path) == f"{path}/python3"


def test_worker_setup_on_a_python_3_10_image_plans_uv_and_a_managed_python(tmp_path):
    """The TPU VM image case (Ubuntu 22.04: python3 is 3.10). Only the decision and the commands are
    checked here: installing uv and its managed Python needs the network of a real slice."""
    path = _interpreters_on_path(tmp_path, {"python3": "3.10.13", "python3.10": "3.10.13"})
    version = subprocess.run([f"{path}/python3", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == "Python 3.10.13"  # the interpreter runs: the refusal is its version
    assert choose_python(path, "--dry-run") == (
        "uv: no python >= 3.11 on PATH; would run: python3 -m pip install --user --quiet uv"
        " && $HOME/.local/bin/uv python install 3.11")


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


def test_documented_pod_commands_are_accepted_as_written():
    """Every `launch/tpu_pod.sh` line of docs/pods.md's pod-slice section parses (run with
    --dry-run; the --setup one with --allow-dirty so a checkout with edits can run it too)."""
    import re

    from doc_blocks import section

    (block,) = re.findall(r"```bash\n(.*?)```", section("docs/pods.md", "## Cloud TPU VM pod slice"), flags=re.S)
    commands = [shlex.split(line.split("  #")[0], comments=True)
                for line in block.replace("\\\n", " ").splitlines() if line.startswith("launch/tpu_pod.sh")]
    assert len(commands) == 6
    for words in commands:
        flags = ["--dry-run"] + (["--allow-dirty"] if "--setup" in words else [])
        proc = subprocess.run(["bash", str(REPO / words[0]), *flags, *words[1:]], capture_output=True,
                              text=True, timeout=30, cwd=REPO)
        assert proc.returncode == 0 and proc.stdout, (words, proc.stderr)
