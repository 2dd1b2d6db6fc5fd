"""Distillation objectives for BERT-style encoders: pure jnp functions, no model imports.

Every function is jit- and grad-safe, computes in float32 whatever the input dtype, honours the
padding mask ([B, S], 1 = real token) everywhere, and treats the teacher side as a constant
(stop_gradient). Hidden-state index 0 is the embedding output, i the output of layer i.

  od.py          od_loss, mlm_ce_loss, od_from_hidden (chunked over positions for big vocabularies)
  layer_maps.py  layer_map(strategy, L_S, L_T): last / uniform / uniform_cons / uniform_last /
                 identity / explicit pairs
  hs.py          hs_loss over a layer map, with learned projections when widths differ
  mha.py         relation_kl_loss, minilmv2_loss, minilm_loss, attention_kl_loss,
                 direct_minilm_loss, tinybert_attention_loss
  relation_blocks.py  the relation KL in query/key blocks with a custom VJP (relation_kl_loss's
                 default): memory O(S) instead of O(S^2)
  terms.py       TERMS: every term's options and what it reads from the models (flops.py reads it too)
  objective.py   build_objective(cfg, student_dims, teacher_dims): the weighted sum, from config
"""

from distill_jax.losses.hs import hs_loss, init_hs_projections, init_linear
from distill_jax.losses.layer_maps import STRATEGIES, layer_map
from distill_jax.losses.mha import (attention_kl_loss, direct_minilm_loss, minilm_loss, minilmv2_loss,
                                    relation_kl_loss, tinybert_attention_loss)
from distill_jax.losses.objective import ModelOutputs, Objective, build_objective
from distill_jax.losses.od import gather_positions, mlm_ce_loss, od_from_hidden, od_loss
from distill_jax.losses.terms import TERM_OPTIONS, TERMS

__all__ = [
    "STRATEGIES", "TERMS", "TERM_OPTIONS", "ModelOutputs", "Objective", "attention_kl_loss", "build_objective",
    "direct_minilm_loss", "gather_positions", "hs_loss", "init_hs_projections",
    "init_linear", "layer_map", "minilm_loss", "minilmv2_loss", "mlm_ce_loss", "od_from_hidden", "od_loss",
    "relation_kl_loss", "tinybert_attention_loss",
]
