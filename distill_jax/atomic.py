"""Whole-or-absent file writes through etils.epath: a reader (or a rerun after a kill) sees the
old file or the new one, never a prefix.

Local paths: a temporary name `<name>.tmp-<host>-<pid>` beside the target (same directory, so the
rename cannot cross filesystems; host and pid let a cleaner tell a dead writer's leftovers, as
data/cache.py's does), fsync'd, then os.replace. gs:// and other object stores: one object write, which the
store commits atomically by itself (a failed upload leaves the old object).
"""

from __future__ import annotations

import os
import socket

from etils import epath

HOST = socket.gethostname()


def write_atomic(path: str, data: bytes | str) -> None:
    """Replaces `path` with `data` (str is written as UTF-8) in one step."""
    if isinstance(data, str):
        data = data.encode()
    path = str(path)
    if "://" in path:
        epath.Path(path).write_bytes(data)
        return
    tmp = f"{path}.tmp-{HOST}-{os.getpid()}"
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
