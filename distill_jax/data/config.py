"""The data config schema (`default_data_config`) and the MLM masking config (`MlmConfig`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

SOURCE_KINDS = ("builtin", "text", "wikiextractor", "hf", "tfds")
DOC_SPLITS = ("blank_line", "file", "line")


def default_cache_dir() -> str:
    """$DISTILL_JAX_CACHE, else ~/.cache/distill_jax/data."""
    return os.environ.get("DISTILL_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "distill_jax", "data")


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults for `config.data`; configs override fields (see the package docstring)."""
    c = ml_collections.ConfigDict()
    c.source = "builtin"          # 'builtin' | 'text' | 'wikiextractor' | 'hf' | 'tfds'
    # text / wikiextractor: files, directories (read recursively) or globs; a list or a
    # comma-separated string. A typed placeholder (None until set) rather than a bare None, so
    # `--config.data.paths=/corpus/text` (or "['a', 'b']") overrides it from the command line.
    c.paths = config_dict.placeholder(object)
    c.doc_split = "blank_line"    # text (and hf 'text'): 'blank_line' (paragraphs) | 'file' | 'line'
    # HF datasets: a hub dataset ('wikimedia/wikipedia'; datasets 5 has no script-based loaders)
    # or a builder for local files ('text', 'json', 'csv', 'parquet', 'arrow') with data_files.
    c.hf_name = ""
    c.hf_config = ""              # e.g. '20231101.en' for wikimedia/wikipedia; '' = none
    c.hf_split = "train"
    # str, list or dict of local files / globs for the file builders (placeholder: as paths above).
    c.hf_data_files = config_dict.placeholder(object)
    c.hf_text_field = "text"
    c.hf_streaming = False        # True: iterate without downloading the whole split first
    # tensorflow-datasets: a prepared builder (e.g. 'wikipedia/20230601.en', 'c4/en') in data_dir.
    c.tfds_name = ""
    c.tfds_data_dir = ""          # '' = the tfds default (~/tensorflow_datasets); gs:// works
    c.tfds_split = "train"
    c.tfds_text_field = "text"
    c.max_documents = 0           # 0 = all; >0 keeps the first N documents (quick runs, tests)
    c.seq_len = 128               # packed block length including [CLS] and [SEP]
    c.cache_dir = ""              # '' = $DISTILL_JAX_CACHE or ~/.cache/distill_jax/data
    c.segment_ids = False         # also yield segment_ids [b,S] (1.. per document in a block, 0 pad)
    c.shuffle = True              # False: blocks in corpus order (debugging only)
    c.num_epochs = 0              # 0 = infinite (each epoch reshuffled by (seed, epoch))
    c.prefetch = 2                # batches prepared ahead in a background thread (0 = inline)
    c.tokenize_batch_documents = 256  # documents per batched tokenizer call
    c.build_workers = 0           # tokenizer processes per host when building the cache; 0 = one per core
    c.mlm = ml_collections.ConfigDict(dataclasses.asdict(MlmConfig()))
    return c


@dataclasses.dataclass(frozen=True)
class MlmConfig:
    """BERT masked-LM corruption. Applied on the fly per batch; deterministic in (seed, step, row).

    Per row, n = min(max_predictions, max(1, round(mask_prob * n_maskable))) positions are chosen
    uniformly among non-special, non-padding tokens (BERT's rule; max(1, .) only matters for rows
    with fewer than 1/mask_prob maskable tokens). Of those, mask_token_prob become the mask token,
    random_token_prob a uniformly drawn non-special token, the rest stay unchanged.
    """
    mask_prob: float = 0.15
    max_predictions: int = 20     # P; BERT: 20 at seq 128, 76-80 at seq 512
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mlm.mask_prob={self.mask_prob}: must be in (0, 1]")
        if self.max_predictions < 1:
            raise ValueError(f"mlm.max_predictions={self.max_predictions}: must be >= 1")
        if (self.mask_token_prob < 0 or self.random_token_prob < 0
                or self.mask_token_prob + self.random_token_prob > 1.0):
            raise ValueError(
                f"mlm.mask_token_prob={self.mask_token_prob}, mlm.random_token_prob="
                f"{self.random_token_prob}: must be >= 0 and sum to at most 1")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "MlmConfig":
        """From a ConfigDict / dict with any subset of the fields (unknown keys refused)."""
        if cfg is None:
            return cls()
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"data.mlm has unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def config_value(cfg: Any, name: str) -> Any:
    """A field of a ConfigDict / dict, falling back to the default schema's value."""
    default = default_data_config()
    return _get(cfg, name, default[name] if name in default else None)


def as_path_list(paths: Any, field: str = "data.paths") -> list[str]:
    """A list or comma-separated string of paths/globs -> list of non-empty strings."""
    if paths is None or paths == "":
        return []
    if isinstance(paths, str):
        return [p.strip() for p in paths.split(",") if p.strip()]
    if isinstance(paths, (list, tuple)):
        return [str(p) for p in paths if str(p).strip()]
    raise ValueError(f"{field}={paths!r}: expected a path, a comma-separated string or a list")


def validate_data_config(cfg: Any) -> None:
    """One-line ValueErrors naming the field, before any file is touched."""
    source = config_value(cfg, "source")
    if source not in SOURCE_KINDS:
        raise ValueError(f"data.source={source!r}: must be one of {', '.join(SOURCE_KINDS)}")
    if source in ("text", "wikiextractor") and not as_path_list(config_value(cfg, "paths")):
        raise ValueError(f"data.source={source!r} needs data.paths (files, directories or globs)")
    if source in ("text", "hf") and config_value(cfg, "doc_split") not in DOC_SPLITS:
        raise ValueError(f"data.doc_split={config_value(cfg, 'doc_split')!r}: must be one of "
                         f"{', '.join(DOC_SPLITS)}")
    if source == "hf" and not config_value(cfg, "hf_name"):
        raise ValueError("data.source='hf' needs data.hf_name (a hub dataset, or 'text'/'json'/"
                         "'parquet'/'arrow' with data.hf_data_files)")
    if source == "tfds" and not config_value(cfg, "tfds_name"):
        raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'wikipedia/20230601.en')")
    max_docs = config_value(cfg, "max_documents")
    if max_docs is None or int(max_docs) < 0:
        raise ValueError(f"data.max_documents={max_docs}: must be >= 0 (0 = all)")
