"""The teacher's HF fast tokenizer: loading, vocab check, special tokens, batched encoding."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np

def load_tokenizer(name_or_dir: str | os.PathLike):
    """A model's HF fast tokenizer (never remote code): from its directory (an exported student
    carries its teacher's), the offline teacher package (models.hf_io.offline_teacher_dir), or the
    hub. The one loader: the trainer, the data tools and the evaluations all call it.

    Raises FileNotFoundError with one line naming the path and the fix when it cannot be found,
    ValueError when only a slow (Python) tokenizer exists.
    """
    from transformers import AutoTokenizer  # heavy import

    from distill_jax.models.hf_io import offline_teacher_dir

    name_or_dir = os.fspath(name_or_dir)
    offline = offline_teacher_dir(name_or_dir)
    path = str(offline) if offline is not None else os.path.expanduser(name_or_dir)
    looks_local = os.path.isabs(path) or path.startswith(".") or os.path.exists(path)
    if looks_local and not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer {name_or_dir!r}: no such directory (point it at a "
                                f"model directory holding tokenizer.json or vocab.txt)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"tokenizer {name_or_dir!r} could not be loaded ({type(e).__name__}): point it at a model "
            f"directory holding tokenizer.json or vocab.txt (export a model with its tokenizer files)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {name_or_dir!r} has no fast (Rust) version; add tokenizer.json")
    return tokenizer


def check_vocab(tokenizer, model_vocab_size: int, *, allow_padded_embeddings: bool = False) -> None:
    """Refuses a tokenizer whose vocabulary does not match the model's embedding table.

    Args:
      tokenizer: HF tokenizer; its size counts added tokens (`len(tokenizer)`).
      model_vocab_size: rows of the model's word-embedding table (config.vocab_size).
      allow_padded_embeddings: accept a table larger than the tokenizer (vocab padded to a multiple
        of 64/128 for speed); ids beyond the tokenizer are then never produced.
    """
    n = len(tokenizer)
    if n == model_vocab_size or (allow_padded_embeddings and n < model_vocab_size):
        return
    name = getattr(tokenizer, "name_or_path", "?")
    raise ValueError(
        f"tokenizer {name!r} has {n} tokens but the model's embedding table has {model_vocab_size} "
        f"rows: use the teacher's own tokenizer (the student shares the teacher's vocab)")


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids of the family's special tokens: BERT [CLS]/[SEP]/[PAD]/[MASK], RoBERTa <s>/</s>/<pad>/<mask>."""
    cls: int
    sep: int
    pad: int
    mask: int | None
    all_ids: tuple[int, ...]
    vocab_size: int   # len(tokenizer): random MLM replacements are drawn below this

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        name = getattr(tokenizer, "name_or_path", "?")
        if cls_id is None or sep_id is None:
            raise ValueError(f"tokenizer {name!r} defines no CLS/<s> or SEP/</s> token; packing needs both")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sep_id
        ids = sorted(set(int(i) for i in tokenizer.all_special_ids) | {cls_id, sep_id, pad_id})
        return cls(int(cls_id), int(sep_id), int(pad_id),
                   None if tokenizer.mask_token_id is None else int(tokenizer.mask_token_id),
                   tuple(ids), int(len(tokenizer)))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the serialized fast tokenizer (vocab, normalizer, pre-tokenizer, added tokens).

    The truncation/padding settings are left out: calling the tokenizer changes them, and they do
    not affect our (untruncated, unpadded) encoding.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def encode_batches(tokenizer, documents: Iterable[str], batch_documents: int = 256
                   ) -> Iterator[tuple[list[str], list[list[int]]]]:
    """Yields (documents, token ids) per batch of documents; no special tokens, no truncation.

    Special-token strings inside the text ("[SEP]", "</s>") are tokenized as ordinary text
    (split_special_tokens=True), so a document can never forge a separator or padding id.
    """
    batch: list[str] = []

    def encode(docs):
        out = tokenizer(docs, add_special_tokens=False, split_special_tokens=True, truncation=False,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)
        return out["input_ids"]

    for doc in documents:
        batch.append(doc)
        if len(batch) >= batch_documents:
            yield batch, encode(batch)
            batch = []
    if batch:
        yield batch, encode(batch)


def ids_dtype(vocab_size: int) -> np.dtype:
    """Smallest dtype that holds every id: uint16 for BERT/RoBERTa vocabularies, int32 for XLM-R."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)
