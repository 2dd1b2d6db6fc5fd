"""Per-chip memory of the flagship MiniLMv2 step, compiled ahead of time, for the memory knobs one
at a time: dense vs blockwise relation KL, the attention kernel, student remat. No weights, no
data, no TPU: abstract shapes only.

    python -m benchmarks.relation_kl_memory --topology=v5e-16
    python -m benchmarks.relation_kl_memory --topology=cpu:1 --per_device_batch=8 --variants=dense,xla

Each variant is configs/mha_l6_h384.py as shipped (bert-base-uncased 12x768 teacher in bf16, shapes
from the shipped hub config -> 6x384 bf16 student with attention dropout 0.1, 48 relation heads,
seq 512, AdamW, data parallel) with a few config fields changed, `--per_device_batch` rows per chip
(64 = the recipe's 1024 over v5e-16), planned by distill_jax.plan.plan_config: the builder train.py
runs (train_setup.build_train_setup), compiled for the topology (libtpu for TPU names:
`pip install "libtpu==0.0.42.*"`). Prints memory_analysis() per chip and the compile time.

Variants (comma list; the config fields each one changes):
"""

from __future__ import annotations

import argparse
import os
import sys

VARIANTS = {
    # the relations materialised, every head at once (48: the recipes' relation heads; on a cpu
    # topology heads_per_chunk=0 would chunk them to fit the cache)
    "dense": {"objective.minilmv2.block_size": 0, "objective.minilmv2.heads_per_chunk": 48,
              "attention_impl": "xla"},
    "dense_hpc8": {"objective.minilmv2.block_size": 0, "objective.minilmv2.heads_per_chunk": 8,
                   "attention_impl": "xla"},
    "xla": {"attention_impl": "xla"},                                      # blockwise KL, XLA attention
    "shipped": {},                 # blockwise KL, attention 'auto' (splash for the teacher on TPU)
    "nodrop": {"student.attention_dropout": 0.0},                          # the student takes splash too
    "remat": {"student.remat": True},
    "nodrop_remat": {"student.attention_dropout": 0.0, "student.remat": True},
}
__doc__ += "".join(f"    {name}: {changes or 'as shipped'}\n" for name, changes in VARIANTS.items())


def variant_config(name: str, per_device_batch: int, chips: int, seq_len: int):
    """configs/mha_l6_h384.py with VARIANTS[name] applied and the batch for `chips` chips."""
    from configs import mha_l6_h384

    config = mha_l6_h384.get_config()
    for field, value in VARIANTS[name].items():
        *sections, leaf = field.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[leaf] = value
    config.batch_size = per_device_batch * chips
    config.data.seq_len = seq_len
    return config


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", default="v5e-16", help="as python -m distill_jax.plan: v5e-16, v5e:4x4, cpu:1 ...")
    p.add_argument("--per_device_batch", type=int, default=64, help="rows per chip (64 = 1024 over 16 chips)")
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; use any of {', '.join(VARIANTS)}")

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from distill_jax import plan
    from distill_jax import stack_limit

    plan.compile_only_environment()
    topo = plan.parse_topology(args.topology)
    if stack_limit.needs_hard_stack_limit(any(VARIANTS[n].get("student.remat") for n in names), topo.platform == "tpu"):
        stack_limit.reexec_with_hard_stack_limit()
    if topo.platform == "cpu":
        import jax

        jax.config.update("jax_num_cpu_devices", max(topo.chips, 1))
    devices = plan.topology_devices(topo)
    teacher_hf, source = plan.teacher_config_json("bert-base-uncased")
    gib = 2 ** 30
    print(f"{args.topology}: {len(devices)} devices ({devices[0].device_kind}), {args.per_device_batch} rows x "
          f"{args.seq_len} per device", flush=True)
    print(f"{'variant':14s} {'args GiB':>9s} {'out GiB':>8s} {'alias GiB':>9s} {'temp GiB':>9s} "
          f"{'total GiB':>9s} {'compile s':>9s}  attention", flush=True)
    for name in names:
        config = variant_config(name, args.per_device_batch, len(devices), args.seq_len)
        try:
            r = plan.plan_config(config, topo, devices, teacher_hf=teacher_hf, teacher_source=source,
                                 with_collectives=False)
        except Exception as exc:  # noqa: BLE001 - report the variant and go on to the next
            print(f"{name:14s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", flush=True)
            continue
        attention = ", ".join(f"{k} {v}" for k, v in r["attention"].items())
        m = r.get("memory")
        if m is None:
            oom = r.get("out_of_memory", {})
            print(f"{name:14s} does not fit: needs {oom.get('required_bytes', 0) / gib:.2f} GiB of "
                  f"{oom.get('usable_bytes', 0) / gib:.2f} usable ({r['compile_s']:.0f} s)  {attention}", flush=True)
            continue
        print(f"{name:14s} {m['arguments'] / gib:9.2f} {m['outputs'] / gib:8.2f} {m['aliased'] / gib:9.2f} "
              f"{m['temporaries'] / gib:9.2f} {m['total'] / gib:9.2f} {r['compile_s']:9.1f}  {attention}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
