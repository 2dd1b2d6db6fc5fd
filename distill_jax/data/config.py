"""The data config: its schema and defaults (`DataConfig`, `default_data_config`), read once into a
DataConfig at the pipeline's boundary, and the MLM masking config (`MlmConfig`)."""

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
    """`config.data` with its defaults (DataConfig's); configs override fields."""
    c = ml_collections.ConfigDict()
    for f in dataclasses.fields(DataConfig):
        if f.name == "mlm":
            c.mlm = ml_collections.ConfigDict(dataclasses.asdict(MlmConfig()))
        elif f.name in _ANY_TYPE_FIELDS:
            # A typed placeholder (None until set) rather than a bare None, so that
            # `--config.data.paths=/corpus/text` (or "['a', 'b']") overrides it from the command line.
            c[f.name] = config_dict.placeholder(object)
        else:
            c[f.name] = f.default
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
    def from_config(cls, cfg: Mapping[str, Any] | None, field: str = "data.mlm") -> "MlmConfig":
        """From a ConfigDict / dict with any subset of the fields (unknown keys refused)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{field} has unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)


# Fields whose config value may be of any type (a path, a list, a dict of files), None until set.
_ANY_TYPE_FIELDS = ("paths", "hf_data_files")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data` read once: typed and validated (from_config), then handed down the pipeline,
    source (sources.make_source) -> cache (cache.load_or_build) -> packer -> iterator, without going
    back to the config. The defaults here are the schema's (default_data_config)."""

    source: str = "builtin"       # 'builtin' | 'text' | 'wikiextractor' | 'hf' | 'tfds'
    # text / wikiextractor: files, directories (read recursively) or globs; in the config a list or
    # a comma-separated string (None until set).
    paths: tuple[str, ...] = ()
    doc_split: str = "blank_line"  # text (and hf 'text'): 'blank_line' (paragraphs) | 'file' | 'line'
    # HF datasets: a hub dataset ('wikimedia/wikipedia'; datasets 5 has no script-based loaders)
    # or a builder for local files ('text', 'json', 'csv', 'parquet', 'arrow') with data_files.
    hf_name: str = ""
    hf_config: str = ""           # e.g. '20231101.en' for wikimedia/wikipedia; '' = none
    hf_split: str = "train"
    hf_data_files: Any = None     # str, list or dict of local files / globs for the file builders
    hf_text_field: str = "text"
    hf_streaming: bool = False    # True: iterate without downloading the whole split first
    # tensorflow-datasets: a prepared builder (e.g. 'wikipedia/20230601.en', 'c4/en') in data_dir.
    tfds_name: str = ""
    tfds_data_dir: str = ""       # '' = the tfds default (~/tensorflow_datasets); gs:// works
    tfds_split: str = "train"
    tfds_text_field: str = "text"
    max_documents: int = 0        # 0 = all; >0 keeps the first N documents (quick runs, tests)
    seq_len: int = 128            # packed block length including [CLS] and [SEP]
    cache_dir: str = ""           # '' = $DISTILL_JAX_CACHE or ~/.cache/distill_jax/data
    segment_ids: bool = False     # also yield segment_ids [b,S] (1.. per document in a block, 0 pad)
    shuffle: bool = True          # False: blocks in corpus order (debugging only)
    num_epochs: int = 0           # 0 = infinite (each epoch reshuffled by (seed, epoch))
    prefetch: int = 2             # batches prepared ahead in a background thread (0 = inline)
    tokenize_batch_documents: int = 256  # documents per batched tokenizer call
    build_workers: int = 0        # tokenizer processes per host when building the cache; 0 = one per core
    mlm: MlmConfig = MlmConfig()  # used only when the trainer asks for masking

    @classmethod
    def from_config(cls, cfg: Any, field: str = "data") -> "DataConfig":
        """From a ConfigDict / dict with any subset of the fields (missing = default; a DataConfig
        passes through). A bad value is a one-line ValueError naming --config.<field>.<name>."""
        if isinstance(cfg, cls):
            return cfg
        raw = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"--config.{field} has unknown field(s) {unknown}; known: {names}")
        name_of = lambda n: f"--config.{field}.{n}"  # noqa: E731
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = raw.get(f.name, None if f.name in _ANY_TYPE_FIELDS else f.default)
            if f.name == "paths":
                value = tuple(as_path_list(value, name_of("paths")))
            elif f.name == "mlm":
                value = MlmConfig.from_config(value, f"{field}.mlm")
            elif f.type == "bool":
                value = bool(value)
            elif f.type == "int":
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise ValueError(f"{name_of(f.name)}={value!r}: must be an integer")
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"{name_of(f.name)}={value!r}: must be an integer") from None
                if value < 0:
                    raise ValueError(f"{name_of(f.name)}={value}: must be >= 0"
                                     + (" (0 = all)" if f.name == "max_documents" else ""))
            elif f.type == "str":
                value = "" if value is None else str(value)
            values[f.name] = value
        data = cls(**values)
        data._check(name_of)
        return data

    def _check(self, name_of) -> None:
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"{name_of('source')}={self.source!r}: must be one of {', '.join(SOURCE_KINDS)}")
        if self.source in ("text", "wikiextractor") and not self.paths:
            raise ValueError(f"{name_of('source')}={self.source!r} needs {name_of('paths')} (files, directories "
                             "or globs)")
        if self.source in ("text", "hf") and self.doc_split not in DOC_SPLITS:
            raise ValueError(f"{name_of('doc_split')}={self.doc_split!r}: must be one of {', '.join(DOC_SPLITS)}")
        if self.source == "hf" and not self.hf_name:
            raise ValueError(f"{name_of('source')}='hf' needs {name_of('hf_name')} (a hub dataset, or "
                             f"'text'/'json'/'parquet'/'arrow' with {name_of('hf_data_files')})")
        if self.source == "tfds" and not self.tfds_name:
            raise ValueError(f"{name_of('source')}='tfds' needs {name_of('tfds_name')} (e.g. 'wikipedia/20230601.en')")
        if self.seq_len < 3:
            raise ValueError(f"{name_of('seq_len')}={self.seq_len}: must be >= 3 ([CLS], a token, [SEP])")
        if self.tokenize_batch_documents < 1:
            raise ValueError(f"{name_of('tokenize_batch_documents')}={self.tokenize_batch_documents}: must be >= 1")


def as_path_list(paths: Any, field: str = "data.paths") -> list[str]:
    """A list or comma-separated string of paths/globs -> list of non-empty strings."""
    if paths is None or paths == "":
        return []
    if isinstance(paths, str):
        return [p.strip() for p in paths.split(",") if p.strip()]
    if isinstance(paths, (list, tuple)):
        return [str(p) for p in paths if str(p).strip()]
    raise ValueError(f"{field}={paths!r}: expected a path, a comma-separated string or a list")
