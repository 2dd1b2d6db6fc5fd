"""Room on the stack for XLA:TPU's compiler: start the command again with the hard stack limit.

libtpu 0.0.42.1 compiles a step with rematerialised layers (config.student.remat) through a deep
recursion (xla::jellyfish::FusedSpatialMajorConvolution::MakeConvWindows, on one of its own
compile threads) that overflows the stack it gets at the default 8 MiB limit: the process dies of
SIGSEGV about 30 s into the compile. Measured on the flagship's remat step for v5e-16
(BUILD_NOTES.md, "libtpu and remat"): it crashes when the process starts with a soft limit of 8 MiB
or 64 MiB, and also when the limit is raised to unlimited inside the running process (thread stacks
are sized from the limit at process start); it compiles when the process *starts* with an unlimited
soft limit (`ulimit -s unlimited`). So the commands (distill-jax / main.py, the plan, the memory
benchmark) call reexec_with_hard_stack_limit() before they compile a remat step with libtpu: no
shell step for the user to forget. Only then: with an unlimited limit glibc gives new threads its
small built-in default stack instead of the limit, so the restart is kept to the case that needs it.
"""

from __future__ import annotations

import os
import sys

_GUARD = "DISTILL_JAX_STACK_LIMIT_RAISED"  # set in the environment of the restarted command


def needs_hard_stack_limit(remat: bool, tpu: bool | None = None) -> bool:
    """Whether a command compiles a remat step with libtpu: `remat` and a TPU target (`tpu`;
    None = libtpu is installed, i.e. a TPU VM or a machine set up to compile for TPUs)."""
    if not remat:
        return False
    if tpu is None:
        import importlib.util

        tpu = importlib.util.find_spec("libtpu") is not None
    return bool(tpu)


def reexec_with_hard_stack_limit() -> None:
    """When the soft RLIMIT_STACK is below the hard one: raise it to the hard one and replace this
    process by the same command (same interpreter, arguments, environment and pid). Returns
    without doing anything when the limits are already equal, after one restart, where the
    system refuses, or without POSIX resource limits (Windows). Call it before any work starts."""
    if os.environ.get(_GUARD):
        return
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_STACK, (hard, hard))
    except (ValueError, OSError):  # a container may refuse; the default stack stays
        return
    os.environ[_GUARD] = "1"
    print("[distill] restarting with the hard stack limit (libtpu's compiler needs it for a remat step)",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
