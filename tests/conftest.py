"""Test set-up: 8 fake CPU devices before any JAX call, so mesh tests run on one CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tests run on (fake) CPU devices. libtpu is a test requirement (the TPU plan compiles through
# it): without JAX_PLATFORMS=cpu every JAX process would load it at start-up, probe for TPU hosts
# and claim the machine-wide libtpu lockfile. Subprocesses inherit these.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, in this process and every subprocess a
# test starts (JAX reads the variable; the trainer's compilation_cache_dir '' defers to it): the
# tests compile the same tiny steps in many tests and processes, and compiling is most of their time.
# A test that needs a real compile sets compilation_cache_dir='off'.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="distill_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
from distill_jax.plan import compile_only_environment  # noqa: E402 (imports no JAX)

compile_only_environment()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


import pytest  # noqa: E402

from train_fixtures import compilation_cache, data_cache, run_8dev, tiny_teacher  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _session_compilation_cache():
    """A run with compilation_cache_dir 'off' or its own directory switches this process's cache;
    the next test gets the session's back."""
    yield
    directory = os.environ["JAX_COMPILATION_CACHE_DIR"]
    if jax.config.jax_compilation_cache_dir != directory:
        from jax._src import compilation_cache as jax_cache

        jax.config.update("jax_compilation_cache_dir", directory)
        jax_cache.reset_cache()
