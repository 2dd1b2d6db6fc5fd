"""Fit BERT's masked-LM head on a frozen encoder, so teachers shipped without one can run OD.

Most sentence-transformers checkpoints (all-MiniLM-L6-v2 among them) keep the encoder and drop the
MLM head, so output-distribution distillation (`objective.od`) has no teacher distribution to
match. This mode fits the head BERT defines — transform (dense + GELU) -> LayerNorm -> decoder tied
to the word embeddings + output bias — by masked-LM cross-entropy on a corpus, with every encoder
weight (word embeddings included, which the decoder shares) frozen: only the transform, the
LayerNorm and the bias train. The result is written as an HF `*ForMaskedLM` directory that
`distill_jax.models.load_pretrained` and `transformers.AutoModelForMaskedLM` both load, and that
an OD recipe takes as `config.teacher.name`.

    python main.py --config=configs/fit_mlm_head.py --workdir=/tmp/minilm_mlm_head

Workdir: checkpoints/ (head + optimizer state; a rerun resumes), export/ (the teacher with its
head), fit_record.json (masked-token accuracy and perplexity on the eval corpus before and after,
steps, tokens, times), loss_curves.png. A finished workdir is left as it is by a rerun.

Evaluation: the eval corpus is packed and masked exactly like training data (15% of tokens, BERT's
80/10/10 corruption, masks fixed by eval_seed), read once in order; accuracy is the share of masked
positions whose arg-max is the original token, perplexity exp(mean cross-entropy) over them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from distill_jax import loop, sharding, workdir_layout
from distill_jax.workdir_layout import Workdir

HEAD = "mlm_head"   # the Encoder attribute holding the head's parameters
RECORD_NAME = "fit_record.json"   # in the workdir; with export/ beside it, the mark of a finished fit


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[mlm_head] {message}", flush=True)


def split_head(model: nnx.Module) -> tuple[Any, dict, dict]:
    """(graphdef, frozen params, head params) as pure dicts; the head is params[HEAD]."""
    graphdef, params = nnx.split(model, nnx.Param)
    pure = nnx.to_pure_dict(params)
    head = pure.pop(HEAD)
    return graphdef, pure, head


def masked_lm_sums(graphdef, frozen: dict, head: dict, batch: dict) -> dict[str, jax.Array]:
    """Sums over the batch's masked positions: cross-entropy (nats), correct arg-max, count.

    batch: input_ids / attention_mask / token_type_ids [B, S]; mlm_positions / mlm_ids [B, P];
    mlm_weights [B, P] (1 = a real prediction). The encoder is frozen (stop_gradient), so a
    gradient wrt `head` never runs the encoder backward.
    """
    model = nnx.merge(graphdef, {**frozen, HEAD: head})
    out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    h_bsd = jax.lax.stop_gradient(out.hidden_states[-1])
    h_bpd = jnp.take_along_axis(h_bsd, batch["mlm_positions"][..., None], axis=1)
    logits_bpv = model.mlm_logits(h_bpd).astype(jnp.float32)
    w_bp = batch["mlm_weights"].astype(jnp.float32)
    ce_bp = optax.softmax_cross_entropy_with_integer_labels(logits_bpv, batch["mlm_ids"])
    correct_bp = (jnp.argmax(logits_bpv, axis=-1) == batch["mlm_ids"]).astype(jnp.float32)
    return {"ce_sum": jnp.sum(ce_bp * w_bp), "correct": jnp.sum(correct_bp * w_bp), "count": jnp.sum(w_bp)}


def make_steps(graphdef, tx: optax.GradientTransformation):
    """(train_step, eval_step), both pure and jitted.

    train_step(head, opt_state, frozen, batch) -> (head, opt_state, metrics);
    eval_step(head, frozen, batch) -> sums (see masked_lm_sums).
    """
    def loss_fn(head, frozen, batch):
        sums = masked_lm_sums(graphdef, frozen, head, batch)
        return sums["ce_sum"] / jnp.maximum(sums["count"], 1.0), sums

    @jax.jit
    def train_step(head, opt_state, frozen, batch):
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(head, frozen, batch)
        updates, opt_state = tx.update(grads, opt_state, head)
        head = optax.apply_updates(head, updates)
        metrics = {"loss": loss, "accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
                   "grad_norm": optax.global_norm(grads)}
        return head, opt_state, metrics

    eval_step = jax.jit(lambda head, frozen, batch: masked_lm_sums(graphdef, frozen, head, batch))
    return train_step, eval_step


def evaluate(eval_step, head, frozen, batches, mesh) -> dict[str, float]:
    """Masked-token accuracy (%), perplexity and mean cross-entropy over every batch of `batches`."""
    totals = {"ce_sum": 0.0, "correct": 0.0, "count": 0.0}
    for local in batches:
        sums = jax.device_get(eval_step(head, frozen, sharding.global_batch_from_local(local, mesh)))
        for key in totals:
            totals[key] += float(sums[key])
    n = max(totals["count"], 1.0)
    ce = totals["ce_sum"] / n
    return {"accuracy": 100.0 * totals["correct"] / n, "perplexity": float(np.exp(ce)),
            "cross_entropy": ce, "positions": int(totals["count"])}


def _eval_batches(config, eval_data, tokenizer) -> list[dict]:
    """The whole eval corpus (eval_data: config.eval_data read once, a data.DataConfig) once, in
    order, with fixed masks (the same for 'before' and 'after')."""
    from distill_jax import data as data_lib

    it = data_lib.build_train_iterator(
        eval_data, tokenizer, per_host_batch_size=config.eval_batch_size // jax.process_count(),
        process_index=jax.process_index(), process_count=jax.process_count(),
        seed=int(config.eval_seed), mlm=eval_data.mlm, num_epochs=1)
    batches = list(it)
    if config.max_eval_batches:
        batches = batches[:int(config.max_eval_batches)]
    return batches


def check_config(config) -> None:
    """One-line errors naming the field, before anything is loaded."""
    for field in ("total_steps", "batch_size", "eval_batch_size", "log_every", "checkpoint_every"):
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{field}={value!r}: must be a positive integer")
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % jax.device_count():
            raise ValueError(f"config.{field}={config[field]} does not split over the {jax.device_count()} "
                             f"devices; use a multiple of {jax.device_count()}")
    if config.max_eval_batches < 0:
        raise ValueError(f"config.max_eval_batches={config.max_eval_batches}: must be >= 0 (0 = all)")


def finished_fit(workdir: str) -> dict | None:
    """The fit record of a head fitted and exported in workdir, else None (not fitted or not done)."""
    record_path = os.path.join(workdir, RECORD_NAME)
    if not (os.path.isfile(record_path) and os.path.isfile(Workdir(workdir).path(workdir_layout.EXPORT, "config.json"))):
        return None
    with open(record_path) as f:
        return json.load(f)


def fit_mlm_head(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Fits the MLM head of config.teacher.name (frozen) and exports teacher + head to workdir/export.

    Returns the fit record (also written to workdir/fit_record.json).
    """
    from distill_jax import checkpoint as ckpt_lib
    from distill_jax import data as data_lib
    from distill_jax import models, optim
    from distill_jax.models.hf_io import resolve_model

    config = ml_collections.ConfigDict(config)
    workdir = os.path.abspath(workdir)
    record_path = os.path.join(workdir, RECORD_NAME)
    done = finished_fit(workdir)
    if done is not None:
        log(f"already fitted: {record_path} (delete the workdir to fit again)")
        return done
    check_config(config)
    teacher_dir = str(resolve_model(config.teacher.name).model_dir)
    # The two corpora, read once (one-line errors naming --config.data.* / --config.eval_data.*).
    train_data = data_lib.DataConfig.from_config(config.data, "data")
    eval_data = data_lib.DataConfig.from_config(config.eval_data, "eval_data")
    t_start, cpu_start = time.time(), time.process_time()

    mesh = sharding.make_mesh(-1, 1, 1)
    repl = sharding.replicated(mesh)
    cfg, graphdef, frozen, head = _load_teacher(config, teacher_dir, repl)

    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    opt_state = tx.init(head)
    train_step, eval_step = make_steps(graphdef, tx)

    tokenizer = data_lib.load_tokenizer(teacher_dir)
    data_lib.check_vocab(tokenizer, cfg.vocab_size)
    eval_batches = _eval_batches(config, eval_data, tokenizer)

    checkpointer = ckpt_lib.Checkpointer(Workdir(workdir).checkpoints, max_to_keep=2,
                                         async_save=False)
    state = {"step": jnp.zeros((), jnp.int32), "head": head, "opt_state": opt_state}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
    train_it = data_lib.build_train_iterator(
        train_data, tokenizer, per_host_batch_size=config.batch_size // jax.process_count(),
        process_index=jax.process_index(), process_count=jax.process_count(), seed=int(config.seed),
        mlm=train_data.mlm)
    restored = checkpointer.restore_latest(abstract)
    if restored is not None:   # the "before" figures and the curve were saved with the checkpoint
        state, before, history = restored.state, restored.meta["before"], list(restored.meta.get("history", []))
        train_it.set_state(restored.data_state)
        log(f"resumed from checkpoint step {restored.step}")
    else:
        log(f"evaluating the fresh head on {len(eval_batches)} batches of {config.eval_batch_size} x "
            f"{eval_data.seq_len}")
        before, history = evaluate(eval_step, state["head"], frozen, eval_batches, mesh), []
        log(f"before: masked-token accuracy {before['accuracy']:.2f}%, perplexity {before['perplexity']:.1f}")
    head, step = _fit_steps(config, train_step, frozen, train_it, mesh, checkpointer, state, before, history)
    checkpointer.close()

    after = evaluate(eval_step, head, frozen, eval_batches, mesh)
    log(f"after {step} steps: masked-token accuracy {after['accuracy']:.2f}% (was {before['accuracy']:.2f}%), "
        f"perplexity {after['perplexity']:.1f} (was {before['perplexity']:.1f})")

    model = nnx.merge(graphdef, jax.device_get({**frozen, HEAD: head}))
    export_dir = Workdir(workdir).export
    if jax.process_index() == 0:
        models.export_pretrained(model, export_dir, tokenizer_dir=teacher_dir)
    record = {
        "teacher": config.teacher.name, "teacher_dir": teacher_dir, "export_dir": export_dir,
        **_fit_facts(config, step, head), "before": before, "after": after, "history": history,
        "optim": config.optim.to_dict(),
        "times_s": {"wall_this_run": time.time() - t_start, "cpu_this_run": time.process_time() - cpu_start},
        "devices": {"platform": jax.devices()[0].platform, "count": jax.device_count()},
    }
    if jax.process_index() == 0:
        _write_record(config, workdir, record)
    return record


