"""Nothing a user does by mistake loses a run (issue 19): one writer per workdir, one config per
workdir, divergence stopped before it is saved, failed saves, bad inputs in one line, quiet
fallback from a damaged checkpoint, retried transient reads.

Real files, real orbax checkpoints, real subprocess runs of main.py on the tiny config of
tests/test_train.py (its fixtures are imported); the only injected fault is a transient read
error (a storage hiccup cannot be produced on demand otherwise). A full disk is a real tmpfs of a
few MiB (mounting needs root: skipped otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_fixtures import REPO, subprocess_env, tiny_config, write_config_file


def one_error_line(stderr: str) -> str:
    """The single `error: ...` line of a command's stderr (asserting there is exactly one and no
    traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def run_main(args: list[str], timeout: int = 300, devices: int = 8) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=subprocess_env(devices),
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# 1. One writer per workdir
# ----------------------------------------------------------------------------------------------

def test_the_lock_refuses_a_live_holder_and_is_released(tmp_path):
    from distill_jax.workdir_lock import WorkdirLock, WorkdirLocked

    first = WorkdirLock(str(tmp_path / "w")).acquire()
    held = json.loads((tmp_path / "w" / "LOCK").read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["since"]
    with pytest.raises(WorkdirLocked) as info:
        WorkdirLock(str(tmp_path / "w")).acquire()
    message = str(info.value)
    assert "\n" not in message and f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert f"since {held['since']}" in message and "delete" in message
    first.release()
    assert not (tmp_path / "w" / "LOCK").exists()
    WorkdirLock(str(tmp_path / "w")).acquire().release()  # free again


def test_the_heartbeat_refreshes_the_lock(tmp_path):
    from distill_jax.workdir_lock import WorkdirLock

    lock = WorkdirLock(str(tmp_path), heartbeat_s=0.2).acquire()
    first = json.loads((tmp_path / "LOCK").read_text())["heartbeat"]
    time.sleep(1.0)
    assert json.loads((tmp_path / "LOCK").read_text())["heartbeat"] > first
    lock.release()


def test_a_stale_lock_is_taken_over_with_one_warning(tmp_path, capsys):
    from distill_jax.workdir_lock import WorkdirLock

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that ran on this host and is no longer alive
    (tmp_path / "LOCK").write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid,
                                               "since": "2026-01-01T00:00:00Z", "heartbeat": time.time()}))
    WorkdirLock(str(tmp_path)).acquire().release()
    # Another host's lock whose heartbeat stopped long ago (that host cannot be probed).
    (tmp_path / "LOCK").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "2026-01-01T00:00:00Z",
                                               "heartbeat": time.time() - 3600}))
    WorkdirLock(str(tmp_path)).acquire().release()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "stale lock" in line]
    assert len(warnings) == 2
    assert f"pid {gone.pid} is not running on this host" in warnings[0]
    assert "host elsewhere" in warnings[1] and "heartbeat is 3600s old" in warnings[1]


