"""CPU accounting: each stage's wall and CPU seconds (time.process_time: this process, all
threads), appended to <workdir>/cpu_ledger.jsonl so a distillation resumed over several processes
adds up its segments; and the scaling of a distillation some of whose steps went untimed (a
process killed outright never wrote its entry).
"""

from __future__ import annotations

import json
import os
import time


class Stage:
    """Measures one stage's wall and CPU seconds (this process, all threads)."""

    def __enter__(self):
        self.wall, self.cpu = time.time(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall_s, self.cpu_s = time.time() - self.wall, time.process_time() - self.cpu


def ledger_add(workdir: str, entry: dict) -> None:
    """Appends a stage's measured seconds to <workdir>/cpu_ledger.jsonl (also interrupted stages,
    so a resumed distillation's CPU time adds up over its segments)."""
    with open(os.path.join(workdir, "cpu_ledger.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def ledger_sum(workdir: str, method: str, stage: str) -> dict:
    total = {"cpu_s": 0.0, "wall_s": 0.0, "segments": 0, "steps": 0}
    path = os.path.join(workdir, "cpu_ledger.jsonl")
    if os.path.isfile(path):
        for line in open(path):
            entry = json.loads(line)
            if entry["method"] == method and entry["stage"] == stage:
                total["cpu_s"] += entry["cpu_s"]
                total["wall_s"] += entry["wall_s"]
                total["segments"] += 1
                total["steps"] += int(entry.get("steps", 0))
    return total


def untimed_scale_from(record: dict) -> int | None:
    """The timed steps a distillation's seconds must be scaled from, when a killed process left
    some of its steps untimed (0 < cpu_timed_steps < steps); None when its seconds cover them all."""
    timed, steps = record.get("cpu_timed_steps", 0), record.get("steps", 0)
    return timed if 0 < timed < steps else None


def distill_seconds(record: dict, field: str) -> float:
    """Seconds for all of a distillation's steps: measured, or scaled up from the timed ones."""
    timed = untimed_scale_from(record)
    return record.get(field, 0.0) * (record["steps"] / timed if timed else 1.0)
