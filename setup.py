"""Packages of the wheel (everything else is in pyproject.toml).

The wheel holds `distill_jax` and its subpackages plus the recipes: the repository's top-level
`configs/` is shipped as `distill_jax.configs`, so the installed `distill-jax` command runs
`--config=quickstart` (or `--config=configs/quickstart.py` outside a checkout) with no checkout.
Not shipped: benchmarks and studies (they import torch and run for hours), tests, launch scripts.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["distill_jax", "distill_jax.*"]) + ["distill_jax.configs"],
    package_dir={"distill_jax.configs": "configs"},
    # The public config.json shapes of hub teachers: the TPU plan compiles without the hub.
    package_data={"distill_jax.models": ["hub_configs/*.json"]},
)
