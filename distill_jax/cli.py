"""The `distill-jax` command; `python -m distill_jax` and, in a checkout, `python main.py` are the same:

    distill-jax --config=<recipe>[:<args>] --workdir=<dir or gs://...> [--config.<field>=<value> ...]

This module answers without the flags library: `--version`, a call without arguments (one usage
line), and an install without the [train] extra (one line naming it). `--help` lists the recipes,
read from their own source by distill_jax/recipes.py, with the most used overrides. Everything
else (absl flags, the recipe's config and its overrides, multi-process start-up, the dispatch on
config.mode) is distill_jax/cli_flags.py.
"""

from __future__ import annotations

import os
import sys
import textwrap

# Before jaxlib/XLA and transformers are imported anywhere (XLA's C++ logging honours it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# transformers' "PyTorch was not found" line is dropped by distill_jax/__init__.py (library users too).

import distill_jax  # noqa: E402
from distill_jax import __version__, recipes  # noqa: E402
from distill_jax.commands import (program_words, record_command, resolve_config_file,  # noqa: E402
                                  run_with_one_line_errors)
from distill_jax.extras import import_needing_extra  # noqa: E402

# config.mode -> "module:function", called as function(config, workdir): the modes the wheel ships.
# A checkout's main.py adds its own (the study: studies/ is not in the wheel).
MODES = {
    "distill": "distill_jax.train:run_training",
    "glue": "distill_jax.evaluate:run_from_config",
    "fit_mlm_head": "distill_jax.mlm_head:fit_mlm_head",
}

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort")  # --helpfull stays absl's (every absl flag)

# The overrides --help shows (the ones README and the recipes' docstrings use most), as typed, and
# what they set. tests/test_cli.py checks that every field named here exists in the recipes.
COMMON_OVERRIDES = (
    ("--config.teacher.name=<dir or hub id>",
     "the teacher: a local HF directory (config.json + weights), a hub id, or an exported student"),
    ("--config.total_steps=<n>", "run length in optimizer steps"),
    ("--config.batch_size=<n>", "global batch in sequences per step (all hosts together)"),
    ("--config.student.num_layers=<n>",
     "the student's shape (also student.hidden_size, num_heads, intermediate_size)"),
    ("--config.data.source=<kind> --config.data.paths=<p1,p2>", "your corpus (kinds: {data_sources})"),
    ("--config.optim.learning_rate=<lr>", "peak learning rate, reached after optim.warmup_steps"),
    ("--config.mesh.fsdp=<n> --config.mesh.tensor=<n>",
     "parameter and tensor sharding over the devices (mesh.data takes the rest)"),
    ("--config.allow_config_change=true", "resume a workdir whose checkpoints came from another config"),
)


def run(argv: list[str] | None = None, *, modes: dict[str, str] | None = None) -> None:
    """Console entry point. One line, no traceback, for every error we expect: a usage mistake
    (exit 2), a bad config, missing teacher, NaN or missing extra (exit 1), a lost peer (exit 75).
    `modes`: config.mode -> "module:function" this command runs (default MODES)."""
    argv = list(sys.argv if argv is None else argv)
    modes = MODES if modes is None else modes
    program = " ".join(program_words(argv[0]))
    if "--version" in argv[1:]:
        print(f"distill_jax {__version__}")
        return
    record_command(argv)  # the model card and summary.json name the exact command

    def entry():
        cli_flags = import_needing_extra("distill_jax.cli_flags", "train", program)
        if any(a in HELP_FLAGS for a in argv[1:]):
            print(help_text(program, argv, modes, cli_flags.other_flags()))
            return
        if len(argv) == 1:
            print(f"usage: {usage_line(program)} ({program} --help lists the recipes)",
                  file=sys.stderr, flush=True)
            sys.exit(2)
        cli_flags.run_app(argv, modes)

    run_with_one_line_errors(entry)


def usage_line(program: str) -> str:
    return f"{program} --config=<recipe>[:<args>] --workdir=<dir or gs://...> [--config.<field>=<value> ...]"


def help_text(program: str, argv: list[str], modes: dict[str, str],
              other_flags: list[tuple[str, str]]) -> str:
    """--help: the usage, every recipe this command runs (its summary and args) and the most used
    overrides; with a `--config=<recipe>`, that recipe's whole description instead of the list."""
    from distill_jax.cli_flags import config_spec, unknown_recipe_message
    from distill_jax.data.config import SOURCE_KINDS

    spec = config_spec(argv)
    if spec is not None:
        resolved = resolve_config_file(spec)
        missing = unknown_recipe_message([argv[0], f"--config={resolved}"], modes)
        if missing:
            raise ValueError(missing)
        recipe = recipes.describe(resolved.partition(":")[0])
        return (f"{program} --config={recipe.name}[:<args>] --workdir=<dir> (mode {recipe.mode})\n\n"
                f"{recipe.doc}\n\nArgs (defaults): {recipes.arg_usage(recipe) or 'none'}")

    lines = [f"usage: {usage_line(program)}",
             f"       {program} --config=<recipe> --help   (that recipe's whole description)",
             f"       {program} --version",
             "",
             f"distill_jax {__version__}: {distill_jax.__doc__.partition(': ')[2].strip()}",  # its docstring
             "<recipe> is a recipe file (configs/<name>.py) or the name of a shipped one; <args> are",
             "comma-separated after ':', a bare word turns a flag on (e.g. mha_l6_h384:runlocal,steps=50).",
             "",
             "Recipes (args with their defaults):"]
    for recipe in recipes.recipes():
        if recipe.mode in modes:
            lines += _entry(recipe.name, recipe.summary, width=18)
            lines += _entry("", f"args: {recipes.arg_usage(recipe) or 'none'}", width=18)
    lines += ["", "Most used overrides (every field of the recipe's config can be set; a field that does not",
              "exist is refused with the closest real one):"]
    for override, what in COMMON_OVERRIDES:
        lines += _entry(override, what.format(data_sources=", ".join(SOURCE_KINDS)), width=40)
    lines += ["", "Other flags (--helpfull lists every absl flag):"]
    for flag, what in other_flags:
        lines += _entry(flag, what, width=40)
    lines += ["", f"Example: {program} --config=quickstart --workdir=runs/quickstart"]
    return "\n".join(lines)


def _entry(head: str, text: str, width: int) -> list[str]:
    """`head` in a column of `width` characters, `text` wrapped beside it (under it when `head` is
    wider than the column)."""
    indent = " " * width
    wrapped = textwrap.wrap(text, 100 - width, break_on_hyphens=False) or [""]
    if len(head) + 3 > width:
        return [f"  {head}"] + [indent + line for line in wrapped]
    return [f"  {head:<{width - 2}}{wrapped[0]}"] + [indent + line for line in wrapped[1:]]
