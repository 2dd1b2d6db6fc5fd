"""python -m distill_jax.tools.sync_logs: keep a copy of a growing log file somewhere readable.

    python -m distill_jax.tools.sync_logs --src=~/distill_jax_runs/r/worker-0.log \
        --dest=gs://bucket/run/logs/worker-0.log --pid=1234 [--every=30] [--final_after=FILE]

Copies `src` to `dest` whenever its size changed, every `--every` seconds while process `--pid`
lives, and once more after it ended, once `--final_after` exists (the launcher writes that file
after the log's last line; waited for up to 60 s), so the destination ends with the whole log.
SIGTERM is ignored: a stop signals the launcher's whole process group, and this copy must outlive
the training process it reports on. launch/pod_worker.sh runs one beside each
pod host's training process, with `dest` under `<workdir>/logs/`: the logs of every host are then
readable where the checkpoints are, without ssh to each worker.

`dest` is any etils.epath path (local, gs://): the library the trainer writes its workdir with, so
the same credentials and backend (tf.io.gfile when TensorFlow is installed, else fsspec/gcsfs)
apply, and the copy works the same on a laptop, in the localhost rehearsal and on a pod. Each copy
rewrites the whole file (GCS objects cannot be appended to); logs are megabytes, so a copy every
30 s costs nothing against a step.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def copy_if_changed(src: str, dest: str, last_size: int) -> int:
    """Copies src over dest when src's size differs from last_size; returns src's size (bytes)."""
    from etils import epath

    try:
        size = os.path.getsize(src)
    except OSError:
        return last_size  # not written yet
    if size != last_size:
        with open(src, "rb") as f:
            data = f.read()
        target = epath.Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        size = len(data)
    return size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


FINAL_WAIT_S = 60  # seconds the last copy waits for --final_after after the process ended


def sync(src: str, dest: str, pid: int, every_s: float, final_after: str | None = None) -> None:
    """The loop: copy while `pid` lives; the last copy once it is gone (and final_after exists)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    size, next_copy = -1, 0.0
    while _alive(pid):
        if time.monotonic() >= next_copy:
            try:
                size = copy_if_changed(src, dest, size)
            except Exception as exc:  # noqa: BLE001 - a storage hiccup must not end the copying
                print(f"sync_logs: copying {src} to {dest} failed ({type(exc).__name__}: {exc}); "
                      f"retrying in {every_s:.0f} s", file=sys.stderr, flush=True)
            next_copy = time.monotonic() + every_s
        time.sleep(0.5)
    deadline = time.monotonic() + FINAL_WAIT_S
    while final_after and not os.path.exists(final_after) and time.monotonic() < deadline:
        time.sleep(0.2)
    copy_if_changed(src, dest, -1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="the local log file")
    parser.add_argument("--dest", required=True, help="where its copy goes (local or gs://)")
    parser.add_argument("--pid", type=int, required=True, help="copy until this process has ended")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between copies")
    parser.add_argument("--final_after", default=None,
                        help="after --pid ended, make the last copy once this file exists")
    args = parser.parse_args(argv)
    sync(os.path.expanduser(args.src), args.dest, args.pid, args.every, args.final_after)


if __name__ == "__main__":
    main()
