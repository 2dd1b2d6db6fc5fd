"""A distillation run's workdir, stated once: every file and folder the trainer and its tools
put there. The trainer, the config check, the lock, the TensorBoard writer and the MLM-head fit
take their paths from `Workdir`; launch/tpu_pod.sh writes the pod hosts' logs to LOGS.

    <workdir>/
      LOCK                      while a run holds the workdir (workdir_lock.py)
      config.json               the config the run started with (run_config.py)
      parameters.txt            the student's per-parameter table
      checkpoints/<step>/       student and objective aux params, optimizer state, step, each
                                host's data position; never the teacher (checkpoint.py)
      checkpoints/history.json  the logged curve, so a resumed run's summary covers the whole run
      checkpoints/divergence.json        after a detected divergence (divergence.py)
      checkpoints/corrupt-<step>-<time>  a damaged checkpoint, moved aside and kept
      tensorboard/              event files: every loss term, learning rate, gradient norm,
                                throughput, MFU, and the config as hparams (metrics.py)
      compilation_cache/        JAX's persistent compilation cache (config.compilation_cache_dir '')
      data_cache/               the data cache the hosts of a multi-process job share when
                                config.data.cache_dir is unset
      logs/worker-<i>.log       each pod host's console (launch/tpu_pod.sh, tools/sync_logs.py)
      export/                   the student in HF format, tokenizer, model card (export.py)
      summary.json              the run's record: config, command, steps, losses, throughput,
                                MFU, per-device memory
      loss_curves.png           the total loss and each term

Paths are strings joined with '/', so a gs:// workdir works as a local one does (etils.epath).
"""

from __future__ import annotations

import dataclasses

LOCK = "LOCK"
CONFIG = "config.json"
PARAMETERS = "parameters.txt"
CHECKPOINTS = "checkpoints"
HISTORY = "history.json"         # in CHECKPOINTS
TENSORBOARD = "tensorboard"
COMPILATION_CACHE = "compilation_cache"
DATA_CACHE = "data_cache"
LOGS = "logs"
EXPORT = "export"
SUMMARY = "summary.json"
LOSS_CURVES = "loss_curves.png"


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The paths of one workdir (local or gs://), as the module docstring lays them out."""

    root: str

    def path(self, *parts: str) -> str:
        return "/".join((self.root.rstrip("/"), *parts))

    @property
    def lock(self) -> str:
        return self.path(LOCK)

    @property
    def config(self) -> str:
        return self.path(CONFIG)

    @property
    def parameters(self) -> str:
        return self.path(PARAMETERS)

    @property
    def checkpoints(self) -> str:
        return self.path(CHECKPOINTS)

    @property
    def history(self) -> str:
        return self.path(CHECKPOINTS, HISTORY)

    @property
    def tensorboard(self) -> str:
        return self.path(TENSORBOARD)

    @property
    def compilation_cache(self) -> str:
        return self.path(COMPILATION_CACHE)

    @property
    def data_cache(self) -> str:
        return self.path(DATA_CACHE)

    @property
    def logs(self) -> str:
        return self.path(LOGS)

    @property
    def export(self) -> str:
        return self.path(EXPORT)

    @property
    def summary(self) -> str:
        return self.path(SUMMARY)

    @property
    def loss_curves(self) -> str:
        return self.path(LOSS_CURVES)
