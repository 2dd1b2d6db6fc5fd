"""Zero-shot STS-B (distill_jax/evaluate/stsb.py) against independent references: a hand-computed
case (numpy cosines, scipy's Spearman), and a tiny BERT embedded by HF transformers in PyTorch
with the masked-mean pooling of sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from tiny_models import save_tiny_bert

PAIRS = [("a man is playing a guitar.", "a man plays the guitar.", 4.8),
         ("a woman is slicing an onion.", "a man is playing a flute.", 0.2),
         ("the cat sat on the mat.", "a cat is sitting on a mat.", 4.2),
         ("kids are playing football in the park today.", "children play soccer in a park.", 3.9),
         ("the stock market fell sharply on monday.", "a dog runs across the beach.", 0.0),
         ("two people are walking.", "two persons walk down a street together slowly.", 3.1),
         ("a plane is taking off.", "an airplane is departing.", 4.4),
         ("he ate an apple.", "she wrote a long letter to her grandmother.", 0.5),
         ("the sun is shining.", "it is a sunny day.", 3.6)]


def _write_stsb(glue_dir) -> None:
    (glue_dir / "STS-B").mkdir(parents=True)
    rows = [f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{s:.3f}"
            for i, (a, b, s) in enumerate(PAIRS)]
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    (glue_dir / "STS-B" / "dev.tsv").write_text(header + "\n" + "\n".join(rows) + "\n")


def test_score_pairs_is_spearman_of_the_cosines_by_hand():
    """Four pairs whose cosines are 1, 0, -1 and 1/sqrt(2) (ranks 4, 2, 1, 3): Spearman by hand
    (1 - 6 sum d^2 / (n (n^2 - 1))) and by scipy."""
    scipy_stats = pytest.importorskip("scipy.stats")
    from distill_jax.evaluate import stsb

    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 0.0]])
    gold = np.array([5.0, 1.0, 0.0, 4.0])
    np.testing.assert_allclose(stsb.cosine_rows(a, b), [1.0, 0.0, -1.0, 2 ** -0.5])
    got = stsb.score_pairs(a, b, gold)
    # cosines rank 4, 2, 1, 3 and gold ranks 4, 2, 1, 3: identical orderings
    assert got["spearman"] == pytest.approx(100.0) and got["pairs"] == 4
    gold = np.array([1.0, 5.0, 0.0, 4.0])    # gold ranks 2, 4, 1, 3: d = 2, -2, 0, 0 -> 1 - 6*8/(4*15) = 0.2
    got = stsb.score_pairs(a, b, gold)
    assert got["spearman"] == pytest.approx(20.0)
    assert got["spearman"] == pytest.approx(100 * scipy_stats.spearmanr(stsb.cosine_rows(a, b), gold).statistic)
    assert got["pearson"] == pytest.approx(100 * scipy_stats.pearsonr(stsb.cosine_rows(a, b), gold).statistic)


def test_mean_pool_ignores_padding():
    from distill_jax.evaluate import stsb

    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(np.asarray(stsb.mean_pool(h, mask)), [[1.0, 2.0], [6.0, 7.0]])


@pytest.mark.slow
def test_zero_shot_stsb_of_a_tiny_bert_matches_transformers_mean_pooling(tmp_path):
    """Our Flax encoder's pooled embeddings and score equal those of the same checkpoint run by
    HF transformers (PyTorch), pooled as sentence-transformers pools (masked mean)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    scipy_stats = pytest.importorskip("scipy.stats")
    from distill_jax.evaluate import stsb

    model_dir = save_tiny_bert(tmp_path / "bert", num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64,
                               with_mlm_head=False)
    glue_dir = tmp_path / "glue"
    _write_stsb(glue_dir)
    # batch 4 over 18 sentences: several batches, a partial last one, rows reordered by length
    got = stsb.zero_shot_stsb_dir(str(model_dir), str(glue_dir), max_len=64, batch_size=4)

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    ref = transformers.BertModel.from_pretrained(model_dir).eval()
    sentences = [a for a, _, _ in PAIRS] + [b for _, b, _ in PAIRS]
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = ref(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    emb = ((h * m).sum(1) / m.sum(1)).numpy()
    n = len(PAIRS)
    cos = np.sum(emb[:n] * emb[n:], 1) / (np.linalg.norm(emb[:n], axis=1) * np.linalg.norm(emb[n:], axis=1))
    gold = np.array([s for _, _, s in PAIRS])
    assert got["pairs"] == n
    assert got["spearman"] == pytest.approx(100 * scipy_stats.spearmanr(cos, gold).statistic, abs=1e-6)
    assert got["pearson"] == pytest.approx(100 * scipy_stats.pearsonr(cos, gold).statistic, abs=1e-3)

    from distill_jax.evaluate.encode import load_tokenizer
    from distill_jax.models import load_pretrained

    model, _, _ = load_pretrained(str(model_dir), with_mlm_head=False)
    ours = stsb.SentenceEmbedder.from_model(model, load_tokenizer(str(model_dir)), max_len=64, batch_size=4).embed(sentences)
    np.testing.assert_allclose(ours, emb, atol=1e-4)


def test_a_missing_stsb_file_is_one_line_naming_it(tmp_path):
    from distill_jax.evaluate import stsb

    with pytest.raises(FileNotFoundError, match=r"STS-B/dev.tsv not found"):
        stsb.zero_shot_stsb_dir(str(tmp_path / "no_model"), str(tmp_path / "glue"))