def test_the_lock_works_through_epath_on_gs(tmp_path, capsys):
    """gs:// through etils.epath (fsspec over a local directory, tests/fake_gcs.py): the same
    refusal, release, and stale takeover, on the object-store code path (write, settle, re-read)."""
    from fake_gcs import fake_gcs

    from distill_jax import workdir_lock
    from distill_jax.workdir_lock import WorkdirLock, WorkdirLocked

    with fake_gcs(str(tmp_path / "root")):
        workdir_lock.LOCK_SETTLE_S, settle = 0.05, workdir_lock.LOCK_SETTLE_S
        try:
            held = WorkdirLock("gs://bucket/run").acquire()
            assert (tmp_path / "root" / "bucket" / "run" / "LOCK").is_file()
            with pytest.raises(WorkdirLocked, match=rf"in use by another run \(host .*, pid {os.getpid()}"):
                WorkdirLock("gs://bucket/run").acquire()
            held.release()
            assert not (tmp_path / "root" / "bucket" / "run" / "LOCK").exists()
            (tmp_path / "root" / "bucket" / "run" / "LOCK").write_text(json.dumps(
                {"host": "elsewhere", "pid": 1, "since": "2026-01-01T00:00:00Z", "heartbeat": time.time() - 3600}))
            WorkdirLock("gs://bucket/run").acquire().release()
        finally:
            workdir_lock.LOCK_SETTLE_S = settle
    assert "taking over the stale lock gs://bucket/run/LOCK" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_refuses_and_the_first_finishes_intact(
        run_8dev, tiny_teacher, data_cache, compilation_cache, tmp_path):
    """Run A trains; run B (same workdir, another learning rate) refuses in one line naming A, exit 1,
    and writes nothing; A, stopped by SIGTERM, saves, releases the lock; A's rerun ends at the
    uninterrupted run's losses."""
    from train_fixtures import logged_losses

    config = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    workdir = tmp_path / "shared"
    (tmp_path / "a").mkdir()
    a_file = write_config_file(tmp_path / "a" / "a.py", config)
    other = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    other.optim.learning_rate = 1e-2
    (tmp_path / "b").mkdir()
    b_file = write_config_file(tmp_path / "b" / "b.py", other)
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), f"--config={a_file}", f"--workdir={workdir}"],
                            cwd=REPO, env=subprocess_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[distill] step 1/"):
                proc.send_signal(signal.SIGSTOP)  # hold A mid-run while B tries
                break
        config_before = (workdir / "config.json").read_bytes()
        b = run_main([f"--config={b_file}", f"--workdir={workdir}"], devices=8)
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b.returncode == 1, b.stderr[-3000:]
    line = one_error_line(b.stderr)
    assert f"--workdir={workdir} is in use by another run (host {socket.gethostname()}, pid {proc.pid}, since" in line
    assert (workdir / "config.json").read_bytes() == config_before  # B wrote nothing
    assert proc.returncode == 0, ("".join(lines) + rest)[-3000:]
    assert not (workdir / "LOCK").exists()

    from distill_jax.train import run_training
    resumed = run_training(config, str(workdir))
    reference = logged_losses(run_8dev)
    for step, loss in logged_losses(resumed).items():
        assert loss == pytest.approx(reference[step], rel=1e-5), step


# ----------------------------------------------------------------------------------------------
# 2. A workdir belongs to one config
# ----------------------------------------------------------------------------------------------

