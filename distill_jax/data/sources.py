"""Document sources: each yields non-empty text documents in a fixed order.

A source knows (a) its `fingerprint()` — a JSON-able description that goes into the cache key, cheap
to compute (no corpus read), (b) its shards: `num_shards()` contiguous, ordered pieces whose
documents, concatenated in shard order, are exactly `documents()` (so hosts and worker processes
can tokenize shards apart and the result equals a one-process build), read by
`shard_documents(k)`, and (c) `fraction_done()`: how far the current shard's read is (0..1) for the
progress ETA, None when unknown.

Shards: file sources group their files (in order) into up to MAX_FILE_SHARDS groups of about equal
bytes (a document never spans two files); HF datasets split by row ranges (streaming ones by their
data files); tfds by `tfds.even_splits`; the builtin corpus is one shard.

Invalid UTF-8 in files is not an error: each invalid byte sequence is replaced by U+FFFD (Python's
'replace' handler), counted in `replaced_chars`, and the count is logged and stored in the cache
metadata. Missing files, globs that match nothing and unknown sources raise FileNotFoundError /
ValueError naming the field.
"""

from __future__ import annotations

import codecs
import glob
import os
from collections.abc import Iterator
from typing import Any

from distill_jax.data import builtin_corpus
from distill_jax.data.config import DataConfig, as_path_list

_REPLACEMENT_BYTES = "\ufffd".encode("utf-8")
# File sources: at most this many shards (enough to keep every core of a pod's hosts busy: a
# v5e-16's 4 hosts x 112 vCPUs), and no shard smaller than MIN_SHARD_BYTES unless it is one file.
MAX_FILE_SHARDS = 512
MIN_SHARD_BYTES = 1 << 20
# HF datasets (not streaming): rows per shard, at least.
MIN_SHARD_ROWS = 2000
MAX_ROW_SHARDS = 512


class Source:
    """Base: subclasses implement fingerprint() and documents()."""

    kind = "base"

    def __init__(self):
        self.replaced_chars = 0  # U+FFFD inserted for invalid UTF-8, summed over the read
        self._done = 0.0

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def documents(self) -> Iterator[str]:
        """Every document, in order: the shards' documents back to back."""
        for shard in range(self.num_shards()):
            yield from self.shard_documents(shard)

    def num_shards(self) -> int:
        return 1

    def shard_documents(self, shard: int) -> Iterator[str]:
        raise NotImplementedError

    def shard_rows(self, shard: int) -> int | None:
        """Documents/rows in a shard when known before reading it (progress), else None."""
        return None

    def fraction_done(self) -> float | None:
        return self._done

    def decode(self, data: bytes) -> str:
        """UTF-8 decode; invalid sequences become U+FFFD and are counted."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            self.replaced_chars += text.count("\ufffd") - data.count(_REPLACEMENT_BYTES)
            return text


class BuiltinSource(Source):
    """Docstrings and prose comments of the CPython standard library (see builtin_corpus)."""

    kind = "builtin"

    def __init__(self):
        super().__init__()
        self._total = None

    def fingerprint(self) -> dict:
        return builtin_corpus.builtin_fingerprint()

    def shard_documents(self, shard: int) -> Iterator[str]:
        root = builtin_corpus.stdlib_dir()
        paths = builtin_corpus._module_paths(root)  # noqa: SLF001 (same package)
        self._total = len(paths) + 1
        for i, doc in enumerate(builtin_corpus.iter_builtin_documents(root)):
            self._done = min(1.0, (i + 1) / self._total)
            yield doc
        self._done = 1.0


def resolve_paths(patterns: list[str], field: str = "data.paths") -> list[str]:
    """Files named by paths, directories (recursive, sorted, hidden files skipped) or globs."""
    if not patterns:
        raise ValueError(f"{field} is empty: give files, directories or globs")
    files: list[str] = []
    for pattern in patterns:
        if "://" in pattern:
            raise ValueError(f"{field}: {pattern!r} is a remote path; text corpora are read from local "
                             f"disk (copy them first, or use data.source='hf'/'tfds', whose data_dir "
                             f"may be remote)")
        pattern = os.path.expanduser(pattern)
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"{field}: glob {pattern!r} matches no file")
            files.extend(matches)
        elif os.path.isdir(pattern):
            found = []
            for dirpath, dirnames, filenames in os.walk(pattern):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                             if not f.startswith("."))
            if not found:
                raise FileNotFoundError(f"{field}: directory {pattern!r} holds no file")
            files.extend(found)
        elif os.path.isfile(pattern):
            files.append(pattern)
        else:
            raise FileNotFoundError(f"{field}: {pattern!r} does not exist (fix the path or glob)")
    return files


SNIFF_BYTES = 1024  # the head of every text file read to refuse binaries (a wrong path or glob)
MAX_INVALID_IN_SNIFF = 8  # invalid UTF-8 sequences tolerated there (stray bytes in real text are
#                           replaced and counted, see Source.decode; a binary has them by the dozen)


def refuse_binary(path: str) -> None:
    """ValueError naming `path` when its first SNIFF_BYTES hold a NUL byte or more than
    MAX_INVALID_IN_SNIFF invalid UTF-8 sequences (a multibyte character cut at the end of the sample
    does not count): a binary or compressed file given as a text corpus would otherwise be
    tokenized into noise, with one warning about U+FFFD."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    cause = None
    nul = head.find(b"\x00")
    if nul >= 0:
        cause = f"a NUL byte at offset {nul}"
    else:
        text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=False)
        invalid = text.count("\ufffd") - head.count(_REPLACEMENT_BYTES)
        if invalid > MAX_INVALID_IN_SNIFF:
            cause = f"{invalid} invalid UTF-8 sequences"
    if cause is not None:
        raise ValueError(f"data.paths: {path} is not a UTF-8 text file ({cause} in its first "
                         f"{SNIFF_BYTES} bytes); point data.paths at text files (decompress .gz/.bz2 "
                         f"first; use data.source='hf' or 'tfds' for other formats)")


