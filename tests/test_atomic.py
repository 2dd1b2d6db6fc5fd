"""distill_jax.atomic: whole-or-absent writes, one temporary per writing thread, owners readable."""

import os
import threading

from distill_jax import atomic
from distill_jax.data.cache import remove_stale_temporaries


def test_threads_of_one_process_write_one_file_without_clashing(tmp_path):
    # Two threads share a pid: a temporary named by host and pid alone was renamed away under the
    # other writer (FileNotFoundError in one of two concurrent cache builds).
    target = tmp_path / "blocks.npy"
    errors = []

    def write(i):
        try:
            for _ in range(200):
                atomic.write_atomic(str(target), bytes([i]) * 4096)
        except Exception as e:  # noqa: BLE001 - the test reports whatever a writer hit
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert target.read_bytes() in (bytes([0]) * 4096, bytes([1]) * 4096)
    assert os.listdir(tmp_path) == ["blocks.npy"]


def test_the_cache_cleaner_reads_the_owner_of_a_temporary(tmp_path):
    name = os.path.basename(atomic.temporary_path(str(tmp_path / "stream_00000.npy")))
    assert atomic.temporary_owner(name) == (atomic.HOST, os.getpid())
    assert atomic.temporary_owner("stream_00000.npy") is None
    # A live writer's temporary stays; a dead one's (pid 2**22 + 1 is above Linux's pid_max) goes.
    (tmp_path / name).write_bytes(b"partial")
    dead = f"stream_00001.npy.7{atomic.TMP_MARK}{atomic.HOST}-{2 ** 22 + 1}"
    (tmp_path / dead).write_bytes(b"partial")
    assert remove_stale_temporaries(str(tmp_path)) == [dead]
    assert sorted(os.listdir(tmp_path)) == [name]
