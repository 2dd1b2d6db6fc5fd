"""The command line (distill_jax/cli.py, what `python main.py` and `distill-jax` run): every field of
every recipe can be set with --config.<field>=..., a field that does not exist gets one line with the
closest real one, and transformers' "PyTorch was not found" warning is dropped (only that one, for
library users too)."""

import importlib
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__", "common"))
# Arg words that change a recipe's shape (extra or different fields); tried on every recipe that
# takes them.
VARIANT_WORDS = ("runlocal", "large")


def recipe_specs() -> list[str]:
    specs = []
    for name in RECIPES:
        module = importlib.import_module(f"configs.{name}")
        specs.append(name)
        for word in VARIANT_WORDS:
            try:
                module.get_config(word)
            except ValueError:  # this recipe does not take that arg
                continue
            specs.append(f"{name}:{word}")
    return specs


def leaves(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def sample_override(value) -> tuple[str, object]:
    """(command-line text, the value it must give) for a field holding `value`: a different value of
    the same type, so the check sees the override take effect."""
    if isinstance(value, bool):
        return ("false", False) if value else ("true", True)
    if isinstance(value, int):
        return str(value + 1), value + 1
    if isinstance(value, float):
        return repr(value + 0.5), value + 0.5
    if isinstance(value, str):
        return "set_from_the_command_line", "set_from_the_command_line"
    if isinstance(value, tuple):
        return "(1, 2)", (1, 2)
    if value is None:  # a typed placeholder (data.paths, data.hf_data_files): a path string
        return "/corpus/dir", "/corpus/dir"
    raise AssertionError(f"no sample for {type(value).__name__}")


def parse(argv: list[str]) -> ml_collections.ConfigDict:
    """What main.py does: absl flags + config_flags over `argv` (a fresh FlagValues)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


def test_the_specs_cover_every_recipe_and_variant():
    specs = recipe_specs()
    assert {"quickstart", "mha_l6_h384:runlocal", "xlmr_l6_h384:large", "glue:runlocal"} <= set(specs)
    assert {s.split(":")[0] for s in specs} == set(RECIPES)


@pytest.mark.parametrize("spec", recipe_specs())
def test_every_field_of_every_recipe_is_settable_from_the_command_line(spec):
    name, _, arg = spec.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config(arg or None)
    fields = dict(leaves(config))
    assert any(f == "data.paths" or f.endswith(".data.paths") for f in fields) or name == "glue"
    overrides = {field: sample_override(value) for field, value in fields.items()}
    argv = ["prog", f"--config={REPO}/configs/{name}.py{':' + arg if arg else ''}"]
    argv += [f"--config.{field}={text}" for field, (text, _) in overrides.items()]
    parsed = dict(leaves(parse(argv)))
    for field, (_, want) in overrides.items():
        assert parsed[field] == want, (spec, field, parsed[field])


def test_a_user_corpus_from_the_command_line():
    """docs/data.md's data-source table, used without writing a config file."""
    c = parse(["prog", f"--config={REPO}/configs/quickstart.py", "--config.data.source=wikiextractor",
               "--config.data.paths=/corpus/a,/corpus/b"])
    from distill_jax.data.config import as_path_list, validate_data_config
    validate_data_config(c.data)
    assert as_path_list(c.data.paths) == ["/corpus/a", "/corpus/b"]
    c = parse(["prog", f"--config={REPO}/configs/mha_l6_h384.py:runlocal", "--config.data.source=hf",
               "--config.data.hf_name=json", "--config.data.hf_data_files={'train': ['a.jsonl']}"])
    assert c.data.hf_data_files == {"train": ["a.jsonl"]}


def run_main(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("override, suggestion", [
    ("--config.studnet.num_layers=3", "did you mean student.num_layers?"),
    ("--config.student.num_layer=3", "did you mean student.num_layers?"),
    ("--config.data.path=/corpus", "did you mean data.paths?"),
])
def test_a_mistyped_field_gets_one_line_with_the_suggestion(tmp_path, override, suggestion):
    start = time.time()
    proc = run_main("--config=configs/quickstart.py", override, f"--workdir={tmp_path / 'w'}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {override.split('=')[0]}: the config has no field"), lines[0]
    assert lines[0].endswith(suggestion), lines[0]
    assert time.time() - start < 60
    assert not (tmp_path / "w").exists()


# Makes torch unfindable for this interpreter (what a machine without torch sees): a PathFinder
# that answers None for torch, in the place of the real one.
_HIDE_TORCH = """
import importlib.machinery, sys
class _NoTorch(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path = [_NoTorch if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


@pytest.mark.parametrize("first_import", ["", "import distill_jax\n", "import distill_jax.cli\n"])
def test_the_pytorch_not_found_warning_is_dropped_and_nothing_else(first_import):
    code = _HIDE_TORCH + first_import + (
        "import transformers\n"
        "transformers.logging.get_logger('transformers').warning('another transformers warning')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "another transformers warning" in proc.stderr
    # Without the package's filter transformers really prints it (so the check below can fail);
    # importing the library alone (no CLI) drops it too.
    assert ("PyTorch was not found" in proc.stderr) is (not first_import), proc.stderr


def test_the_recorded_command_is_the_one_to_type_again():
    from distill_jax import commands

    commands.record_command(["main.py", "--config=configs/quickstart.py:steps=10", "--workdir=runs/a b"])
    assert commands.invocation() == "python main.py --config=configs/quickstart.py:steps=10 '--workdir=runs/a b'"
    commands.record_command(["/venv/bin/distill-jax", "--config=quickstart", "--workdir=w"])
    assert commands.invocation() == "distill-jax --config=quickstart --workdir=w"
    commands._COMMAND = None  # a library call records nothing
    assert commands.invocation() is None
