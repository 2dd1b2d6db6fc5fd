"""Multi-process start-up, and what a process does when a peer dies.

Start-up: with mode 'on', or 'auto' (the default) when the environment says the job is
multi-process (a coordinator address in the flags or JAX_COORDINATOR_ADDRESS, SLURM with more than
one task, or a multi-host TPU slice), every process joins the coordination service through
`jax.distributed.initialize`. On TPU pods and SLURM, JAX finds coordinator, process count and id by
itself. The timeouts are ours, not JAX's defaults left implicit (see below).

A dead peer (kernel panic, OOM kill, preempted VM) shows up in one of two ways:
  * a collective of a survivor fails (gloo on CPU: "Connection closed by peer"): the trainer turns
    the error into PeerLost, and the command line (cli.py) calls exit_peer_lost;
  * as often (measured on localhost gloo), the collective just waits; JAX's coordination service
    would notice the missing heartbeats after HEARTBEAT_TIMEOUT_S and abort every survivor from
    C++ (LOG(FATAL): a native stack dump, exit 134). Our own watch (_PeerWatch: a counter per
    process in the coordination service's key-value store) notices first, after PEER_TIMEOUT_S,
    and calls exit_peer_lost.
exit_peer_lost prints one line naming the newest complete checkpoint (the one a rerun resumes from)
and leaves with os._exit(PEER_LOST_EXIT_CODE): a normal exit would run jax.distributed's shutdown,
whose barrier waits for the dead peer and then aborts the same way. The checkpoint being written at
that moment is simply not finalized (orbax renames a step into place when it is complete), so the
rerun never sees it.
"""

from __future__ import annotations

import os
import sys

import jax

# Seconds. Our own detection (_PeerWatch): a peer whose liveness counter has not moved for this
# long is lost, and every survivor ends with the one-line message. It bounds how long survivors of
# a dead or frozen peer live (plus up to one 2 s beat). 20 s: long against any stall of a healthy
# host's beat thread (it is Python, but every long XLA call releases the GIL), short against a pod
# job burning chips while stuck.
PEER_TIMEOUT_S = 20
# JAX's coordination-service heartbeat (its default is 100 s). On a timeout JAX aborts every process
# from C++ (native stack, exit 134), so it is only the backstop: set well above PEER_TIMEOUT_S so
# our clean exit comes first.
HEARTBEAT_TIMEOUT_S = 60
# All processes must connect within this (pod VMs boot and import at different speeds).
INITIALIZATION_TIMEOUT_S = 300
# A normally finishing process waits this long at the shutdown barrier for the others (process 0
# may still be writing the export and summary to gs:// while the others are done).
SHUTDOWN_TIMEOUT_S = 300
# EX_TEMPFAIL: a temporary failure; rerunning the same command is the fix.
PEER_LOST_EXIT_CODE = 75

# Text of the errors a collective raises when a peer process has gone (gloo, the coordination
# service, gRPC): checked in lower case.
_PEER_FAILURE_MARKERS = ("gloo", "connection closed by peer", "connection reset by peer",
                         "socket closed", "coordination service", "heartbeat", "unavailable:",
                         "task has been lost", "barrier timed out")


class PeerLost(RuntimeError):
    """A collective failed because another process of the job is gone."""

    def __init__(self, step: int, resume_step: int | None, cause: BaseException):
        self.step, self.resume_step = step, resume_step
        first = " ".join(str(cause).split())[:200]
        resume = (f"rerunning the same command resumes from checkpoint {resume_step}"
                  if resume_step is not None else "no checkpoint yet: rerunning starts over")
        super().__init__(f"a peer process was lost at step {step} ({type(cause).__name__}: {first}); "
                         f"{resume}")


