"""Long experiments built on distill_jax (repository-level: not part of the installable package)."""