def _write_record(config, workdir: str, record: dict) -> None:
    """workdir/RECORD_NAME (written after the export: finished_fit's mark) and the fit's loss
    curve, workdir/loss_curves.png."""
    record_path = os.path.join(workdir, RECORD_NAME)
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1)
    if record["history"]:
        from distill_jax.plots import plot_loss_curves
        plot_loss_curves(record["history"], Workdir(workdir).loss_curves,
                         title=f"MLM head fit on frozen {config.teacher.name}")
    log(f"teacher + head exported (HF *ForMaskedLM) to {record['export_dir']}; record {record_path}")


def _load_teacher(config, teacher_dir: str, repl) -> tuple[Any, Any, dict, dict]:
    """(EncoderConfig, graphdef, frozen params, head params) of the teacher with an MLM head (the
    checkpoint's, or a fresh one when it has none), the params replicated over `repl`."""
    from distill_jax import models
    from distill_jax.models.hf_names import mlm_head_prefix

    teacher, cfg, report = models.load_pretrained(teacher_dir, with_mlm_head=True,
                                                 rngs=nnx.Rngs(int(config.seed)))
    head_missing = [name for name in report.missing if name.startswith(mlm_head_prefix(cfg.family))]
    log(f"teacher {config.teacher.name} ({cfg.num_layers}x{cfg.hidden_size}) from {teacher_dir}; "
        + ("fresh MLM head (the checkpoint has none)" if head_missing else "starting from the checkpoint's MLM head"))
    graphdef, frozen, head = split_head(teacher)
    return cfg, graphdef, jax.device_put(frozen, repl), jax.device_put(head, repl)


