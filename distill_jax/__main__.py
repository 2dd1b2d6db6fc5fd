"""`python -m distill_jax ...`: the `distill-jax` command (distill_jax/cli.py)."""

from distill_jax.cli import run

if __name__ == "__main__":
    run()
