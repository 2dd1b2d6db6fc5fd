"""End-to-end tests of the trainer on a tiny real configuration.

A random-weight BERT teacher (4 layers x 32, made by transformers/torch and saved as safetensors with
the real MiniLM tokenizer) is distilled into a 2 x 16 student with MiniLMv2 relations plus an HS
term (so the checkpoint also carries learned HS projections), dropout on, on the builtin corpus.

What is checked against an independent reference:
  * a run killed by SIGTERM after a checkpoint and restarted ends at the uninterrupted run's loss;
  * the same config on 1 device, on 8 devices as data=2 x fsdp=2 x tensor=2, and as 2 processes x
    4 devices (jax.distributed over localhost, gloo) logs the same losses at every step;
  * TensorBoard event files hold the logged values (read back with TensorFlow's event reader);
  * the export loads with transformers (PyTorch) and computes what our final student computes;
  * a teacher that cannot be found offline fails fast with one line; impossible values name the field.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from train_fixtures import (REPO, TOTAL_STEPS, _history, logged_losses, subprocess_env,  # noqa: F401
                            tiny_config, write_config_file)


def test_run_leaves_checkpoints_events_export_summary_plot(run_8dev):
    workdir = Path(run_8dev.summary["workdir"])
    assert run_8dev.final_step == TOTAL_STEPS and not run_8dev.preempted
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 6]  # every 2 steps, the newest 2 kept
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"]["final"] == TOTAL_STEPS
    assert set(summary["loss_first_logged"]) >= {"loss", "loss/minilmv2", "loss/hs",
                                                 "loss/minilmv2/qq", "loss/minilmv2/kk", "loss/minilmv2/vv"}
    total = summary["final_step_metrics"]["loss"]
    terms = summary["final_step_metrics"]
    assert total == pytest.approx(terms["loss/minilmv2"] + 0.5 * terms["loss/hs"], rel=1e-5)
    assert summary["throughput"]["tokens_per_sec"] > 0 and summary["throughput"]["mfu"] > 0
    # The per-parameter table is in a file (every student parameter, one row each), not on the console.
    table = (workdir / "parameters.txt").read_text()
    assert "| Name " in table and table.count("/kernel ") >= 2 * 4  # 2 layers x Q, K, V, O at least
    total = int(table.split("Total: ")[1].split()[0].replace(",", ""))
    from safetensors.numpy import load_file
    exported = load_file(workdir / "export" / "model.safetensors")
    assert total == sum(v.size for v in exported.values())  # the exported student, counted apart
    png = (workdir / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # Everything the run left is where distill_jax/workdir_layout.py says (the lock went with the run).
    from distill_jax import workdir_layout
    layout = {workdir_layout.CONFIG, workdir_layout.PARAMETERS, workdir_layout.CHECKPOINTS, workdir_layout.TENSORBOARD,
              workdir_layout.EXPORT, workdir_layout.SUMMARY, workdir_layout.LOSS_CURVES}
    assert {p.name for p in workdir.iterdir()} == layout
    assert (workdir / workdir_layout.CHECKPOINTS / workdir_layout.HISTORY).is_file()


def test_plan_on_fake_cpu_devices_reports_the_runs_compiled_memory(run_8dev, tiny_teacher, data_cache,
                                                                   compilation_cache):
    """python -m distill_jax.plan --topology=cpu:8 builds the step through the same builder from
    abstract shapes (no weights, no data): XLA's per-device memory must equal what train.py's own
    compiled step reported for the same config on the same 8 fake devices."""
    from distill_jax import plan

    config = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    result = plan.plan_config(config, plan.parse_topology("cpu:8"))
    run_memory = run_8dev.summary["memory_per_device_bytes"]
    fields = ("arguments", "outputs", "temporaries", "aliased", "total")
    assert run_memory["total"] > 0
    assert {k: result["memory"][k] for k in fields} == {k: run_memory[k] for k in fields}
    written = json.loads((Path(run_8dev.summary["workdir"]) / "config.json").read_text())
    assert written == json.loads(json.dumps(config.to_dict()))  # the config the run started with


def test_tensorboard_events_hold_the_logged_values(run_8dev):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir = Path(run_8dev.summary["workdir"])
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    acc = EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()  # the documented way (docs/configs.md): Scalars(tag) -> [(wall_time, step, value)]
    seen = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    for tag in ("loss", "loss/minilmv2", "loss/minilmv2/qq", "loss/hs", "learning_rate", "grad_norm",
                "perf/steps_per_sec", "perf/tokens_per_sec", "perf/mfu"):
        assert tag in seen, f"tag {tag} missing from {sorted(seen)}"
    history = _history(str(workdir))
    for row in history:
        assert seen["loss"][row["step"]] == pytest.approx(row["loss"], rel=1e-6)  # float32 values
        assert seen["loss/hs"][row["step"]] == pytest.approx(row["loss/hs"], rel=1e-6)
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert sorted(seen["loss"]) == list(range(1, TOTAL_STEPS + 1))


def test_export_loads_with_transformers_and_matches_our_student(run_8dev, tiny_teacher):
    import torch
    import transformers
    from distill_jax import models

    export = Path(run_8dev.summary["workdir"]) / "export"
    hf_model = transformers.AutoModel.from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    assert tokenizer.vocab_size == 30522
    assert hf_model.config.num_hidden_layers == 2 and hf_model.config.hidden_size == 16

    ours, _, report = models.load_pretrained(export)
    assert not report.missing
    enc = tokenizer(["the student was exported", "in the format transformers reads"], padding=True,
                    return_tensors="np")
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(enc["input_ids"]),
                          attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state.numpy()
    mine = np.asarray(ours(enc["input_ids"], enc["attention_mask"]).hidden_states[-1])
    valid = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(mine[valid], theirs[valid], atol=1e-4)


@pytest.mark.slow
def test_sigterm_then_restart_reproduces_the_uninterrupted_run(run_8dev, tiny_teacher, data_cache, tmp_path,
                                                               compilation_cache):
    """A subprocess gets SIGTERM (a preemption notice) as soon as its first step is logged: it
    finishes the step it is in, saves a checkpoint and exits 0. Restarted on the same workdir, the run must
    end exactly where the uninterrupted reference run ended (same params, optimizer state, data
    position and dropout keys)."""
    from distill_jax.train import run_training

    config = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    workdir = tmp_path / "killed"
    config_file = write_config_file(tmp_path / "tiny_killed.py", config)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), f"--config={config_file}", f"--workdir={workdir}"],
        cwd=REPO, env=subprocess_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[distill] step 1/"):
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-3000:]
    assert "SIGTERM" in output and "rerun the same command to resume" in output, output[-3000:]
    assert "| Name " not in output and "table in " in output  # totals only; the table is a file
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 1 <= saved[-1] < TOTAL_STEPS, (saved, output[-2000:])
    assert not (workdir / "export").exists()  # a preempted run does not export

    resumed = run_training(config, str(workdir))
    assert resumed.summary["steps"]["resumed_from"] == saved[-1]
    reference = run_8dev.final_metrics
    for key in ("loss", "loss/minilmv2", "loss/hs", "grad_norm", "learning_rate"):
        assert resumed.final_metrics[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-8), key
    ref_losses, new_losses = logged_losses(run_8dev), logged_losses(resumed)
    assert sorted(new_losses) == list(range(1, TOTAL_STEPS + 1))  # the curve survives restarts
    for step in range(1, TOTAL_STEPS + 1):
        assert new_losses[step] == pytest.approx(ref_losses[step], rel=1e-5), step


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_resumes_from_the_older_one(run_8dev, tiny_teacher, data_cache,
                                                                  tmp_path, compilation_cache):
    """The reference run's checkpoints (steps 4 and 6) with step 6's largest array file cut to a
    third, as a failed copy leaves it: rerunning warns once naming step 6 and the cause, keeps it
    aside, resumes from step 4 and logs the reference run's losses at steps 5 and 6."""
    config = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    workdir = tmp_path / "damaged"
    shutil.copytree(Path(run_8dev.summary["workdir"]) / "checkpoints", workdir / "checkpoints")
    data_file = max((workdir / "checkpoints" / "6" / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 3])
    config_file = write_config_file(tmp_path / "tiny_damaged.py", config)
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), f"--config={config_file}", f"--workdir={workdir}"],
        cwd=REPO, env=subprocess_env(8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "unreadable" in line]
    assert len(ours) == 1, ours
    assert ours[0].startswith(f"[distill] warning: checkpoint step 6 in {workdir}/checkpoints is unreadable")
    assert "is not valid for value of size" in ours[0] and "trying step 4" in ours[0]
    assert "Traceback" not in proc.stderr and "Task exception" not in proc.stderr, proc.stderr[-3000:]
    assert "resumed from checkpoint step 4" in proc.stdout
    (aside,) = (workdir / "checkpoints").glob("corrupt-6-*")
    assert (aside / "state" / "d" / data_file.name).is_file()

    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"]["resumed_from"] == 4 and summary["steps"]["final"] == TOTAL_STEPS
    reference, resumed = logged_losses(run_8dev), {row["step"]: row["loss"] for row in _history(str(workdir))}
    assert sorted(resumed) == list(range(1, TOTAL_STEPS + 1))
    for step in (5, 6):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5), step
    for key in ("loss", "loss/hs", "grad_norm"):
        assert summary["final_step_metrics"][key] == pytest.approx(run_8dev.final_metrics[key], rel=1e-5)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 6]


