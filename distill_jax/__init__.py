"""distill_jax: task-agnostic distillation of BERT-style encoders in JAX/Flax."""

import logging as _logging

__version__ = "0.1.0"


class _DropTorchNotFound(_logging.Filter):
    """transformers warns "PyTorch was not found. Models won't be available ..." at import when torch
    is absent, which is the normal case here (we use its tokenizers and configs only)."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("PyTorch was not found")


# On the logger itself (not a handler): transformers adds its handlers at import, the filter stays.
# Here, not in the CLI, so that library users (`from distill_jax import models`) get it too.
_logging.getLogger("transformers").addFilter(_DropTorchNotFound())
