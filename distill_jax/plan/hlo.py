"""Reading XLA's text: the collectives of a compiled HLO module (how often each runs per step and
the bytes it moves per chip), and the figures of an out-of-memory (RESOURCE_EXHAUSTED) message.
"""

from __future__ import annotations

import math
import re
from typing import Any

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
                "collective-broadcast", "ragged-all-to-all")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1,
                "f8e5m2fnuz": 1}
_ARRAY_RE = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_HEADER_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLED_RE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation|"
                        r"branch_computations|async_wrapped_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_RE = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')


def _array_bytes(shape_text: str) -> list[int]:
    """Bytes of every array in an HLO shape (a tuple lists several)."""
    out = []
    for dtype, dims in _ARRAY_RE.findall(shape_text):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        out.append(int(n * _DTYPE_BYTES[dtype]))
    return out


def _split_shape(rest: str) -> tuple[str, str]:
    """'(f32[2], f32[4]) all-gather-start(...), ...' -> (shape text, the rest from the opcode)."""
    rest = rest.strip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].strip()
    shape, _, tail = rest.partition(" ")
    return shape, tail.strip()


def collectives(hlo_text: str) -> list[dict]:
    """The collectives of a compiled HLO module, each with how often it runs per step and the
    bytes it moves per chip each time: the larger of its operands' total and its largest result
    array (all-gather: the gathered output; reduce-scatter: the input; all-reduce: the buffer).

    Walks the call graph from ENTRY: fusions, calls, conditionals, and while bodies times their
    known_trip_count (a scanned microbatch loop runs its collectives M times). An async pair
    (-start / -done) is one collective, counted at its start; one channel id counts once per
    computation.
    """
    comps: dict[str, list[tuple[str, str, str]]] = {}
    entry = None
    current = None
    for line in hlo_text.splitlines():
        header = _HEADER_RE.match(line)
        if header:
            current = header.group(2)
            comps[current] = []
            if header.group(1):
                entry = current
            continue
        if current is None:
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR_RE.match(line)
        if m:
            shape, tail = _split_shape(m.group(2))  # tail: 'opcode(operands), attributes'
            comps[current].append((m.group(1), shape, tail))
    if entry is None:
        return []

    found: dict[tuple, dict] = {}

    def walk(comp: str, times: int, stack: tuple) -> None:
        if comp not in comps or comp in stack:
            return
        shapes = {name: shape for name, shape, _ in comps[comp]}
        seen_channels: set[str] = set()
        for name, shape, text in comps[comp]:
            opcode = text.split("(", 1)[0]
            kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
            if kind in _COLLECTIVES:
                channel = re.search(r"channel_id=(\d+)", text)
                if channel and channel.group(1) in seen_channels:
                    continue
                if channel:
                    seen_channels.add(channel.group(1))
                args = text.split("(", 1)[1]
                depth, end = 1, 0
                for end, ch in enumerate(args):
                    depth += ch == "("
                    depth -= ch == ")"
                    if depth == 0:
                        break
                operands = re.findall(r"%?([\w.\-]+)", args[:end])
                operand_bytes = sum(sum(_array_bytes(shapes[o])) for o in operands if o in shapes)
                moved = max([operand_bytes] + _array_bytes(shape))
                key = (comp, name)
                found[key] = {"op": kind, "name": name, "computation": comp, "times": times,
                              "bytes": moved, "dtype_shape": shape.split("{")[0]}
            if opcode.endswith(("-done", "-update")):
                continue  # the second half of an async op: its work was counted at the start
            trip = 1
            if opcode == "while":
                m = _TRIP_RE.search(text)
                trip = int(m.group(1)) if m else 1
            for field, target in _CALLED_RE.findall(text):
                names = re.findall(r"%?([\w.\-]+)", target)
                for called in names:
                    walk(called, times * (trip if field == "body" else 1), stack + (comp,))

    walk(entry, 1, ())
    return sorted(found.values(), key=lambda c: -c["bytes"] * c["times"])


def summarise_collectives(found: list[dict]) -> dict[str, dict]:
    """{op: {"count": runs per step, "bytes_per_step": per chip}} over `collectives()` output."""
    out: dict[str, dict] = {}
    for c in found:
        entry = out.setdefault(c["op"], {"count": 0, "bytes_per_step": 0})
        entry["count"] += c["times"]
        entry["bytes_per_step"] += c["bytes"] * c["times"]
    return out


# ----------------------------------------------------------------------------------------------
# Out of memory
# ----------------------------------------------------------------------------------------------

_OOM_RE = re.compile(r"([\d.]+)([KMGT]?)\s*(?:i?B)?\)?\s*exceeds available HBM \(([\d.]+)([KMGT]?)")
_USED_RE = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_out_of_memory(message: str) -> dict:
    """XLA:TPU's RESOURCE_EXHAUSTED text -> {"required_bytes", "usable_bytes", "message"}."""
    first = next((line.strip() for line in message.splitlines() if "RESOURCE_EXHAUSTED" in line
                  or "memory" in line.lower()), message.strip().splitlines()[0] if message.strip() else "")
    out: dict[str, Any] = {"message": first[:400]}
    m = _OOM_RE.search(message) or _USED_RE.search(message)
    if m:
        out["required_bytes"] = int(float(m.group(1)) * _UNITS[m.group(2)])
        out["usable_bytes"] = int(float(m.group(3)) * _UNITS[m.group(4)])
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a compile failed for want of device memory (the plan's "does not fit")."""
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text