def test_a_resume_that_changes_what_checkpoints_mean_is_refused(tmp_path):
    from configs import common
    from distill_jax import run_config

    stored = common.base_config()
    run_config.write(stored, str(tmp_path), None)
    written = (tmp_path / "config.json").read_bytes()

    same_meaning = common.base_config()
    same_meaning.total_steps, same_meaning.log_every, same_meaning.checkpoint_every = 7, 3, 5
    same_meaning.data.cache_dir, same_meaning.eval.stsb_every, same_meaning.mesh.fsdp = "/elsewhere", 10, 2
    assert run_config.check_resume(same_meaning, str(tmp_path)) is not None

    changed = common.base_config()
    changed.optim.learning_rate, changed.seed, changed.student.num_layers = 1e-2, 3, 4
    with pytest.raises(ValueError) as info:
        run_config.check_resume(changed, str(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert "optim.learning_rate (0.0005 -> 0.01), seed (0 -> 3), student.num_layers (6 -> 4)" in message
    assert "--config.allow_config_change=True" in message
    assert (tmp_path / "config.json").read_bytes() == written

    changed.allow_config_change = True
    previous = run_config.check_resume(changed, str(tmp_path))
    run_config.write(changed, str(tmp_path), previous)
    (kept,) = tmp_path.glob("config.*Z.json")
    assert kept.read_bytes() == written  # the old config stays beside the new one
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3


def test_a_field_added_to_the_code_since_the_stored_run_counts_only_when_set(tmp_path):
    from configs import common
    from distill_jax import run_config

    stored = common.base_config().to_dict()
    del stored["student"]["remat"]  # as a config.json written before the field existed
    assert run_config.differing_fields(stored, common.base_config()) == []
    changed = common.base_config()
    changed.student.hidden_dropout = 0.0
    changed.objective.hs = dict(weight=1.0)  # a new objective term is never a default
    assert run_config.differing_fields(stored, changed) == ["objective.hs.weight", "student.hidden_dropout"]


def test_the_operational_field_list_has_one_owner():
    from distill_jax import run_config
    from studies import identity

    assert identity.OPERATIONAL_FIELDS is run_config.OPERATIONAL_FIELDS


@pytest.mark.slow
def test_a_run_that_fails_its_checks_leaves_config_json_alone(tiny_teacher, data_cache, compilation_cache,
                                                             tmp_path):
    """A late check (the batch does not split over the mesh) fails: no config.json is written on a
    fresh workdir, and an existing one is not replaced."""
    from distill_jax.train import run_training

    bad = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    bad.batch_size = 6
    with pytest.raises(ValueError, match="do not split over mesh"):
        run_training(bad, str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh" / "config.json").exists() and not (tmp_path / "fresh" / "LOCK").exists()

    bad.data.paths, bad.data.source = str(tmp_path / "no_corpus.txt"), "text"
    bad.batch_size = 8
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_training(bad, str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh" / "config.json").exists()


# ----------------------------------------------------------------------------------------------
# 3. Divergence
# ----------------------------------------------------------------------------------------------

def test_the_divergence_rule():
    from distill_jax.divergence import DivergenceGuard

    def metrics(loss, grad=1.0):
        return {"loss": loss, "grad_norm": grad, "terms": {"minilmv2": loss}}

    guard = DivergenceGuard()
    assert guard.check(1, metrics(5.0)) is None          # a falling loss is never a spike
    for step, loss in enumerate([2.0, 1.0, 0.9, 1.5, 0.8], start=2):
        assert guard.check(step, metrics(loss)) is None  # noise below 10x the median
    assert guard.check(7, metrics(12.0)) is None          # 12 < 10 x median 1.25
    assert "loss 16 at step 8 is over 10x the median 1.5 of the previous 7 steps" in guard.check(8, metrics(16.0))
    assert guard.check(9, metrics(0.7, grad=float("inf"))) == "non-finite grad_norm at step 9"
    # A resumed run starts from the logged curve.
    assert DivergenceGuard([{"step": s, "loss": 1.0} for s in range(3)]).check(4, metrics(50.0))


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1e-4"])
def test_a_learning_rate_that_cannot_train_is_refused_at_start_up(value):
    from configs import common
    from distill_jax import train_setup

    config = common.base_config()
    config.optim.learning_rate = float(value)
    with pytest.raises(ValueError, match=r"^config.optim.learning_rate=.*: must be a finite number > 0"):
        train_setup.check_config(config)


@pytest.mark.slow
def test_a_blow_up_stops_before_it_is_saved_and_its_last_good_checkpoint_survives(
        tiny_teacher, data_cache, compilation_cache, tmp_path):
    """Steps 1-4 at a sane rate (checkpoints 2, 4), then the same workdir at learning_rate=1e3 on
    purpose: the loss spikes, the run stops naming step 4 before saving anything newer; a rerun at
    the sane rate resumes from 4 and trains to 10 with keep_checkpoints=2, and step 4 is still
    there (it is recorded as the last good one)."""
    from distill_jax.divergence import Diverged
    from distill_jax.train import run_training

    workdir = str(tmp_path / "w")
    sane = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    sane.stop_after_step = 4
    assert run_training(sane, workdir).final_step == 4

    hot = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    hot.optim.learning_rate, hot.allow_config_change = 1e3, True
    hot.total_steps = 10
    with pytest.raises(Diverged) as info:
        run_training(hot, workdir)
    message = str(info.value)
    assert "\n" not in message and "the newest checkpoint before it is step 4" in message, message
    steps = sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]  # nothing after the spike was saved
    assert not (tmp_path / "w" / "LOCK").exists()

    sane.stop_after_step, sane.total_steps, sane.allow_config_change = 0, 10, True
    result = run_training(sane, workdir)
    assert result.summary["steps"]["resumed_from"] == 4 and result.final_step == 10
    steps = sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 8, 10]  # the newest 2, plus the last checkpoint before the spike


# ----------------------------------------------------------------------------------------------
# 4. A full or read-only disk during a save
# ----------------------------------------------------------------------------------------------

def mount_tmpfs(mount: Path, size_bytes: int, read_only: bool = False) -> bool:
    """A real filesystem of `size_bytes` at `mount` (tmpfs; needs root). False when not allowed."""
    mount.mkdir(parents=True, exist_ok=True)
    options = f"{'ro,' if read_only else ''}size={size_bytes}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True).returncode == 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_full_disk_stops_the_run_at_the_failed_save_with_one_line(
        run_8dev, tiny_teacher, data_cache, compilation_cache, tmp_path):
    """The workdir on a real tmpfs with room for 1.8 checkpoints: the save of step 4 runs out of
    space (step 2's is still kept)."""
    from train_fixtures import logged_losses

    one_checkpoint = dir_bytes(Path(run_8dev.summary["workdir"]) / "checkpoints" / "6")
    disk = tmp_path / "small_disk"
    if not mount_tmpfs(disk, int(1.8 * one_checkpoint)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    config = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    workdir = disk / "w"
    config_file = write_config_file(tmp_path / "tiny_full.py", config)
    try:
        proc = run_main([f"--config={config_file}", f"--workdir={workdir}"], devices=8)
        self_check = sorted(p.name for p in (workdir / "checkpoints").iterdir())
        moved = tmp_path / "roomy"
        shutil.copytree(workdir, moved)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert "checkpoint save of step 4 failed: No space left on device" in line, line
    assert f"free in {workdir}/checkpoints" in line and "resume from step 2" in line, line
    assert "student exported" not in proc.stdout  # stopped at the failed save, did not finish
    assert [n for n in self_check if "tmp" in n] == [] and "2" in self_check  # nothing partial left
    assert not (moved / "LOCK").exists() and not (moved / "summary.json").exists()
    # On a disk with room, the rerun resumes from step 2 and ends at the uninterrupted run's losses.
    from distill_jax.train import run_training
    resumed = run_training(config, str(moved))
    assert resumed.summary["steps"]["resumed_from"] == 2
    reference = logged_losses(run_8dev)
    for step, loss in logged_losses(resumed).items():
        assert loss == pytest.approx(reference[step], rel=1e-5), step


# ----------------------------------------------------------------------------------------------
# 5. Bad inputs: one line each
# ----------------------------------------------------------------------------------------------

def test_a_binary_corpus_is_refused_naming_the_file(tmp_path):
    from distill_jax.data.sources import refuse_binary

    with pytest.raises(ValueError, match=r"^data.paths: /bin/ls is not a UTF-8 text file \(a NUL byte"):
        refuse_binary("/bin/ls")
    latin1 = tmp_path / "latin1.txt"  # not UTF-8 throughout
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 10)
    with pytest.raises(ValueError, match=r"\(10 invalid UTF-8 sequences in its first 1024 bytes\)"):
        refuse_binary(str(latin1))
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 2 + b"and then plain text")  # stray bytes: read
    refuse_binary(str(latin1))
    cut = tmp_path / "cut.txt"  # a multibyte character across the 1024-byte sample is fine
    cut.write_bytes(b"a" * 1023 + "\u00e9".encode() + b" more text")
    refuse_binary(str(cut))


