"""A local Google Cloud Storage emulator (gcp-storage-emulator, from the package index) for tests.

    from gcs_emulator import gcs_emulator   # noqa: F401 (the fixture)

    def test_x(gcs_emulator):                # yields the endpoint, e.g. http://127.0.0.1:40123
        ...                                  # gs://<GCS_EMULATOR_BUCKET>/... reaches it

The emulator runs as its own process on 127.0.0.1 and a free port, in memory, with one bucket, and
is stopped after the test. STORAGE_EMULATOR_HOST is set for the test (and for subprocesses it
starts): gcsfs honours it, so etils.epath's fsspec backend (what epath uses for gs:// when
TensorFlow is NOT installed) reaches the emulator; TENSORSTORE_GCS_HTTP_URL is set too (tensorstore,
i.e. orbax's array writes). What does not reach it: tf.io.gfile's GCS client (its endpoint is
compiled in), which epath prefers whenever TensorFlow is installed, as it is in this project's venv
(clu needs it). So a gs:// workdir for the whole trainer cannot be emulated here; see BUILD_NOTES.
Skips when gcp-storage-emulator or gcsfs is not installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

GCS_EMULATOR_BUCKET = "distill-jax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs_emulator(monkeypatch, tmp_path):
    pytest.importorskip("gcsfs", reason="gcsfs (epath's gs:// backend without TensorFlow) is not installed")
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed")
    command = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent))
    port = _free_port()
    log = open(tmp_path / "gcs_emulator.log", "w")
    proc = subprocess.Popen([command, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
                             f"--default-bucket={GCS_EMULATOR_BUCKET}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the GCS emulator did not start: {(tmp_path / 'gcs_emulator.log').read_text()[-2000:]}")
                time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", endpoint)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