def multi_process_environment(coordinator_address: str | None = None) -> bool:
    if coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    # Multi-host TPU slices list every worker's hostname.
    return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize(mode: str = "auto", *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Joins the job's processes ('on' | 'off' | 'auto'); returns whether it did."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--distributed={mode!r}: use auto, on or off")
    if mode == "off" or (mode == "auto" and not multi_process_environment(coordinator_address)):
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=INITIALIZATION_TIMEOUT_S,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                               shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    _PeerWatch.start()
    return True


# Where the trainer keeps its checkpoints and the step it is at, for the peer-lost line.
_checkpoint_dir: str | None = None
_step = 0


def note_checkpoint_dir(directory: str) -> None:
    global _checkpoint_dir
    _checkpoint_dir = directory


def note_step(step: int) -> None:
    global _step
    _step = step


def finished() -> None:
    """This process is done (normally): peers stop watching it, it stops watching them."""
    _PeerWatch.stop()


class _PeerWatch:
    """Each process bumps a counter in the coordination service's key-value store every BEAT_S and
    reads everyone's; a peer whose counter has not moved for PEER_TIMEOUT_S (by this host's own
    monotonic clock: no cross-host clock skew), or a store that cannot be reached for that long (the
    coordinator's host is gone), ends this process through exit_peer_lost. JAX's own heartbeat
    would end it too, but only by aborting from C++ (its missed_heartbeat_callback cannot be set
    from Python: jaxlib 0.10.2 fails to pass the status to it, std::bad_cast)."""

    BEAT_S = 2.0
    _thread = None
    _stopped = False
    _last_ok = 0.0

    @classmethod
    def start(cls) -> None:
        import threading
        import time
        cls._stopped = False
        cls._last_ok = time.monotonic()
        cls._thread = threading.Thread(target=cls._run, name="distill_jax-peer-watch", daemon=True)
        cls._thread.start()
        # A call to a frozen coordinator blocks rather than fails: a second thread watches the first.
        threading.Thread(target=cls._supervise, name="distill_jax-peer-watch-supervisor",
                         daemon=True).start()

    @classmethod
    def stop(cls) -> None:
        if cls._thread is None or cls._stopped:
            return
        cls._stopped = True
        try:
            cls._client().key_value_set(f"distill_jax/done/{jax.process_index()}", "1", allow_overwrite=True)
        except Exception:  # noqa: BLE001 - best effort: the job is ending anyway
            pass

    @staticmethod
    def _client():
        from jax._src import distributed as jax_distributed
        return jax_distributed.global_state.client

    @classmethod
    def _supervise(cls) -> None:
        import time
        while not cls._stopped:
            silent = time.monotonic() - cls._last_ok
            if silent > PEER_TIMEOUT_S:
                _exit_from_watch(f"the coordination service (process 0's host) did not answer for "
                                 f"{silent:.0f} s")
            time.sleep(1.0)

    @classmethod
    def _run(cls) -> None:
        import time
        me, count = jax.process_index(), jax.process_count()
        client, beat = cls._client(), 0
        last_change = {p: time.monotonic() for p in range(count) if p != me}
        last_value: dict[int, str] = {}
        while not cls._stopped:
            try:
                beat += 1
                client.key_value_set(f"distill_jax/alive/{me}", str(beat), allow_overwrite=True)
                alive = dict(client.key_value_dir_get("distill_jax/alive/"))
                done = dict(client.key_value_dir_get("distill_jax/done/"))
            except Exception:  # noqa: BLE001 - the coordinator's host may be gone: _supervise
                time.sleep(cls.BEAT_S)
                continue
            now = cls._last_ok = time.monotonic()
            for peer in last_change:
                if cls._stopped or f"distill_jax/done/{peer}" in done:
                    continue
                value = alive.get(f"distill_jax/alive/{peer}")
                if value != last_value.get(peer):
                    last_value[peer], last_change[peer] = value, now
                elif now - last_change[peer] > PEER_TIMEOUT_S:
                    _exit_from_watch(f"process {peer} sent no sign of life for "
                                     f"{now - last_change[peer]:.0f} s")
            time.sleep(cls.BEAT_S)


def _exit_from_watch(reason: str) -> None:
    from distill_jax import checkpoint

    resume = checkpoint.latest_complete_step(_checkpoint_dir) if _checkpoint_dir else None
    exit_peer_lost(PeerLost(_step, resume, TimeoutError(reason)))


def is_peer_failure(exc: BaseException) -> bool:
    """Whether `exc` (raised by a step or collective) means another process is gone."""
    if jax.process_count() == 1:
        return False
    text = str(exc).lower()
    return any(marker in text for marker in _PEER_FAILURE_MARKERS)


def exit_peer_lost(error: PeerLost) -> None:
    """One line on stderr, then leave at once (no jax.distributed shutdown, see the docstring)."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(PEER_LOST_EXIT_CODE)
