"""distill_jax: task-agnostic distillation of BERT-style encoders in JAX/Flax."""

__version__ = "0.1.0"
