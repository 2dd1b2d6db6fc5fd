"""python -m distill_jax.tools.sync_logs: a pod host's log copied to the workdir while it grows and,
whole, after the process ends (launch/pod_worker.sh runs it beside each host's trainer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from gcs_emulator import GCS_EMULATOR_BUCKET, gcs_emulator  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]


def test_copies_while_the_process_runs_and_the_whole_log_after_it_ends(tmp_path):
    src, dest, done = tmp_path / "worker-0.log", tmp_path / "workdir" / "logs" / "worker-0.log", tmp_path / "exit"
    # The "trainer": appends a line every 0.1 s for ~3 s.
    writer = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\n"
                               "for i in range(30):\n"
                               "    open(sys.argv[1], 'a').write(f'step {i}\\n'); time.sleep(0.1)\n", str(src)])
    sync = subprocess.Popen([sys.executable, "-m", "distill_jax.tools.sync_logs", f"--src={src}", f"--dest={dest}",
                             f"--pid={writer.pid}", "--every=0.5", f"--final_after={done}"],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.time() + 60
        while not (dest.is_file() and dest.read_text()):
            assert writer.poll() is None or time.time() < deadline, "no copy while the process ran"
            time.sleep(0.05)
        partial = dest.read_text()
        sync.send_signal(signal.SIGTERM)  # a --stop signals the whole group: the copy must go on
        assert writer.wait(timeout=60) == 0
        assert partial.startswith("step 0\n") and len(partial) < len(src.read_text())
        time.sleep(0.5)
        assert sync.poll() is None  # alive: waiting for the launcher's last line
        with open(src, "a") as f:
            f.write("=== exit 0\n")
        done.write_text("0\n")
        assert sync.wait(timeout=60) == 0
    finally:
        for proc in (writer, sync):
            if proc.poll() is None:
                proc.kill()
    assert dest.read_text() == src.read_text() and dest.read_text().endswith("step 29\n=== exit 0\n")


def read_object(endpoint: str, bucket: str, name: str) -> bytes:
    """An object's bytes through the GCS JSON API itself (stdlib HTTP, independent of gcsfs/epath)."""
    url = f"{endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_copies_to_a_gs_path_through_the_gcs_api(gcs_emulator, tmp_path, monkeypatch):
    """gs:// through etils.epath's fsspec backend (gcsfs) to a local GCS emulator, read back over the
    GCS JSON API with plain HTTP. epath picks tf.io.gfile instead whenever TensorFlow is installed, whose GCS
    endpoint cannot be redirected: the test makes epath take the path it takes without TensorFlow."""
    from etils.epath import gpath

    from distill_jax.tools.sync_logs import copy_if_changed

    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    src = tmp_path / "worker-1.log"
    dest = f"gs://{GCS_EMULATOR_BUCKET}/runs/r/logs/worker-1.log"
    src.write_text("first line\n")
    size = copy_if_changed(str(src), dest, -1)
    name = "runs/r/logs/worker-1.log"
    assert read_object(gcs_emulator, GCS_EMULATOR_BUCKET, name) == b"first line\n"
    assert size == len(b"first line\n")
    with open(src, "a") as f:
        f.write("second line\n")
    assert copy_if_changed(str(src), dest, size) == src.stat().st_size
    assert read_object(gcs_emulator, GCS_EMULATOR_BUCKET, name) == b"first line\nsecond line\n"
