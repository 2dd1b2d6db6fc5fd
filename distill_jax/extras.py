"""Optional dependencies behind their own pip extras: one import helper per extra, whose failure is
one line naming the extra to install."""

from __future__ import annotations

import importlib


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


def import_needing_extra(module: str, extra: str, user: str):
    """importlib.import_module(module), for a module of ours that imports an extra's packages;
    MissingExtra naming `pip install "distill_jax[<extra>]"` when one of them is not installed
    (e.g. `distill-jax` on a core-only install: absl-py and ml-collections come with [train])."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in ("", "distill_jax", "configs"):  # ours: a real bug, not an extra
            raise
        raise MissingExtra(f"{user} needs the [{extra}] extra ({missing} is not installed): "
                           f"pip install \"distill_jax[{extra}]\"") from None
