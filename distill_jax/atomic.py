"""Whole-or-absent file writes through etils.epath: a reader (or a rerun after a kill) sees the
old file or the new one, never a prefix.

Local paths: a temporary name `<name>.<thread>.tmp-<host>-<pid>` beside the target (same
directory, so the rename cannot cross filesystems; the thread keeps two writers of one process
apart; host and pid let a cleaner tell a dead writer's leftovers: `temporary_owner`, which
data/cache.py's cleaner reads), fsync'd, then os.replace. gs:// and other object stores: one object write, which the
store commits atomically by itself (a failed upload leaves the old object).
"""

from __future__ import annotations

import os
import socket
import threading

from etils import epath

HOST = socket.gethostname()
TMP_MARK = ".tmp-"


def temporary_path(path: str) -> str:
    """The temporary name this thread writes `path` through."""
    return f"{path}.{threading.get_ident()}{TMP_MARK}{HOST}-{os.getpid()}"


def temporary_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the writer of a temporary file name, or None when it is not one of ours."""
    if TMP_MARK not in name:
        return None
    host, _, pid = name.rsplit(TMP_MARK, 1)[1].rpartition("-")
    return (host, int(pid)) if pid.isdigit() else None


def write_atomic(path: str, data: bytes | str) -> None:
    """Replaces `path` with `data` (str is written as UTF-8) in one step."""
    if isinstance(data, str):
        data = data.encode()
    path = str(path)
    if "://" in path:
        epath.Path(path).write_bytes(data)
        return
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
