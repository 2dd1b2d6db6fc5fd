"""Per-chip memory of the flagship MiniLMv2 step, compiled ahead of time: dense vs blockwise relation
KL, remat, splash attention. No weights, no data, no TPU: abstract shapes only.

    TPU_WORKER_HOSTNAMES=localhost python benchmarks/relation_kl_memory.py --topology=v5e:4x4
    python benchmarks/relation_kl_memory.py --topology=cpu --per_device_batch=8 --variants=dense,blockwise

Builds configs/mha_l6_h384.py as shipped (bert-base 12x768 teacher in bf16 from a bert-base config
dict -> 6x384 bf16 student, MiniLMv2 48 relation heads, seq 512, AdamW, data parallel), with
`--per_device_batch` rows per chip (64 = the recipe's 1024 over a v5e:4x4 slice), through the
project's own pieces (EncoderConfig, make_student, build_objective, make_optimizer,
distill_jax.step.make_train_step, the sharding rules), jits it with shardings over the topology's
devices, lowers it with ShapeDtypeStructs, compiles it and prints memory_analysis() per chip for
each variant. libtpu must be installed for TPU topologies (`pip install "libtpu==0.0.42.*"`, the
one jax 0.10.2 pins); `--topology=cpu` uses this host's CPU devices instead. Run remat variants
under `ulimit -s unlimited`: at the default 8 MiB stack libtpu 0.0.42.1's compiler dies of a stack
overflow on them.

Variants (comma list): dense (block_size=0, the relations materialised), dense_hpc8 (dense with
heads_per_chunk=8), blockwise (the default), blockwise_remat (+ student remat), blockwise_splash
(+ splash attention in both models; only the teacher can use it while the student keeps attention
dropout 0.1), blockwise_splash_nodrop (student attention_dropout=0 so it uses splash too),
blockwise_splash_nodrop_remat.

(This wires the step by hand as train.py does, until the shared setup builder and the plan
command of issue 12 sections 1-2 exist; then it should call those instead.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# bert-base-uncased's config.json fields that matter for shapes (no hub access needed).
BERT_BASE = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
             "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0}

VARIANTS = {  # name -> (minilmv2 overrides, student overrides, teacher overrides)
    "dense": ({"block_size": 0}, {}, {}),
    "dense_hpc8": ({"block_size": 0, "heads_per_chunk": 8}, {}, {}),
    "blockwise": ({}, {}, {}),
    "blockwise_remat": ({}, {"remat": True}, {}),
    "blockwise_splash": ({}, {"attention_impl": "splash"}, {"attention_impl": "splash"}),
    "blockwise_splash_nodrop": ({}, {"attention_impl": "splash", "attention_dropout": 0.0},
                                {"attention_impl": "splash"}),
    "blockwise_splash_nodrop_remat": ({}, {"attention_impl": "splash", "attention_dropout": 0.0, "remat": True},
                                      {"attention_impl": "splash"}),
}


def devices_for(topology: str):
    import jax

    if topology == "cpu":
        return jax.devices("cpu")
    from jax.experimental import topologies

    return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices


def compile_variant(name: str, devices, per_device_batch: int, seq_len: int):
    import jax
    import jax.numpy as jnp
    import ml_collections
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding

    from configs import mha_l6_h384
    from distill_jax import optim, sharding
    from distill_jax import step as step_lib
    from distill_jax.losses import build_objective
    from distill_jax.models import Encoder, EncoderConfig, make_student
    from distill_jax.models.partitioning import state_shardings

    v2_over, student_over, teacher_over = VARIANTS[name]
    config = mha_l6_h384.get_config()
    config.objective.minilmv2.update(v2_over)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    batch_size = per_device_batch * len(devices)

    t_cfg = EncoderConfig.from_hf_dict(BERT_BASE, dtype=config.teacher.dtype, param_dtype=config.teacher.dtype,
                                       **teacher_over)
    s_kwargs = dict(num_layers=config.student.num_layers, hidden_size=config.student.hidden_size,
                    num_heads=config.student.num_heads, intermediate_size=config.student.intermediate_size,
                    dtype=config.student.dtype, param_dtype=config.student.param_dtype,
                    hidden_dropout=config.student.hidden_dropout,
                    attention_dropout=config.student.attention_dropout, remat=config.student.remat)
    s_kwargs.update({"attention_impl": None, **student_over})  # not inherited from the teacher
    objective = build_objective(config.objective, ml_collections.ConfigDict(
        {k: s_kwargs[k] for k in ("num_layers", "hidden_size", "num_heads")}), t_cfg)
    tx, lr_schedule = optim.make_optimizer(config.optim, config.total_steps)

    def split(model):
        graphdef, params = nnx.split(model, nnx.Param)
        return graphdef, params

    teacher = nnx.eval_shape(lambda: Encoder(t_cfg, rngs=nnx.Rngs(0)))
    student = nnx.eval_shape(lambda: make_student(t_cfg, rngs=nnx.Rngs(1), with_mlm_head=False, **s_kwargs))
    rules = sharding.DEFAULT_RULES
    t_graph, t_params = split(teacher)
    s_graph, s_params = split(student)
    t_shard = nnx.to_pure_dict(state_shardings(t_params, mesh, rules))
    s_shard = nnx.to_pure_dict(state_shardings(s_params, mesh, rules))
    t_params, s_params = nnx.to_pure_dict(t_params), nnx.to_pure_dict(s_params)
    repl = sharding.replicated(mesh)
    aux = jax.eval_shape(objective.init_params, jax.random.key(0))
    params = {"student": s_params, "aux": aux}
    param_shardings = {"student": s_shard, "aux": jax.tree.map(lambda _: repl, aux)}
    opt = jax.eval_shape(tx.init, params)
    opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt, param_shardings,
                                          transform_non_params=lambda _: repl,
                                          is_leaf=lambda x: isinstance(x, NamedSharding))
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt_state": opt}
    state_sh = {"step": repl, "params": param_shardings, "opt_state": opt_shardings}
    batch_sh = sharding.batch_sharding(mesh, 2)
    batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
             for k in ("input_ids", "attention_mask", "token_type_ids")}

    train_step = step_lib.make_train_step(
        student_graphdef=s_graph, teacher_graphdef=t_graph, objective=objective, tx=tx,
        lr_schedule=lr_schedule, microbatches=config.microbatches, seed=0,
        output_attentions=objective.needs_attentions)
    jitted = jax.jit(train_step, in_shardings=(state_sh, t_shard, {k: batch_sh for k in batch}),
                     out_shardings=(state_sh, repl), donate_argnums=(0,))

    def abstract(tree, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    t0 = time.time()
    with jax.set_mesh(mesh):  # splash attention shard_maps itself over the context mesh's batch axes
        compiled = jitted.lower(abstract(state, state_sh), abstract(t_params, t_shard),
                                abstract(batch, {k: batch_sh for k in batch})).compile()
    return compiled, time.time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", default="v5e:4x4", help="libtpu topology name (v5e:4x4, v4:2x2x2...) or cpu")
    p.add_argument("--per_device_batch", type=int, default=64, help="rows per chip (64 = 1024 over 16 chips)")
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--variants", default="dense,dense_hpc8,blockwise,blockwise_remat,blockwise_splash,"
                                         "blockwise_splash_nodrop,blockwise_splash_nodrop_remat")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; use any of {', '.join(VARIANTS)}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile only: no chip is claimed
    devices = devices_for(args.topology)
    gib = 2 ** 30
    print(f"{args.topology}: {len(devices)} devices ({devices[0].device_kind}), {args.per_device_batch} rows x "
          f"{args.seq_len} per device", flush=True)
    print(f"{'variant':32s} {'args GiB':>9s} {'out GiB':>8s} {'alias GiB':>9s} {'temp GiB':>9s} "
          f"{'total GiB':>9s} {'compile s':>9s}", flush=True)
    for name in names:
        try:
            compiled, seconds = compile_variant(name, devices, args.per_device_batch, args.seq_len)
        except Exception as exc:  # noqa: BLE001 - e.g. RESOURCE_EXHAUSTED: report it and go on
            print(f"{name:32s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", flush=True)
            continue
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        print(f"{name:32s} {m.argument_size_in_bytes / gib:9.2f} {m.output_size_in_bytes / gib:8.2f} "
              f"{m.alias_size_in_bytes / gib:9.2f} {m.temp_size_in_bytes / gib:9.2f} {total / gib:9.2f} "
              f"{seconds:9.1f}", flush=True)


if __name__ == "__main__":
    main()
