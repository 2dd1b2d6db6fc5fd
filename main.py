"""Entry point: `python main.py --config=configs/<recipe>.py[:arg] --workdir=<dir or gs://...>`.

Thin on purpose: flags, multi-process set-up, then the trainer (or the GLUE harness) does the work.
Any config field can be overridden, e.g. `--config.total_steps=1000 --config.teacher.name=/ckpt`.

Multi-process (TPU pod, SLURM, several GPU hosts): jax.distributed.initialize() runs when
--distributed=on, or with --distributed=auto (default) when the environment says so (a coordinator
address in the flags or JAX_COORDINATOR_ADDRESS, SLURM with more than one task, or a multi-host TPU
slice). On TPU pods and SLURM, JAX finds coordinator, process count and id by itself.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow (clu's writer) talks a lot at import

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, export and summary go here.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "jax.distributed.initialize(): auto = when the environment is multi-process.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (else from the environment).")
flags.DEFINE_integer("num_processes", None, "Number of processes (else from the environment).")
flags.DEFINE_integer("process_id", None, "This process's id (else from the environment).")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_process_environment() -> bool:
    if FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    # Multi-host TPU slices list every worker's hostname.
    return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import jax
    from absl import logging

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if FLAGS.distributed == "on" or (FLAGS.distributed == "auto" and _multi_process_environment()):
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    config = FLAGS.config
    mode = config.get("mode", "distill")
    if mode == "distill":
        from distill_jax.train import train_and_evaluate
        train_and_evaluate(config, FLAGS.workdir)
    elif mode == "glue":
        from distill_jax.evaluate import run_from_config  # provided by the GLUE harness
        run_from_config(config, FLAGS.workdir)
    else:
        raise app.UsageError(f"config.mode={mode!r}: use 'distill' or 'glue'")


def _run():
    # One line, no traceback, for the errors we raise on purpose (bad config, missing teacher, NaN).
    from distill_jax.cli import run_with_one_line_errors

    run_with_one_line_errors(lambda: app.run(main))


if __name__ == "__main__":
    _run()
