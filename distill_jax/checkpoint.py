"""Checkpoints: the only module that talks to orbax.

A checkpoint at step N holds three items, written by one `ocp.CheckpointManager`:
  state  the train state pytree (student params, objective aux params, optimizer state, step),
         saved with `StandardSave` (sharded arrays, each process writes its own shards, async);
  data   the data iterator position, one JSON file per process (`process_<i>-of-<n>.json`),
         because every host reads its own share of the corpus and so has its own position;
  meta   JSON shared by all processes: step, seed, wall time spent so far.
The teacher is never part of a checkpoint: it is reloaded from its directory on restart.

Resume is automatic: `Checkpointer.restore_latest(abstract_state)` returns None for a fresh
workdir, else the restored state (placed with the shardings of `abstract_state`) and the JSON items.

Damaged checkpoints (a truncated array file, unreadable JSON of the data position or meta, as a
failed copy or a full disk leaves them) do not end the run: restore_latest warns in one line,
moves the step directory aside to `<dir>/corrupt-<step>-<UTC time>` (outside orbax's step names,
so orbax no longer sees it; never deleted) and tries the next older step; when none restores it
raises CheckpointError. A checkpoint that is readable but does not fit this run (the config changed
the train state's shapes, or the process count changed) is never moved: CheckpointError at once.

Half-written checkpoints need nothing from us: orbax writes a step into
`<step>.orbax-checkpoint-tmp-<timestamp>` and renames it when complete (on GCS: a
`commit_success.txt` marks it), and lists only finalized steps, so a save cut short by a crash or a
kill is ignored on restart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import traceback
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class _DropOrbaxReadTasks(logging.Filter):
    """A damaged array file fails every array read orbax started at once; it raises the first and
    asyncio later logs each other task's exception ("Task exception was never retrieved", a full
    tensorstore spec each). The failure is reported once, by restore_latest: drop those. A task is
    recognised by its exception, a tensorstore error (its text ends in the tensorstore spec), or by
    an orbax coroutine; the task's coroutine alone is not enough, since orbax wraps tensorstore's
    futures in asyncio's own `_wrap_awaitable`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(("Task exception was never retrieved",
                                           "Future exception was never retrieved")):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage() + (str(exc) if exc is not None else "")
        return not ("orbax/checkpoint" in text or "[tensorstore_spec=" in text)


logging.getLogger("asyncio").addFilter(_DropOrbaxReadTasks())


class _DropOrbaxStorageErrors(logging.Filter):
    """A save that fails on storage (disk full, read-only) is logged by orbax's background thread
    with its whole traceback before the trainer sees it; the trainer then reports it in one line
    (CheckpointSaveError naming the path and the space needed): drop orbax's copy."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in (record.pathname or ""):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return _storage_error(exc) is None and _storage_error(RuntimeError(record.getMessage())) is None


for _name in ("absl", "orbax", ""):
    logging.getLogger(_name).addFilter(_DropOrbaxStorageErrors())

# A failed restore abandons orbax's metadata read before it is awaited; Python then warns about the
# coroutine when it is collected (one RuntimeWarning line). The restore already failed and was
# reported in one line (restore_latest): nothing to say twice.
ABANDONED_ORBAX_READ = r"coroutine 'Store\._get_array_metadatas' was never awaited"
warnings.filterwarnings("ignore", message=ABANDONED_ORBAX_READ, category=RuntimeWarning)


def _late_read_callback(exc_type, exc, tb) -> bool:
    """The other half of a failed restore: reads still in flight when orbax gave up finish later on
    tensorstore's threads, and posting their results to the closed event loop raises
    RuntimeError('Event loop is closed') in asyncio's call_soon_threadsafe, which tensorstore
    prints through sys.excepthook / sys.unraisablehook (a traceback each). Nothing is lost: the
    restore already failed and was reported in one line."""
    return (exc_type is RuntimeError and str(exc) == "Event loop is closed"
            and any(frame.name == "call_soon_threadsafe" for frame in traceback.extract_tb(tb)))


def _abandoned_orbax_coroutine(obj: Any) -> bool:
    """An orbax read coroutine (e.g. _read_array_index_and_device_put) collected unfinished after
    a failed restore closed its loop: Python reports it as "Exception ignored in: <coroutine ...>"
    with a traceback. The restore already failed and was reported in one line."""
    code = getattr(obj, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


def _install_late_callback_filter() -> None:
    if getattr(sys.excepthook, "drops_late_read_callbacks", False):
        return
    previous_excepthook, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(exc_type, exc, tb):
        if not _late_read_callback(exc_type, exc, tb):
            previous_excepthook(exc_type, exc, tb)

    def unraisablehook(unraisable):
        if not (_late_read_callback(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
                or _abandoned_orbax_coroutine(unraisable.object)):
            previous_unraisable(unraisable)

    excepthook.drops_late_read_callbacks = True
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


class CheckpointError(ValueError):
    """No checkpoint in the directory restores, or one does not fit this run; one line."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint written by a different config or process count (never moved aside)."""