@pytest.mark.slow
def test_same_losses_on_1_device_8_devices_and_2_processes(run_8dev, tiny_teacher, data_cache, tmp_path,
                                                          compilation_cache):
    from distill_jax.train import run_training

    # 2 processes x 4 CPU devices on localhost, jax.distributed with gloo collectives, started first
    # so they run while this process does the 1-device run.
    config = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    config_file = write_config_file(tmp_path / "tiny_2proc.py", config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir_2p = tmp_path / "two_processes"
    procs = [subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), f"--config={config_file}", f"--workdir={workdir_2p}",
         "--distributed=on", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}"],
        cwd=REPO, env=subprocess_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]

    single = run_training(tiny_config(tiny_teacher, data_cache, compilation_cache, devices=1),
                                str(tmp_path / "one_device"))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    assert "2 process(es)" in outputs[0]
    two_proc = {row["step"]: row["loss"] for row in _history(str(workdir_2p))}

    reference = logged_losses(run_8dev)
    one = logged_losses(single)
    assert sorted(reference) == sorted(one) == sorted(two_proc) == list(range(1, TOTAL_STEPS + 1))
    for step in reference:
        assert one[step] == pytest.approx(reference[step], rel=2e-4), ("1 device", step)
        assert two_proc[step] == pytest.approx(reference[step], rel=2e-4), ("2 processes", step)
    # The loss moved: the runs are not trivially equal because nothing trained.
    assert abs(reference[TOTAL_STEPS] - reference[1]) > 1e-3


