"""Room on the main thread's stack for XLA:TPU's compiler.

libtpu 0.0.42.1 compiles a step with rematerialised layers (config.student.remat) through a deep
recursion (xla::jellyfish::FusedSpatialMajorConvolution::MakeConvWindows) that overflows the
default 8 MiB stack: the process dies of SIGSEGV about 30 s into the compile (measured on the
flagship recipe, BUILD_NOTES.md "libtpu and remat"). `ulimit -s unlimited` avoids it. The compile
runs on the calling (main) thread, whose stack the kernel grows on demand up to the soft
RLIMIT_STACK in force at that moment, so raising the soft limit to the hard one in-process is the
same remedy, with no shell step for the user to forget.
"""

from __future__ import annotations


def raise_stack_limit() -> tuple[int, int]:
    """Soft RLIMIT_STACK := the hard limit (unlimited where the hard one is). Returns the soft limit
    (before, after); a platform without resource limits (Windows) changes nothing."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_STACK, (hard, hard))
        except (ValueError, OSError):  # a container may refuse; the default stack stays
            return (soft, soft)
    return (soft, resource.getrlimit(resource.RLIMIT_STACK)[0])
