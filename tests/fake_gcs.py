"""gs:// for tests: etils.epath's own fsspec backend (the one it uses for gs:// when TensorFlow is
absent) over fsspec's real local filesystem rooted at a temporary directory, registered as the
'gs'/'gcs' protocols in this process. Every epath call our code makes (exists, iterdir, read/write,
mkdir, is_dir) runs through epath and fsspec for real; only the object store is a directory. It does
not cover tensorstore (orbax's array writes), which has its own GCS driver."""

from __future__ import annotations

import contextlib
import os

import fsspec
from fsspec.implementations.local import LocalFileSystem


@contextlib.contextmanager
def fake_gcs(root: str):
    """Within the block, gs://<bucket>/<path> is <root>/<bucket>/<path>."""
    from etils.epath import gpath

    class RootedGCS(LocalFileSystem):
        protocol = ("gs", "gcs")
        root_marker = ""

        def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes gcsfs options
            del finalize_on_close
            super().__init__(*args, **{**kwargs, "auto_mkdir": True})  # objects need no parent dirs

        @classmethod
        def _strip_protocol(cls, path):
            path = fsspec.utils.stringify_path(path)
            for prefix in ("gs://", "gcs://"):
                if path.startswith(prefix):
                    path = path[len(prefix):]
            return path if path.startswith(root) else os.path.join(root, path.lstrip("/"))

        def unstrip_protocol(self, name):
            return "gs://" + os.path.relpath(name, root)

    import importlib

    from etils.epath import backend as epath_backend

    registry = importlib.import_module("fsspec.registry")._registry  # noqa: SLF001
    previous = {p: registry.get(p) for p in ("gs", "gcs")}
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()  # its filesystems are cached
    tf_installed = gpath._is_tf_installed  # with TensorFlow present epath would pick tf.io.gfile
    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, RootedGCS, clobber=True)
    gpath._is_tf_installed = lambda: False
    try:
        yield root
    finally:
        gpath._is_tf_installed = tf_installed
        epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
        for protocol, cls in previous.items():
            if cls is None:
                registry.pop(protocol, None)  # undo our registration
            else:
                fsspec.register_implementation(protocol, cls, clobber=True)
