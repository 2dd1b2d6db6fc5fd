"""How the command lines (main.py, python -m distill_jax.plan) end on the errors we raise on
purpose: one line `error: ...` on stderr and exit status 1, no traceback.
DISTILL_JAX_TRACEBACK=1 shows the full traceback instead."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

EXPECTED_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)  # bad config, missing file, NaN


def run_with_one_line_errors(entry: Callable[[], object]) -> None:
    """Calls `entry()`; an EXPECTED_ERRORS exception becomes one stderr line and exit status 1."""
    try:
        entry()
    except EXPECTED_ERRORS as exc:
        if os.environ.get("DISTILL_JAX_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
