"""The command line (distill_jax/cli.py, what `python main.py`, `python -m distill_jax` and
`distill-jax` run): every field of every recipe can be set with --config.<field>=..., a field that
does not exist gets one line with the closest real one, and transformers' "PyTorch was not found"
warning is dropped (only that one, for library users too). It explains itself: --help lists every
recipe it runs with its args, read from the recipe's own source, and exits 0; --version, no
arguments, an unknown recipe and an install without the [train] extra each answer in one line."""

import ast
import importlib
import re
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
    from distill_jax.data.config import DataConfig, as_path_list
    DataConfig.from_config(c.data)
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


def hide_modules(*names: str) -> str:
    """Python source that makes `names` (top-level packages) unfindable for the interpreter that
    runs it, as on a machine without them: a PathFinder that answers None for them, in the place
    of the real one."""
    return f"""
import importlib.machinery, sys
class _Hide(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path = [_Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


_HIDE_TORCH = hide_modules("torch")


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
    commands.record_command(["/venv/lib/site-packages/distill_jax/__main__.py", "--config=glue"])
    assert commands.invocation() == "python -m distill_jax --config=glue"
    commands._COMMAND = None  # a library call records nothing
    assert commands.invocation() is None


# ----------------------------------------------------------------------------------------------
# A command that explains itself
# ----------------------------------------------------------------------------------------------

# The checkout's main.py runs every recipe; `python -m distill_jax` (the packaged command) runs the
# wheel's modes only, so not the study (studies/ is not in the wheel).
COMMANDS = {"main.py": [str(REPO / "main.py")], "-m distill_jax": ["-m", "distill_jax"]}


def run_command(command: str, *args, code: str = "", timeout=120):
    """`command` with `args` in a subprocess from the repository root; `code` runs first (in the
    same interpreter) when given."""
    if code:
        target = f"runpy.run_module('distill_jax', run_name='__main__', alter_sys=True)" \
            if command == "-m distill_jax" else f"runpy.run_path({str(REPO / 'main.py')!r}, run_name='__main__')"
        argv0 = "distill_jax/__main__.py" if command == "-m distill_jax" else "main.py"
        head = ["-c", f"{code}\nimport runpy, sys\nsys.argv = [{argv0!r}] + sys.argv[1:]\n{target}"]
    else:
        head = COMMANDS[command]
    return subprocess.run([sys.executable, *head, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def parse_arg_defaults(name: str, monkeypatch) -> dict:
    """The keyword defaults the recipe's get_config passes to parse_arg, seen by running it."""
    from configs import common

    module = importlib.import_module(f"configs.{name}")
    real, seen = common.parse_arg, []

    def spy(arg, **defaults):
        seen.append(defaults)
        return real(arg, **defaults)

    monkeypatch.setattr(common, "parse_arg", spy)
    if hasattr(module, "parse_arg"):  # `from configs.common import parse_arg`
        monkeypatch.setattr(module, "parse_arg", spy)
    config = module.get_config()
    return seen[0], config  # the recipe's own call comes first (a base recipe's may follow)


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_is_described_from_its_source_as_it_runs(name, monkeypatch):
    """recipes.describe reads the args and mode without importing the recipe; running the recipe
    gives the same arg names and defaults and the same config.mode."""
    from distill_jax import recipes

    described = recipes.describe(REPO / "configs" / f"{name}.py")
    defaults, config = parse_arg_defaults(name, monkeypatch)
    assert list(described.args) == list(defaults)
    for key, value in described.args.items():
        assert value is ... or value == defaults[key], (key, value, defaults[key])
    assert described.mode == config.mode
    assert described.summary and "\n" not in described.summary
    # And get_config refuses exactly the args that are not these.
    with pytest.raises(ValueError, match="this config takes") as refused:
        importlib.import_module(f"configs.{name}").get_config("no_such_arg=1")
    assert sorted(ast.literal_eval(str(refused.value).split("this config takes ")[1])) == sorted(defaults)


