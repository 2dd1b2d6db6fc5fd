"""Time from launch to step 1 of a multi-process job on localhost (a pod rehearsal), by phase.

    python -m benchmarks.pod_startup --processes=2,4 --modes=cold,prepared,warm_restart \
        [--repo=<another checkout, e.g. of an older commit>] [--out=startup.json]

Each process is `python main.py --distributed=on` on 127.0.0.1 with one CPU device and its own
local cache directory (as the hosts of a pod each have their own disk); the workdir is shared.
The job: the quickstart recipe (offline all-MiniLM-L6-v2 -> 3x384, 32 x 64 tokens a step) on the
English Wikipedia sample of ../shared/data (4.4 M tokens), 2 steps.

Modes:
  cold          nothing prepared: every process starts from an empty cache
  prepared      `python -m distill_jax.data.prepare` first (timed apart: tokens/s), then the job
                reads that cache (--config.data.cache_dir)
  warm_restart  a cold job of 4 steps stopped after step 2 (as if preempted), then the same command
                again: it resumes, and its step comes from the persistent compilation cache in
                the workdir (the same total_steps: the schedule is part of the compiled step, so a
                changed total_steps compiles anew)
Figures: seconds from launch to process 0's first step line, and process 0's compile seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKI = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "corpus", "wikipedia_en_sample", "text"))


def _overrides(steps: int) -> list[str]:
    return ["--config.data.source=wikiextractor", f"--config.data.paths={WIKI}",
            "--config.data.max_documents=0", f"--config.total_steps={steps}", "--config.export=False",
            "--config.log_every=1", "--config.checkpoint_every=2", "--config.optim.warmup_steps=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(repo: str, processes: int, workdir: str, local_root: str, steps: int,
           extra: list[str]) -> dict:
    """Starts the job, returns {'to_step_s', 'compile_s', 'first_step'} of process 0."""
    port = _free_port()
    procs = []
    start = time.time()
    for i in range(processes):
        env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu", PYTHONPATH=repo,
                   DISTILL_JAX_CACHE=os.path.join(local_root, f"host{i}", "data"),
                   HOME=os.path.join(local_root, f"host{i}"), HF_HUB_OFFLINE="1")
        os.makedirs(env["HOME"], exist_ok=True)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(repo, "main.py"), "--config=configs/quickstart.py",
             f"--workdir={workdir}", "--distributed=on", f"--coordinator_address=127.0.0.1:{port}",
             f"--num_processes={processes}", f"--process_id={i}", *_overrides(steps), *extra],
            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    out: dict = {}
    lines = []
    for line in procs[0].stdout:
        lines.append(line)
        m = re.search(r"step compiled in ([\d.]+)s", line)
        if m:
            out["compile_s"] = float(m.group(1))
        m = re.match(r"\[distill\] step (\d+)/", line)
        if m and "to_step_s" not in out:
            out["to_step_s"] = round(time.time() - start, 1)
            out["first_step"] = int(m.group(1))
    for proc in procs:
        proc.wait(timeout=1800)
    if any(p.returncode for p in procs) or "to_step_s" not in out:
        raise RuntimeError("the job failed:\n" + "".join(lines[-40:]))
    out["wall_s"] = round(time.time() - start, 1)
    return out


def prepare(repo: str, cache_dir: str, workers: int | None) -> dict:
    start = time.time()
    cmd = [sys.executable, "-m", "distill_jax.data.prepare", "--config=configs/quickstart.py",
           f"--cache_dir={cache_dir}", *_overrides(2)[:3]]
    if workers:
        cmd.append(f"--workers={workers}")
    proc = subprocess.run(cmd, cwd=repo, env=dict(os.environ, PYTHONPATH=repo), capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    seconds = time.time() - start
    tokens = int(re.search(r"documents, ([\d,]+) tokens", proc.stdout).group(1).replace(",", ""))
    return {"prepare_s": round(seconds, 1), "tokens": tokens, "tokens_per_s": round(tokens / seconds)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", default="2", help="comma list")
    p.add_argument("--modes", default="cold,prepared,warm_restart")
    p.add_argument("--repo", default=REPO, help="the checkout whose main.py runs")
    p.add_argument("--prepare_workers", default="1,2", help="prepare's --workers, comma list")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    rows = []
    for processes in [int(x) for x in args.processes.split(",")]:
        for mode in args.modes.split(","):
            root = tempfile.mkdtemp(prefix=f"pod_startup_{mode}_{processes}_")
            workdir = os.path.join(root, "workdir")
            row = {"processes": processes, "mode": mode, "repo": args.repo}
            if mode == "prepared":
                for workers in args.prepare_workers.split(","):
                    cache = os.path.join(root, f"prepared_w{workers}")
                    row[f"prepare_workers_{workers}"] = prepare(args.repo, cache, int(workers))
                row.update(launch(args.repo, processes, workdir, root, 2,
                                  [f"--config.data.cache_dir={cache}"]))
            elif mode == "cold":
                row.update(launch(args.repo, processes, workdir, root, 2, []))
            elif mode == "warm_restart":
                first = launch(args.repo, processes, workdir, root, 4, ["--config.stop_after_step=2"])
                row["first_run"] = first
                row.update(launch(args.repo, processes, workdir, root, 4, []))
            else:
                raise SystemExit(f"--modes: unknown mode {mode!r}")
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
