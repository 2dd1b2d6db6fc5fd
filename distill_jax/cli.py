"""The `distill-jax` command (`python main.py` is the same): flags, distributed start-up, dispatch.

    distill-jax --config=configs/<recipe>.py[:arg] --workdir=<dir or gs://...> [--config.<field>=...]

Any config field can be overridden, e.g. `--config.total_steps=1000 --config.teacher.name=/ckpt`
or `--config.data.source=wikiextractor --config.data.paths=/corpus/text`. A field that does not exist
is refused in one line with the closest real field ("did you mean student.num_layers?").

Recipes: `--config` takes a file path; a path that does not exist here is looked up by its file name
among the recipes shipped inside the installed package (`distill_jax/configs`, the repository's
`configs/`), so `distill-jax --config=quickstart --workdir=...` works without a checkout.

Multi-process start-up (TPU pod, SLURM, localhost rehearsals): distill_jax/distributed.py.
The run is `config.mode` -> MODES[mode] ("module:function", called as function(config, workdir)).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

# Before jaxlib/XLA and transformers are imported anywhere (XLA's C++ logging honours it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# transformers' "PyTorch was not found" line is dropped by distill_jax/__init__.py (library users too).

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# The recipe lookup and the one-line error policy are shared with the other commands
# (python -m distill_jax.data.prepare, python -m distill_jax.plan); re-exported here.
from distill_jax.commands import (EXPECTED_ERRORS, PACKAGED_CONFIGS,  # noqa: E402,F401
                                  record_command, resolve_config_file, run_with_one_line_errors,
                                  with_resolved_config)

# config.mode -> "module:function"; the function is called as function(config, workdir).
MODES = {
    "distill": "distill_jax.train:train_and_evaluate",
    "glue": "distill_jax.evaluate:run_from_config",
    "fit_mlm_head": "distill_jax.mlm_head:fit_mlm_head",
    "study": "studies.driver:run_study",   # repository-level (a checkout), not in the wheel
}

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
    config_args = [a for a in argv[1:] if a.startswith(("--config=", "-config="))]
    if not config_args:
        return None
    probe = flags.FlagValues()  # the config alone, without the overrides that failed
    config_flags.DEFINE_config_file("config", None, "", flag_values=probe, lock_config=True,
                                    sys_argv=[argv[0], config_args[-1]])
    try:
        probe([argv[0], config_args[-1]])
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


def _parse_flags(argv: list[str]) -> list[str]:
    argv = with_resolved_config(argv)
    sys.argv = argv  # config_flags reads the overrides from sys.argv
    try:
        remaining = FLAGS(argv)
        if FLAGS["config"].present:
            FLAGS.config.keys()  # config_flags defers a recipe that failed to load to the first access
        return remaining
    except (KeyError, AttributeError) as exc:
        message = unknown_override_message(argv) or flag_error_line(exc)
    except (flags.Error, ValueError, TypeError, OSError, SyntaxError, ImportError) as exc:
        # A recipe that is missing or fails (a bad `:arg`), an override of the wrong type: one line.
        message = flag_error_line(exc)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def flag_error_line(exc: BaseException) -> str:
    """One line for a flag-parsing failure: absl's own message (it names the flag and value) with
    the root cause's, whitespace collapsed; a missing recipe file says where recipes are found."""
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
    if isinstance(root, FileNotFoundError) or "No such file" in text:
        from pathlib import Path

        shipped = PACKAGED_CONFIGS if PACKAGED_CONFIGS.is_dir() else Path(__file__).resolve().parents[1] / "configs"
        names = sorted(p.stem for p in shipped.glob("*.py") if not p.stem.startswith("_") and p.stem != "common")
        text += (f"; --config takes a recipe file (configs/<name>.py) or the name of a shipped one "
                 f"({', '.join(names)})")
    return text if len(text) <= 600 else text[:597] + "..."


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
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
    mode = config.get("mode", "distill")
    if mode not in MODES:
        raise app.UsageError(f"config.mode={mode!r}: use one of {', '.join(map(repr, MODES))}")
    module, _, function = MODES[mode].partition(":")
    getattr(importlib.import_module(module), function)(config, FLAGS.workdir)
    distributed.finished()  # peers no longer expect signs of life from this process


def run(argv: list[str] | None = None) -> None:
    """Console entry point. One line, no traceback, for the errors we raise on purpose (bad config,
    missing teacher, NaN) and for a lost peer process (exit 75)."""
    from distill_jax.distributed import PeerLost, exit_peer_lost
    from distill_jax.preemption import STOPPED_EXIT_CODE, Stopped

    argv = argv if argv is not None else sys.argv
    record_command(argv)  # the model card and summary.json name the exact command

    def entry():
        try:
            app.run(main, argv=argv, flags_parser=_parse_flags)
        except PeerLost as exc:
            exit_peer_lost(exc)  # one line, exit 75, no jax.distributed shutdown (it would abort)
        except Stopped as exc:
            # One line, exit 143. Skip jax.distributed's shutdown barrier: peers that heard no
            # SIGTERM may still be compiling; they stop on the published stop or notice us gone.
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(STOPPED_EXIT_CODE)

    run_with_one_line_errors(entry)