def recipe_blocks(help_text: str) -> dict[str, str]:
    """name -> the lines (summary and args) of each recipe listed by --help."""
    section = help_text.split("Recipes (args with their defaults):\n")[1].split("\n\n")[0]
    blocks = re.split(r"^  (?=\S)", section, flags=re.M)
    return {b.split()[0]: " ".join(b.split()[1:]) for b in blocks if b.strip()}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_recipe_it_runs_with_its_args_and_exits_0(command):
    from distill_jax import recipes

    proc = run_command(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    listed = recipe_blocks(proc.stdout)
    expected = set(RECIPES) - ({"study"} if command == "-m distill_jax" else set())
    assert set(listed) == expected, proc.stdout
    for name, text in listed.items():
        module = importlib.import_module(f"configs.{name}")
        first_words = " ".join(module.__doc__.split()[:6])
        assert text.startswith(first_words), (name, text)
        args = text.split("args: ")[1]
        for key, default in recipes.describe(REPO / "configs" / f"{name}.py").args.items():
            assert re.search(rf"(^| ){key}(=| |$)", args), (name, key, args)
            if default not in (..., "", False, True):
                assert f"{key}={default}" in args
    for override in ("--config.teacher.name=", "--config.total_steps=", "--config.data.paths="):
        assert override in proc.stdout
    assert "--distributed" in proc.stdout and "--num_processes" in proc.stdout
    # One recipe's whole description.
    proc = run_command(command, "--config=glue", "--help")
    assert proc.returncode == 0, proc.stderr
    assert importlib.import_module("configs.glue").__doc__.strip() in proc.stdout
    assert "max_train=0" in proc.stdout


def test_the_overrides_help_shows_are_real_fields():
    from configs import common
    from distill_jax.cli import COMMON_OVERRIDES
    from distill_jax.cli_flags import config_field_paths

    fields = set(config_field_paths(common.base_config()))
    named = [f for usage, what in COMMON_OVERRIDES for f in re.findall(r"--config\.([\w.]+)=", usage)]
    named += [f for usage, what in COMMON_OVERRIDES for f in re.findall(r"\b((?:student|optim|mesh|data)\.\w+)", what)]
    assert len(named) >= 10
    assert set(named) <= fields, set(named) - fields


@pytest.mark.parametrize("command", COMMANDS)
def test_version_no_arguments_and_an_unknown_recipe_answer_in_one_line(command, tmp_path):
    from distill_jax import __version__

    proc = run_command(command, "--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"distill_jax {__version__}\n", "")

    proc = run_command(command)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("usage: "), proc.stderr
    assert "--config=<recipe>" in proc.stderr and "--help lists the recipes" in proc.stderr

    for spec in ("no_such_recipe", "configs/no_such_recipe.py:runlocal"):
        proc = run_command(command, f"--config={spec}", f"--workdir={tmp_path / 'w'}")
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"error: --config={spec}: no such recipe;"), line
        assert "quickstart, study," in line if command == "main.py" else "quickstart, xlmr_l6_h384" in line
    assert not (tmp_path / "w").exists()

    # A recipe's bare name is found from the checkout too, and the run goes on to the config check.
    proc = run_command(command, "--config=quickstart", "--config.total_steps=0", f"--workdir={tmp_path / 'w'}")
    assert (proc.returncode, proc.stderr) == (1, "error: config.total_steps=0: must be a positive integer\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_install_without_the_train_extra_names_it_in_one_line(command):
    hide = hide_modules("absl", "ml_collections")
    probe = subprocess.run([sys.executable, "-c", hide + "import absl"], capture_output=True, text=True)
    assert "ModuleNotFoundError" in probe.stderr  # the hiding works (so the checks below can fail)
    program = r"python \S*main\.py" if command == "main.py" else r"python -m distill_jax"
    want = rf'error: {program} needs the \[train\] extra \(absl is not installed\): pip install "distill_jax\[train\]"\n'
    for args in (["--config=quickstart", "--workdir=w"], ["--help"], []):
        proc = run_command(command, *args, code=hide)
        assert proc.returncode == 1 and re.fullmatch(want, proc.stderr), (args, proc.stderr)
    proc = run_command(command, "--version", code=hide)
    assert proc.returncode == 0 and proc.stdout.startswith("distill_jax "), proc.stderr
