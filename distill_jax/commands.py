"""What every command line of the package shares (no flags are defined here): finding a recipe
file from `--config=...`, and the one-line error policy.

Used by `distill-jax` / `python -m distill_jax` / main.py (cli.py, cli_flags.py),
`python -m distill_jax.data.prepare` and `python -m distill_jax.plan`.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from distill_jax.extras import MissingExtra

_COMMAND: list[str] | None = None  # the argv of the command this process runs (record_command)


def record_command(argv: list[str]) -> None:
    """Remembers the command line (before flag parsing rewrites it), for invocation()."""
    global _COMMAND
    _COMMAND = list(argv)


def invocation() -> str | None:
    """The command this process runs, as a user would type it again ('python main.py ...',
    'python -m distill_jax ...' or 'distill-jax ...'); None when no command recorded one (a library
    call)."""
    if _COMMAND is None:
        return None
    return shlex.join(program_words(_COMMAND[0]) + _COMMAND[1:])


def program_words(argv0: str) -> list[str]:
    """argv[0] as typed: ['distill-jax'], ['python', 'main.py'], ['python', '-m', 'distill_jax']."""
    path = Path(argv0)
    if path.name == "__main__.py":  # python -m <package>
        return ["python", "-m", path.parent.name]
    return ["python", argv0] if path.suffix == ".py" else [path.name]


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"  # present in an installed wheel


def recipe_dir() -> Path:
    """The recipes this installation runs by name: the wheel's distill_jax/configs, else (a
    checkout) the repository's configs/."""
    return PACKAGED_CONFIGS if PACKAGED_CONFIGS.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def resolve_config_file(spec: str) -> str:
    """`path[:arg]` -> the same spec, or the recipe of that file name in recipe_dir() when `path` is
    not a file here. Also makes the recipe's `configs` package importable (recipes import
    configs.common)."""
    path, sep, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        name = file.name if file.suffix == ".py" else f"{file.name}.py"
        if (recipe_dir() / name).is_file():
            file = recipe_dir() / name
    if file.is_file():
        _make_configs_importable(file.resolve().parent)
        spec = f"{file}{sep}{arg}"
    return spec


def _make_configs_importable(directory: Path) -> None:
    if directory == PACKAGED_CONFIGS:
        # The installed recipes are distill_jax.configs; they import themselves as `configs`.
        sys.modules.setdefault("configs", importlib.import_module("distill_jax.configs"))
    elif directory.name == "configs" and (directory / "__init__.py").is_file():
        root = str(directory.parent)  # a checkout: the repository root, as `python main.py` has it
        if root not in sys.path:
            sys.path.insert(0, root)


def with_resolved_config(argv: list[str]) -> list[str]:
    """argv with its `--config=<spec>` resolved by resolve_config_file."""
    out = list(argv)
    for i, arg in enumerate(out):
        for prefix in ("--config=", "-config="):
            if arg.startswith(prefix):
                out[i] = prefix + resolve_config_file(arg[len(prefix):])
        if arg in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = resolve_config_file(out[i + 1])
    return out


# Bad config, missing file, NaN or a loss spike (divergence.Diverged), damaged cache, a timeout
# waiting on other hosts, a stop by SIGTERM; also, as ValueError subclasses, a workdir held by
# another run (workdir_lock.WorkdirLocked), a resume with another config (run_config), a checkpoint
# save that failed on storage (checkpoint.CheckpointSaveError); an optional extra that is not installed (MissingExtra).
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, TimeoutError, MissingExtra)


def run_with_one_line_errors(entry: Callable[[], object]) -> None:
    """Calls `entry()`; an EXPECTED_ERRORS exception becomes one stderr line `error: ...` and exit
    status 1 (DISTILL_JAX_TRACEBACK=1 shows the traceback instead). The commands (`distill-jax` /
    main.py, python -m distill_jax.plan, python -m distill_jax.data.prepare) end this way on the
    errors we raise on purpose."""
    try:
        entry()
    except EXPECTED_ERRORS as exc:
        if os.environ.get("DISTILL_JAX_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
