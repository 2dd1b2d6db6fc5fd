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

    lock = property(lambda self: self.path(LOCK))
    config = property(lambda self: self.path(CONFIG))
    parameters = property(lambda self: self.path(PARAMETERS))
    checkpoints = property(lambda self: self.path(CHECKPOINTS))
    history = property(lambda self: self.path(CHECKPOINTS, HISTORY))
    tensorboard = property(lambda self: self.path(TENSORBOARD))
    compilation_cache = property(lambda self: self.path(COMPILATION_CACHE))
    data_cache = property(lambda self: self.path(DATA_CACHE))
    logs = property(lambda self: self.path(LOGS))
    export = property(lambda self: self.path(EXPORT))
    summary = property(lambda self: self.path(SUMMARY))
    loss_curves = property(lambda self: self.path(LOSS_CURVES))
