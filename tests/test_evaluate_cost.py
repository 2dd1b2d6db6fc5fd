"""The cost column (distill_jax/evaluate/cost.py): parameter counts against HF transformers' own
count of the same BERT shape, and the latency harness on tiny models."""

from __future__ import annotations

import pytest


def _cfg(layers, width, heads, ffn, vocab=1000):
    from distill_jax.models import EncoderConfig

    return EncoderConfig(vocab_size=vocab, hidden_size=width, num_layers=layers, num_heads=heads,
                         intermediate_size=ffn, max_position_embeddings=128)


@pytest.mark.parametrize("shape", [(2, 32, 4, 64), (3, 48, 12, 96)])
def test_parameter_counts_match_transformers_bert_without_pooler(shape):
    torch = pytest.importorskip("torch")  # noqa: F841
    transformers = pytest.importorskip("transformers")
    from distill_jax.evaluate import cost

    layers, width, heads, ffn = shape
    hf = transformers.BertModel(transformers.BertConfig(
        vocab_size=1000, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=128), add_pooling_layer=False)
    got = cost.parameter_counts(_cfg(*shape))
    assert got["total"] == sum(p.numel() for p in hf.parameters())
    assert got["embeddings"] == sum(p.numel() for p in hf.embeddings.parameters())
    assert got["without_embeddings"] == sum(p.numel() for p in hf.encoder.parameters())


def test_the_teacher_and_the_study_students_by_hand():
    """all-MiniLM-L6-v2's encoder body is 22,565,376 parameters (22.7 M with the 384 x 384 + 384
    pooler, the model card's and the trainer's count); 3x192 is (30522 + 512 + 2) x 192 + 2 x 192
    embeddings plus 3 layers of 4 x (192^2 + 192) + 192 x 768 + 768 + 768 x 192 + 192 + 2 x 2 x 192."""
    from distill_jax.evaluate import cost

    teacher = cost.parameter_counts(_cfg(6, 384, 12, 1536, vocab=30522).replace(max_position_embeddings=512))
    assert teacher["total"] == 22_713_216 - (384 * 384 + 384)
    w, f = 192, 768
    layer = 4 * (w * w + w) + (w * f + f) + (f * w + w) + 2 * 2 * w
    narrow = cost.parameter_counts(_cfg(3, w, 12, f, vocab=30522).replace(max_position_embeddings=512))
    assert narrow == {"total": (30522 + 512 + 2) * w + 2 * w + 3 * layer, "embeddings": (30522 + 512 + 2) * w + 2 * w,
                      "without_embeddings": 3 * layer}


def test_rounds_alternate_the_models():
    from distill_jax.evaluate import cost

    names = ["teacher", "a", "b"]
    assert [cost.rotation(names, r) for r in range(4)] == [
        ["teacher", "a", "b"], ["a", "b", "teacher"], ["b", "teacher", "a"], ["teacher", "a", "b"]]


@pytest.mark.slow
def test_latency_harness_on_tiny_models_orders_them_by_size():
    """Every model and shape gets `repeats` timed calls; quartiles bracket the median; a model
    with ~200x the FLOPs of another is slower on any machine."""
    from distill_jax.evaluate import cost

    configs = {"big": _cfg(4, 256, 4, 1024), "small": _cfg(1, 16, 2, 32)}
    got = cost.measure_latency(configs, shapes=((1, 16), (8, 128)), repeats=3, warmup=1)
    assert set(got) == {"big", "small"} and set(got["big"]) == {"1x16", "8x128"}
    for per_shape in got.values():
        for m in per_shape.values():
            assert m["calls"] == 3 and 0 < m["p25_ms"] <= m["median_ms"] <= m["p75_ms"]
    # ~200x the FLOPs per token (4 layers of 256 wide vs 1 of 16)
    assert got["big"]["8x128"]["median_ms"] > 3 * got["small"]["8x128"]["median_ms"]
    with pytest.raises(ValueError, match="200 tokens exceed its 128 positions"):
        cost.measure_latency({"small": configs["small"]}, shapes=((1, 200),), repeats=1)
