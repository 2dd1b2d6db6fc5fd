"""`python -m distill_jax.plan`: the command line (the package docstring is its --help)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import distill_jax.plan as plan_package
from distill_jax.plan.planner import plan_config, search, teacher_config_json
from distill_jax.plan.report import format_report, format_search
from distill_jax.plan.topology import compile_only_environment, parse_topology, topology_devices


def main(argv=None) -> int:
    """The command line (absl flags as main.py: --config=file[:arg] and --config.* overrides)."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    argv = list(sys.argv if argv is None else argv)
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mha_l6_h384.py[:arg].",
                                    flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("topology", None, "v5e-16, v4-32, v5p-128, v6e-64, v5e:4x4, cpu:8", flag_values=fv)
    flags.DEFINE_bool("search", False, "find the largest batch (or microbatches / remat) that fits",
                      flag_values=fv)
    flags.DEFINE_string("json", "", "also write the figures to this JSON file", flag_values=fv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(plan_package.__doc__ + "\nflags:\n" + fv.module_help(fv.find_module_defining_flag("topology")))
        return 0
    try:
        fv(argv)
    except flags.Error as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    if fv.config is None or not fv.topology:
        raise ValueError("--config=configs/<recipe>.py and --topology=<v5e-16 | v4-32 | cpu:8 ...> "
                         "are both required")
    topo = parse_topology(fv.topology)
    from distill_jax import stack_limit

    if stack_limit.needs_hard_stack_limit(bool(fv.config.student.remat) or fv.search, topo.platform == "tpu"):
        stack_limit.reexec_with_hard_stack_limit()  # --search tries remat too
    if topo.platform == "cpu":
        import jax

        jax.config.update("jax_num_cpu_devices", max(topo.chips, 1))
    devices = topology_devices(topo)
    config = fv.config
    teacher_hf, source = teacher_config_json(config.teacher.name)
    result = plan_config(config, topo, devices, teacher_hf=teacher_hf, teacher_source=source)
    print(format_report(result), flush=True)
    if fv.search:
        result["search"] = search(config, topo, devices, teacher_hf=teacher_hf, teacher_source=source,
                                  first=result)
        print(format_search(result["search"]), flush=True)
    if fv.json:
        Path(fv.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


def run() -> None:
    """`python -m distill_jax.plan`: one line, no traceback, for the errors raised on purpose."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The plan's own arrays (keys, shapes) live on the host CPU: it never claims a local
    # accelerator (on a TPU VM a training job may be using the chips).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    compile_only_environment()
    from distill_jax.commands import run_with_one_line_errors

    run_with_one_line_errors(main)


if __name__ == "__main__":
    run()