def test_corrupt_teacher_files_are_named_with_their_cause(tiny_teacher, tmp_path):
    from distill_jax.models import hf_io

    broken = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, broken)
    (broken / "config.json").write_text('{"hidden_size": 32,')
    with pytest.raises(ValueError, match=rf"^{broken}/config.json is not valid JSON \(Expecting"):
        hf_io.read_hf_config(broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"^{weights} is truncated: its header lists \d+ bytes but the file has"):
        hf_io.read_safetensors(weights)


@pytest.mark.slow
def test_bad_command_lines_end_in_one_line(tiny_teacher, data_cache, tmp_path):
    config = tiny_config(tiny_teacher, data_cache)
    config_file = write_config_file(tmp_path / "tiny.py", config)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    read_only = tmp_path / "ro"
    ro_mounted = mount_tmpfs(read_only, 1 << 20, read_only=True)
    corpus = tmp_path / "binary_corpus"
    corpus.write_bytes(Path("/bin/ls").read_bytes()[:4096])
    binary = tiny_config(tiny_teacher, str(tmp_path / "c"))
    binary.data.source, binary.data.paths = "text", str(corpus)
    (tmp_path / "bin").mkdir()
    binary_file = write_config_file(tmp_path / "bin" / "binary.py", binary)
    w = tmp_path / "w"
    from distill_jax import run_config
    owned = tmp_path / "owned"  # a workdir whose config.json is `config`
    owned.mkdir()
    run_config.write(config, str(owned), None)
    owned_before = (owned / "config.json").read_bytes()
    cases = {
        "another config on resume": ([f"--config={config_file}", "--config.optim.learning_rate=0.01",
                                      "--config.seed=5", f"--workdir={owned}"],
                                     f"--workdir={owned} belongs to another config: optim.learning_rate "
                                     f"(0.001 -> 0.01), seed (0 -> 5) change what its checkpoints mean; use a "
                                     f"fresh --workdir, or continue from them on purpose with "
                                     f"--config.allow_config_change=True"),
        "workdir is a file": ([f"--config={config_file}", f"--workdir={a_file}"],
                              f"--workdir={a_file} is a file, not a directory"),
        "missing recipe": (["--config=configs/missing.py", f"--workdir={w}"],
                           "configs/missing.py"),
        "bad recipe arg": (["--config=configs/quickstart.py:map=bogus", f"--workdir={w}"],
                           "config arg 'map' unknown"),
        "misspelt recipe arg": (["--config=configs/quickstart.py:stepz=10", f"--workdir={w}"],
                                "config arg 'stepz' unknown"),
        "non-integer override": ([f"--config={config_file}", "--config.batch_size=abc", f"--workdir={w}"],
                                 "batch_size"),
        "nan learning rate": ([f"--config={config_file}", "--config.optim.learning_rate=nan", f"--workdir={w}"],
                              "config.optim.learning_rate=nan: must be a finite number > 0"),
        "binary corpus": ([f"--config={binary_file}", f"--workdir={w}"], f"{corpus} is not a UTF-8 text file"),
    }
    if ro_mounted:
        cases["read-only workdir"] = ([f"--config={config_file}", f"--workdir={read_only}/w"],
                                      f"--workdir={read_only}/w is not writable (Read-only file system")
    try:
        for name, (args, expected) in cases.items():
            proc = run_main(args, timeout=300, devices=1)
            assert proc.returncode in (1, 2), (name, proc.stderr[-2000:])
            line = one_error_line(proc.stderr)
            assert expected in line, (name, line)
            assert len(line) < 700, (name, line)
    finally:
        if ro_mounted:
            subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert not (w / "config.json").exists()
    assert (owned / "config.json").read_bytes() == owned_before and not (owned / "LOCK").exists()


