"""Remote directories (gs://..., through etils.epath) made local: copied once per host into the
local cache, atomically (a temporary directory renamed into place), reused by later runs."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile


def local_cache_root() -> str:
    """$DISTILL_JAX_CACHE's parent folder or ~/.cache/distill_jax (beside the data cache)."""
    data = os.environ.get("DISTILL_JAX_CACHE")
    return os.path.dirname(os.path.abspath(data)) if data else os.path.join(
        os.path.expanduser("~"), ".cache", "distill_jax")


def local_copy(uri: str, kind: str = "models") -> str:
    """A local directory holding the files of the remote directory `uri` (subdirectories too).

    The copy lives in <local_cache_root>/<kind>/<last path part>-<sha of uri>; a finished copy is
    reused as it is (delete it to fetch again). Raises FileNotFoundError naming uri when it holds
    nothing."""
    from etils import epath

    uri = uri.rstrip("/")
    name = uri.rsplit("/", 1)[-1] or "root"
    target = os.path.join(local_cache_root(), kind,
                          f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}")
    if os.path.isdir(target):
        return target
    source = epath.Path(uri)
    if not source.is_dir():
        raise FileNotFoundError(f"{uri} is not a directory (or not reachable): check the path and "
                                f"this host's credentials")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=os.path.dirname(target))
    try:
        copied = 0
        for path, relative in _walk(source, ""):
            out = os.path.join(tmp, relative)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with path.open("rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
            copied += 1
        if not copied:
            raise FileNotFoundError(f"{uri} holds no file")
        try:
            os.rename(tmp, target)
        except OSError:  # another process of this host finished first: use its copy
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _walk(directory, prefix: str):
    """(file path, relative name) of every file below an epath directory (gs:// allows no `**`)."""
    for child in sorted(directory.iterdir(), key=lambda p: p.name):
        relative = f"{prefix}{child.name}"
        if child.is_dir():
            yield from _walk(child, relative + "/")
        else:
            yield child, relative
