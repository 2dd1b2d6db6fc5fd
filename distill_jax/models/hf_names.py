"""Tensor names of HF BERT / RoBERTa / XLM-R checkpoints <-> paths of our nnx parameters.

One table, used by both import and export so the two cannot drift apart. HF torch Linear weights
are [out, in]; our Dense kernels are [in, out], hence `transpose`.
"""

from __future__ import annotations

import dataclasses

from distill_jax.models.config import EncoderConfig

# Prefix HF puts before the base-model tensors inside *ForMaskedLM / *ForSequenceClassification.
BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta."}
# Tensors HF keeps as non-persistent buffers or ties to others; present in some files, never loaded.
BUFFER_NAMES = ("embeddings.position_ids", "embeddings.token_type_ids")
TIED_NAMES = {"bert": ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"),
              "roberta": ("lm_head.decoder.weight", "lm_head.decoder.bias")}
TIED_NAMES["xlm-roberta"] = TIED_NAMES["roberta"]
ARCHITECTURES = {
    "bert": {"base": "BertModel", "mlm": "BertForMaskedLM", "cls": "BertForSequenceClassification"},
    "roberta": {"base": "RobertaModel", "mlm": "RobertaForMaskedLM", "cls": "RobertaForSequenceClassification"},
    "xlm-roberta": {"base": "XLMRobertaModel", "mlm": "XLMRobertaForMaskedLM",
                    "cls": "XLMRobertaForSequenceClassification"},
}


@dataclasses.dataclass(frozen=True)
class TensorName:
    hf: str                       # HF name without the base prefix (head names are absolute)
    path: tuple[str | int, ...]   # attribute path of the nnx.Param inside our module
    transpose: bool               # HF [out, in] <-> our [in, out]
    part: str                     # 'base', 'pooler', 'mlm' or 'classifier'


def _linear(hf: str, path: tuple, part: str) -> list[TensorName]:
    return [TensorName(f"{hf}.weight", path + ("kernel",), True, part),
            TensorName(f"{hf}.bias", path + ("bias",), False, part)]


def _norm(hf: str, path: tuple, part: str) -> list[TensorName]:
    return [TensorName(f"{hf}.weight", path + ("scale",), False, part),
            TensorName(f"{hf}.bias", path + ("bias",), False, part)]


def encoder_tensor_names(cfg: EncoderConfig) -> list[TensorName]:
    """Every tensor of an Encoder with this config (pooler / MLM head as the config says)."""
    names = [
        TensorName("embeddings.word_embeddings.weight", ("embeddings", "word", "embedding"), False, "base"),
        TensorName("embeddings.position_embeddings.weight", ("embeddings", "position", "embedding"), False, "base"),
        TensorName("embeddings.token_type_embeddings.weight", ("embeddings", "token_type", "embedding"), False,
                   "base"),
        *_norm("embeddings.LayerNorm", ("embeddings", "norm"), "base"),
    ]
    for i in range(cfg.num_layers):
        hf, ours = f"encoder.layer.{i}", ("layers", i)
        names += [
            *_linear(f"{hf}.attention.self.query", ours + ("attention", "query"), "base"),
            *_linear(f"{hf}.attention.self.key", ours + ("attention", "key"), "base"),
            *_linear(f"{hf}.attention.self.value", ours + ("attention", "value"), "base"),
            *_linear(f"{hf}.attention.output.dense", ours + ("attention", "out"), "base"),
            *_norm(f"{hf}.attention.output.LayerNorm", ours + ("attention_norm",), "base"),
            *_linear(f"{hf}.intermediate.dense", ours + ("ffn_in",), "base"),
            *_linear(f"{hf}.output.dense", ours + ("ffn_out",), "base"),
            *_norm(f"{hf}.output.LayerNorm", ours + ("ffn_norm",), "base"),
        ]
    if cfg.with_pooler:
        names += _linear("pooler.dense", ("pooler", "dense"), "pooler")
    if cfg.with_mlm_head:
        names += mlm_head_tensor_names(cfg.family)
    return names


def mlm_head_tensor_names(family: str) -> list[TensorName]:
    if family == "bert":
        return [*_linear("cls.predictions.transform.dense", ("mlm_head", "transform"), "mlm"),
                *_norm("cls.predictions.transform.LayerNorm", ("mlm_head", "norm"), "mlm"),
                TensorName("cls.predictions.bias", ("mlm_head", "bias"), False, "mlm")]
    return [*_linear("lm_head.dense", ("mlm_head", "transform"), "mlm"),
            *_norm("lm_head.layer_norm", ("mlm_head", "norm"), "mlm"),
            TensorName("lm_head.bias", ("mlm_head", "bias"), False, "mlm")]


def mlm_head_prefix(family: str) -> str:
    return "cls.predictions." if family == "bert" else "lm_head."


def classifier_tensor_names(family: str) -> list[TensorName]:
    """Sequence-classification head tensors, paths relative to the SequenceClassifier."""
    if family == "bert":
        return _linear("classifier", ("head", "out_proj"), "classifier")
    return [*_linear("classifier.dense", ("head", "dense"), "classifier"),
            *_linear("classifier.out_proj", ("head", "out_proj"), "classifier")]


def get_param(module, path: tuple):
    """The nnx.Param at `path` (attribute names and list indices) inside `module`."""
    obj = module
    for key in path:
        obj = obj[key] if isinstance(key, int) else getattr(obj, key)
    return obj