def _start_two_processes(config_file: Path, workdir: Path) -> list[subprocess.Popen]:
    """launch/local.sh's 2 x 4-device job on localhost (jax.distributed, gloo collectives)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), f"--config={config_file}", f"--workdir={workdir}",
         "--distributed=on", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}"],
        cwd=REPO, env=subprocess_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]


DEAD_PEER_STEPS = 60          # long enough that the kill lands mid-run on a loaded machine
DEAD_PEER_KILL_AFTER = 20     # kill -9 process 1 once checkpoint 20 is complete on disk
# The survivor must be gone this soon after the loss: our peer watch's timeout (20 s) plus one beat
# and the margin a loaded 2-core machine needs.
DEAD_PEER_EXIT_BOUND_S = 20 + 15


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_a_lost_peer_ends_the_survivor_promptly_and_the_rerun_resumes(tiny_teacher, data_cache, tmp_path,
                                                                     compilation_cache, how):
    """Process 1 of a 2-process job is lost after checkpoint 20: kill -9 (its sockets close, so the
    survivor's collective usually fails at once) or SIGSTOP (a frozen VM: the collective just waits,
    and the coordination service's heartbeat timeout is what ends it). Either way process 0 ends
    within the bound with one line naming the checkpoint to resume from, exit 75, no native crash
    dump; after the kill, rerunning the same command resumes there and logs the losses of an
    uninterrupted run."""
    from distill_jax.train import run_training

    config = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    config.total_steps = DEAD_PEER_STEPS
    config.checkpoint_every = 10
    config.keep_checkpoints = 10
    config.export = False
    config_file = write_config_file(tmp_path / "tiny_dead_peer.py", config)
    workdir = tmp_path / "dead_peer"
    procs = _start_two_processes(config_file, workdir)
    try:
        deadline = time.time() + 400
        while not (workdir / "checkpoints" / str(DEAD_PEER_KILL_AFTER)).is_dir():  # finalized: renamed in
            assert procs[0].poll() is None and time.time() < deadline, procs[0].communicate()[1][-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        killed_at = time.time()
        out, err = procs[0].communicate(timeout=300)
        exit_s = time.time() - killed_at
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    print(f"process 0 ended {exit_s:.1f} s after the {how} of process 1")
    assert procs[0].returncode == 75, err[-3000:]
    assert exit_s < DEAD_PEER_EXIT_BOUND_S, exit_s
    lost = [line for line in err.splitlines() if "a peer process was lost" in line]
    assert len(lost) == 1, err[-3000:]
    resume_step = int(lost[0].split("resumes from checkpoint ")[1])
    assert resume_step >= DEAD_PEER_KILL_AFTER and f"at step " in lost[0]
    for crash in ("Fatal Python error", "Check failure", "*** SIGABRT", "Traceback", "F0000"):
        assert crash not in err, err[-3000:]
    last_logged = max(int(m.group(1)) for m in map(re.compile(r"\[distill\] step (\d+)/").match,
                                                   out.splitlines()) if m)
    assert last_logged < DEAD_PEER_STEPS  # it did stop mid-run
    if how == "freeze":
        return  # the rerun is the same as after a kill

    # Rerun the same command: resumes from the named checkpoint and finishes.
    procs = _start_two_processes(config_file, workdir)
    try:
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (o, e) in zip(procs, outputs):
        assert proc.returncode == 0, e[-3000:]
    assert f"resumed from checkpoint step {resume_step}" in outputs[0][0]
    resumed = {row["step"]: row["loss"] for row in _history(str(workdir))}
    assert sorted(resumed) == list(range(1, DEAD_PEER_STEPS + 1))

    reference = logged_losses(run_training(config, str(tmp_path / "uninterrupted")))
    for step in range(1, DEAD_PEER_STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=2e-4), step
    assert abs(reference[DEAD_PEER_STEPS] - reference[resume_step]) > 1e-3  # it kept training


def test_nan_stops_the_run_naming_the_step_and_the_term(tiny_teacher, data_cache, compilation_cache,
                                                        tmp_path):
    """A teacher whose last FFN is NaN poisons the hidden states (hs) but not the last layer's Q/K/V
    (minilmv2): the run must stop at step 1 naming hs, before any checkpoint holds NaN."""
    from safetensors.numpy import load_file, save_file

    from distill_jax.train import run_training

    poisoned = tmp_path / "nan_teacher"
    shutil.copytree(tiny_teacher, poisoned)
    tensors = load_file(poisoned / "model.safetensors")
    name = next(k for k in tensors if k.endswith("layer.3.output.dense.weight"))
    tensors[name] = np.full_like(tensors[name], np.nan)
    save_file(tensors, poisoned / "model.safetensors", metadata={"format": "pt"})

    config = tiny_config(poisoned, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    with pytest.raises(FloatingPointError, match=r"non-finite terms/hs at step 1\b") as info:
        run_training(config, str(tmp_path / "w"))
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "w" / "checkpoints").glob("[0-9]*"))


def test_missing_teacher_fails_fast_with_one_line(tmp_path):
    env = subprocess_env(1)
    env["HF_HOME"] = str(tmp_path / "empty_hf_home")  # nothing cached
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--config=configs/mha_l6_h384.py",
         f"--workdir={tmp_path / 'w'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.time() - start
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "bert-base-uncased" in lines[0] and "config.teacher.name" in lines[0], lines[0]
    assert "local directory" in lines[0]
    assert elapsed < 60, f"took {elapsed:.1f}s"
    assert not (tmp_path / "w" / "checkpoints").exists()


def _apply(config, override: dict) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and key != "objective":
            _apply(config[key], value)
        else:
            config[key] = value


@pytest.mark.parametrize("override, message", [
    ({"batch_size": 6}, r"config\.batch_size=6 / config\.microbatches=1"),  # 6 rows over data*fsdp = 4
    ({"microbatches": 3}, r"config\.microbatches=3"),                         # 8 % 3
    ({"mesh": {"data": 3}}, r"mesh data\*fsdp\*tensor = 3\*2\*2 = 12"),      # 8 devices
    ({"mesh": {"devices": 9}}, r"config\.mesh\.devices=9"),
    ({"objective": {"minilmv2": {"weight": 1.0, "relation_heads": 5}}}, r"objective\.minilmv2\.relation_heads"),
    ({"objective": {"hs": {"weight": 1.0, "map": "identity"}}}, r"objective\.hs\.map"),
    ({"student": {"num_heads": 3}}, r"config\.student\.hidden_size=16 is not divisible"),
    ({"data": {"seq_len": 100}}, r"config\.data\.seq_len=100"),  # the teacher has 64 positions
    ({"optim": {"warmup_steps": 50}}, r"optim\.warmup_steps=50"),
])
def test_impossible_values_name_the_field_before_compiling(tiny_teacher, data_cache, tmp_path,
                                                            override, message):
    from distill_jax.train import run_training

    config = tiny_config(tiny_teacher, data_cache, data=-1, fsdp=2, tensor=2)
    _apply(config, override)
    start = time.time()
    with pytest.raises(ValueError, match=message) as info:
        run_training(config, str(tmp_path / "w"))
    assert "\n" not in str(info.value)
    assert time.time() - start < 30
    assert not (tmp_path / "w" / "checkpoints").exists()


def _run_main_until(config_file: Path, workdir: Path, trigger: str, *, num_devices: int = 8,
                    timeout: float = 300) -> tuple[int, str, float]:
    """Runs main.py, sends SIGTERM when a stdout line starts with `trigger`; returns (exit code,
    all output, seconds from the signal to the exit)."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), f"--config={config_file}", f"--workdir={workdir}"],
        cwd=REPO, env=subprocess_env(num_devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    lines, signalled = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(trigger):
                proc.send_signal(signal.SIGTERM)
                signalled = time.time()
                break
        rest, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert signalled is not None, "".join(lines)[-3000:]
    return proc.returncode, "".join(lines) + rest, time.time() - signalled


@pytest.mark.slow
def test_sigterm_during_the_data_build_ends_at_once_with_one_line(tiny_teacher, tmp_path):
    """The step is compiled before any data work; a SIGTERM while the corpus is tokenized ends the
    run in one line (exit 143) without a complete cache entry, and the next run builds it."""
    config = tiny_config(tiny_teacher, str(tmp_path / "cache"))
    config.data.max_documents = 0          # the whole builtin corpus: long enough to interrupt
    config.data.build_workers = 1
    config.compilation_cache_dir = "off"
    config_file = write_config_file(tmp_path / "tiny_sigterm_data.py", config)
    code, output, exit_s = _run_main_until(config_file, tmp_path / "w", "[distill_jax.data] cache miss")
    assert code == 143, output[-3000:]
    assert output.index("step compiled") < output.index("cache miss")  # compile first, then data
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == ["error: stopped by SIGTERM during the data build; nothing is half-written, "
                      "rerun the same command to continue"], output[-3000:]
    assert "Traceback" not in output
    assert not list((tmp_path / "cache").glob("*/meta.json"))  # no entry claims to be complete
    assert exit_s < 30, exit_s
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_sigterm_during_the_compile_ends_at_once(tiny_teacher, data_cache, tmp_path):
    config = tiny_config(tiny_teacher, data_cache)
    config.compilation_cache_dir = "off"   # a real compile, not a cache load
    config_file = write_config_file(tmp_path / "tiny_sigterm_compile.py", config)
    code, output, exit_s = _run_main_until(config_file, tmp_path / "w", "[distill] attention:")
    assert code == 143, output[-3000:]
    assert re.search(r"^error: stopped by SIGTERM during the (model build|compile);", output, re.M), output[-3000:]
    assert "Traceback" not in output and "step 1/" not in output
    assert exit_s < 30, exit_s


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(run_8dev, tiny_teacher, data_cache,
                                                                       tmp_path, compilation_cache):
    """Only process 1 hears SIGTERM (mid-run): both processes stop after the same step, save it and
    exit 0 (the stop is agreed through the coordination service, preemption.py); the rerun resumes
    and ends at the uninterrupted run's losses."""
    config = tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2)
    config.total_steps = 30
    config.checkpoint_every = 50  # only the stop's own save
    config.export = False
    config_file = write_config_file(tmp_path / "tiny_2proc_sigterm.py", config)
    workdir = tmp_path / "w"
    procs = _start_two_processes(config_file, workdir)
    try:
        for line in procs[0].stdout:
            if line.startswith("[distill] step 3/"):
                procs[1].send_signal(signal.SIGTERM)
                break
        outputs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    stopped = re.search(r"stopping at step (\d+) \(SIGTERM\)", outputs[0][0])
    assert stopped, outputs[0][0][-3000:]
    stop_step = int(stopped.group(1))
    assert 3 < stop_step < 30
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [stop_step]

    procs = _start_two_processes(config_file, workdir)
    try:
        outputs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs), outputs[0][1][-3000:]
    assert f"resumed from checkpoint step {stop_step}" in outputs[0][0]
    from distill_jax.train import run_training
    reference = logged_losses(run_training(config, str(tmp_path / "uninterrupted")))
    resumed = {row["step"]: row["loss"] for row in _history(str(workdir))}
    for step in range(1, 31):
        assert resumed[step] == pytest.approx(reference[step], rel=2e-4), step


def test_the_compilation_cache_defaults_to_jax_variable_then_the_workdir(tiny_teacher, data_cache, tmp_path,
                                                                           monkeypatch):
    """compilation_cache_dir '' = $JAX_COMPILATION_CACHE_DIR when set (the test session sets it),
    else <workdir>/compilation_cache: a restarted run finds its step there."""
    from distill_jax.train import compilation_cache_dir

    config = tiny_config(tiny_teacher, data_cache)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "machine_wide"))
    assert compilation_cache_dir(config, "gs://b/run") == str(tmp_path / "machine_wide")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    assert compilation_cache_dir(config, "gs://b/run") == "gs://b/run/compilation_cache"
    config.compilation_cache_dir = "off"
    assert compilation_cache_dir(config, str(tmp_path)) is None
    config.compilation_cache_dir = str(tmp_path / "elsewhere")
    assert compilation_cache_dir(config, str(tmp_path)) == str(tmp_path / "elsewhere")
