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
from distill_jax.plan import compile_only_environment  # noqa: E402 (imports no JAX)

compile_only_environment()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
