"""Small operational commands (python -m distill_jax.tools.<name>) used by the launchers."""
