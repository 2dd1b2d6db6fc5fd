"""make_student: BERT-style random init, DistilBERT-style init from teacher layers, heads; the HF name
table covers every parameter."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill_jax.models import Encoder, EncoderConfig, make_student, uniform_teacher_layers
from distill_jax.models.hf_names import encoder_tensor_names, get_param

TEACHER_CFG = EncoderConfig(family="roberta", vocab_size=80, hidden_size=32, num_layers=6, num_heads=4,
                            intermediate_size=64, max_position_embeddings=34, type_vocab_size=1, pad_token_id=1,
                            with_mlm_head=False, initializer_range=0.05)


@pytest.fixture(scope="module")
def teacher():
    return Encoder(TEACHER_CFG, rngs=nnx.Rngs(0))


def test_uniform_teacher_layers_distilbert_choice():
    assert uniform_teacher_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert uniform_teacher_layers(6, 3) == [0, 2, 5]
    assert uniform_teacher_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="num_layers=7"):
        uniform_teacher_layers(6, 7)


def test_random_student_is_bert_initialised():
    big = TEACHER_CFG.replace(vocab_size=2000, hidden_size=64, intermediate_size=256)
    student = make_student(big, num_layers=2, hidden_size=48, num_heads=4, intermediate_size=96,
                           with_mlm_head=True, rngs=nnx.Rngs(1))
    cfg = student.cfg
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (2, 48, 4, 96)
    assert cfg.vocab_size == 2000 and cfg.family == "roberta" and student.has_mlm_head
    words = np.asarray(student.embeddings.word.embedding.get_value())
    assert words.shape == (2000, 48)
    assert abs(words[2:].std() - 0.05) < 0.003 and abs(words[2:].mean()) < 0.003
    assert np.all(words[cfg.pad_token_id] == 0)  # padding row zero, as HF nn.Embedding(padding_idx)
    kernel = np.asarray(student.layers[1].ffn_in.kernel.get_value())
    assert kernel.shape == (48, 96) and abs(kernel.std() - 0.05) < 0.005
    for layer in student.layers:
        assert np.all(np.asarray(layer.ffn_in.bias.get_value()) == 0)
        assert np.all(np.asarray(layer.attention.query.bias.get_value()) == 0)
        assert np.all(np.asarray(layer.ffn_norm.scale.get_value()) == 1)
        assert np.all(np.asarray(layer.ffn_norm.bias.get_value()) == 0)
    assert np.all(np.asarray(student.mlm_head.bias.get_value()) == 0)


def test_teacher_layer_init_copies_chosen_layers_and_embeddings(teacher):
    student = make_student(TEACHER_CFG, num_layers=3, init="teacher", teacher_layers=[1, 3, 5],
                           teacher_model=teacher, rngs=nnx.Rngs(2))
    for j, i in enumerate([1, 3, 5]):
        for part in ("attention.query.kernel", "attention.out.bias", "ffn_in.kernel", "ffn_out.kernel",
                     "attention_norm.scale", "ffn_norm.bias"):
            path = tuple(part.split("."))
            np.testing.assert_array_equal(get_param(student.layers[j], path).get_value(),
                                          get_param(teacher.layers[i], path).get_value())
    for path in (("embeddings", "word", "embedding"), ("embeddings", "position", "embedding"),
                 ("embeddings", "norm", "scale"), ("pooler", "dense", "kernel")):
        np.testing.assert_array_equal(get_param(student, path).get_value(), get_param(teacher, path).get_value())
    # so the student's first layers compute what the teacher's layer 1 computes on the embeddings
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 80, (2, 8)))
    t_out, s_out = teacher(ids), student(ids)
    np.testing.assert_allclose(s_out.hidden_states[0], t_out.hidden_states[0], atol=1e-6)
    t_layer1 = teacher.layers[1](t_out.hidden_states[0], jnp.ones((2, 8)), dropout_rng=None,
                                 output_attentions=False)[0]
    np.testing.assert_allclose(s_out.hidden_states[1], t_layer1, atol=1e-5)


def test_teacher_init_default_layers_and_fresh_mlm_head(teacher):
    student = make_student(TEACHER_CFG, num_layers=3, init="teacher", teacher_model=teacher, with_mlm_head=True,
                           rngs=nnx.Rngs(3))
    assert not teacher.has_mlm_head and student.has_mlm_head
    np.testing.assert_array_equal(student.layers[2].ffn_out.kernel.get_value(),
                                  teacher.layers[5].ffn_out.kernel.get_value())
    np.testing.assert_array_equal(student.layers[1].ffn_out.kernel.get_value(),
                                  teacher.layers[2].ffn_out.kernel.get_value())
    logits = student.mlm_logits(jnp.ones((2, 5, 32)))
    assert logits.shape == (2, 5, 80)


def test_teacher_init_errors_name_the_field(teacher):
    with pytest.raises(ValueError, match="hidden_size"):
        make_student(TEACHER_CFG, num_layers=2, hidden_size=16, num_heads=4, init="teacher", teacher_model=teacher,
                     rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="teacher_model"):
        make_student(TEACHER_CFG, num_layers=2, init="teacher", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"teacher_layers \[6\] out of range"):
        make_student(TEACHER_CFG, num_layers=2, init="teacher", teacher_layers=[0, 6], teacher_model=teacher,
                     rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="teacher_layers has 1 entries"):
        make_student(TEACHER_CFG, num_layers=2, init="teacher", teacher_layers=[0], teacher_model=teacher,
                     rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="init='copy'"):
        make_student(TEACHER_CFG, num_layers=2, init="copy", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("with_mlm_head", [False, True])
def test_hf_name_table_covers_every_parameter_once(family, with_mlm_head):
    cfg = TEACHER_CFG.replace(family=family, num_layers=2, with_mlm_head=with_mlm_head)
    model = Encoder(cfg, rngs=nnx.Rngs(0))
    params = {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    table = [tn.path for tn in encoder_tensor_names(cfg)]
    assert len(table) == len(set(table)) and set(table) == params
    hf_names = [tn.hf for tn in encoder_tensor_names(cfg)]
    assert len(hf_names) == len(set(hf_names))
