"""Flax NNX encoders (BERT / RoBERTa / XLM-R) with MLM and classification heads, HF import/export.

    from distill_jax.models import load_pretrained
    model, cfg, report = load_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    out = model(input_ids_bs, attention_mask_bs)     # EncoderOutputs
"""

from distill_jax.models.config import EncoderConfig
from distill_jax.models.encoder import Encoder, EncoderOutputs, position_ids_for
from distill_jax.models.heads import SequenceClassifier
from distill_jax.models.hf_io import (LoadReport, export_pretrained, has_mlm_head, load_pretrained,
                                      load_sequence_classifier, read_safetensors, resolve_model_dir,
                                      weights_sha256)
from distill_jax.models.partitioning import create_sharded, logical_axes_of, state_shardings
from distill_jax.models.student import make_student, student_config, uniform_teacher_layers

__all__ = [
    "EncoderConfig", "Encoder", "EncoderOutputs", "SequenceClassifier", "LoadReport",
    "load_pretrained", "load_sequence_classifier", "export_pretrained", "resolve_model_dir", "read_safetensors",
    "has_mlm_head", "weights_sha256",
    "make_student", "student_config", "uniform_teacher_layers",
    "create_sharded", "state_shardings", "logical_axes_of", "position_ids_for",
]