def _fit_facts(config, step: int, head: dict) -> dict:
    """What the fit trained on, for its record: steps, batch, tokens, trainable parameters, the
    corpora (portable names) and the eval masking."""
    return {"steps": step, "batch_size": int(config.batch_size), "seq_len": int(config.data.seq_len),
            "train_tokens": step * int(config.batch_size) * int(config.data.seq_len),
            "trainable_parameters": int(sum(x.size for x in jax.tree.leaves(head))),
            "train_corpus": _describe(config.data), "eval_corpus": _describe(config.eval_data),
            "eval_masking": dict(config.eval_data.mlm), "eval_seed": int(config.eval_seed)}


def _fit_steps(config, train_step, frozen: dict, train_it, mesh, checkpointer, state: dict, before: dict,
               history: list[dict]) -> tuple[dict, int]:
    """The fit's loop from state["step"] to config.total_steps: (the head, the last step). Logs
    every config.log_every steps (a loop.history_row per log appended to `history`) and saves every
    config.checkpoint_every, each fetched step checked by the finite-loss policy first."""
    step = int(jax.device_get(state["step"]))
    head, opt_state = state["head"], state["opt_state"]
    progress = loop.Progress(config.total_steps, step)
    pending, unlogged = [], []   # device metrics not fetched yet; fetched host metrics not logged yet
    hint = "lower --config.optim.learning_rate (the checkpoints predate it)"
    while step < config.total_steps:
        batch = sharding.global_batch_from_local(next(train_it), mesh)
        head, opt_state, metrics = train_step(head, opt_state, frozen, batch)
        step += 1
        pending.append(metrics)
        log_now = loop.log_due(step, config.log_every, config.total_steps)
        save_now = step % config.checkpoint_every == 0 or step == config.total_steps
        if log_now or save_now:
            # Every fetched step is checked before anything is logged or saved.
            fetched, pending = jax.device_get(pending), []
            for index, v in enumerate(fetched):
                loop.check_finite(step - len(fetched) + index + 1, {"loss": v["loss"], "grad_norm": v["grad_norm"]},
                                  hint=hint, run="the MLM-head fit")
            unlogged += fetched
        if log_now:
            row = loop.history_row(step, {"loss": float(np.mean([v["loss"] for v in unlogged])),
                                          "accuracy": 100.0 * float(np.mean([v["accuracy"] for v in unlogged]))})
            unlogged = []
            history.append(row)
            log(loop.progress_line(step, config.total_steps, [f"loss {row['loss']:.3f}",
                                                              f"masked acc {row['accuracy']:.1f}%"],
                                   progress.report(step)))
        if save_now:
            state = {"step": jnp.asarray(step, jnp.int32), "head": head, "opt_state": opt_state}
            checkpointer.save(step, state, train_it.get_state(), {"before": before, "history": history})
    return head, step


def _describe(data_cfg) -> str:
    """'source:where' with file paths cut to their last two components (records are shared)."""
    source = data_cfg.source
    if source in ("text", "wikiextractor"):
        where = ",".join("/".join(os.path.normpath(p).split(os.sep)[-2:]) for p in str(data_cfg.paths).split(","))
    else:
        where = data_cfg.get(f"{source}_name", "")
    return f"{source}:{where}" if where else source
