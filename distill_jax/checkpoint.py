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
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


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
            raise FileNotFoundError(
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
        self.directory = _local_path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            # The trainer decides when to save (every N steps, SIGTERM, end); orbax must not skip.
            save_interval_steps=1,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any, meta: dict) -> bool:
        """Starts an (async) save of step `step`; returns False when the step already exists."""
        if step in self._manager.all_steps():
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=PerProcessJsonSave(data_state),
                meta=ocp.args.JsonSave(dict(meta, step=int(step))),
            ),
            force=True,
        )

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
        step = self.latest_step()
        return None if step is None else self.restore(step, abstract_state)

    def wait(self):
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()
