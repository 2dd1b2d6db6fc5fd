"""One writer per workdir: `<workdir>/LOCK`, held by process 0 for the run's whole life.

The file is JSON: {"host", "pid", "since" (UTC, ISO 8601), "heartbeat" (unix seconds), "token"}.
A daemon thread rewrites it every HEARTBEAT_S seconds while the run lives; `release()` (called in
the trainer's `finally`, so on a normal end, an error, SIGTERM or a lost peer) removes it when it is
still ours. A process killed with SIGKILL (or a lost host) cannot release: its lock is *stale* and
the next run takes it over with one warning line when

  * the holder is on this host and its pid is not alive, or
  * its heartbeat is older than STALE_AFTER_S (any host: a holder elsewhere cannot be probed).

Otherwise the new run refuses in one line naming the holder (host, pid, since, last heartbeat) and
what to do (wait, stop it, or delete the LOCK file when the holder is known to be gone).

Create-if-absent: local paths use O_CREAT|O_EXCL (atomic). etils.epath offers no conditional write
for gs:// (GCS's `ifGenerationMatch=0` is not exposed), so there the lock is check, write, re-read
after LOCK_SETTLE_S: two runs starting within a second of each other can both see an absent lock;
the re-read catches the loser unless both writes land in the same instant. Documented in
docs/configs.md.

Multi-process runs: only process 0 takes the lock (it alone writes config.json, summaries and
exports; every process writes its checkpoint shards under orbax's own coordination). The other
processes follow process 0: when it refuses, it exits and they end through the peer-loss watch.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid

from etils import epath

from distill_jax import workdir_layout
from distill_jax.atomic import write_atomic

LOCK_NAME = workdir_layout.LOCK
HEARTBEAT_S = 60.0        # seconds between heartbeats
STALE_AFTER_S = 600.0     # a heartbeat older than this means the holder is gone (10 missed beats)
LOCK_SETTLE_S = 1.0       # remote (gs://) locks: wait this long, then re-read to detect a racing writer


class WorkdirLocked(ValueError):
    """Another live run holds the workdir (one line: the holder and how to proceed)."""


def _is_remote(path: str) -> bool:
    return "://" in path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _describe(holder: dict) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}, "
            f"last heartbeat {age:.0f}s ago")


class WorkdirLock:
    """`<workdir>/LOCK` (see the module docstring). acquire() raises WorkdirLocked or takes over a
    stale lock with one warning line; release() is idempotent."""

    def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.workdir = workdir
        self.path = workdir_layout.Workdir(workdir).lock
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.token = uuid.uuid4().hex
        self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                     "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "heartbeat": time.time(), "token": self.token}
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- reading ---------------------------------------------------------------------------------
    def read(self) -> dict | None:
        """The lock's JSON (None when absent; {} when unreadable, e.g. a half-written file)."""
        try:
            return json.loads(epath.Path(self.path).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def stale_reason(self, holder: dict) -> str | None:
        """Why `holder` is stale (its process is gone), or None when it may be alive."""
        heartbeat_age = time.time() - float(holder.get("heartbeat", 0) or 0)
        if holder.get("host") == self.info["host"] and isinstance(holder.get("pid"), int) \
                and not _pid_alive(holder["pid"]):
            return f"pid {holder['pid']} is not running on this host"
        if heartbeat_age > self.stale_after_s:
            return f"its heartbeat is {heartbeat_age:.0f}s old (> {self.stale_after_s:.0f}s)"
        return None

    # ---- acquiring -------------------------------------------------------------------------------
    def _create_exclusive(self) -> bool:
        """Writes our lock when none exists; False when one does."""
        data = json.dumps(self.info).encode()
        if not _is_remote(self.path):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        path = epath.Path(self.path)
        if path.exists():
            return False
        path.write_bytes(data)
        time.sleep(LOCK_SETTLE_S)  # a racing writer's object replaces ours: see who is left
        current = self.read() or {}
        return current.get("token") == self.token

    def acquire(self) -> "WorkdirLock":
        directory = epath.Path(self.workdir)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"--workdir={self.workdir} is a file, not a directory; pass a directory "
                             f"(it is created when missing)")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for _ in range(3):  # a takeover race: whoever creates the file after the removal wins
                if self._create_exclusive():
                    break
                holder = self.read()
                if holder is None:
                    continue  # released meanwhile
                reason = self.stale_reason(holder) if holder else "it is unreadable"
                if reason is None:
                    raise WorkdirLocked(
                        f"--workdir={self.workdir} is in use by another run ({_describe(holder)}): "
                        f"wait for it to end or stop it (SIGTERM saves and exits), or use another "
                        f"--workdir; if that process is gone, delete {self.path}")
                print(f"[distill] warning: taking over the stale lock {self.path} "
                      f"({_describe(holder) if holder else 'unreadable'}: {reason})",
                      file=sys.stderr, flush=True)
                epath.Path(self.path).unlink(missing_ok=True)
            else:
                raise WorkdirLocked(f"--workdir={self.workdir}: could not take {self.path} (another "
                                    f"run keeps creating it); retry, or use another --workdir")
        except PermissionError as exc:
            raise ValueError(f"--workdir={self.workdir} is not writable ({exc.strerror}: "
                             f"{exc.filename or self.path}); pass a writable directory") from None
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or exc.errno not in (30, 13, 20, 21):  # EROFS, EACCES, ENOTDIR, EISDIR
                raise
            raise ValueError(f"--workdir={self.workdir} is not writable ({exc.strerror}: "
                             f"{exc.filename or self.path}); pass a writable directory") from None
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="distill_jax-workdir-lock", daemon=True)
        self._thread.start()
        return self

    # ---- holding ---------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = self.read()
            if current and current.get("token") != self.token:
                print(f"[distill] warning: {self.path} was taken over by another run "
                      f"({_describe(current)}); this run no longer owns the workdir",
                      file=sys.stderr, flush=True)
                return
            self.info["heartbeat"] = time.time()
            try:
                write_atomic(self.path, json.dumps(self.info))
            except OSError:
                pass  # a transient storage error: the next beat retries; staleness needs 10 misses

    def release(self) -> None:
        """Stops the heartbeat and removes the lock when it is still ours."""
        if not self._held:
            return
        self._held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self.read()
        if current is not None and current.get("token") in (self.token, None):
            try:
                epath.Path(self.path).unlink(missing_ok=True)
            except OSError:
                pass  # a read-only or full filesystem now: the pid check frees it next time

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