class _PerProcessJsonHandler(ocp.CheckpointHandler):
    """Writes/reads one JSON document per process into the item directory (like grain's handler)."""

    @staticmethod
    def _filename(directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "PerProcessJsonSave"):
        self._filename(directory).write_text(json.dumps(args.item, indent=1))

    def restore(self, directory: epath.Path, args: "PerProcessJsonRestore | None" = None) -> Any:
        filename = self._filename(directory)
        if not filename.exists():
            if list(directory.glob(f"process_*-of-{jax.process_count()}.json")):
                raise FileNotFoundError(f"{filename} missing")  # damaged: the others are there
            raise CheckpointMismatch(
                f"{filename} missing: the checkpoint was written by a different number of processes; "
                f"restart with the same process count or start a fresh workdir")
        return json.loads(filename.read_text())

    def structure(self, directory: epath.Path) -> Any:
        del directory
        return None

    def metadata(self, directory: epath.Path) -> Any:
        del directory
        return None

    def finalize(self, directory: epath.Path):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(_PerProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class PerProcessJsonSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(_PerProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class PerProcessJsonRestore(ocp.args.CheckpointArgs):
    item: Any = None


@dataclasses.dataclass
class Restored:
    step: int
    state: Any           # the train state pytree, placed like the abstract target
    data_state: Any      # this process's iterator state (JSON value)
    meta: dict           # shared JSON: step, seed, elapsed_s, ...


def _local_path(path: str) -> str:
    # orbax wants absolute paths for local directories; gs:// and other URLs pass through.
    return path if "://" in path else os.path.abspath(path)


class Checkpointer:
    """Periodic, async, keep-last-K checkpoints of (train state, data position, meta)."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        # Before any read this object can start: _check_fits's metadata read fails on a damaged
        # file too, and its stragglers can post to the closed loop before restore() is reached.
        _install_late_callback_filter()
        self.directory = _local_path(directory)
        # Steps recorded as the last good ones before a divergence are never rotated out
        # (distill_jax/divergence.py); otherwise the newest max_to_keep.
        from distill_jax.divergence import protected_steps

        self.protected = protected_steps(self.directory)
        rotation = dict(max_to_keep=max_to_keep)
        if self.protected:
            from orbax.checkpoint import checkpoint_managers as policies

            rotation = dict(preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=max_to_keep), policies.CustomSteps(steps=self.protected)]))
        self._saving: tuple[int, int] | None = None  # (step, bytes) of the save last started
        self.failed: CheckpointSaveError | None = None  # reported once; later waits stay quiet
        options = ocp.CheckpointManagerOptions(
            **rotation,
            create=True,
            enable_async_checkpointing=async_save,
            # The trainer decides when to save (every N steps, SIGTERM, end); orbax must not skip.
            save_interval_steps=1,
        )
        # Handlers named up front (not inferred from the first save's args), so a restarted job can
        # read a step's metadata before restoring it (_check_fits).
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": _PerProcessJsonHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def latest_complete_step(self) -> int | None:
        return latest_complete_step(self.directory)

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any, meta: dict) -> bool:
        """Starts an (async) save of step `step`; returns False when the step already exists."""
        # The previous async save finished (orbax waits for it inside save() anyway) and its failure,
        # if any, reported as that step's, before this save starts.
        self.wait()
        if self.failed is not None:
            raise self.failed
        if step in self._manager.all_steps():
            return False
        self._saving = (int(step), _tree_bytes(state))
        try:
            return self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=PerProcessJsonSave(data_state),
                    meta=ocp.args.JsonSave(dict(meta, step=int(step))),
                ),
                force=True,
            )
        except Exception as exc:  # noqa: BLE001 - a storage error becomes one line; others re-raise
            raise self._save_failed(exc) from None

    def check_saves(self) -> None:
        """Raises CheckpointSaveError when an async save has failed (cheap: reads a flag; the
        trainer calls it every step, so a run stops at the failed save, not at the next one)."""
        if self.failed is not None:
            raise self.failed
        try:
            self._manager.check_for_errors()
        except Exception as exc:  # noqa: BLE001
            raise self._save_failed(exc) from None

    def _save_failed(self, exc: BaseException) -> BaseException:
        """One line for a save that a storage error stopped (disk full, read-only, no permission),
        after removing its unfinished directory; any other error is returned as it is."""
        if self.failed is not None:
            return self.failed
        cause = _storage_error(exc)
        if cause is None or self._saving is None:
            return exc
        step, needed = self._saving
        removed = _remove_unfinished(self.directory, step)
        free = _free_bytes(self.directory)
        have = f", {free / 2**20:.0f} MiB free now" if free is not None else ""
        previous = latest_complete_step(self.directory)
        self.failed = CheckpointSaveError(
            f"checkpoint save of step {step} failed: {cause.strerror or cause} "
            f"({cause.filename or self.directory}); a checkpoint needs about {needed / 2**20:.0f} MiB "
            f"free in {self.directory}{have}; the run stopped there"
            f"{' and removed the unfinished step' if removed else ''}; free space (or make it "
            f"writable) and rerun the same command to resume from "
            f"{f'step {previous}' if previous is not None else 'the start'}")
        return self.failed

    def storage_failure(self, exc: BaseException) -> BaseException:
        """The one-line CheckpointSaveError for a storage error while writing a file that belongs
        to the save in progress (the trainer's history.json), else `exc` itself."""
        return self._save_failed(exc)

    def restore(self, step: int, abstract_state: Any) -> Restored:
        """Restores `step`; arrays take the shapes, dtypes and shardings of `abstract_state`
        (a pytree of jax.ShapeDtypeStruct with .sharding set)."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=PerProcessJsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return Restored(step=int(step), state=restored["state"], data_state=restored["data"],
                        meta=dict(restored["meta"]))

    def restore_latest(self, abstract_state: Any) -> Restored | None:
        """The newest checkpoint that restores (None when there is none at all); damaged ones are
        moved aside with a one-line warning each. Every process must call it (they agree on the
        step: a checkpoint any process cannot read counts as damaged for all)."""
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None
        for step in steps:
            self._check_fits(step, abstract_state)
            restored, error = None, None
            try:
                restored = self._restore_retrying(step, abstract_state)
            except CheckpointMismatch:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises (tensorstore, json, ...)
                error = exc
            if not _any_process(error is not None):
                return restored
            reason = _one_line(error) if error is not None else "unreadable on another process"
            moved = self._move_aside(step)
            older = [s for s in steps if s < step]
            _warn(f"checkpoint step {step} in {self.directory} is unreadable ({reason}); moved to "
                  f"{moved}; " + (f"trying step {older[0]}" if older else "no older checkpoint"))
        raise CheckpointError(
            f"no checkpoint in {self.directory} restores (steps {', '.join(map(str, steps))} were "
            f"unreadable and are kept in {self.directory}/corrupt-*); start a fresh --workdir, or "
            f"move a repaired copy back to {self.directory}/<step>")

    def _restore_retrying(self, step: int, abstract_state: Any) -> Restored:
        """restore(step), retried RESTORE_ATTEMPTS times with backoff on errors of the storage
        rather than of the bytes (a timeout, a dropped connection, EIO): a checkpoint is called
        corrupt only for what a retry cannot fix (decode errors, missing or short files)."""
        for attempt in range(RESTORE_ATTEMPTS):
            try:
                return self.restore(step, abstract_state)
            except CheckpointMismatch:
                raise
            except Exception as exc:  # noqa: BLE001
                if not _transient(exc) or attempt == RESTORE_ATTEMPTS - 1:
                    raise
                delay = RESTORE_BACKOFF_S * 2 ** attempt
                _warn(f"reading checkpoint step {step} in {self.directory} failed ({_one_line(exc)}); "
                      f"retrying in {delay:.0f}s ({attempt + 2}/{RESTORE_ATTEMPTS})")
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        """CheckpointMismatch when step's stored arrays have other paths or shapes than the run's
        train state (the config changed); unreadable metadata is left to restore() (damage)."""
        try:
            stored = self._manager.item_metadata(step)["state"]
            have = {_path_key(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(stored)}
        except Exception:  # noqa: BLE001 - unreadable metadata: restore() fails and says why
            return
        want = {_path_key(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
        if have == want:
            return
        diff = sorted(set(have) ^ set(want)) or sorted(k for k in want if want[k] != have[k])
        first = diff[0]
        raise CheckpointMismatch(
            f"checkpoint step {step} in {self.directory} holds a different train state than this "
            f"config builds ({len(diff)} arrays differ, e.g. {first}: stored "
            f"{have.get(first, 'absent')}, wanted {want.get(first, 'absent')}); use the config it "
            f"was written with, or a fresh --workdir")

    def _move_aside(self, step: int) -> str:
        """Renames <dir>/<step> to <dir>/corrupt-<step>-<UTC time> (process 0; all wait for it)."""
        target = f"{self.directory}/corrupt-{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        if jax.process_index() == 0:
            epath.Path(f"{self.directory}/{step}").rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"distill_jax checkpoint {step} moved aside")
        self._manager.reload()
        return target

    def wait(self):
        """Blocks until pending async saves are on disk (CheckpointSaveError when one failed; once
        reported, a failed save is not raised again, e.g. by the trainer's final wait)."""
        already = self.failed is not None
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as exc:  # noqa: BLE001
            if already:
                return
            raise self._save_failed(exc) from None

    def close(self):
        self.wait()
        self._manager.close()


RESTORE_ATTEMPTS = 3     # reads of one checkpoint before a storage error counts as damage
RESTORE_BACKOFF_S = 1.0  # seconds before the 2nd attempt; doubled for each further one


def _transient(exc: BaseException) -> bool:
    """A storage hiccup that a retry may fix (not bytes that will decode no better next time)."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return False  # a missing or misplaced file: damage
    return isinstance(exc, (TimeoutError, ConnectionError, OSError))


class CheckpointSaveError(CheckpointError):
    """A save failed on storage (disk full, read-only, permission): one line naming the path and
    the space a checkpoint needs."""


# errno values of a storage that cannot take the checkpoint: ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EFBIG
_STORAGE_ERRNOS = (28, 122, 30, 13, 1, 27)


def _storage_error(exc: BaseException | None) -> OSError | None:
    """The OSError with a storage errno in exc's chain (orbax and tensorstore wrap it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            return exc
        text = str(exc)
        for errno_value, word in ((28, "No space left on device"), (30, "Read-only file system"),
                                  (27, "File too large"), (13, "Permission denied")):
            if word in text:  # tensorstore reports errno as text in its own exception types
                return OSError(errno_value, word)
        exc = exc.__cause__ or exc.__context__
    return None


def _tree_bytes(tree: Any) -> int:
    """Bytes of the arrays of `tree` (global shapes): what one checkpoint of it writes, about."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def _free_bytes(directory: str) -> int | None:
    if "://" in directory:
        return None
    import shutil

    path = directory
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or "/").free
    except OSError:
        return None


def _remove_unfinished(directory: str, step: int) -> bool:
    """Deletes the temporary directory of an unfinished save of `step` (process 0): orbax ignores
    it, but it holds the space a rerun needs and would look like a checkpoint to a person."""
    if jax.process_index() != 0:
        return False
    removed = False
    for path in epath.Path(directory).glob(f"{step}.orbax-checkpoint-tmp*"):
        try:
            path.rmtree()
            removed = True
        except OSError:
            pass
    return removed


def latest_complete_step(directory: str) -> int | None:
    """Newest finalized step on disk, read afresh (no collective: safe with a peer gone)."""
    try:
        steps = ocp.path.step.checkpoint_steps(_local_path(directory))
    except Exception:  # noqa: BLE001 - only used to word a message; never fail there
        return None
    return max(steps) if steps else None


def _path_key(path) -> str:
    # Stored metadata and the target name dict keys alike ('0' vs 0 for int-keyed layer dicts).
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    while exc.__cause__ is not None:  # orbax wraps the cause ("Encountered error while reading ...")
        exc = exc.__cause__
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text.split(' [tensorstore_spec')[0]}"  # not the JSON spec dumps
    # tensorstore puts the cause last ("... Byte range [0, N) is not valid for value of size M").
    return text if len(text) <= limit else f"{text[:100]} ... {text[-(limit - 105):]}"


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[distill] warning: {message}", file=sys.stderr, flush=True)
