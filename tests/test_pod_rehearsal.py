"""The pod launcher driven for real, with its gcloud calls going to a stand-in (tests/fake_gcloud):
two "workers" are directories on localhost whose processes talk through jax.distributed (gloo).

What runs for real: launch/tpu_pod.sh --setup (git archive, scp, unpack, the venv step),
the detached launch (setsid, log files, the log copy to <workdir>/logs), --status, --logs, --stop
(SIGTERM to each worker's process group: the trainer checkpoints) and a relaunch that resumes.
What does not: gcloud's own ssh/scp transport, and the network installs of a fresh slice. The
workers reuse this test's venv (DISTILL_JAX_VENV=sys.prefix with DISTILL_JAX_NO_INSTALL=1, so
scripts/env.sh refuses rather than installs if its stamp does not match), and Python >= 3.11 is
found on PATH (the uv branch is tested as a decision in test_launch.py).

The shipped tree is this working tree as it would be committed (tracked + untracked-not-ignored
files) in a throwaway repository, so the test exercises the launcher being edited, not HEAD's.
The longer rehearsal (a killed worker, the survivors' exit 75, resume) is launch/rehearse_pod.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_models import save_tiny_bert

REPO = Path(__file__).resolve().parents[1]
FAKE_GCLOUD = REPO / "tests" / "fake_gcloud"
WORKERS = 2
POD = ["--tpu=rehearsal", "--zone=local-a"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_env(root: Path) -> dict[str, str]:
    """The caller's environment for the stand-in slice (variables: tests/fake_gcloud/gcloud)."""
    venv = Path(sys.prefix)
    if not (venv / ".distill_jax_stamp_test").is_file():
        pytest.skip(f"{venv} was not made by scripts/env.sh test (no stamp): the workers reuse it")
    env = dict(os.environ)
    env.update(PATH=f"{FAKE_GCLOUD}:{env['PATH']}", FAKE_GCLOUD_ROOT=str(root),
               FAKE_GCLOUD_WORKERS=str(WORKERS), FAKE_GCLOUD_COORDINATOR_PORT=str(_free_port()),
               DISTILL_JAX_VENV=str(venv), DISTILL_JAX_NO_INSTALL="1", DISTILL_JAX_SETUP_EXTRAS="test",
               DISTILL_JAX_LOG_SYNC_S="2", JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)  # the workers must run the shipped code, not this checkout
    return env


