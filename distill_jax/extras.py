"""Optional dependencies behind their own pip extras: one import helper per extra, whose failure is
one line naming the extra to install."""

from __future__ import annotations


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names `pip install "distill_jax[...]"`.
    The commands print it as one line (distill_jax.commands.EXPECTED_ERRORS)."""


def import_tfds(field: str):
    """tensorflow_datasets, for a config field set to 'tfds' (e.g. 'data.source'); MissingExtra
    naming the [tfds] extra when it is not installed (it is not part of [train]: it needs TensorFlow)."""
    try:
        import tensorflow_datasets as tfds  # heavy import (TensorFlow), only on this path
    except ImportError:
        raise MissingExtra(f"{field}='tfds' needs tensorflow-datasets, which [train] does not install: "
                           f"pip install \"distill_jax[tfds]\"") from None
    return tfds