class _FileSource(Source):
    """Shared by the text and wikiextractor readers: byte-progress over a list of files."""

    def __init__(self, patterns: list[str]):
        super().__init__()
        self.files = resolve_paths(patterns)
        for path in self.files:
            refuse_binary(path)
        self.sizes = [os.path.getsize(f) for f in self.files]
        self.shard_files = group_by_size(self.files, self.sizes, MAX_FILE_SHARDS, MIN_SHARD_BYTES)
        self._shard_bytes = 1
        self._bytes_read = 0

    def num_shards(self) -> int:
        return len(self.shard_files)

    def shard_documents(self, shard: int) -> Iterator[str]:
        files = self.shard_files[shard]
        self._shard_bytes = max(1, sum(os.path.getsize(f) for f in files))
        self._bytes_read, self._done = 0, 0.0
        for path in files:
            yield from self._file_documents(path)
        self._done = 1.0

    def _file_documents(self, path: str) -> Iterator[str]:
        raise NotImplementedError

    def _file_stats(self) -> list[list]:
        # Path, size and mtime: a changed file rebuilds the cache, an unchanged one reuses it.
        return [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in self.files]

    def _lines(self, path: str) -> Iterator[str]:
        """Decoded lines without their line ending (LF or CRLF)."""
        with open(path, "rb") as f:
            for raw in f:
                self._bytes_read += len(raw)
                self._done = self._bytes_read / self._shard_bytes
                yield self.decode(raw).rstrip("\r\n")


class TextSource(_FileSource):
    """Plain text files: one document per blank-line-separated block, per line, or per file."""

    kind = "text"

    def __init__(self, patterns: list[str], doc_split: str = "blank_line"):
        super().__init__(patterns)
        self.doc_split = doc_split

    def fingerprint(self) -> dict:
        return {"kind": self.kind, "doc_split": self.doc_split, "files": self._file_stats()}

    def _file_documents(self, path: str) -> Iterator[str]:
        if self.doc_split == "line":
            for line in self._lines(path):
                if line.strip():
                    yield line.strip()
        elif self.doc_split == "file":
            text = "\n".join(self._lines(path)).strip()
            if text:
                yield text
        else:  # blank_line
            block: list[str] = []
            for line in self._lines(path):
                if line.strip():
                    block.append(line)
                elif block:
                    yield "\n".join(block).strip()
                    block = []
            if block:
                yield "\n".join(block).strip()


