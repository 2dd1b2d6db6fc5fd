"""One way to build the training state, abstract or real: the trainer (train.py), the benchmark
(benchmarks/) and the TPU plan (distill_jax.plan) all call `build_train_setup`, so what the plan
compiles is what the run compiles.

    setup = build_train_setup(config, mesh, teacher_hf=hf_config_dict, teacher_dir=dir, abstract=False)
    compiled = setup.jitted.lower(setup.state, setup.teacher_params, batch).compile()

The phases (big_vision style): shapes from the teacher's config.json -> objective, optimizer ->
abstract models -> shardings from the parameters' logical axes -> arrays:
  abstract=True   every array is a jax.ShapeDtypeStruct carrying its sharding: no weight is read,
                  nothing is placed on a device (the plan compiles the step from these alone);
  abstract=False  the teacher's weights are read from `teacher_dir` straight into their shardings
                  (random weights of the config's shape when teacher_dir is None: benchmarks), the
                  student is initialised under jax.jit(init, out_shardings=...), the optimizer
                  state likewise.

State layout (what checkpoints hold; distill_jax/step.py documents the step):
    {"step": int32 [], "params": {"student": <pure dict>, "aux": <objective params>},
     "opt_state": <optax state over params>}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from distill_jax import optim, sharding
from distill_jax import step as step_lib


# ----------------------------------------------------------------------------------------------
# Config checks (every impossible value named before anything heavy runs)
# ----------------------------------------------------------------------------------------------

def _positive_int(config, field: str) -> int:
    value = config
    for part in field.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"config.{field}={value!r}: must be a positive integer")
    return int(value)


def check_config(config: ml_collections.ConfigDict, process_count: int = 1) -> None:
    """Raises ValueError naming the config field for values that can never work."""
    for field in ("total_steps", "batch_size", "microbatches", "log_every", "checkpoint_every",
                  "keep_checkpoints", "data.seq_len"):
        _positive_int(config, field)
    for field in ("student.num_layers", "student.hidden_size", "student.num_heads",
                  "student.intermediate_size"):
        _positive_int(config, field)
    if config.student.hidden_size % config.student.num_heads:
        raise ValueError(f"config.student.hidden_size={config.student.hidden_size} is not divisible by "
                         f"config.student.num_heads={config.student.num_heads}")
    if config.student.init not in ("random", "teacher"):
        raise ValueError(f"config.student.init={config.student.init!r}: use 'random' or 'teacher'")
    for field in ("teacher.dtype", "student.dtype", "student.param_dtype"):
        section, name = field.split(".")
        if config[section][name] not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"config.{field}={config[section][name]!r}: use 'float32' or 'bfloat16'")
    if config.batch_size % config.microbatches:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by "
                         f"config.microbatches={config.microbatches}")
    if config.batch_size % process_count:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                         f"{process_count} processes (each host feeds an equal share)")
    if config.attention_impl not in ATTENTION_CHOICES:
        raise ValueError(f"config.attention_impl={config.attention_impl!r}: use one of "
                         f"{', '.join(map(repr, ATTENTION_CHOICES))}")
    for field in ("learning_rate", "end_learning_rate"):
        value = config.optim[field]
        lowest_ok = 0.0 if field == "end_learning_rate" else None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value) or (value <= 0 if lowest_ok is None else value < 0):
            raise ValueError(f"config.optim.{field}={value!r}: must be a finite number "
                             f"{'> 0' if lowest_ok is None else '>= 0'}, e.g. --config.optim.{field}=5e-4")
    if config.stop_after_step < 0:
        raise ValueError(f"config.stop_after_step={config.stop_after_step}: must be >= 0 (0 = off)")


# config.attention_impl values: 'auto' or an EncoderConfig.attention_impl ('xla' = its None).
ATTENTION_CHOICES = ("auto", "xla", "heads_first", "cudnn", "splash", "splash_interpret")


def resolve_attention_impl(choice: str, platform: str, dtype: str, head_dim: int,
                           seq_len: int) -> str | None:
    """config.attention_impl -> EncoderConfig.attention_impl for one model on `platform` ('tpu',
    'gpu', 'cpu') with compute `dtype`, `head_dim` and sequences of `seq_len` tokens.

    'auto': 'splash' (the Pallas kernel; nothing [S, S]-sized kept) on TPU when 128 (its tile)
    divides seq_len (shorter or ragged sequences would be padded to the tile, which costs more than
    the [S, S] probabilities it saves: measured on a seq-64 step); 'cudnn' (cuDNN's fused
    attention through jax.nn.dot_product_attention) on GPU where cuDNN takes it: bf16/fp16
    compute and a head size that is a multiple of 8 up to 128; 'heads_first' on CPU (XLA's
    arithmetic with B*H as one batch dim: models/attention.py); otherwise None, XLA's attention
    (jax.nn.dot_product_attention's default, which never picks cuDNN by itself). The encoder still
    takes its explicit path where probabilities or attention dropout are needed.
    """
    if choice == "auto":
        if platform == "tpu":
            from distill_jax.models.attention import BLOCK

            return "splash" if seq_len % BLOCK == 0 else None
        if platform == "cpu":
            return "heads_first"
        cudnn_ok = dtype in ("bfloat16", "float16") and head_dim % 8 == 0 and head_dim <= 128
        return "cudnn" if platform == "gpu" and cudnn_ok else None
    if choice == "splash" and platform != "tpu":
        raise ValueError(f"config.attention_impl='splash' needs TPU devices (these are {platform}); "
                         "use 'auto' (or 'splash_interpret' to run the kernel in the interpreter)")
    if choice == "cudnn" and platform != "gpu":
        raise ValueError(f"config.attention_impl='cudnn' needs NVIDIA GPUs (these are {platform}); use 'auto'")
    return None if choice == "xla" else choice


def check_batch_fits_mesh(config, mesh: Mesh) -> None:
    """Each microbatch must split evenly over the batch axes (data x fsdp) of the mesh."""
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = config.batch_size // config.microbatches
    if rows % batch_devices:
        raise ValueError(
            f"config.batch_size={config.batch_size} / config.microbatches={config.microbatches} = {rows} "
            f"rows per microbatch do not split over mesh data*fsdp = {batch_devices} devices; "
            f"make the microbatch a multiple of {batch_devices}")


def axis_rules(config) -> tuple:
    """config.logical_axis_rules as the rules tuple distill_jax.sharding expects (empty = default)."""
    if not config.logical_axis_rules:
        return sharding.DEFAULT_RULES
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                 for name, axes in config.logical_axis_rules)


def teacher_axis_rules(config, rules: tuple) -> tuple:
    """The frozen teacher's parameter rules: `rules` without the fsdp mesh axis unless
    config.teacher.shard_over_fsdp (see its comment in configs/common.py)."""
    if config.teacher.shard_over_fsdp:
        return rules

    def drop_fsdp(axes):
        if axes == "fsdp":
            return None
        if isinstance(axes, tuple):
            kept = tuple(a for a in axes if a != "fsdp")
            return kept[0] if len(kept) == 1 else (kept or None)
        return axes

    return tuple((name, axes if name == "batch" else drop_fsdp(axes)) for name, axes in rules)


def make_config_mesh(config, devices) -> Mesh:
    """The (data, fsdp, tensor) mesh config.mesh asks for, over `devices` (all of them, or the
    first config.mesh.devices)."""
    devices = list(devices)
    num = int(config.mesh.devices)
    if num < 0 or num > len(devices):
        raise ValueError(f"config.mesh.devices={num}: must be 0 (all) or at most the "
                         f"{len(devices)} devices present")
    return sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                              devices=devices[:num] if num else devices)


# ----------------------------------------------------------------------------------------------
# Helpers: pure-dict params <-> shardings
# ----------------------------------------------------------------------------------------------

def param_shardings(model: nnx.Module, mesh: Mesh, rules) -> Any:
    """NamedSharding per parameter of `model` (abstract or real), as a pure dict."""
    from distill_jax.models.partitioning import state_shardings

    return nnx.to_pure_dict(state_shardings(nnx.state(model, nnx.Param), mesh, rules))


def split_params(model: nnx.Module) -> tuple[Any, Any]:
    """(graphdef, params as a pure dict); the encoders hold nothing but nnx.Param."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"{type(model).__name__} holds non-parameter state {list(rest.keys())}; "
                         "the train step expects parameters only")
    return graphdef, nnx.to_pure_dict(params)


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s arrays (or structs) carrying `shardings` (same tree)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ----------------------------------------------------------------------------------------------
# The setup
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainSetup:
    """Everything the train step needs, built once (see the module docstring)."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    teacher_cfg: Any           # models.EncoderConfig (compute dtype and heads as the step runs it)
    student_cfg: Any
    objective: Any             # losses.Objective
    teacher_graphdef: Any
    student_graphdef: Any
    teacher_params: Any        # pure dict: arrays, or ShapeDtypeStructs when abstract
    teacher_shardings: Any
    state: Any                 # {"step", "params": {"student", "aux"}, "opt_state"}
    state_shardings: Any
    jitted: Any                # jax.jit(the pure step: step.make_train_step) with shardings, state donated
    teacher_model: Any = None  # the loaded teacher nnx module (real mode only)

    @property
    def mlm_positions(self) -> int:
        """MLM positions per row the batch carries (0 when the objective reads no MLM fields)."""
        return int(self.config.data.mlm.max_predictions) if self.objective.needs_mlm_batch else 0

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch as ShapeDtypeStructs sharded over the batch axes (the data iterator's
        fields: distill_jax.data.batch_shapes)."""
        from distill_jax.data import batch_shapes

        shapes = batch_shapes(int(self.config.batch_size), int(self.config.data.seq_len),
                              self.mlm_positions, segment_ids=bool(self.config.data.segment_ids))
        return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(self.mesh, len(shape)))
                for k, (shape, dtype) in shapes.items()}

    def lower(self, batch: Any = None):
        """jitted.lower over this setup's state and teacher params and `batch` (default: the
        abstract batch_spec())."""
        return self.jitted.lower(self.state, self.teacher_params,
                                 self.batch_spec() if batch is None else batch)

    def attention_paths(self) -> dict[str, str]:
        """How each model's attention runs in this step, e.g. {'teacher': 'splash', 'student':
        'explicit (student.attention_dropout=0.1)'}: the encoder takes the explicit softmax path,
        keeping [B, H, S, S] probabilities, where the objective reads them or dropout hits them."""
        def fused(cfg):
            return cfg.attention_impl or "jax.nn.dot_product_attention"

        if self.objective.needs_attentions:
            reason = "explicit (the objective reads attention probabilities)"
            return {"teacher": reason, "student": reason}
        dropout = float(self.student_cfg.attention_dropout)
        return {"teacher": fused(self.teacher_cfg),
                "student": f"explicit (student.attention_dropout={dropout:g})" if dropout > 0
                else fused(self.student_cfg)}

    def step_flops(self) -> float:
        """Analytic matmul FLOPs of one step (teacher fwd + student fwd/bwd + objective; flops.py)."""
        from distill_jax.flops import objective_flops

        return objective_flops(self.config, self.objective, self.teacher_cfg, self.student_cfg)


