"""The wheel, as a user of our losses installs it: built from this checkout, installed with its core
dependencies only (jax, numpy) into a fresh virtual environment without system site-packages, it
runs docs/losses.md's "Using the losses in your own JAX project" example and imports neither flax nor
TensorFlow nor torch; its `distill-jax` names the [train] extra it lacks in one line. Its metadata
are the requirements/*.txt files (one place for every pin), and the `distill-jax` command runs a
packaged recipe without a checkout and lists only the recipes it can run."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_losses_doc import losses_example

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("flax", "tensorflow", "torch", "transformers", "optax", "orbax")


def _requirements(name: str) -> list[str]:
    lines = (REPO / "requirements" / f"{name}.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _normalise(requirement: str) -> str:
    """'jax<0.11,>=0.10.0; extra == "x"' and 'jax>=0.10.0,<0.11' -> the same text."""
    requirement = requirement.split(";")[0].replace(" ", "")
    match = re.match(r"([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)(.*)", requirement)
    name, spec = match.groups()
    return name.lower().replace("_", "-") + ",".join(sorted(s for s in spec.split(",") if s))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a copy of the checkout (the build writes build/ and *.egg-info)."""
    src = tmp_path_factory.mktemp("src") / "distill_jax"
    skip = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__")

    def ignore(directory, names):  # scratch workdirs only at the top (distill_jax/workdir_lock.py ships)
        top = {n for n in names if n.startswith("workdir")} if Path(directory) == Path(REPO) else set()
        return skip(directory, names) | top

    shutil.copytree(REPO, src, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                           str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("distill_jax-*.whl")
    return wheel


def test_wheel_holds_the_package_and_recipes_and_its_metadata_are_the_requirement_files(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"distill_jax", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert "distill_jax/losses/objective.py" in names and "distill_jax/cli.py" in names
    assert {"distill_jax/configs/quickstart.py", "distill_jax/configs/common.py",
            "distill_jax/configs/__init__.py"} <= set(names)
    assert "distill_jax/models/hub_configs/bert-base-uncased.json" in names  # the plan's offline shapes
    assert not [n for n in names if n.startswith(("distill_jax/bench/", "benchmarks/", "studies/"))]
    assert "distill-jax = distill_jax.cli:run" in entry_points

    core, extras = [], {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = line.split(":", 1)[1].strip()
            extra = re.search(r'extra == "([^"]+)"', requirement)
            (extras.setdefault(extra.group(1), []) if extra else core).append(_normalise(requirement))
    normalised = {name: sorted(map(_normalise, _requirements(name)))
                  for name in ("core", "models", "train", "tpu", "tfds", "test")}
    assert sorted(core) == normalised["core"] == sorted(["jax<0.11,>=0.10.0", "numpy<3,>=2.0"])
    assert sorted(extras["models"]) == normalised["models"]
    assert sorted(extras["train"]) == sorted(normalised["models"] + normalised["train"])
    assert extras["tpu"] == ["jax[tpu]"]
    assert sorted(extras["tfds"]) == normalised["tfds"]
    # libtpu: the plan's tests; tfds: its sources' tests.
    assert sorted(extras["test"]) == sorted(normalised["test"] + normalised["tfds"] + normalised["tpu"])
    # [train] has no TensorFlow (TensorBoard events: distill_jax/event_writer.py); tfds has its extra.
    assert not [r for r in extras["train"] if r.startswith(("tensorflow", "tensorflow-datasets"))]
    # Licence, author and the licence file travel with the wheel.
    assert "License-Expression: Apache-2.0" in metadata and "Author: distill_jax maintainers" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # What scripts/env.sh installs is exactly those files.
    assert (REPO / "requirements.txt").read_text().split("\n-r ")[1:] == [
        "requirements/core.txt", "requirements/models.txt", "requirements/train.txt\n"]
    assert "-r requirements/test.txt" in (REPO / "requirements-test.txt").read_text()


@pytest.mark.slow
def test_core_install_in_a_fresh_venv_runs_the_documented_losses_example(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    no_site = subprocess.run([str(python), "-c", "import sys; print(sys.flags.no_site, "
                              "[p for p in sys.path if 'site-packages' in p])"],
                             capture_output=True, text=True, check=True).stdout
    assert str(venv) in no_site and "/work/main/.venv" not in no_site  # only its own site-packages
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True,
                            env=env).stdout.lower()
    assert "jax==" in freeze and "numpy==" in freeze
    assert not [m for m in ("flax", "tensorflow", "torch", "transformers") if f"\n{m}==" in "\n" + freeze]
    assert (venv / "bin" / "distill-jax").is_file()
    # The command needs [train]: it says so in one line (--version needs nothing).
    command = str(venv / "bin" / "distill-jax")
    proc = subprocess.run([command, "--config=quickstart", "--workdir=w"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and proc.stderr == (
        'error: distill-jax needs the [train] extra (absl is not installed): '
        'pip install "distill_jax[train]"\n'), proc.stderr
    proc = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("distill_jax "), proc.stderr

    example = tmp_path / "losses_example.py"
    example.write_text(losses_example() + (
        "\nimport json, sys\n"
        f"print('HEAVY=' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r})))\n"
        "import distill_jax\nprint('FROM=' + distill_jax.__file__)\n"))
    proc = subprocess.run([str(python), str(example)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(env, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "((1, (1, 2)), (2, (3, 4)), (3, (5, 6)))" in proc.stdout
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith(("HEAVY=", "FROM=")))
    assert json.loads(out["HEAVY"]) == [], out["HEAVY"]
    assert out["FROM"].startswith(str(venv)), out["FROM"]  # the installed wheel, not the checkout


def test_installed_command_runs_a_packaged_recipe_without_a_checkout(wheel, tmp_path):
    """The wheel unpacked alone on sys.path (the checkout is not), run from an empty directory with
    this environment's dependencies: `distill-jax --config=quickstart` finds the shipped recipe
    (which imports `configs.common`) and goes as far as the trainer's config check."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    command = [sys.executable, "-c", "import sys; from distill_jax.cli import run; sys.exit(run())"]
    for spec in ("quickstart", "configs/quickstart.py", "quickstart.py:steps=50"):
        proc = subprocess.run(command + [f"--config={spec}", "--config.total_steps=0",
                                         f"--workdir={tmp_path / 'w'}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip() == "error: config.total_steps=0: must be a positive integer", proc.stderr
    proc = subprocess.run(command + ["--config=quickstart", "--config.studnet.num_layers=3",
                                     f"--workdir={tmp_path / 'w'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("did you mean student.num_layers?")
    # --help offers the recipes the wheel runs: every shipped one but the study (its mode's code,
    # studies/, is not in the wheel; a checkout's main.py runs it).
    proc = subprocess.run([sys.executable, "-m", "distill_jax", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.split("Recipes (args with their defaults):\n")[1]
              .split("\n\n")[0].splitlines() if line.startswith("  ") and not line.startswith("   ")}
    shipped = {p.stem for p in (site / "distill_jax" / "configs").glob("*.py")} - {"__init__", "common"}
    assert "study" in shipped and listed == shipped - {"study"}, proc.stdout
    assert "studies" not in proc.stdout
    # The code that ran is the unpacked wheel's.
    proc = subprocess.run([sys.executable, "-c", "import distill_jax.cli; print(distill_jax.cli.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.stdout.startswith(str(site)), proc.stdout + proc.stderr