class WikiExtractorSource(_FileSource):
    """WikiExtractor output: articles between `<doc id=.. url=.. title=..>` and `</doc>` lines.

    The tag lines are dropped; the article text (its first line is the title) is one document.
    Text outside any <doc> element is ignored.
    """

    kind = "wikiextractor"

    def fingerprint(self) -> dict:
        return {"kind": self.kind, "files": self._file_stats()}

    def _file_documents(self, path: str) -> Iterator[str]:
        lines: list[str] | None = None
        for line in self._lines(path):
            if line.startswith("<doc ") or line == "<doc>":
                lines = []
            elif line.strip() == "</doc>":
                if lines is not None:
                    text = "\n".join(lines).strip()
                    if text:
                        yield text
                lines = None
            elif lines is not None:
                lines.append(line)


class HFSource(Source):
    """HF datasets: a hub dataset (needs the hub or its local cache) or local files via the
    'text' / 'json' / 'csv' / 'parquet' / 'arrow' builders with data_files."""

    kind = "hf"

    def __init__(self, name: str, config: str, split: str, data_files: Any, text_field: str,
                 streaming: bool, cache_dir: str | None, doc_split: str = "blank_line"):
        super().__init__()
        # The 'text' builder yields lines by default; data.doc_split picks its sample_by.
        self.sample_by = ({"blank_line": "paragraph", "file": "document", "line": "line"}[doc_split]
                          if name == "text" else None)
        self.name, self.config, self.split = name, config or None, split
        self.data_files, self.text_field, self.streaming = data_files, text_field, streaming
        self.cache_dir = cache_dir
        self._ds = None
        self._local = None
        if data_files is not None:
            files = data_files.values() if isinstance(data_files, dict) else [data_files]
            patterns = [p for v in files for p in as_path_list(v, "data.hf_data_files")]
            self._local = resolve_paths(patterns, "data.hf_data_files")

    def fingerprint(self) -> dict:
        local = None
        if self._local:
            local = [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns]
                     for f in self._local]
        return {"kind": self.kind, "name": self.name, "config": self.config, "split": self.split,
                "data_files": local, "text_field": self.text_field, "sample_by": self.sample_by}

    def _dataset(self):
        """The loaded (or streaming) dataset, once per process."""
        if self._ds is not None:
            return self._ds
        import datasets  # heavy import; only when this source is used

        data_files = self.data_files
        if isinstance(data_files, str):
            data_files = as_path_list(data_files, "data.hf_data_files")
        extra = {"sample_by": self.sample_by} if self.sample_by else {}
        try:
            ds = datasets.load_dataset(self.name, self.config, split=self.split,
                                       data_files=data_files, streaming=self.streaming,
                                       cache_dir=self.cache_dir, **extra)
        except (FileNotFoundError, ConnectionError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(
                f"data.hf_name={self.name!r} (config {self.config!r}, split {self.split!r}) could "
                f"not be loaded: {first}. Offline, use local files: data.hf_name='text'|'json'|"
                f"'parquet' with data.hf_data_files") from e
        names = ds.column_names if ds.column_names is not None else []
        if names and self.text_field not in names:
            raise ValueError(f"data.hf_text_field={self.text_field!r} is not a column of "
                             f"{self.name!r}; columns: {names}")
        self._ds = ds
        return ds

    def _row_ranges(self) -> list[tuple[int, int]]:
        rows = len(self._dataset())
        per = max(MIN_SHARD_ROWS, -(-rows // MAX_ROW_SHARDS))
        return [(start, min(rows, start + per)) for start in range(0, rows, per)] or [(0, 0)]

    def num_shards(self) -> int:
        if self.streaming:  # whole data files: the finest split a stream has
            return max(1, int(getattr(self._dataset(), "num_shards", 1) or 1))
        return len(self._row_ranges())

    def total_rows(self) -> int | None:
        """The split's row count: len() of a loaded dataset, the dataset info's for a stream."""
        ds = self._dataset()
        if not self.streaming:
            return len(ds)
        try:
            return int(ds.info.splits[self.split].num_examples)
        except Exception:  # noqa: BLE001 - local files and some hub datasets carry no split info
            return None

    def shard_rows(self, shard: int) -> int | None:
        if self.streaming:
            total = self.total_rows()
            return None if total is None else -(-total // self.num_shards())
        start, stop = self._row_ranges()[shard]
        return stop - start

    def shard_documents(self, shard: int) -> Iterator[str]:
        ds = self._dataset()
        if self.streaming:
            n = self.num_shards()
            part = ds.shard(num_shards=n, index=shard) if n > 1 else ds
        else:
            start, stop = self._row_ranges()[shard]
            part = ds.select(range(start, stop))
        expected = self.shard_rows(shard)
        self._done = None if not expected else 0.0
        for i, row in enumerate(part):
            if expected:
                self._done = min(1.0, (i + 1) / expected)
            text = row[self.text_field]
            if isinstance(text, bytes):
                text = self.decode(text)
            if text and text.strip():
                yield text.strip()
        self._done = 1.0


class TfdsSource(Source):
    """tensorflow-datasets: a prepared builder (name[/config][:version]) in data_dir."""

    kind = "tfds"

    def __init__(self, name: str, data_dir: str, split: str, text_field: str):
        super().__init__()
        self.name, self.data_dir, self.split, self.text_field = name, data_dir or None, split, text_field

    def fingerprint(self) -> dict:
        return {"kind": self.kind, "name": self.name, "data_dir": self.data_dir,
                "split": self.split, "text_field": self.text_field}

    # tfds reads a split's records through its even sub-splits; 64 keeps every core busy on a host.
    NUM_SHARDS = 64

    def _builder(self):
        from distill_jax.extras import import_tfds

        tfds = import_tfds("data.source")  # heavy import (TensorFlow); only when this source is used
        try:
            builder = tfds.builder(self.name, data_dir=self.data_dir)
        except Exception as e:  # tfds raises many types (DatasetNotFoundError, AssertionError ..)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(
                f"data.tfds_name={self.name!r} (data_dir {self.data_dir!r}, split {self.split!r}) "
                f"could not be opened: {first}. Prepare it with `tfds build` or point "
                f"data.tfds_data_dir at a prepared copy") from e
        try:
            total = int(builder.info.splits[self.split].num_examples)
        except Exception:  # noqa: BLE001 (split arithmetic like 'train[:10%]' has no count)
            total = None
        return tfds, builder, total

    def num_shards(self) -> int:
        _, _, total = self._builder()
        return max(1, min(self.NUM_SHARDS, total)) if total else 1

    def shard_rows(self, shard: int) -> int | None:
        _, _, total = self._builder()
        return -(-total // self.num_shards()) if total else None

    def shard_documents(self, shard: int) -> Iterator[str]:
        tfds, builder, _ = self._builder()
        n = self.num_shards()
        split = tfds.even_splits(self.split, n=n)[shard] if n > 1 else self.split
        ds = builder.as_dataset(split=split, shuffle_files=False)
        expected = self.shard_rows(shard)
        self._done = 0.0 if expected else None
        for i, example in enumerate(tfds.as_numpy(ds)):
            if expected:
                self._done = min(1.0, (i + 1) / expected)
            if self.text_field not in example:
                raise ValueError(f"data.tfds_text_field={self.text_field!r} is not a feature of "
                                 f"{self.name!r}; features: {sorted(example)}")
            text = example[self.text_field]
            if isinstance(text, bytes):
                text = self.decode(text)
            text = str(text).strip()
            if text:
                yield text
        self._done = 1.0


def group_by_size(items: list[str], sizes: list[int], max_groups: int, min_bytes: int) -> list[list[str]]:
    """Consecutive items cut into at most max_groups groups of about equal total size (each at
    least min_bytes, except when a single item is smaller); order kept, none empty."""
    total = sum(sizes)
    groups_wanted = max(1, min(len(items), max_groups, total // max(1, min_bytes) or 1))
    target = total / groups_wanted
    groups: list[list[str]] = [[]]
    filled = 0
    for item, size in zip(items, sizes):
        if groups[-1] and filled + size / 2 > target * len(groups) and len(groups) < groups_wanted:
            groups.append([])
        groups[-1].append(item)
        filled += size
    return groups


def make_source(data: DataConfig | Any, cache_dir: str | None = None) -> Source:
    """The Source a data config names (a DataConfig, or a config block read into one here)."""
    data = DataConfig.from_config(data)
    if data.source == "builtin":
        return BuiltinSource()
    if data.source == "text":
        return TextSource(list(data.paths), data.doc_split)
    if data.source == "wikiextractor":
        return WikiExtractorSource(list(data.paths))
    if data.source == "hf":
        hf_cache = os.path.join(cache_dir, "hf_datasets") if cache_dir else None
        return HFSource(data.hf_name, data.hf_config, data.hf_split, data.hf_data_files, data.hf_text_field,
                        data.hf_streaming, hf_cache, data.doc_split)
    return TfdsSource(data.tfds_name, data.tfds_data_dir, data.tfds_split, data.tfds_text_field)
