"""The plan as text: the per-chip table with its verdict, and the --search answer as the
--config flags to use.
"""

from __future__ import annotations


def gib(n: float | None) -> str:
    """Bytes as GiB (MiB below 1 GiB), for the report."""
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def verdict(r: dict) -> str:
    """One line: fits (with the headroom) / does not fit (with XLA's numbers) / no HBM figure."""
    if "out_of_memory" in r:
        oom = r["out_of_memory"]
        if "required_bytes" in oom:
            return (f"does not fit: XLA needs {gib(oom['required_bytes'])} per chip where "
                    f"{gib(oom['usable_bytes'])} are usable ({oom['message']})")
        return f"does not fit: {oom['message']}"
    if r.get("fits") is None:
        return f"total {gib(r['per_chip'].get('total'))} per device (no HBM figure for {r['platform']})"
    answer = "fits" if r["fits"] else "does not fit"
    limit = r.get("hbm_usable_bytes") or r["hbm_bytes"]
    return (f"{answer}: {gib(r['per_chip']['total'])} of {gib(limit)} usable HBM per chip, "
            f"headroom {gib(r['headroom_bytes'])} ({100 * r['headroom_bytes'] / limit:.0f}%)")


def format_report(r: dict) -> str:
    lines = [f"plan: {r['teacher']} -> student, {r['topology']}"
             + (f" ({r['libtpu_topology']}, {r['chips']} chips)" if r["libtpu_topology"] else
                f" ({r['chips']} devices)")
             + f", mesh {r['mesh']}",
             f"batch {r['batch_size']} x {r['seq_len']} ({r['rows_per_chip']} rows per chip, "
             f"microbatches {r['microbatches']}, remat {r['remat']}); teacher shapes from "
             f"{r['teacher_shapes_from']}"]
    if r.get("attention"):
        lines.append("attention: " + ", ".join(f"{k} {v}" for k, v in r["attention"].items()))
    p = r["per_chip"]
    lines.append("per chip:")
    for key, label in (("student_params", "student parameters"), ("aux_params", "objective aux params"),
                       ("teacher_params", "teacher parameters (frozen)"),
                       ("optimizer_state", "optimizer state"), ("batch", "batch"),
                       ("temporaries", "temporaries (XLA)"), ("total", "total")):
        if key in p:
            lines.append(f"  {label:<30} {gib(p[key]):>12}")
    if r.get("hbm_bytes"):
        lines.append(f"  {'HBM (chip table)':<30} {gib(r['hbm_bytes']):>12}"
                     + (f"   usable by XLA {gib(r['hbm_usable_bytes'])}" if r.get("hbm_usable_bytes") else ""))
    lines.append(verdict(r))
    if r.get("collectives"):
        lines.append("collectives per step (bytes per chip):")
        for op, c in sorted(r["collectives"].items()):
            lines.append(f"  {op:<20} {c['count']:>5} x  {c['bytes_per_step'] / 2**20:10.1f} MiB")
    elif "collectives" in r:
        lines.append("collectives per step: none")
    if r.get("flops_per_step"):
        line = f"analytic FLOPs per step: {r['flops_per_step'] / 1e12:.1f} TFLOP"
        if r.get("step_s_at_peak"):
            line += (f"; at 100% of the {r['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16 peak "
                     f"per chip a step takes {r['step_s_at_peak'] * 1e3:.0f} ms (a floor)")
        lines.append(line)
    if "compile_s" in r:
        lines.append(f"compiled in {r['compile_s']:.0f} s")
    return "\n".join(lines)


def format_search(s: dict) -> str:
    """The --search verdict as lines naming the --config flags to use."""
    if "largest_rows_per_chip" in s:
        above = (f", not at {s['failing_rows_per_chip']}" if s["failing_rows_per_chip"]
                 else ", larger batches not tried")
        return (f"search: fits at {s['largest_rows_per_chip']} rows per chip{above}: "
                f"--config.batch_size={s['largest_batch_size']}")
    lines = []
    if "remat_fits" in s:
        lines.append(f"search: --config.student.remat=True alone {'fits' if s['remat_fits'] else 'does not fit'}")
    if "smallest_microbatches" in s:
        lines.append(f"search: the smallest microbatch count that fits: "
                     f"--config.microbatches={s['smallest_microbatches']}")
    else:
        lines.append("search: no microbatch count up to the per-chip rows fits")
    return "\n".join(lines)