# ----------------------------------------------------------------------------------------------
# 6. A quiet fallback from a damaged checkpoint; transient read errors retried
# ----------------------------------------------------------------------------------------------

def test_a_transient_read_error_is_retried_not_called_corruption(tmp_path, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    from distill_jax import checkpoint as ckpt_lib
    from test_checkpoint import abstract_like, assert_trees_equal, saved_steps

    states = saved_steps(tmp_path)
    monkeypatch.setattr(ckpt_lib, "RESTORE_BACKOFF_S", 0.01)
    real_restore, calls = ocp.CheckpointManager.restore, []

    def flaky_restore(self, step, *args, **kwargs):  # the storage fails once, then reads fine
        calls.append(step)
        if len(calls) == 1:
            raise OSError(5, "Input/output error (injected: a storage hiccup)")
        return real_restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", flaky_restore)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), max_to_keep=3)
    restored = ckpt.restore_latest(abstract_like(states[4]))
    assert restored.step == 4 and calls == [4, 4]
    assert_trees_equal(restored.state, states[4])
    err = capsys.readouterr().err
    assert "retrying" in err and "unreadable" not in err and not list(tmp_path.glob("corrupt-*"))
    ckpt.close()


QUIET_FALLBACK = """
import sys
from test_checkpoint import abstract_like, saved_steps, make_state
from distill_jax import sharding
from distill_jax.checkpoint import Checkpointer
import jax
directory, kind = sys.argv[1], sys.argv[2]
ckpt = Checkpointer(directory, max_to_keep=3)
mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
restored = ckpt.restore_latest(abstract_like(make_state(mesh, seed=4)))
print("restored", restored.step, flush=True)
ckpt.close()
"""


@pytest.mark.parametrize("kind", ["largest array", "smallest array", "array metadata"])
def test_a_damaged_checkpoint_costs_one_warning_line_whatever_file_is_hit(tmp_path, kind):
    """In a fresh process (so every late asyncio/unraisable report reaches its stderr): one
    warning line, nothing else, however the damage fails orbax's reads."""
    from test_checkpoint import saved_steps

    saved_steps(tmp_path, steps=(2, 4))
    arrays = sorted((tmp_path / "4" / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)
    target = {"largest array": arrays[-1], "smallest array": arrays[0],
              "array metadata": tmp_path / "4" / "state" / "_METADATA"}[kind]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    env = subprocess_env(8)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'tests'}"
    proc = subprocess.run([sys.executable, "-c", QUIET_FALLBACK, str(tmp_path), kind], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restored 2" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "checkpoint step 4" in lines[0] and "unreadable" in lines[0], proc.stderr[-5000:]
