"""A workdir belongs to one config: `<workdir>/config.json` says which, and a resume must match it.

Fields split in two:
  * operational: how the run goes, not what its checkpoints hold, so they may change between a run
    and its resume: OPERATIONAL_FIELDS (also what the method study leaves out of a method's
    identity, studies/identity.py) plus RESUME_OPERATIONAL_FIELDS (the run length, the mesh
    and memory layout, which restore into any other);
  * everything else (model shapes, teacher, objective, data, optimizer, seed, batch size): a
    change makes the checkpoints mean something else, and the run refuses in one line listing the
    fields, unless `--config.allow_config_change=True` (then the old config.json is kept beside as
    `config.<UTC time>.json`).

A field is operational when any component of its dotted path is in these lists (`data.cache_dir`,
`eval.stsb_every`, ...). A field the stored config lacks (added to the code since) counts only when
the new run sets it away from configs/common.py's default. config.json is written by `write()` once the run has passed every check
(the trainer calls it right before the first step), atomically, so a run that fails at start-up
never relabels the workdir.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from etils import epath

from distill_jax.atomic import write_atomic
from distill_jax.workdir_layout import Workdir

# Fields that change how a run goes (caches, logging, cadence, export, evaluation), never which
# student it trains. One list for the trainer's resume check and the method study's identities.
OPERATIONAL_FIELDS = ("cache_dir", "compilation_cache_dir", "stop_after_step", "log_every", "checkpoint_every",
                      "keep_checkpoints", "async_checkpoints", "export", "peak_flops_per_device", "prefetch",
                      "tokenize_batch_documents", "shard_blocks", "build_workers", "print_parameters",
                      "attention_impl", "eval", "allow_config_change")
# Also free on resume (but part of a study's identity): the run length (the schedule is a function
# of step and total_steps; extending a run is the point of a resume), how the same math is laid out
# (mesh, axis rules, gradient accumulation, remat, teacher sharding), and the override itself.
RESUME_OPERATIONAL_FIELDS = OPERATIONAL_FIELDS + (
    "total_steps", "mesh", "logical_axis_rules", "microbatches", "remat", "shard_over_fsdp",
    "mode")
OVERRIDE = "--config.allow_config_change=True"


def config_path(workdir: str) -> str:
    return Workdir(workdir).config


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _normal(value: Any) -> Any:
    # JSON turns tuples into lists; compare what config.json can hold.
    return json.loads(json.dumps(value, default=str))


def _defaults() -> dict[str, Any]:
    """The flat defaults of configs/common.base_config (every field the trainer reads), or {}
    when the recipes are not importable (a library caller)."""
    for module in ("configs.common", "distill_jax.configs.common"):
        try:
            import importlib

            return _flatten(_normal(importlib.import_module(module).base_config().to_dict()))
        except Exception:  # noqa: BLE001 - no recipes here: compare everything
            continue
    return {}


def differing_fields(stored: Mapping, new: Mapping,
                     operational: tuple[str, ...] = RESUME_OPERATIONAL_FIELDS) -> list[str]:
    """Dotted paths whose values differ between two config dicts, operational fields left out. A
    field the stored config lacks (added to the code since that run) counts only when the new run
    sets it away from its default: the old run ran with that default."""
    a, b = _flatten(_normal(stored)), _flatten(_normal(new.to_dict() if hasattr(new, "to_dict") else new))
    defaults = _defaults()
    out = []
    for name in sorted(set(a) | set(b)):
        if any(part in operational for part in name.split(".")):
            continue
        if name not in a and name in defaults and b.get(name) == defaults[name]:
            continue
        if a.get(name, "<absent>") != b.get(name, "<absent>"):
            out.append(name)
    return out


def _show(value: Any) -> str:
    text = json.dumps(value) if value != "<absent>" else "absent"
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume(config, workdir: str) -> dict | None:
    """Raises ValueError (one line) when `<workdir>/config.json` holds a config whose
    checkpoint-defining fields differ from `config` and config.allow_config_change is off.
    Returns the stored config (None for a fresh workdir)."""
    path = epath.Path(config_path(workdir))
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        stored = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): it should describe the checkpoints beside "
                         f"it; restore it, or delete it to adopt this run's config") from None
    fields = differing_fields(stored, config)
    if fields and not config.get("allow_config_change", False):
        a, b = _flatten(stored), _flatten(_normal(config.to_dict()))
        listed = ", ".join(f"{f} ({_show(a.get(f, '<absent>'))} -> {_show(b.get(f, '<absent>'))})"
                           for f in fields[:6]) + (f" and {len(fields) - 6} more" if len(fields) > 6 else "")
        raise ValueError(f"--workdir={workdir} belongs to another config: {listed} change what its "
                         f"checkpoints mean; use a fresh --workdir, or continue from them on purpose "
                         f"with {OVERRIDE}")
    return stored


def write(config, workdir: str, stored: dict | None) -> None:
    """config.json := config (atomic). A different stored config (allowed by the override) is kept
    as config.<UTC time>.json first."""
    new = _normal(config.to_dict())
    if stored is not None and stored != new:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        write_atomic(Workdir(workdir).path(f"config.{stamp}.json"), json.dumps(stored, indent=1))
    write_atomic(config_path(workdir), json.dumps(new, indent=1))
