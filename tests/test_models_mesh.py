"""Encoder under jit / split-merge, dropout keys, dtypes, and sharded creation on an 8-device CPU mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from distill_jax.models import (Encoder, EncoderConfig, SequenceClassifier, create_sharded, logical_axes_of,
                                state_shardings)
from distill_jax.sharding import DEFAULT_RULES, batch_sharding, logical_to_mesh_spec, make_mesh

CFG = EncoderConfig(family="bert", vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=32, with_mlm_head=True)


def batch(b=4, s=16, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, CFG.vocab_size, (b, s)).astype(np.int32)
    mask = np.ones((b, s), np.int32)
    mask[1, s // 2:] = 0
    ids[mask == 0] = 0
    return jnp.asarray(ids), jnp.asarray(mask)


def test_every_param_has_known_logical_axes():
    model = Encoder(CFG, rngs=nnx.Rngs(0))
    known = {"vocab", "embed", "mlp", "heads", "kv", "positions", "types", "norm", "classes"}
    clf = SequenceClassifier(model, 3, rngs=nnx.Rngs(1))
    flat = nnx.to_flat_state(nnx.state(clf, nnx.Param))
    assert len(flat) > 0
    for path, var in flat:
        axes = logical_axes_of(var)
        assert axes is not None and len(axes) == var.get_value().ndim, path
        assert set(axes) <= known, (path, axes)


def test_split_merge_inside_jit_pure_step_with_dropout_key():
    model = Encoder(CFG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    ids, mask = batch()

    @jax.jit
    def step(state, ids, mask, key):
        def loss_fn(params):
            m = nnx.merge(graphdef, params)
            out = m(ids, mask, dropout_rng=key)
            return jnp.mean(jnp.square(out.hidden_states[-1])) + jnp.mean(m.mlm_logits(out.hidden_states[-1][:, :2]))
        return jax.value_and_grad(loss_fn)(state)

    loss_a, grads = step(state, ids, mask, jax.random.key(1))
    loss_b, _ = step(state, ids, mask, jax.random.key(1))
    loss_c, _ = step(state, ids, mask, jax.random.key(2))
    assert float(loss_a) == float(loss_b) and float(loss_a) != float(loss_c)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
    # gradients reach the embeddings, every layer and the MLM head (tied decoder included)
    assert float(jnp.abs(grads["embeddings"]["word"]["embedding"][...]).max()) > 0
    assert float(jnp.abs(grads["layers"][0]["attention"]["query"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(grads["mlm_head"]["bias"][...]).max()) > 0


def test_deterministic_call_is_dropout_free_and_matches_jit():
    model = Encoder(CFG, rngs=nnx.Rngs(0))
    ids, mask = batch()
    eager = model(ids, mask)
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda st, i, m: nnx.merge(graphdef, st)(i, m))(state, ids, mask)
    for a, b in zip(eager.hidden_states, jitted.hidden_states):
        np.testing.assert_allclose(a, b, atol=1e-5)
    dropped = model(ids, mask, dropout_rng=jax.random.key(0))
    assert float(jnp.abs(dropped.hidden_states[0] - eager.hidden_states[0]).max()) > 1e-3
    # dropout fraction on the embedding output is about hidden_dropout (0.1)
    zero_frac = float(jnp.mean(dropped.hidden_states[0] == 0))
    assert 0.05 < zero_frac < 0.15


def test_bf16_compute_with_f32_params_tracks_f32():
    f32 = Encoder(CFG, rngs=nnx.Rngs(0))
    bf16 = Encoder(CFG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert bf16.layers[0].ffn_in.kernel.get_value().dtype == jnp.float32
    ids, mask = batch()
    a, b = f32(ids, mask, output_mlm_logits=True), bf16(ids, mask, output_mlm_logits=True)
    assert b.hidden_states[-1].dtype == jnp.bfloat16 and b.queries[0].dtype == jnp.bfloat16
    assert b.mlm_logits.dtype == jnp.float32
    assert float(jnp.abs(a.hidden_states[-1] - b.hidden_states[-1].astype(jnp.float32)).max()) < 0.1
    bf16_params = Encoder(CFG.replace(param_dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert bf16_params.embeddings.word.embedding.get_value().dtype == jnp.bfloat16


def test_created_sharded_on_fsdp_tensor_mesh_and_forward_matches_unsharded():
    assert jax.device_count() == 8
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded = create_sharded(lambda: Encoder(CFG, rngs=nnx.Rngs(0)), mesh)
    plain = Encoder(CFG, rngs=nnx.Rngs(0))

    expected = state_shardings(sharded, mesh)
    flat_expected = dict(nnx.to_flat_state(expected))
    plain_flat = dict(nnx.to_flat_state(nnx.state(plain)))
    for path, var in nnx.to_flat_state(nnx.state(sharded)):
        value = var.get_value()
        spec = logical_to_mesh_spec(logical_axes_of(var), DEFAULT_RULES)
        assert value.sharding.is_equivalent_to(NamedSharding(mesh, spec), value.ndim), path
        assert flat_expected[path].get_value().spec == spec
        # jit may fuse scale*normal differently from eager: equal to float32 rounding
        np.testing.assert_allclose(value, plain_flat[path].get_value(), atol=1e-7, err_msg=str(path))
    ffn = sharded.layers[0].ffn_in.kernel.get_value()
    assert ffn.sharding.spec == P("fsdp", "tensor")
    assert ffn.addressable_shards[0].data.shape == (CFG.hidden_size // 2, CFG.intermediate_size // 2)
    words = sharded.embeddings.word.embedding.get_value()
    assert words.sharding.spec == P("tensor", "fsdp")

    ids, mask = batch(b=4)
    ids_s = jax.device_put(ids, batch_sharding(mesh))
    mask_s = jax.device_put(mask, batch_sharding(mesh))
    graphdef, state = nnx.split(sharded)
    fwd = jax.jit(lambda st, i, m: nnx.merge(graphdef, st)(i, m, output_mlm_logits=True))
    out_s = fwd(state, ids_s, mask_s)
    out_p = plain(ids, mask, output_mlm_logits=True)
    for a, b in zip(out_s.hidden_states, out_p.hidden_states):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(out_s.mlm_logits, out_p.mlm_logits, atol=1e-5)


def test_load_pretrained_onto_mesh(tmp_path):
    from distill_jax.models import export_pretrained, load_pretrained, load_sequence_classifier
    plain = Encoder(CFG, rngs=nnx.Rngs(4))
    export_pretrained(plain, tmp_path)
    mesh = make_mesh(data=-1, fsdp=2, tensor=2)
    # The loaders take shardings (here: the logical-axis rules applied to the abstract models).
    abstract = nnx.eval_shape(lambda: Encoder(CFG, rngs=nnx.Rngs(0)))
    model, _, report = load_pretrained(tmp_path, shardings=nnx.to_pure_dict(state_shardings(abstract, mesh)))
    assert sorted(report.missing) == ["pooler.dense.bias", "pooler.dense.weight"]  # an MLM export has none
    q = model.layers[1].attention.query.kernel.get_value()
    assert q.sharding.spec == P("fsdp", "tensor")
    np.testing.assert_array_equal(q, plain.layers[1].attention.query.kernel.get_value())
    no_head = CFG.replace(with_mlm_head=False)
    abstract_clf = nnx.eval_shape(lambda: SequenceClassifier(Encoder(no_head, rngs=nnx.Rngs(0)), 3,
                                                             rngs=nnx.Rngs(0)))
    clf, _, _ = load_sequence_classifier(tmp_path, num_labels=3,
                                         shardings=nnx.to_pure_dict(state_shardings(abstract_clf, mesh)))
    assert clf.head.out_proj.kernel.get_value().sharding.spec == P("fsdp", None)
    assert clf.encoder.layers[0].ffn_out.kernel.get_value().sharding.spec == P("tensor", "fsdp")


def test_bad_config_values_fail_with_field_name():
    with pytest.raises(ValueError, match="num_heads=5"):
        CFG.replace(num_heads=5)
    with pytest.raises(ValueError, match="family='gpt2'"):
        CFG.replace(family="gpt2")
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        CFG.replace(attention_impl="flash")
    with pytest.raises(ValueError, match="dtype='int32'"):
        CFG.replace(dtype="int32")
    with pytest.raises(ValueError, match="exceeds the position table"):
        Encoder(CFG, rngs=nnx.Rngs(0))(jnp.ones((1, 40), jnp.int32))


def test_single_token_type_families_ignore_segment_ids():
    roberta = Encoder(CFG.replace(family="roberta", type_vocab_size=1, pad_token_id=1), rngs=nnx.Rngs(0))
    ids, mask = batch()
    plain = roberta(ids, mask).hidden_states[-1]
    with_types = roberta(ids, mask, jnp.ones_like(ids)).hidden_states[-1]
    assert bool(jnp.all(jnp.isfinite(with_types)))
    np.testing.assert_array_equal(plain, with_types)