def snapshot_repo(dest: Path) -> Path:
    """A git repository holding this working tree's files as they would be committed."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "snapshot")
    return dest


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.strip()


def pod(repo: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "launch" / "tpu_pod.sh"), *POD, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def shipped(tmp_path_factory) -> Path:
    """Per test: the setup test commits to it and leaves it dirty."""
    return snapshot_repo(tmp_path_factory.mktemp("shipped_repo"))


@pytest.mark.slow  # python -m venv runs ensurepip: ~15 s idle, ~60 s on the loaded 2-core machine
def test_env_sh_builds_the_venv_with_the_chosen_python_and_never_installs_when_told(tmp_path):
    """scripts/env.sh as the workers call it: DISTILL_JAX_PYTHON makes the venv (a venv holding this
    test venv's stamp, so nothing is installed), DISTILL_JAX_NO_INSTALL=1 refuses a stale one."""
    python312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")
    if not python312.is_file():
        pytest.skip(f"this machine has no {python312}")
    stamp = Path(sys.prefix) / ".distill_jax_stamp_test"
    if not stamp.is_file():
        pytest.skip(f"{sys.prefix} was not made by scripts/env.sh test")
    env = dict(os.environ, DISTILL_JAX_NO_INSTALL="1", DISTILL_JAX_PYTHON=str(python312))
    venv = tmp_path / "venv"
    venv.mkdir()
    shutil.copy(stamp, venv / stamp.name)
    made = subprocess.run(["bash", str(REPO / "scripts" / "env.sh"), "test"], env=dict(env, DISTILL_JAX_VENV=str(venv)),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert f"creating virtual environment at {venv} (Python 3.12.1)" in made.stdout
    assert subprocess.run([venv / "bin" / "python", "--version"], capture_output=True,
                          text=True).stdout.strip() == "Python 3.12.1"

    stale = tmp_path / "stale"
    refused = subprocess.run(["bash", str(REPO / "scripts" / "env.sh"), "test"],
                             env=dict(env, DISTILL_JAX_VENV=str(stale)), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and not stale.exists()
    assert refused.stderr.count("\n") == 1 and "DISTILL_JAX_NO_INSTALL=1" in refused.stderr


def test_setup_ships_tracked_files_replaces_the_code_and_refuses_a_dirty_tree(shipped, tmp_path):
    env = pod_env(tmp_path / "slice")
    first = pod(shipped, env, "--setup")
    assert first.returncode == 0, first.stderr + first.stdout
    commit = git(shipped, "rev-parse", "--short=12", "HEAD")
    tracked = set(git(shipped, "ls-files").splitlines())
    for i in range(WORKERS):
        home = tmp_path / "slice" / f"worker-{i}"
        code = home / "distill_jax"
        assert code.is_symlink() and code.resolve() == home / "distill_jax_code" / commit
        shipped_files = {str(p.relative_to(code.resolve())) for p in code.resolve().rglob("*") if p.is_file()}
        assert shipped_files == tracked  # no .git, .venv, runs/, caches: exactly the commit
        assert f"[setup] worker {i}: code {commit}" in first.stdout
        assert f"venv {sys.prefix} (Python 3." in first.stdout  # the venv lives outside the tree
        assert not (home / f"distill_jax-{commit}.tar").exists()

    # A second setup of a new commit replaces the code (no nesting, the old commit gone).
    (shipped / "NEW_FILE.txt").write_text("second commit\n")
    git(shipped, "add", "NEW_FILE.txt")
    git(shipped, "commit", "-q", "-m", "second")
    second_commit = git(shipped, "rev-parse", "--short=12", "HEAD")
    second = pod(shipped, env, "--setup")
    assert second.returncode == 0, second.stderr + second.stdout
    for i in range(WORKERS):
        home = tmp_path / "slice" / f"worker-{i}"
        assert [p.name for p in (home / "distill_jax_code").iterdir()] == [second_commit]
        assert (home / "distill_jax" / "NEW_FILE.txt").read_text() == "second commit\n"
        assert not (home / "distill_jax" / "distill_jax" / "launch").exists()

    # Uncommitted changes to tracked files: refused in one line, unless --allow-dirty ships HEAD.
    readme = shipped / "README.md"
    readme.write_text(readme.read_text() + "\nuncommitted line\n")
    refused = pod(shipped, env, "--setup")
    assert refused.returncode == 2 and not refused.stdout
    assert refused.stderr.count("\n") == 1 and "README.md" in refused.stderr
    assert f"--allow-dirty to ship HEAD ({second_commit})" in refused.stderr
    allowed = pod(shipped, env, "--setup", "--allow-dirty")
    assert allowed.returncode == 0, allowed.stderr
    assert f"shipping commit {second_commit}" in allowed.stdout and "NOT shipped" in allowed.stdout
    assert "uncommitted line" not in (tmp_path / "slice" / "worker-0" / "distill_jax" / "README.md").read_text()


def test_a_run_that_ignores_sigterm_blocks_setup_then_stop_reports_and_force_kills(shipped, tmp_path):
    """Process management alone, with a command that ignores SIGTERM (a trainer stuck before its
    loop): setup refuses while it lives, --stop reports it still alive after --timeout (exit 1),
    --stop --force kills the whole process group (exit 137 recorded)."""
    env = pod_env(tmp_path / "slice")
    assert pod(shipped, env, "--setup").returncode == 0
    assert pod(shipped, env, "--status").stdout.splitlines() == [f"worker {i}: no run" for i in range(WORKERS)]
    stubborn = "bash ~/distill_jax/launch/pod_worker.sh start --run=stubborn --kind=prepare -- " \
               "bash -c 'trap \"\" TERM; sleep 600'"
    started = subprocess.run(["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rehearsal", "--zone=local-a",
                              "--worker=all", f"--command={stubborn}"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 0, started.stderr + started.stdout
    pids = [int((tmp_path / "slice" / f"worker-{i}" / "distill_jax_runs" / "stubborn" / f"worker-{i}.pid").read_text())
            for i in range(WORKERS)]
    try:
        for pid in pids:
            assert os.getsid(pid) == pid != os.getsid(0)  # its own session: no terminal to lose
        refused = pod(shipped, env, "--setup")
        assert refused.returncode != 0
        assert refused.stdout.count("error: run(s) stubborn still running here: stop them first") == WORKERS
        stop = pod(shipped, env, "--stop", "--timeout=2")
        assert stop.returncode == 1 and stop.stdout.count("still alive 2 s after SIGTERM") == WORKERS, stop.stdout
        assert all(_alive(pid) for pid in pids)
        force = pod(shipped, env, "--stop", "--force")
        assert force.returncode == 0, force.stdout + force.stderr
        assert [line.split(" | ")[0] for line in force.stdout.splitlines()] == [
            f"worker {i}: stubborn exited 137" for i in range(WORKERS)]
        deadline = time.time() + 10
        while any(_alive(pid) for pid in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids)
    finally:
        for pid in pids:
            if _alive(pid):
                os.killpg(pid, 9)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not alive.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ", 1)[1].startswith("Z"))


# ------------------------------------------------------------------------------------------------
# A detached run: launch, status, logs, stop (checkpoint on SIGTERM), relaunch resumes
# ------------------------------------------------------------------------------------------------

def tiny_flags(teacher: Path, compilation_cache: Path) -> list[str]:
    """configs/quickstart.py shrunk to a 2 x 16 student of a random 2 x 32 teacher (seconds a step)."""
    return ["--config.teacher.name=" + str(teacher), "--config.student.num_layers=2",
            "--config.student.hidden_size=16", "--config.student.num_heads=2",
            "--config.student.intermediate_size=32", "--config.objective.minilmv2.relation_heads=4",
            "--config.data.max_documents=40", "--config.data.seq_len=32", "--config.batch_size=8",
            "--config.log_every=1", "--config.checkpoint_every=5", "--config.export=False",
            f"--config.compilation_cache_dir={compilation_cache}"]


def wait_for(predicate, timeout_s: float, what: str, diagnose) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f} s:\n{diagnose()}")
        time.sleep(1)


def worker_log(root: Path, i: int, run: str) -> str:
    path = root / f"worker-{i}" / "distill_jax_runs" / run / f"worker-{i}.log"
    return path.read_text() if path.is_file() else ""


@pytest.mark.slow
def test_detached_run_status_logs_stop_and_a_relaunch_that_resumes(shipped, tmp_path):
    root = tmp_path / "slice"
    env = pod_env(root)
    teacher = save_tiny_bert(tmp_path / "teacher", num_layers=2, hidden_size=32, num_heads=2,
                             intermediate_size=64, with_mlm_head=False)
    workdir = tmp_path / "workdir" / "rehearsal"
    launch = ["--config=configs/quickstart.py:steps=400", f"--workdir={workdir}", "--",
              *tiny_flags(teacher, tmp_path / "jax_cache")]
    setup = pod(shipped, env, "--setup", *launch)  # setup, then the run starts at once
    assert setup.returncode == 0, setup.stderr + setup.stdout
    assert "started rehearsal on worker(s) all, detached" in setup.stdout
    pids = [int((root / f"worker-{i}" / "distill_jax_runs" / "rehearsal" / f"worker-{i}.pid").read_text())
            for i in range(WORKERS)]
    for pid in pids:  # its own session: no terminal, the launcher (and its ssh) long gone
        assert os.getsid(pid) == pid and os.getsid(pid) != os.getsid(0)

    def logs() -> str:
        return "\n".join(worker_log(root, i, "rehearsal")[-3000:] for i in range(WORKERS))

    step = re.compile(r"\[distill\] step (\d+)/400")
    wait_for(lambda: any(int(m) >= 6 for m in step.findall(worker_log(root, 0, "rehearsal"))), 400,
             "step 6 on worker 0", logs)
    status = pod(shipped, env, "--status")
    assert status.returncode == 0, status.stderr
    assert [line.split(" | ")[0] for line in status.stdout.splitlines()] == [
        f"worker {i}: rehearsal alive (pid {pids[i]})" for i in range(WORKERS)]
    tail = pod(shipped, env, "--logs", "--lines=3")
    assert len([line for line in tail.stdout.splitlines() if line.startswith("[worker 0] ")]) == 3

    stop = pod(shipped, env, "--stop", "--timeout=120")
    assert stop.returncode == 0, stop.stderr + stop.stdout
    assert [line.split(" | ")[0] for line in stop.stdout.splitlines()] == [
        f"worker {i}: rehearsal exited 0" for i in range(WORKERS)], stop.stdout
    first_log = worker_log(root, 0, "rehearsal")
    stopped_at = max(int(m) for m in step.findall(first_log))
    assert stopped_at < 400
    checkpoints = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert checkpoints and checkpoints[-1] == stopped_at  # SIGTERM wrote a checkpoint at the last step

    # Only process 0 prints progress; both logs were copied under the workdir, whole.
    assert not step.search(worker_log(root, 1, "rehearsal"))
    for i in range(WORKERS):
        assert (workdir / "logs" / f"worker-{i}.log").read_text() == worker_log(root, i, "rehearsal")

    # The same launch command again resumes from that checkpoint; stop it once it has.
    again = pod(shipped, env, *launch)
    assert again.returncode == 0, again.stderr + again.stdout
    resumed = f"resumed from checkpoint step {stopped_at}"
    wait_for(lambda: resumed in worker_log(root, 0, "rehearsal"), 400, resumed, logs)
    wait_for(lambda: any(int(m) > stopped_at for m in step.findall(worker_log(root, 0, "rehearsal"))),
             300, f"a step after {stopped_at}", logs)
    final = pod(shipped, env, "--stop", "--timeout=120")
    assert final.returncode == 0 and final.stdout.count("exited 0") == WORKERS, final.stdout
    log = worker_log(root, 0, "rehearsal")
    assert log.startswith(first_log)  # appended: the first launch's lines are all still there
    assert log.count("=== ") == 4  # two launches, each with a start and an exit line
