"""What the recipes share: `base_config()` (every field the trainer reads, with its default; each
recipe's `get_config` starts from it), `runlocal`, `parse_arg`, the data locations, and the
distillation objectives (minilmv2, minilm_v1, hidden_states, distilbert_od), each stated once.

Conventions: durations are in optimizer steps; `batch_size` is the global batch (all hosts
together); one step = one optimizer update (with `microbatches` > 1, gradients of that many
microbatches are accumulated inside the step).
"""

import os

import ml_collections

# The workplace's real data (GLUE, Wikipedia sample, WikiText-2) beside the repository, see
# ../shared/data/PROVENANCE.md; DISTILL_JAX_SHARED_DATA overrides. Configs that default to it fall
# back to builtin data (or a clear error) when it is absent.
SHARED_DATA_DIR = os.environ.get("DISTILL_JAX_SHARED_DATA") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
# GLUE in the glue_data layout (<dir>/CoLA/train.tsv, ...) there; GLUE_DIR overrides.
GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(SHARED_DATA_DIR, "glue"))


def parse_arg(arg: str | None, **defaults):
    """Parses a config arg string "runlocal,map=uniform_cons,steps=100" into a ConfigDict.

    A bare word is a boolean flag set to True; key=value pairs are cast to the type of the default
    (ints, floats and bools), or kept as strings. Unknown keys are a ValueError naming them.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config arg {key!r} unknown; this config takes {sorted(defaults)}")
        default = defaults[key]
        if not _:
            parsed[key] = True
        elif isinstance(default, bool):
            parsed[key] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            parsed[key] = int(value)
        elif isinstance(default, float):
            parsed[key] = float(value)
        else:
            parsed[key] = value
    return parsed


def base_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with defaults; recipes override what they need."""
    from distill_jax import optim
    from distill_jax.data.config import default_data_config

    c = ml_collections.ConfigDict()
    c.mode = "distill"            # the runner, a key of distill_jax.cli.MODES: 'distill' = this trainer
    c.seed = 0                    # student init, objective aux params, dropout (folded with the step), data order

    c.teacher = ml_collections.ConfigDict()
    # A local HF directory (config.json + model.safetensors), a hub id (needs the hub), or an
    # exported student (teacher-assistant chains).
    c.teacher.name = "bert-base-uncased"
    # Compute dtype of the frozen teacher; its params are cast once at load. bfloat16 on TPU/GPU
    # halves the teacher's share of the step; float32 on CPU (bf16 pays only for big
    # teachers on CPUs with AVX-512 BF16: BUILD_NOTES, 'The teacher stays float32 on CPU').
    c.teacher.dtype = "float32"
    # Frozen teacher parameters over the mesh's fsdp axis: False keeps a full copy per fsdp group
    # (sharded over "tensor" only), so its matmuls need no collective; True shards them like the
    # student's, for a teacher too big to copy. With True, XLA partitions the teacher's matmuls
    # over fsdp and all-reduces float32 partial activations instead of gathering weights (the plan
    # showed ~72 GiB per chip per step for xlmr-large on v4-32).
    c.teacher.shard_over_fsdp = False

    c.student = ml_collections.ConfigDict()
    c.student.num_layers = 6
    c.student.hidden_size = 384
    c.student.num_heads = 12
    c.student.intermediate_size = 1536
    c.student.init = "random"     # 'random' (BERT init) | 'teacher' (copy teacher layers; widths must match)
    c.student.teacher_layers = ()  # init='teacher': which teacher layers (0-based) become the student's
    c.student.dtype = "float32"   # compute dtype of the student ('bfloat16' on TPU/GPU)
    c.student.param_dtype = "float32"  # master weights stay float32 for AdamW
    c.student.hidden_dropout = 0.1    # BERT's; MiniLM papers keep the pre-training dropout
    c.student.attention_dropout = 0.1
    # Recompute each student layer on the backward pass (jax.checkpoint): activation memory of one
    # layer instead of all, for ~1/3 more student compute. For long sequences / big batches.
    c.student.remat = False

    # The objective: a dict of terms, see distill_jax/losses/objective.py for every option.
    c.objective = ml_collections.ConfigDict()

    c.data = default_data_config()  # source, seq_len, MLM masking, cache: see distill_jax/data/config.py

    c.batch_size = 256            # global batch (sequences) per optimizer step
    c.microbatches = 1            # gradient accumulation inside one step; batch_size % microbatches == 0
    c.total_steps = 100_000

    # AdamW (b1, b2, eps, weight_decay, grad_clip_norm; BERT's defaults): the schema GLUE
    # fine-tuning shares (distill_jax/optim.py AdamW), plus the schedule.
    c.optim = optim.adamw_config()
    c.optim.learning_rate = 5e-4  # peak, reached after warmup
    c.optim.warmup_steps = 4000
    c.optim.end_learning_rate = 0.0  # linear decay to this at total_steps

    # Mesh axes: data (pure DP), fsdp (batch + params sharded), tensor (heads/MLP/vocab). -1 = the rest.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.devices = 0            # 0 = every device; n = the first n (debugging a mesh on fewer devices)
    # Logical axis name -> mesh axis overrides as [(name, axis or [axes] or None), ...]; empty =
    # distill_jax.sharding.DEFAULT_RULES.
    c.logical_axis_rules = ()

    # Attention when no probabilities are needed and no attention dropout applies (the frozen
    # teacher always; the student when student.attention_dropout is 0): 'auto' = the Pallas splash
    # kernel on TPU (seq_len a multiple of 128), cuDNN's fused attention on GPU for bf16/fp16 models,
    # XLA's with heads flattened into the batch on CPU ('heads_first'), XLA's otherwise
    # (train_setup.resolve_attention_impl); or 'xla', 'heads_first', 'cudnn', 'splash' to force one.
    c.attention_impl = "auto"

    c.log_every = 100             # steps between console lines / TensorBoard points (and NaN checks)
    c.checkpoint_every = 2000     # steps between checkpoints (also on SIGTERM and at the end)
    c.keep_checkpoints = 3        # newest K kept
    c.async_checkpoints = True    # write in the background; awaited before exit
    c.stop_after_step = 0         # >0: stop there as if preempted (save, exit); 0 = off
    c.export = True               # write workdir/export (HF format) at the end
    # A workdir belongs to one config (distill_jax/run_config.py): a resume that changes a field
    # its checkpoints depend on (shapes, objective, data, optimizer, seed) is refused unless True.
    c.allow_config_change = False
    c.print_parameters = False    # also print the per-parameter table (always in workdir/parameters.txt)
    # JAX persistent compilation cache (a local dir or gs://...): a restarted or resumed job loads
    # its compiled step instead of compiling again. '' = $JAX_COMPILATION_CACHE_DIR when set, else
    # <workdir>/compilation_cache; 'off' = none.
    c.compilation_cache_dir = ""
    # Peak FLOP/s of one device for MFU; 0 = datasheet figure by device kind (TPU/GPU), measured
    # matmul rate on CPU.
    c.peak_flops_per_device = 0.0
    # Evaluation of the student while it trains (distill_jax/evaluate/during_training.py), logged
    # like the loss terms; it reads the student, never changes it.
    c.eval = ml_collections.ConfigDict()
    c.eval.stsb_every = 0         # >0: zero-shot STS-B Spearman x 100 every N steps (a multiple of log_every) and at the end; 0 = off
    c.eval.stsb_split = "dev"     # <glue_dir>/STS-B/<split>.tsv
    c.eval.glue_dir = GLUE_DIR
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a pod recipe to a CPU run with the same code path: tiny batch, few steps, builtin
    corpus, float32, a small slice of documents. The teacher stays what the recipe names (point it
    at a local directory with --config.teacher.name=... when the hub is unreachable)."""
    c.teacher.dtype = "float32"
    c.student.dtype = "float32"
    c.data.source = "builtin"
    c.data.max_documents = 2000
    c.data.seq_len = 64
    c.data.mlm.max_predictions = 10
    c.batch_size = 8
    c.microbatches = 1
    c.total_steps = 20
    c.optim.warmup_steps = 2
    c.log_every = 5
    c.checkpoint_every = 10
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    return c


# ----------------------------------------------------------------------------------------------
# The distillation objectives the recipes share, each stated once. Each returns an objective
# config ({term: options}, distill_jax/losses/objective.py) for `config.objective`; a recipe passes
# only what it changes. Options left out take the library's defaults (distill_jax/losses/terms.py);
# options passed are written into the config (and so into a run's identity: the study's records,
# a workdir's config.json), which is why some recipes pass a default explicitly.
# ----------------------------------------------------------------------------------------------

def minilmv2(relation_heads: int = 48, teacher_layer: int = -1, student_layer: int = -1, **options) -> dict:
    """MiniLMv2 (Wang et al., arXiv:2012.15828): KL between the Q-Q, K-K and V-V self-attention
    relations of one teacher layer and one student layer, split into `relation_heads` heads (the
    paper: 48 for base-size teachers, 64 for large ones; it must divide both widths). The paper
    uses the teacher's last layer for base-size teachers and an upper-middle one for large ones.
    options: more minilmv2 options (qq / kk / vv relation weights, heads_per_chunk, block_size)."""
    return {"minilmv2": dict(weight=1.0, relation_heads=relation_heads, teacher_layer=teacher_layer,
                             student_layer=student_layer, **options)}


def minilm_v1(**options) -> dict:
    """MiniLM v1 (Wang et al., arXiv:2002.10957): KL between the last layers' attention
    distributions plus KL between their value relations (V V^T), equal weights; head by head, so
    the student needs the teacher's head count. options: attention / value weights."""
    return {"minilm": dict(weight=1.0, teacher_layer=-1, student_layer=-1, **options)}


def hidden_states(layer_map, loss: str = "mse", **options) -> dict:
    """Hidden-state distillation: `loss` between mapped hidden states through learned per-layer
    projections when the widths differ, as TinyBERT's hidden-state loss (arXiv:1909.10351) over
    the layer maps of "How to Distill your BERT" (arXiv:2305.15032). layer_map: a strategy of
    distill_jax.losses.STRATEGIES or explicit [[student, teacher], ...] pairs. options: embeddings,
    projection, one_to_many."""
    return {"hs": dict(weight=1.0, map=layer_map, loss=loss, **options)}


def distilbert_od(temperature: float = 2.0) -> dict:
    """DistilBERT's loss (Sanh et al., arXiv:1910.01108): 5 x the T^2-scaled KL between teacher and
    student MLM distributions at the masked positions (T = 2), plus 2 x the hard-label masked-LM
    cross-entropy. The vocabulary projection runs 32 positions at a time (30522-way for BERT)."""
    return {"od": dict(weight=5.0, temperature=temperature, positions="mlm", chunk_size=32),
            "mlm": dict(weight=2.0)}
