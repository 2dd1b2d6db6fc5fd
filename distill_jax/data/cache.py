"""Tokenized corpora on disk (local or gs://), built shard by shard, keyed by what produced them.

An entry `<cache_dir>/<kind>-s<seq_len>-<key16>/` holds, per source shard k (sources.py):

    stream_<k>.npy    the shard's token stream: each document's ids followed by one separator
                      ([SEP] / </s>), uint16 (int32 for vocabularies over 65536); plain .npy, never
                      pickles, opened memory-mapped
    stream_<k>.json   its facts (documents, tokens, sha256 of the array's bytes, largest id, ...),
                      written after the array: a shard is complete exactly when its .json exists
    meta.json         written last, once every shard is complete: the entry is usable exactly when
                      it exists

The corpus's token stream is the shards' streams back to back, and the packed blocks are views of
it: block i is `[CLS] stream[i*(S-2):(i+1)*(S-2)] [SEP]`, the last one padded (packing.py's
layout). So shards can be tokenized apart (worker processes, hosts) and the blocks are exactly those
of a one-process build. The key is a sha256 over (pipeline version, source fingerprint, tokenizer
fingerprint, seq_len, max_documents): any change rebuilds, nothing else does.

Every write is atomic: a local file goes to `<name>.<thread>.tmp-<host>-<pid>` and is renamed into place; a
gs:// object is written whole or not at all. A rerun skips the shards already complete (resumable by
shard) and removes temporary files left by dead processes of this host (or older than a day).

Remote entries (gs://...) are mirrored once into the local cache (`<local cache>/mirror/`) and read
from there; every shard is checked against its sha256 when mirrored, local ones when first opened
(a stamp of sizes and mtimes skips the re-hash on later opens), and the largest id against the
tokenizer's vocabulary. A damaged shard is named in one line and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np

from distill_jax.data.sources import Source
from distill_jax.data.tokenization import (SpecialTokens, encode_batches, ids_dtype,
                                           tokenizer_fingerprint)

# Bump whenever tokenization, packing or the file layout changes: old caches are then ignored.
# 2: token streams per source shard (blocks framed on read) instead of packed block files.
PIPELINE_VERSION = 2
_META = "meta.json"
_VERIFIED = ".verified.json"   # local stamp: sizes + mtimes of the files last verified
PROGRESS_EVERY_S = 5.0         # seconds between progress lines while tokenizing / waiting
STALE_TMP_S = 24 * 3600        # a temporary file older than this is abandoned, whoever wrote it
# Waiting for other hosts' shards: give up when no new shard appeared for this long (one shard of
# ~32 MiB of text takes about a minute to tokenize on one core).
STALL_TIMEOUT_S = 1800.0
_HOST = socket.gethostname()

# Console lines: process 0 of a multi-host job only (set by load_or_build).
_quiet = False


def _log(msg: str) -> None:
    if not _quiet:
        print(f"[distill_jax.data] {msg}", flush=True)


class CorruptCacheError(ValueError):
    """A cache file fails its check (sha256, size, ids beyond the vocabulary)."""


def is_remote(path: str) -> bool:
    return "://" in str(path)


def _epath(path: str):
    from etils import epath
    return epath.Path(path)


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if is_remote(directory) else os.path.join(directory, name)


def _exists(path: str) -> bool:
    return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def _listdir(directory: str) -> list[str]:
    if is_remote(directory):
        d = _epath(directory)
        return sorted(p.name for p in d.iterdir()) if d.exists() else []
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _write_bytes(path: str, data: bytes) -> None:
    """Atomic: whole or absent (distill_jax/atomic.py; its `.<thread>.tmp-<host>-<pid>` names are the ones
    remove_stale_temporaries knows)."""
    from distill_jax.atomic import write_atomic  # etils is imported when a cache is written, not before
    write_atomic(path, data)


def _read_bytes(path: str) -> bytes:
    if is_remote(path):
        return _epath(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def _read_json(path: str) -> dict:
    try:
        return json.loads(_read_bytes(path))
    except ValueError as exc:
        raise CorruptCacheError(f"data cache file {path} is not valid JSON ({exc})") from None


def _array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def cache_key(source: Source, tokenizer, seq_len: int, max_documents: int) -> str:
    spec = {"pipeline": PIPELINE_VERSION, "source": source.fingerprint(),
            "tokenizer": tokenizer_fingerprint(tokenizer), "seq_len": int(seq_len),
            "max_documents": int(max_documents)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def entry_dir(cache_dir: str, source: Source, seq_len: int, key: str) -> str:
    return _join(cache_dir, f"{source.kind}-s{seq_len}-{key[:16]}")


def _stream_name(shard: int) -> str:
    return f"stream_{shard:05d}.npy"


def _shard_meta_name(shard: int) -> str:
    return f"stream_{shard:05d}.json"


# ----------------------------------------------------------------------------------------------
# The corpus as the trainer reads it
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PackedCorpus:
    """Packed blocks of one corpus, framed on read from memory-mapped token streams.

    streams: the shards' token streams (1-D arrays) in order; their concatenation is the corpus's
    stream. Every block is full (S real tokens) except possibly the last (`last_block_length`).
    """
    path: str
    key: str
    meta: dict
    streams: list[np.ndarray]
    special: SpecialTokens

    def __post_init__(self):
        lengths = np.array([len(s) for s in self.streams], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])  # stream offset of each shard

    @property
    def num_blocks(self) -> int:
        return int(self.meta["num_blocks"])

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def stream_tokens(self) -> int:
        return int(self._starts[-1])

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """Real tokens in each of these blocks (S except for the corpus's last block). int32 [n]."""
        rows = np.asarray(rows)
        out = np.full(rows.shape, self.seq_len, np.int32)
        out[rows == self.num_blocks - 1] = int(self.meta["last_block_length"])
        return out

    def _stream_slice(self, start: int, stop: int) -> np.ndarray:
        """stream[start:stop] across shard boundaries (a copy)."""
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        parts, at = [], start
        shard = first
        while at < stop:
            base = int(self._starts[shard])
            take = min(stop, int(self._starts[shard + 1]))
            parts.append(self.streams[shard][at - base:take - base])
            at, shard = take, shard + 1
        return np.concatenate(parts) if len(parts) != 1 else np.array(parts[0])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Blocks at these corpus row indices, in that order, as int32 [n, S]."""
        rows = np.asarray(rows, np.int64)
        body = self.seq_len - 2
        out = np.full([len(rows), self.seq_len], self.special.pad, np.int32)
        out[:, 0] = self.special.cls
        # Sorted reads keep a memory-mapped stream's access sequential.
        for i in np.argsort(rows, kind="stable"):
            start = int(rows[i]) * body
            chunk = self._stream_slice(start, min(start + body, self.stream_tokens))
            out[i, 1:1 + len(chunk)] = chunk
            out[i, 1 + len(chunk)] = self.special.sep
        return out

    def iter_blocks(self, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Every block in order, [<=chunk_rows, S] in the stored dtype (bounded memory)."""
        dtype, body = np.dtype(self.meta["dtype"]), self.seq_len - 2
        full_blocks = self.stream_tokens // body
        for first in range(0, full_blocks, chunk_rows):
            n = min(chunk_rows, full_blocks - first)
            bodies = self._stream_slice(first * body, (first + n) * body).reshape(n, body)
            blocks = np.empty([n, self.seq_len], dtype)
            blocks[:, 0], blocks[:, -1], blocks[:, 1:-1] = self.special.cls, self.special.sep, bodies
            yield blocks
        if self.num_blocks > full_blocks:  # the padded last block
            yield self.rows(np.array([self.num_blocks - 1])).astype(dtype)

    def all_blocks(self) -> np.ndarray:
        return np.concatenate(list(self.iter_blocks())).astype(np.int32)

    @property
    def content_sha256(self) -> str:
        """sha256 of the packed token ids (hex): equal exactly when every row is the same block,
        whatever the cache key (which also covers file sizes and times) and the storage layout (it
        hashes the framed blocks, as pipeline version 1 stored them, so checkpoints saved on a
        version-1 cache resume on this one)."""
        if "content_sha256" not in self.meta:
            self.meta["content_sha256"] = content_digest(self)
        return self.meta["content_sha256"]


def content_digest(corpus: PackedCorpus) -> str:
    """sha256 over the framing (seq_len, last block length, dtype) and every block's ids in order."""
    meta = corpus.meta
    digest = hashlib.sha256(f"{meta['seq_len']}:{meta['last_block_length']}:{meta['dtype']}".encode())
    for blocks in corpus.iter_blocks():
        digest.update(np.ascontiguousarray(blocks).tobytes())
    return digest.hexdigest()


def block_layout(stream_tokens: int, seq_len: int) -> tuple[int, int]:
    """(num_blocks, real tokens of the last block) for a stream of this length."""
    body = seq_len - 2
    full, rest = divmod(stream_tokens, body)
    return (full + 1, rest + 2) if rest else (full, seq_len)


# ----------------------------------------------------------------------------------------------
# Building one shard
# ----------------------------------------------------------------------------------------------

def build_shard(source: Source, tokenizer, shard: int, directory: str, *, batch_documents: int,
                max_documents: int = 0, progress: Callable[[dict], None] | None = None) -> dict:
    """Tokenizes source shard `shard` into directory's stream_<shard>.npy + .json; returns the json.

    max_documents > 0: the source is one shard (load_or_build's rule) holding the first N documents.
    progress(facts) is called after every tokenizer batch with this shard's running counts.
    """
    special = SpecialTokens.from_tokenizer(tokenizer)
    dtype = ids_dtype(special.vocab_size)
    sep = np.array([special.sep], dtype)
    start = time.time()

    def documents():
        docs = source.documents() if max_documents else source.shard_documents(shard)
        for i, doc in enumerate(docs):
            if max_documents and i >= max_documents:
                return
            yield doc

    parts: list[np.ndarray] = []
    n_docs = text_tokens = 0
    for _, ids in encode_batches(tokenizer, documents(), batch_documents):
        for doc_ids in ids:
            parts.append(np.asarray(doc_ids, dtype))
            parts.append(sep)
            text_tokens += len(doc_ids)
        n_docs += len(ids)
        if progress is not None:
            progress({"shard": shard, "documents": n_docs, "text_tokens": text_tokens,
                      "fraction": source.fraction_done()})
    stream = np.concatenate(parts) if parts else np.zeros([0], dtype)
    data = _array_bytes(stream)
    facts = {"shard": shard, "documents": n_docs, "text_tokens": text_tokens,
             "stream_tokens": int(len(stream)), "dtype": dtype.name,
             "max_id": int(stream.max()) if len(stream) else -1,
             "file_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "replaced_invalid_utf8": source.replaced_chars,
             "seconds": round(time.time() - start, 3), "host": _HOST}
    _write_bytes(_join(directory, _stream_name(shard)), data)
    _write_bytes(_join(directory, _shard_meta_name(shard)), json.dumps(facts, indent=1).encode())
    return facts


def _shard_worker(args) -> dict:
    """Process-pool entry: (source, tokenizer, shard, directory, batch_documents, queue)."""
    source, tokenizer, shard, directory, batch_documents, queue = args
    last = [0.0]

    def progress(facts):
        now = time.time()
        if queue is not None and now - last[0] >= 1.0:
            last[0] = now
            queue.put(facts)

    facts = build_shard(source, tokenizer, shard, directory, batch_documents=batch_documents,
                        progress=progress)
    if queue is not None:
        queue.put({**facts, "fraction": 1.0, "done": True})
    return facts


def remove_stale_temporaries(directory: str) -> list[str]:
    """Deletes `*.tmp-<host>-<pid>` files (atomic.temporary_owner) of dead processes of this host, and any older than
    STALE_TMP_S (local directories; gs:// writes leave no temporaries). Returns the names removed."""
    from distill_jax import atomic  # imported here: it loads etils, which reading a cache never needs

    removed = []
    if is_remote(directory) or not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        if atomic.TMP_MARK not in name:
            continue   # an unparsable owner (version-1 directories) still goes when it is old
        path = os.path.join(directory, name)
        owner = atomic.temporary_owner(name)
        dead = owner is not None and owner[0] == _HOST and not _pid_alive(owner[1])
        try:
            old = time.time() - os.path.getmtime(path) > STALE_TMP_S
            if dead or old:
                if os.path.isdir(path):
                    import shutil
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
                removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Opening (and verifying) an entry
# ----------------------------------------------------------------------------------------------

def _local_mirror_root() -> str:
    from distill_jax.data.config import default_cache_dir
    return os.path.join(default_cache_dir(), "mirror")


def _verify_shard(path: str, facts: dict, vocab_size: int) -> None:
    """The stream file matches its json (size, sha256) and holds only ids below vocab_size."""
    size = os.path.getsize(path)
    if size != facts["file_bytes"]:
        raise CorruptCacheError(f"data cache file {path} has {size} bytes, its record says "
                                f"{facts['file_bytes']} (truncated or replaced)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != facts["sha256"]:
        raise CorruptCacheError(f"data cache file {path} fails its sha256 (its bytes changed since "
                                f"it was built)")
    if facts["max_id"] >= vocab_size:
        raise CorruptCacheError(f"data cache file {path} holds token id {facts['max_id']} but the "
                                f"tokenizer has {vocab_size} tokens (built with another tokenizer?)")


def _stamp(local_dir: str, names: list[str]) -> dict:
    return {n: [os.path.getsize(os.path.join(local_dir, n)),
                os.stat(os.path.join(local_dir, n)).st_mtime_ns] for n in names}


def open_entry(directory: str, special: SpecialTokens) -> PackedCorpus:
    """The corpus of a complete entry (meta.json present), verified; remote entries are mirrored
    into the local cache first. Raises CorruptCacheError naming the damaged file."""
    meta = _read_json(_join(directory, _META))
    local = directory
    if is_remote(directory):
        local = os.path.join(_local_mirror_root(), os.path.basename(directory.rstrip("/")))
        os.makedirs(local, exist_ok=True)
        remove_stale_temporaries(local)
    names = list(meta["shard_files"])
    facts = {n: meta["shards"][i] for i, n in enumerate(names)}
    stamp_path = os.path.join(local, _VERIFIED)
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        stamp = {}
    need = [n for n in names if stamp.get(n) is None
            or not os.path.exists(os.path.join(local, n))
            or stamp[n] != _stamp(local, [n])[n]]
    if need:
        t0 = time.time()
        total = sum(facts[n]["file_bytes"] for n in need)
        for i, name in enumerate(need):
            path = os.path.join(local, name)
            if local != directory and (not os.path.exists(path)
                                       or os.path.getsize(path) != facts[name]["file_bytes"]):
                _write_bytes(path, _read_bytes(_join(directory, name)))  # mirror
            _verify_shard(path, facts[name], special.vocab_size)
            if time.time() - t0 > PROGRESS_EVERY_S and i % 16 == 0:
                _log(f"verifying the cache: {i + 1}/{len(need)} shards")
        if local != directory:
            _write_bytes(os.path.join(local, _META), json.dumps(meta, indent=1).encode())
        stamp.update(_stamp(local, need))
        _write_bytes(stamp_path, json.dumps(stamp).encode())
        seconds = time.time() - t0
        _log(f"{'mirrored and ' if local != directory else ''}verified {len(need)} shard(s), "
             f"{total / 1e6:.1f} MB, in {seconds:.1f} s (sha256 + ids < {special.vocab_size})")
    streams = [np.load(os.path.join(local, n), mmap_mode="r", allow_pickle=False) for n in names]
    return PackedCorpus(directory, meta["key"], meta, streams, special)


def find_cached(cache_dir: str, key: str, special: SpecialTokens) -> PackedCorpus | None:
    """The corpus cached under this full key in cache_dir, if it is still there."""
    for name in _listdir(cache_dir):
        path = _join(cache_dir, name)
        if name.endswith(f"-{key[:16]}") and _exists(_join(path, _META)):
            try:
                corpus = open_entry(path, special)
            except CorruptCacheError:
                return None
            if corpus.key == key:
                return corpus
    return None


# ----------------------------------------------------------------------------------------------
# Building an entry: every process its share of the shards, process 0 the meta.json
# ----------------------------------------------------------------------------------------------

def _complete_shards(directory: str, num_shards: int) -> set[int]:
    names = set(_listdir(directory))
    return {k for k in range(num_shards)
            if _shard_meta_name(k) in names and _stream_name(k) in names}


def _finalize(directory: str, source: Source, tokenizer, *, key: str, seq_len: int, num_shards: int,
              max_documents: int, special: SpecialTokens) -> None:
    shards = [_read_json(_join(directory, _shard_meta_name(k))) for k in range(num_shards)]
    stream_tokens = sum(s["stream_tokens"] for s in shards)
    documents = sum(s["documents"] for s in shards)
    if documents == 0:
        raise ValueError(f"empty corpus: source {source.fingerprint().get('kind')!r} yielded no "
                         f"non-empty document (check data.paths / the split / data.max_documents)")
    num_blocks, last_len = block_layout(stream_tokens, seq_len)
    text_tokens = sum(s["text_tokens"] for s in shards)
    meta = {
        "key": key, "pipeline_version": PIPELINE_VERSION, "seq_len": seq_len,
        "num_blocks": num_blocks, "shard_files": [_stream_name(k) for k in range(num_shards)],
        "shards": shards, "dtype": shards[0]["dtype"], "last_block_length": last_len,
        "num_documents": documents, "text_tokens": text_tokens, "stream_tokens": stream_tokens,
        "padding_tokens": seq_len - last_len,
        "replaced_invalid_utf8": sum(s["replaced_invalid_utf8"] for s in shards),
        "source": source.fingerprint(), "max_documents": max_documents,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "build_seconds_summed": round(sum(s["seconds"] for s in shards), 3),
    }
    # Verify every shard (mirroring a remote entry) and hash the framed blocks.
    corpus = open_entry_unfinished(directory, meta, special)
    meta["content_sha256"] = content_digest(corpus)
    _write_bytes(_join(directory, _META), json.dumps(meta, indent=1).encode())
    _log(f"packed {documents:,} documents, {text_tokens:,} tokens -> {num_blocks:,} blocks of {seq_len} "
         f"({num_shards} shard(s)) in {directory}")
    if meta["replaced_invalid_utf8"]:
        _log(f"WARNING: {meta['replaced_invalid_utf8']} invalid UTF-8 sequences were replaced by U+FFFD")


def _mirror_or_self(directory: str) -> str:
    if is_remote(directory):
        return os.path.join(_local_mirror_root(), os.path.basename(directory.rstrip("/")))
    return directory


def open_entry_unfinished(directory: str, meta: dict, special: SpecialTokens) -> PackedCorpus:
    """open_entry for an entry whose meta.json is not written yet (the finalizing process)."""
    local = _mirror_or_self(directory)
    os.makedirs(local, exist_ok=True)
    for i, name in enumerate(meta["shard_files"]):
        path = os.path.join(local, name)
        if local != directory:
            _write_bytes(path, _read_bytes(_join(directory, name)))
        _verify_shard(path, meta["shards"][i], special.vocab_size)
    _write_bytes(os.path.join(local, _VERIFIED), json.dumps(_stamp(local, meta["shard_files"])).encode())
    streams = [np.load(os.path.join(local, n), mmap_mode="r", allow_pickle=False)
               for n in meta["shard_files"]]
    return PackedCorpus(directory, meta["key"], meta, streams, special)


def _drop_damaged_shards(directory: str, num_shards: int, vocab_size: int) -> None:
    """Local entries: a shard whose file fails its record is removed (with the meta.json) so the
    build makes it again; named in one line."""
    if is_remote(directory):
        return
    for k in _complete_shards(directory, num_shards):
        path = os.path.join(directory, _stream_name(k))
        try:
            _verify_shard(path, _read_json(os.path.join(directory, _shard_meta_name(k))), vocab_size)
        except CorruptCacheError as exc:
            _log(f"WARNING: {exc}; rebuilding that shard")
            for name in (_shard_meta_name(k), _stream_name(k), _META, _VERIFIED):
                try:
                    os.remove(os.path.join(directory, name))
                except FileNotFoundError:
                    pass


def load_or_build(source: Source, tokenizer, *, seq_len: int, cache_dir: str,
                  max_documents: int = 0, batch_documents: int = 256,
                  process_index: int = 0, process_count: int = 1, workers: int = 0,
                  stop_requested: Callable[[], bool] | None = None) -> PackedCorpus:
    """The packed corpus for (source, tokenizer, seq_len): from the cache, else built and cached.

    Multi-process: process p tokenizes the shards k with k % process_count == p (cache_dir must be
    shared by all processes: a gs:// bucket or a shared disk), waits for the others' (failing when
    none appears for STALL_TIMEOUT_S), and process 0 writes meta.json. workers: tokenizer
    processes on this host (0 = one per core). stop_requested: polled while building/waiting.
    """
    global _quiet
    _quiet = process_index != 0
    special = SpecialTokens.from_tokenizer(tokenizer)
    key = cache_key(source, tokenizer, seq_len, max_documents)
    directory = entry_dir(cache_dir, source, seq_len, key)
    meta_path = _join(directory, _META)
    if _exists(meta_path):
        try:
            corpus = open_entry(directory, special)
            _log(f"cache hit: {directory} ({corpus.num_blocks:,} blocks of {seq_len})")
            return corpus
        except CorruptCacheError as exc:
            if is_remote(directory) or process_count > 1:
                raise CorruptCacheError(f"{exc}: delete {directory} and rebuild it with python -m "
                                        f"distill_jax.data.prepare") from None
            _log(f"WARNING: {exc}; rebuilding the damaged shard")
            try:
                os.remove(meta_path)
            except FileNotFoundError:
                pass
    if not is_remote(cache_dir):
        os.makedirs(directory, exist_ok=True)
    num_shards = 1 if max_documents else source.num_shards()
    remove_stale_temporaries(directory)
    remove_stale_temporaries(cache_dir)  # version-1 builds left .tmp-* directories here
    _drop_damaged_shards(directory, num_shards, special.vocab_size)
    done = _complete_shards(directory, num_shards)
    mine = [k for k in range(num_shards) if k % process_count == process_index and k not in done]
    who = f"process {process_index} of {process_count}: " if process_count > 1 else ""
    _log(f"cache miss: {who}tokenizing {len(mine)} of {num_shards} shard(s) of the {source.kind} "
         f"corpus into {directory}" + (f" ({len(done)} already done)" if done else ""))
    if mine:
        _build_shards(source, tokenizer, mine, directory, batch_documents=batch_documents,
                      max_documents=max_documents, workers=workers, stop_requested=stop_requested)
    if process_index == 0:
        _wait_for(lambda: len(_complete_shards(directory, num_shards)), num_shards,
                  what=f"shards of {directory} (tokenized by the other processes)",
                  stop_requested=stop_requested)
        if not _exists(meta_path):
            _finalize(directory, source, tokenizer, key=key, seq_len=seq_len, num_shards=num_shards,
                      max_documents=max_documents, special=special)
    else:
        _wait_for(lambda: int(_exists(meta_path)) + len(_complete_shards(directory, num_shards)),
                  num_shards + 1, what=f"{meta_path} (written by process 0)",
                  stop_requested=stop_requested)
    return open_entry(directory, special)


def _wait_for(count: Callable[[], int], target: int, *, what: str,
              stop_requested: Callable[[], bool] | None) -> None:
    """Polls count() until it reaches target; fails when it stops moving for STALL_TIMEOUT_S."""
    last_value, last_change, last_log = count(), time.time(), time.time()
    while last_value < target:
        if stop_requested is not None and stop_requested():
            raise InterruptedError("stop requested while waiting for " + what)
        time.sleep(1.0)
        value, now = count(), time.time()
        if value != last_value:
            last_value, last_change = value, now
        elif now - last_change > STALL_TIMEOUT_S:
            raise TimeoutError(f"waited {now - last_change:.0f} s for {what} with no progress "
                               f"({value}/{target}): a process died or data.cache_dir is not shared "
                               f"by all hosts; prepare the cache once with python -m "
                               f"distill_jax.data.prepare and point data.cache_dir at it")
        if now - last_log >= PROGRESS_EVERY_S * 6:
            last_log = now
            _log(f"waiting for {what}: {value}/{target}")


def _build_shards(source: Source, tokenizer, shards: list[int], directory: str, *,
                  batch_documents: int, max_documents: int, workers: int,
                  stop_requested: Callable[[], bool] | None) -> None:
    """Tokenizes these shards, in worker processes when there are several shards and cores."""
    workers = min(len(shards), workers or os.cpu_count() or 1)
    start = time.time()
    progress = _Progress(source, shards, start)
    if workers <= 1 or max_documents:
        def update(facts: dict) -> None:  # after every tokenizer batch: report, and heed a stop
            progress.update(facts)
            if stop_requested is not None and stop_requested():
                raise InterruptedError("stop requested while tokenizing")

        for shard in shards:
            update({"shard": shard, "text_tokens": 0, "fraction": 0.0})
            facts = build_shard(source, tokenizer, shard, directory, batch_documents=batch_documents,
                                max_documents=max_documents, progress=update)
            progress.update({**facts, "fraction": 1.0, "done": True})
        progress.finish()
        return
    import multiprocessing as mp
    import queue as queue_lib

    # spawn, not fork: the caller may hold JAX's threads. Each worker tokenizes one batch at a time
    # on one core (TOKENIZERS_PARALLELISM off), so `workers` processes use `workers` cores.
    ctx = mp.get_context("spawn")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    manager = ctx.Manager()
    queue = manager.Queue()
    with ctx.Pool(workers) as pool:
        results = pool.map_async(_shard_worker, [(source, tokenizer, k, directory, batch_documents, queue)
                                                 for k in shards], chunksize=1)
        while not results.ready():
            if stop_requested is not None and stop_requested():
                pool.terminate()
                raise InterruptedError("stop requested while tokenizing")
            try:
                progress.update(queue.get(timeout=0.5))
            except queue_lib.Empty:
                pass
        results.get()  # re-raises a worker's error
    manager.shutdown()
    progress.finish()


class _Progress:
    """Progress lines of this process's share: % of its shards' work, tokens/s and ETA."""

    def __init__(self, source: Source, shards: list[int], start: float):
        self.shards, self.start, self.last_log = set(shards), start, start
        self.fraction: dict[int, float] = {}
        self.tokens: dict[int, int] = {}

    def update(self, facts: dict) -> None:
        shard = facts["shard"]
        self.tokens[shard] = facts["text_tokens"]
        if facts.get("fraction") is not None:
            self.fraction[shard] = facts["fraction"]
        now = time.time()
        if now - self.last_log >= PROGRESS_EVERY_S:
            self.last_log = now
            done = sum(self.fraction.values()) / max(1, len(self.shards))
            tokens, elapsed = sum(self.tokens.values()), now - self.start
            eta = f", ETA {elapsed * (1 - done) / done:.0f} s" if done > 0 else ""
            complete = sum(1 for f in self.fraction.values() if f >= 1.0)
            _log(f"tokenizing: {100 * done:.1f}% ({complete}/{len(self.shards)} shards), "
                 f"{tokens:,} tokens, {tokens / max(elapsed, 1e-9):,.0f} tokens/s{eta}")

    def finish(self) -> None:
        tokens, elapsed = sum(self.tokens.values()), time.time() - self.start
        _log(f"tokenized {len(self.shards)} shard(s), {tokens:,} tokens in {elapsed:.1f} s "
             f"({tokens / max(elapsed, 1e-9):,.0f} tokens/s)")
