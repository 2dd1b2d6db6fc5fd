"""SIGTERM (what TPU VMs, SLURM and `launch/tpu_pod.sh --stop` send) from the first line of a run
to its last, in one place.

Before the loop (teacher load, compile, data build): the run stops at the next phase boundary or
data-build poll, or at once during the compile (it runs in a thread the main thread watches),
with one line and exit status 143 (`Stopped`); nothing is half-written (every write before the loop
is atomic, see data/cache.py), and a rerun of the same command starts over where the work stands.

In the loop, every step (`should_stop(step)`):
  * one process: stop after the step in flight (the trainer saves, exits, a rerun resumes);
  * several processes: they must stop after the same step, or the checkpoint save (collective)
    hangs. The first process to hear SIGTERM proposes `stop_at = its step + STOP_MARGIN_STEPS` in
    the coordination service's key-value store (first writer wins); every process reads the key
    each step (one non-blocking RPC) and stops once it reaches stop_at. This holds because no
    process's loop runs more than 2 steps ahead of another: the trainer waits for step n-1's
    loss before dispatching step n+1, and step n-1 needs every process's step n-1.
Our Python handler replaces the one jax.distributed installs (its preemption sync point is not
used): one mechanism for one and many processes, and for the phases before the loop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import jax

# Steps between the first SIGTERM a process hears and the step every process stops after: more
# than the 2-step skew the trainer allows between processes (see the module docstring).
STOP_MARGIN_STEPS = 4
_STOP_DIR = "distill_jax/stop/"
_STOP_KEY = _STOP_DIR + "at"
STOPPED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by it


class Stopped(RuntimeError):
    """SIGTERM before the training loop: nothing was written that a rerun would not redo."""

    def __init__(self, phase: str):
        super().__init__(f"stopped by SIGTERM during {phase}; nothing is half-written, rerun the "
                         f"same command to continue")


def _client():
    if jax.process_count() == 1:
        return None
    from jax._src import distributed as jax_distributed
    return jax_distributed.global_state.client


class StopSignal:
    """Listens for SIGTERM from construction to close() (see the module docstring)."""

    def __init__(self):
        self.requested = False
        self.stop_at: int | None = None
        self._proposed = False
        self._previous: Any = None
        self._installed = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        except ValueError:  # not the main thread (a library caller): no handler
            pass

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def _peer_stop(self) -> str | None:
        client = _client()
        if client is None:
            return None
        try:
            found = dict(client.key_value_dir_get(_STOP_DIR))
        except Exception:  # noqa: BLE001 - the coordinator is gone: PeerWatch ends the process
            return None
        return found.get(_STOP_KEY)

    # ---- before the loop -------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        """This process heard SIGTERM, or another one did (it published a stop)."""
        return self.requested or self._peer_stop() is not None

    def check(self, phase: str) -> None:
        """Raises Stopped at a phase boundary when a stop was requested (here or by a peer)."""
        if self.stop_requested():
            self._publish(0)
            raise Stopped(phase)

    def run(self, phase: str, function: Callable[[], Any], poll_s: float = 0.5) -> Any:
        """function() in a thread, watched: a SIGTERM meanwhile raises Stopped at once (the thread
        is abandoned: the process is about to exit)."""
        result: dict[str, Any] = {}

        def target():
            try:
                result["value"] = function()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                result["error"] = exc

        thread = threading.Thread(target=target, name=f"distill_jax-{phase}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(poll_s)
            if thread.is_alive():
                self.check(phase)
        if "error" in result:
            raise result["error"]
        return result["value"]

    # ---- in the loop ------------------------------------------------------------------------------
    def _publish(self, stop_at: int) -> None:
        client = _client()
        if client is None or self._proposed:
            return
        self._proposed = True
        try:
            client.key_value_set(_STOP_KEY, str(stop_at), allow_overwrite=False)
        except Exception:  # noqa: BLE001 - another process proposed first: its value stands
            pass

    def should_stop(self, step: int) -> bool:
        """Whether to stop after `step` (the trainer then saves and exits)."""
        if jax.process_count() == 1:
            return self.requested
        if self.stop_at is None:
            if self.requested:
                self._publish(step + STOP_MARGIN_STEPS)
            value = self._peer_stop()
            if value is None:
                return False
            self.stop_at = max(int(value), 1)
        return step >= self.stop_at

    def close(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


def wait_for_step(metrics: Any) -> None:
    """Blocks until a step's metrics are computed (bounds how far this process's loop runs ahead)."""
    if metrics is not None:
        jax.block_until_ready(metrics)
