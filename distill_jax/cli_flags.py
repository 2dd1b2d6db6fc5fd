"""The `distill-jax` command's absl part (distill_jax/cli.py runs it once the [train] extra is
found): flags, the recipe's config with its `--config.<field>` overrides, multi-process start-up,
and the dispatch on config.mode.

Any config field can be overridden, e.g. `--config.total_steps=1000 --config.teacher.name=/ckpt`
or `--config.data.source=wikiextractor --config.data.paths=/corpus/text`. A field that does not exist
is refused in one line with the closest real field ("did you mean student.num_layers?").

Recipes: `--config` takes a file path; a path that does not exist here is looked up by its file name
among the recipes shipped inside the installed package (`distill_jax/configs`, the repository's
`configs/`), so `distill-jax --config=quickstart --workdir=...` works without a checkout; a name
that is neither is refused in one line that lists the recipes.

Multi-process start-up (TPU pod, SLURM, localhost rehearsals): distill_jax/distributed.py.
The run is `config.mode` -> modes[mode] ("module:function", called as function(config, workdir));
modes is distill_jax.cli.MODES, plus the checkout's own in main.py.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from distill_jax import recipes
from distill_jax.commands import with_resolved_config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, export and summary go here.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "jax.distributed.initialize(): auto = when the environment is multi-process.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (else from the environment).")
flags.DEFINE_integer("num_processes", None, "Number of processes (else from the environment).")
flags.DEFINE_integer("process_id", None, "This process's id (else from the environment).")
flags.mark_flags_as_required(["config", "workdir"])


# ----------------------------------------------------------------------------------------------
# Overrides of fields that do not exist: one line with the closest real field
# ----------------------------------------------------------------------------------------------

def config_field_paths(config) -> list[str]:
    """Every dotted field path of a ConfigDict (nodes and leaves)."""
    out = []
    for key, value in config.items():
        out.append(key)
        if hasattr(value, "items") and hasattr(value, "to_dict"):
            out.extend(f"{key}.{sub}" for sub in config_field_paths(value))
    return out


def unknown_override_message(argv: list[str]) -> str | None:
    """The one-line message for the first `--config.<field>` that the config does not have."""
    spec = config_spec(argv)
    if spec is None:
        return None
    config_only = [argv[0], f"--config={spec}"]
    probe = flags.FlagValues()  # the config alone, without the overrides that failed
    config_flags.DEFINE_config_file("config", None, "", flag_values=probe, lock_config=True,
                                    sys_argv=config_only)
    try:
        probe(config_only)
        known = config_field_paths(probe.config)
    except Exception:  # the file itself is broken: let the original error speak
        return None
    for arg in argv[1:]:
        for prefix in ("--config.", "-config.", "--noconfig.", "-noconfig."):
            if arg.startswith(prefix):
                field = arg[len(prefix):].split("=", 1)[0]
                if field not in known:
                    close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
                    hint = f"; did you mean {close[0]}?" if close else \
                        "; the fields are listed by python -c 'print(<config>.get_config())'"
                    return f"{arg.split('=', 1)[0]}: the config has no field {field}{hint}"
    return None


def _parse_flags(argv: list[str], modes: dict[str, str]) -> list[str]:
    argv = with_resolved_config(argv)
    missing = unknown_recipe_message(argv, modes)
    if missing:
        print(f"error: {missing}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.argv = argv  # config_flags reads the overrides from sys.argv
    try:
        remaining = FLAGS(argv)
        if FLAGS["config"].present:
            FLAGS.config.keys()  # config_flags defers a recipe that failed to load to the first access
        return remaining
    except (KeyError, AttributeError) as exc:
        message = unknown_override_message(argv) or flag_error_line(exc)
    except (flags.Error, ValueError, TypeError, OSError, SyntaxError, ImportError) as exc:
        # A recipe that fails (a bad `:arg`), an override of the wrong type: one line.
        message = flag_error_line(exc)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def unknown_recipe_message(argv: list[str], modes: dict[str, str]) -> str | None:
    """The one-line message for a `--config=<spec>` (already resolved by with_resolved_config)
    whose file is neither here nor a shipped recipe; None when it is a file."""
    spec = config_spec(argv)
    if spec is None or Path(spec.partition(":")[0]).is_file():
        return None
    names = [r.name for r in recipes.recipes() if r.mode in modes]
    return (f"--config={spec}: no such recipe; --config takes a recipe file (configs/<name>.py) or "
            f"the name of a shipped one: {', '.join(names)} (--help describes them)")


def config_spec(argv: list[str]) -> str | None:
    """The value of the last `--config=<spec>` / `--config <spec>` in argv, None without one."""
    spec = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith(("--config=", "-config=")):
            spec = arg.split("=", 1)[1]
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            spec = argv[i + 1]
    return spec


def flag_error_line(exc: BaseException) -> str:
    """One line for a flag-parsing failure: absl's own message (it names the flag and value) with
    the root cause's, whitespace collapsed."""
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    parts = [str(exc)] + ([f"{type(root).__name__}: {root}"] if root is not exc and str(root) not in str(exc) else [])
    text = "\n".join(parts)
    if "Traceback (most recent call last)" in text:
        # config_flags puts a recipe's traceback into the message: keep absl's prefix (the flag and
        # its value) and the traceback's last line (the recipe's own error).
        prefix = text.split("Error whilst parsing config file")[0]
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = f"{prefix}{last.strip()}"
    text = text.replace("Configuration is not available because of an earlier failure to load: ", "")
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:597] + "..."


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def main(argv, modes: dict[str, str]):
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)",
              file=sys.stderr, flush=True)
        sys.exit(2)
    from absl import logging

    from distill_jax import distributed, platforms, stack_limit

    platforms.choose_platforms()  # libtpu stays quiet on a machine without a TPU

    student = FLAGS.config.get("student") or {}
    if stack_limit.needs_hard_stack_limit(bool(student.get("remat", False))):
        stack_limit.reexec_with_hard_stack_limit()  # before jax starts: a restart re-reads the flags
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    distributed.initialize(FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
                           num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    config = FLAGS.config
    mode = config.get("mode", recipes.DEFAULT_MODE)
    if mode not in modes:
        raise ValueError(f"config.mode={mode!r}: use one of {', '.join(map(repr, modes))}")
    module, _, function = modes[mode].partition(":")
    getattr(importlib.import_module(module), function)(config, FLAGS.workdir)
    distributed.finished()  # peers no longer expect signs of life from this process


def run_app(argv: list[str], modes: dict[str, str]) -> None:
    """absl's app.run over `argv`; a lost peer process is one line and exit 75, a SIGTERM stop one
    line and exit 143 (distill_jax/cli.py wraps this in the one-line error policy)."""
    from distill_jax.distributed import PeerLost, exit_peer_lost
    from distill_jax.preemption import STOPPED_EXIT_CODE, Stopped

    try:
        app.run(functools.partial(main, modes=modes), argv=argv,
                flags_parser=functools.partial(_parse_flags, modes=modes))
    except PeerLost as exc:
        exit_peer_lost(exc)  # one line, exit 75, no jax.distributed shutdown (it would abort)
    except Stopped as exc:
        # One line, exit 143. Skip jax.distributed's shutdown barrier: peers that heard no
        # SIGTERM may still be compiling; they stop on the published stop or notice us gone.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(STOPPED_EXIT_CODE)


def other_flags() -> list[tuple[str, str]]:
    """('--name', help) of this module's flags besides --config and --workdir, for --help."""
    return [(f"--{flag.name}", flag.help) for flag in FLAGS.get_flags_for_module(sys.modules[__name__])
            if flag.name not in ("config", "workdir")]