def teacher_encoder_config(config, teacher_hf: dict, *, source: str, with_mlm_head: bool,
                           attention_impl: str | None = None):
    """The teacher's EncoderConfig as the step runs it: config.json shapes, config.teacher.dtype
    for compute and storage (cast once at load), the MLM head only when the objective reads it,
    the attention kernel resolve_attention_impl chose."""
    from distill_jax import models

    cfg = models.EncoderConfig.from_hf_dict(teacher_hf, source=source, dtype=config.teacher.dtype,
                                            param_dtype=config.teacher.dtype)
    return cfg.replace(with_mlm_head=bool(with_mlm_head), attention_impl=attention_impl)


def build_train_setup(config: ml_collections.ConfigDict, mesh: Mesh, *, teacher_hf: dict,
                      teacher_dir: str | None = None, abstract: bool = False,
                      teacher_source: str = "config.json") -> TrainSetup:
    """Teacher, student, objective (+ aux params), optimizer, shardings and the jitted step.

    teacher_hf: the teacher's config.json as a dict (shapes only). teacher_dir: where its weights
    are (real mode); None with abstract=False gives random teacher weights (benchmarks).
    teacher_source names the config.json in errors. Raises ValueError naming the config field for
    shapes that cannot work, before any array exists.
    """
    from distill_jax import models
    from distill_jax.losses import build_objective

    config = ml_collections.ConfigDict(config)
    seed = int(config.seed)
    rules = axis_rules(config)
    check_batch_fits_mesh(config, mesh)

    # 1. Shapes: the teacher's config.json, the objective against both shapes, the optimizer.
    shape_only = models.EncoderConfig.from_hf_dict(teacher_hf, source=teacher_source)
    if config.data.seq_len > shape_only.max_seq_len:
        raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds the teacher's position "
                         f"table ({shape_only.max_seq_len} tokens)")
    student_kwargs = dict(
        num_layers=config.student.num_layers, hidden_size=config.student.hidden_size,
        num_heads=config.student.num_heads, intermediate_size=config.student.intermediate_size)
    objective = build_objective(config.objective, ml_collections.ConfigDict(student_kwargs), shape_only)
    if objective.needs_teacher_mlm_head and teacher_dir is not None and not models.has_mlm_head(teacher_dir):
        raise ValueError(
            f"config.teacher.name={config.teacher.name!r} has no MLM head, which objective.od needs; fit one on the "
            f"frozen teacher with `python main.py --config=configs/fit_mlm_head.py --config.teacher.name="
            f"{config.teacher.name} --workdir=DIR`, then pass --config.teacher.name=DIR/export")
    tx, lr_schedule = optim.make_optimizer(config.optim, config.total_steps)
    platform = mesh.devices.flat[0].platform
    teacher_cfg = teacher_encoder_config(
        config, teacher_hf, source=teacher_source, with_mlm_head=objective.needs_teacher_mlm_head,
        attention_impl=resolve_attention_impl(config.attention_impl, platform, config.teacher.dtype,
                                              shape_only.head_dim, int(config.data.seq_len)))
    student_attention = resolve_attention_impl(
        config.attention_impl, platform, config.student.dtype,
        int(config.student.hidden_size) // int(config.student.num_heads), int(config.data.seq_len))
    repl = sharding.replicated(mesh)

    # 2. Teacher: frozen, cast once to its compute dtype, never checkpointed.
    abstract_teacher = nnx.eval_shape(lambda: models.Encoder(teacher_cfg, rngs=nnx.Rngs(seed)))
    teacher_shardings = param_shardings(abstract_teacher, mesh, teacher_axis_rules(config, rules))
    teacher_graphdef, teacher_params = split_params(abstract_teacher)
    teacher_model = None
    if abstract:
        teacher_params = abstract_like(teacher_params, teacher_shardings)
    elif teacher_dir is not None:
        teacher_model, loaded_cfg, _ = models.load_pretrained(
            teacher_dir, dtype=teacher_cfg.dtype, param_dtype=teacher_cfg.param_dtype,
            with_mlm_head=teacher_cfg.with_mlm_head, shardings=teacher_shardings,
            attention_impl=teacher_cfg.attention_impl)
        if loaded_cfg != teacher_cfg:  # one config.json read twice: cannot differ
            raise ValueError(f"{teacher_dir}: the loaded teacher's config differs from config.json")
        teacher_graphdef, teacher_params = split_params(teacher_model)
    else:
        teacher_params = jax.jit(
            lambda: split_params(models.Encoder(teacher_cfg, rngs=nnx.Rngs(seed)))[1],
            out_shardings=teacher_shardings)()

    # 3. Student (random init under jit with out_shardings, or copied teacher layers).
    student_overrides = dict(
        init=config.student.init,
        teacher_layers=list(config.student.teacher_layers) if config.student.teacher_layers else None,
        dtype=config.student.dtype, param_dtype=config.student.param_dtype,
        with_mlm_head=objective.needs_mlm_head,
        hidden_dropout=float(config.student.hidden_dropout),
        attention_dropout=float(config.student.attention_dropout),
        remat=bool(config.student.remat), attention_impl=student_attention)
    if config.student.init == "teacher":
        # The copy itself needs real teacher weights; for shapes, a random-init student is the same.
        copy_from = None if abstract else _float32_teacher(
            models, teacher_model, teacher_dir, teacher_cfg, teacher_params, teacher_graphdef)
    else:
        copy_from = None

    def make_student():
        # Vocabulary, positions, family, activation come from the teacher's config; sizes, dtypes,
        # dropout, remat and the MLM head from config.student / the objective.
        overrides = dict(student_overrides)
        if copy_from is None:
            overrides["init"], overrides["teacher_layers"] = "random", None
        return models.make_student(teacher_cfg, **student_kwargs, **overrides,
                                   teacher_model=copy_from, rngs=nnx.Rngs(seed))

    abstract_student = nnx.eval_shape(make_student)
    if config.student.init == "teacher":  # shapes alone say whether the copy can work
        from distill_jax.models.student import teacher_init_layers
        teacher_init_layers(abstract_student.cfg, teacher_cfg, student_overrides["teacher_layers"])
    student_shardings = param_shardings(abstract_student, mesh, rules)
    student_graphdef, student_params = split_params(abstract_student)
    if abstract:
        student_params = abstract_like(student_params, student_shardings)
    elif copy_from is None:
        student_params = jax.jit(lambda: split_params(make_student())[1],
                                 out_shardings=student_shardings)()
    else:
        student_params = jax.device_put(split_params(make_student())[1], student_shardings)
    student_cfg = abstract_student.cfg

    # 4. Objective aux params (replicated) and the optimizer state (sharded like its params).
    params_shardings = {"student": student_shardings,
                        "aux": jax.tree.map(lambda _: repl,
                                            jax.eval_shape(objective.init_params, jax.random.key(0)))}
    aux_key = jax.random.fold_in(jax.random.key(seed), 1)
    if abstract:
        aux = abstract_like(jax.eval_shape(objective.init_params, aux_key), params_shardings["aux"])
    else:
        aux = jax.device_put(objective.init_params(aux_key), repl)
    params = {"student": student_params, "aux": aux}
    abstract_opt = jax.eval_shape(tx.init, params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, params_shardings,
        transform_non_params=lambda _: repl, is_leaf=lambda x: isinstance(x, NamedSharding))
    state_shardings = {"step": repl, "params": params_shardings, "opt_state": opt_shardings}
    if abstract:
        state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl), "params": params,
                 "opt_state": abstract_like(abstract_opt, opt_shardings)}
    else:
        state = {"step": jax.device_put(jnp.zeros((), jnp.int32), repl), "params": params,
                 "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params)}

    # 5. The step, jitted with the shardings; the state is donated (updated in place).
    train_step = step_lib.make_train_step(
        student_graphdef=student_graphdef, teacher_graphdef=teacher_graphdef, objective=objective,
        tx=tx, lr_schedule=lr_schedule, microbatches=config.microbatches, seed=seed,
        output_attentions=objective.needs_attentions,
        student_has_mlm_head=objective.needs_mlm_head,
        teacher_has_mlm_head=objective.needs_teacher_mlm_head)

    from distill_jax.losses.mha import target_platform  # `platform` above: the mesh's, not the host's

    def step_in_mesh(*args):
        # The splash kernel shard_maps itself over the batch axes of the context mesh (XLA cannot
        # partition its custom call); every other op follows the jit shardings either way. Loss
        # kernels that differ by platform pick the mesh's, not the host's.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), target_platform(platform):
            return train_step(*args)

    jitted = jax.jit(step_in_mesh,
                     in_shardings=(state_shardings, teacher_shardings, sharding.batch_sharding(mesh, 1)),
                     out_shardings=(state_shardings, repl), donate_argnums=(0,))
    return TrainSetup(config=config, mesh=mesh, teacher_cfg=teacher_cfg, student_cfg=student_cfg,
                      objective=objective, teacher_graphdef=teacher_graphdef,
                      student_graphdef=student_graphdef, teacher_params=teacher_params,
                      teacher_shardings=teacher_shardings, state=state,
                      state_shardings=state_shardings, jitted=jitted, teacher_model=teacher_model)


def _float32_teacher(models, teacher_model, teacher_dir, teacher_cfg, teacher_params, teacher_graphdef):
    """The teacher in float32 for init='teacher' (the bf16 teacher is for forwards only)."""
    if teacher_cfg.param_dtype == "float32":
        return teacher_model if teacher_model is not None else nnx.merge(teacher_graphdef, teacher_params)
    if teacher_dir is None:
        raise ValueError("config.student.init='teacher' needs the teacher's weights "
                         "(config.teacher.name=<a directory with model.safetensors>)")
    model, _, _ = models.load_pretrained(teacher_dir, dtype="float32", param_dtype="float32")
    return model
