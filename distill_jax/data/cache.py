"""Tokenized, packed shards on disk, keyed by what produced them.

Layout: `<cache_dir>/<kind>-s<seq_len>-<key16>/` holding `meta.json` and `blocks_00000.npy` ...
(plain .npy arrays [n, S] of uint16 or int32 ids, opened memory-mapped; never pickles). The key is
a sha256 over (pipeline version, source fingerprint, tokenizer fingerprint, seq_len,
max_documents), so any change rebuilds and nothing else does. A build writes into a private
temporary directory and renames it into place atomically: two processes building at once both
finish, the first rename wins, the loser discards its copy and reads the winner's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid

import numpy as np

from distill_jax.data.packing import Packer
from distill_jax.data.sources import Source
from distill_jax.data.tokenization import (SpecialTokens, encode_batches, ids_dtype,
                                           tokenizer_fingerprint)

# Bump whenever tokenization, packing or the file layout changes: old caches are then ignored.
PIPELINE_VERSION = 1
_META = "meta.json"
PROGRESS_EVERY_S = 5.0  # seconds between progress lines while tokenizing


def _log(msg: str) -> None:
    print(f"[distill_jax.data] {msg}", flush=True)


def cache_key(source: Source, tokenizer, seq_len: int, max_documents: int) -> str:
    spec = {"pipeline": PIPELINE_VERSION, "source": source.fingerprint(),
            "tokenizer": tokenizer_fingerprint(tokenizer), "seq_len": int(seq_len),
            "max_documents": int(max_documents)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class PackedCorpus:
    """Packed blocks of one corpus, memory-mapped from the cache.

    blocks: list of shard arrays [n_i, S]; row r of the corpus is shard r // shard_blocks.
    Every block is full (S real tokens) except possibly the last (`last_block_length`).
    """
    path: str
    key: str
    meta: dict
    shards: list[np.ndarray]
    special: SpecialTokens

    @property
    def num_blocks(self) -> int:
        return int(self.meta["num_blocks"])

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """Real tokens in each of these blocks (S except for the corpus's last block). int32 [n]."""
        rows = np.asarray(rows)
        out = np.full(rows.shape, self.seq_len, np.int32)
        out[rows == self.num_blocks - 1] = int(self.meta["last_block_length"])
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Blocks at these corpus row indices, in that order, as int32 [n, S]."""
        rows = np.asarray(rows, np.int64)
        per_shard = int(self.meta["shard_blocks"])
        out = np.empty([len(rows), self.seq_len], np.int32)
        shard_of = rows // per_shard
        for shard in np.unique(shard_of):
            pick = np.nonzero(shard_of == shard)[0]
            # Fancy indexing a memmap reads only those rows; sorting keeps the reads sequential.
            local = rows[pick] - shard * per_shard
            order = np.argsort(local, kind="stable")
            out[pick[order]] = self.shards[int(shard)][local[order]]
        return out

    def all_blocks(self) -> np.ndarray:
        return np.concatenate([np.asarray(s) for s in self.shards]).astype(np.int32)

    @property
    def content_sha256(self) -> str:
        """sha256 of the packed token ids (hex): equal exactly when every row is the same block,
        whatever the cache key (which also covers file sizes and times). Stored at build time;
        caches built before it existed hash their shards once, here (about 1 GB/s)."""
        if "content_sha256" not in self.meta:
            self.meta["content_sha256"] = content_digest(self.shards, self.meta)
        return self.meta["content_sha256"]


def content_digest(shards: list[np.ndarray], meta: dict) -> str:
    """sha256 over the framing (seq_len, last block length, dtype) and every shard's ids in order."""
    digest = hashlib.sha256(f"{meta['seq_len']}:{meta['last_block_length']}:{meta['dtype']}".encode())
    for shard in shards:
        for start in range(0, len(shard), 65536):  # bounded memory for large memmapped shards
            digest.update(np.ascontiguousarray(shard[start:start + 65536]).tobytes())
    return digest.hexdigest()


def find_cached(cache_dir: str, key: str, special: SpecialTokens) -> PackedCorpus | None:
    """The corpus cached under this full key in cache_dir, if it is still there."""
    for name in sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []:
        path = os.path.join(cache_dir, name)
        if name.endswith(f"-{key[:16]}") and os.path.exists(os.path.join(path, _META)):
            corpus = _open(path, special)
            if corpus.key == key:
                return corpus
    return None


def _open(path: str, special: SpecialTokens) -> PackedCorpus:
    with open(os.path.join(path, _META)) as f:
        meta = json.load(f)
    shards = [np.load(os.path.join(path, name), mmap_mode="r", allow_pickle=False)
              for name in meta["shard_files"]]
    return PackedCorpus(path, meta["key"], meta, shards, special)


def _build(source: Source, tokenizer, seq_len: int, max_documents: int, out_dir: str,
           batch_documents: int, shard_blocks: int, key: str) -> dict:
    special = SpecialTokens.from_tokenizer(tokenizer)
    dtype = ids_dtype(special.vocab_size)
    packer = Packer(seq_len, special, dtype)
    shard_files: list[str] = []
    buffered: list[np.ndarray] = []
    buffered_rows = 0
    num_blocks = 0

    def flush(final: bool) -> None:
        nonlocal buffered, buffered_rows, num_blocks
        while buffered_rows >= shard_blocks or (final and buffered_rows):
            rows = np.concatenate(buffered)
            take = rows[:shard_blocks]
            name = f"blocks_{len(shard_files):05d}.npy"
            np.save(os.path.join(out_dir, name), take, allow_pickle=False)
            shard_files.append(name)
            num_blocks += len(take)
            rest = rows[shard_blocks:]
            buffered, buffered_rows = ([rest] if len(rest) else []), len(rest)

    def documents():
        for i, doc in enumerate(source.documents()):
            if max_documents and i >= max_documents:
                return
            yield doc

    start = last_log = time.time()
    text_tokens = 0
    for docs, ids in encode_batches(tokenizer, documents(), batch_documents):
        text_tokens += sum(len(x) for x in ids)
        blocks = packer.add(ids)
        if len(blocks):
            buffered.append(blocks)
            buffered_rows += len(blocks)
        flush(final=False)
        now = time.time()
        if now - last_log >= PROGRESS_EVERY_S:
            last_log = now
            rate = text_tokens / max(now - start, 1e-9)
            frac = source.fraction_done()
            eta = f", ETA {(now - start) * (1 - frac) / frac:.0f} s" if frac else ""
            pct = f" ({100 * frac:.1f}%)" if frac is not None else ""
            _log(f"tokenizing: {packer.documents} documents{pct}, {text_tokens:,} tokens, "
                 f"{rate:,.0f} tokens/s{eta}")
    if packer.documents == 0:
        raise ValueError(f"empty corpus: source {source.fingerprint().get('kind')!r} yielded no "
                         f"non-empty document (check data.paths / the split / data.max_documents)")
    final = packer.finish()
    last_len = seq_len
    if len(final):
        last_len = packer.final_length
        buffered.append(final)
        buffered_rows += 1
    flush(final=True)
    seconds = time.time() - start
    meta = {
        "key": key, "pipeline_version": PIPELINE_VERSION, "seq_len": seq_len,
        "num_blocks": num_blocks, "shard_blocks": shard_blocks, "shard_files": shard_files,
        "dtype": dtype.name, "last_block_length": last_len,
        "num_documents": packer.documents, "text_tokens": text_tokens,
        "stream_tokens": packer.stream_tokens, "padding_tokens": num_blocks * seq_len - (
            (num_blocks - 1) * seq_len + last_len),
        "replaced_invalid_utf8": source.replaced_chars, "source": source.fingerprint(),
        "tokenizer": getattr(tokenizer, "name_or_path", ""), "build_seconds": round(seconds, 3),
    }
    meta["content_sha256"] = content_digest(
        [np.load(os.path.join(out_dir, name), mmap_mode="r", allow_pickle=False) for name in shard_files],
        meta)
    with open(os.path.join(out_dir, _META), "w") as f:
        json.dump(meta, f, indent=1)
    _log(f"tokenized {packer.documents} documents, {text_tokens:,} tokens -> {num_blocks} blocks "
         f"of {seq_len} in {seconds:.1f} s ({text_tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    if source.replaced_chars:
        _log(f"WARNING: {source.replaced_chars} invalid UTF-8 sequences were replaced by U+FFFD")
    return meta


def load_or_build(source: Source, tokenizer, *, seq_len: int, cache_dir: str,
                  max_documents: int = 0, batch_documents: int = 256,
                  shard_blocks: int = 65536) -> PackedCorpus:
    """The packed corpus for (source, tokenizer, seq_len): from the cache, else built and cached."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    key = cache_key(source, tokenizer, seq_len, max_documents)
    final_dir = os.path.join(cache_dir, f"{source.kind}-s{seq_len}-{key[:16]}")
    if os.path.exists(os.path.join(final_dir, _META)):
        corpus = _open(final_dir, special)
        _log(f"cache hit: {final_dir} ({corpus.num_blocks} blocks of {seq_len})")
        return corpus
    os.makedirs(cache_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:6]}-",
                               dir=cache_dir)
    try:
        _log(f"cache miss: tokenizing {source.kind} corpus into {final_dir}")
        _build(source, tokenizer, seq_len, max_documents, tmp_dir, batch_documents,
               shard_blocks, key)
        try:
            os.rename(tmp_dir, final_dir)  # atomic; fails if another process got there first
        except OSError:
            if not os.path.exists(os.path.join(final_dir, _META)):
                raise
            _log(f"another process finished {final_dir} first; using its copy")
    finally:
        if os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return _open(final_dir, special)
