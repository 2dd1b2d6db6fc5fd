"""Models for fine-tuning: an HF-format encoder directory (exported student, teacher, hub id the
offline resolver knows) or `random:<dir>`, a randomly initialised encoder of the same shape and
tokenizer as <dir> (the reference row every comparison needs: what "learned nothing" scores).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

RANDOM_PREFIX = "random:"


@dataclasses.dataclass
class GlueModel:
    """A loaded encoder, ready to be wrapped in a fresh classification head per run.

    spec: as given in the config; label: name in tables; model_dir: local folder with config.json
    and the tokenizer; random_init: whether encoder weights are drawn fresh (per seed) instead of
    loaded; cfg: the EncoderConfig; pretrained: host (numpy) copy of the encoder parameters, or None.
    """

    spec: str
    label: str
    model_dir: str
    random_init: bool
    cfg: object
    pretrained: object | None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(layers, width, heads, FFN width): what 'the same shape' means for a random reference."""
        c = self.cfg
        return (c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size)

    def make_classifier(self, num_labels: int, seed: int) -> nnx.Module:
        """A SequenceClassifier with encoder weights loaded (or random, drawn from `seed`) and a
        head initialised from `seed`. Each call returns new arrays, so runs never share buffers."""
        from distill_jax.models import Encoder
        from distill_jax.models.heads import SequenceClassifier

        encoder = Encoder(self.cfg, rngs=nnx.Rngs(params=seed, dropout=seed))
        if self.pretrained is not None:
            nnx.update(encoder, jax.tree.map(np.array, self.pretrained))
        return SequenceClassifier(encoder, num_labels, rngs=nnx.Rngs(params=seed + 1, dropout=seed + 1))


def split_spec(spec: str) -> tuple[bool, str]:
    """('random:<dir>' -> (True, dir)), (other -> (False, spec))."""
    spec = spec.strip()
    if spec.startswith(RANDOM_PREFIX):
        return True, spec[len(RANDOM_PREFIX):]
    return False, spec


# Directory names that say nothing about the model (the trainer's and the MLM-head fit's output
# folder): such a directory is labelled by its parent folder instead.
_GENERIC_DIR_NAMES = ("export", "model", "final")


def _default_label(name: str, random_init: bool, cfg) -> str:
    path = os.path.normpath(name)
    base = os.path.basename(path) or name
    if base in _GENERIC_DIR_NAMES and os.path.basename(os.path.dirname(path)):
        base = os.path.basename(os.path.dirname(path))
    if random_init:
        return f"random-init {cfg.num_layers}x{cfg.hidden_size} ({base} shape)"
    return base


def load_glue_model(spec: str, *, dtype: str = "float32", param_dtype: str = "float32",
                    label: str | None = None) -> GlueModel:
    """Resolves and loads `spec` (a directory, a known hub id, or 'random:<dir or id>').

    Raises FileNotFoundError / ValueError (one line, naming the spec) before any compile when the
    directory, its config or its tokenizer is missing.
    """
    from distill_jax.models import EncoderConfig, load_pretrained, resolve_model_dir
    from distill_jax.models.hf_io import read_hf_config

    random_init, name = split_spec(spec)
    if not name:
        raise ValueError(f"model spec {spec!r} names no directory: use '<dir>' or 'random:<dir>'")
    model_dir = str(resolve_model_dir(name))
    if random_init:
        hf = read_hf_config(model_dir)
        # Built exactly as load_pretrained builds it, so the config (and the compiled steps) match
        # the checkpoint's own.
        cfg = EncoderConfig.from_hf_dict(hf, source=os.path.join(model_dir, "config.json"), dtype=dtype,
                                         param_dtype=param_dtype).replace(with_mlm_head=False)
        pretrained = None
    else:
        model, cfg, _report = load_pretrained(model_dir, dtype=dtype, param_dtype=param_dtype,
                                              with_mlm_head=False)
        pretrained = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
        del model
    return GlueModel(spec=spec, label=label or _default_label(name, random_init, cfg), model_dir=model_dir,
                     random_init=random_init, cfg=cfg, pretrained=pretrained)


def check_tokenizer(model: GlueModel, tokenizer) -> None:
    """The tokenizer's ids must index the model's embedding table."""
    if len(tokenizer) > model.cfg.vocab_size:
        raise ValueError(f"tokenizer in {model.model_dir} has {len(tokenizer)} tokens but the model's "
                         f"vocab_size is {model.cfg.vocab_size}: export the model with its own tokenizer")


def forward(model: nnx.Module, batch: dict, dropout_rng) -> jax.Array:
    """Classifier outputs [B, K] for a batch dict (input_ids / attention_mask / token_type_ids [B, S])."""
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], dropout_rng=dropout_rng)


def param_shardings_for(params, mesh: Mesh):
    """NamedShardings for a parameter State from the parameters' logical axis names."""
    from distill_jax.models.partitioning import state_shardings

    return state_shardings(params, mesh)
