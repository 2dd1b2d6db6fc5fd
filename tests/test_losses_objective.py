"""build_objective: config validation (before any compile), composition = the single functions'
weighted sum, what the training step must request, OD chunking (values, gradients, and no
[B, S, V]-sized array in the traced step), and equality of the jitted objective on a batch sharded
over 8 CPU devices with the unsharded one."""

import ml_collections
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from distill_jax import sharding
from distill_jax.losses import (ModelOutputs, build_objective, gather_positions, hs_loss, minilmv2_loss,
                                mlm_ce_loss, od_from_hidden, od_loss, tinybert_attention_loss)

STUDENT = {"num_layers": 2, "hidden_size": 16, "num_heads": 2}
TEACHER = {"num_layers": 4, "hidden_size": 24, "num_heads": 2}
V = 11


def outputs(rng, dims, b, s, with_logits=False):
    layers, width, heads = dims["num_layers"], dims["hidden_size"], dims["num_heads"]
    states = lambda n: tuple(jnp.asarray(rng.normal(size=(b, s, width)), jnp.float32) for _ in range(n))
    scores = tuple(jnp.asarray(rng.normal(size=(b, heads, s, s)), jnp.float32) for _ in range(layers))
    return ModelOutputs(hidden_states=states(layers + 1), queries=states(layers), keys=states(layers),
                        values=states(layers), attention_scores=scores,
                        attention_probs=tuple(jax.nn.softmax(x, -1) for x in scores))


def batch_of(rng, b, s, p):
    lengths = rng.integers(2, s + 1, size=b)
    mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int32)
    positions = np.stack([rng.choice(n, size=p, replace=n < p) for n in lengths]).astype(np.int32)
    weights = (rng.random((b, p)) < 0.8).astype(np.float32)
    return {"attention_mask": mask, "mlm_positions": positions, "mlm_weights": weights,
            "mlm_ids": rng.integers(0, V, size=(b, p)).astype(np.int32)}


# ---- validation: impossible requests name the field and the fix ---------------------------------

@pytest.mark.parametrize("cfg, student, teacher, message", [
    ({"kd": {"weight": 1.0}}, STUDENT, TEACHER, "objective.kd: unknown term"),
    ({"hs": {"weight": 1.0, "mapping": "uniform"}}, STUDENT, TEACHER, "unknown option.*mapping"),
    ({"hs": {"map": "uniform"}}, STUDENT, TEACHER, "objective.hs.weight is missing"),
    ({"hs": {"weight": -1.0}}, STUDENT, TEACHER, "objective.hs.weight=-1"),
    ({"hs": {"weight": 1.0, "map": "identity"}}, STUDENT, TEACHER, "objective.hs.map='identity' needs equal depths"),
    ({"hs": {"weight": 1.0, "map": "uniform"}}, TEACHER, STUDENT, "objective.hs.map='uniform' needs at most"),
    ({"hs": {"weight": 1.0, "map": [[1, 2], [2, 9]]}}, STUDENT, TEACHER, "teacher layer 9 is out of range"),
    ({"hs": {"weight": 1.0, "loss": "l1"}}, STUDENT, TEACHER, "objective.hs.loss='l1'"),
    ({"hs": {"weight": 1.0, "projection": "none"}}, STUDENT, TEACHER, "objective.hs.projection='none'"),
    ({"minilmv2": {"weight": 1.0, "relation_heads": 5}}, STUDENT, TEACHER,
     "relation_heads=5 does not divide the student hidden size 16"),
    ({"minilmv2": {"weight": 1.0, "relation_heads": 16}}, STUDENT, TEACHER,
     "relation_heads=16 does not divide the teacher hidden size 24.*e.g. .*8"),
    ({"minilmv2": {"weight": 1.0, "relation_heads": 4, "teacher_layer": 5}}, STUDENT, TEACHER,
     "objective.minilmv2.teacher_layer=5: out of range.*4 layers"),
    ({"minilmv2": {"weight": 1.0, "relation_heads": 4, "teacher_layer": 0}}, STUDENT, TEACHER, "teacher_layer=0"),
    ({"minilmv2": {"weight": 1.0, "relation_heads": 4, "student_layer": -3}}, STUDENT, TEACHER, "student_layer=-3"),
    ({"minilmv2": {"weight": 1.0, "relation_heads": 8, "heads_per_chunk": 3}}, STUDENT, TEACHER,
     "objective.minilmv2.heads_per_chunk=3: must be 0 .*or a divisor of relation_heads=8"),
    ({"minilmv2": {"weight": 1.0, "relation_heads": 8, "block_size": -1}}, STUDENT, TEACHER,
     "objective.minilmv2.block_size=-1: must be an int >= 0"),
    ({"minilmv2": {"weight": 1.0, "relation_heads": 4, "qq": 0, "kk": 0, "vv": 0}}, STUDENT, TEACHER,
     "all of qq, kk, vv are 0"),
    ({"minilm": {"weight": 1.0}}, STUDENT, {**TEACHER, "num_heads": 4}, "objective.minilm .*equal head counts"),
    ({"tinybert_attention": {"weight": 1.0}}, STUDENT, {**TEACHER, "num_heads": 3},
     "objective.tinybert_attention .*equal head counts"),
    ({"tinybert_attention": {"weight": 1.0, "map": [[0, 0]]}}, STUDENT, TEACHER, "layer 0 .*has no attention"),
    ({"od": {"weight": 1.0, "temperature": 0}}, STUDENT, TEACHER, "objective.od.temperature=0"),
    ({"od": {"weight": 1.0, "positions": "some"}}, STUDENT, TEACHER, "objective.od.positions='some'"),
    ({"od": {"weight": 1.0, "chunk_size": 0}}, STUDENT, TEACHER, "objective.od.chunk_size=0"),
    ({"hs": {"weight": 0.0}}, STUDENT, TEACHER, "no term has a non-zero weight"),
    ({"hs": {"weight": 1.0}}, {**STUDENT, "num_heads": 3}, TEACHER, "num_heads=3 does not divide hidden_size=16"),
    ({"hs": {"weight": 1.0}}, {"num_layers": 2, "hidden_size": 16}, TEACHER, "student_dims.num_heads=None"),
    (["hs"], STUDENT, TEACHER, "must be a dict of terms"),
])
def test_impossible_requests_raise_value_error(cfg, student, teacher, message):
    with pytest.raises(ValueError, match=message):
        build_objective(cfg, student, teacher)


def test_config_dict_and_dims_objects_are_accepted():
    cfg = {"minilmv2": {"weight": 1.0, "relation_heads": 8, "teacher_layer": -2},
           "hs": {"weight": 0.5, "map": [[1, [1, 2]], [2, 4]]}, "od": None, "mlm": {"weight": 0.0}}

    class Dims:  # any object with the three attributes, like EncoderConfig
        num_layers, hidden_size, num_heads = 4, 24, 2

    a = build_objective(ml_collections.ConfigDict(cfg), STUDENT, Dims())
    b = build_objective(cfg, STUDENT, TEACHER)
    assert a.config == b.config
    assert set(a.term_names) == {"minilmv2", "hs"}      # None and weight 0 switch a term off
    assert a.config["minilmv2"]["teacher_layer"] == 3   # -2 resolved to L_T - 1
    assert a.config["hs"]["pairs"] == ((1, (1, 2)), (2, (4,)))


def test_what_the_training_step_must_request():
    v2 = build_objective({"minilmv2": {"weight": 1.0, "relation_heads": 8}}, STUDENT, TEACHER)
    assert (v2.needs_qkv, v2.needs_attentions, v2.needs_mlm_head, v2.needs_hidden_states) == (True, False, False, False)
    assert v2.init_params(jax.random.key(0)) == {}
    v1 = build_objective({"minilm": {"weight": 1.0}}, STUDENT, TEACHER)
    assert v1.needs_attention_probs and v1.needs_attentions and not v1.needs_attention_scores
    tiny = build_objective({"tinybert_attention": {"weight": 1.0}}, STUDENT, TEACHER)
    assert tiny.needs_attention_scores and tiny.needs_attentions and not tiny.needs_attention_probs
    od = build_objective({"od": {"weight": 1.0}}, STUDENT, TEACHER)
    assert od.needs_mlm_head and od.needs_teacher_mlm_head and od.needs_mlm_batch and not od.needs_attentions
    od_all = build_objective({"od": {"weight": 1.0, "positions": "all"}}, STUDENT, TEACHER)
    assert not od_all.needs_mlm_batch
    mlm = build_objective({"mlm": {"weight": 1.0}}, STUDENT, TEACHER)
    assert mlm.needs_mlm_head and not mlm.needs_teacher_mlm_head and mlm.needs_mlm_batch
    hs = build_objective({"hs": {"weight": 1.0, "projection": "shared"}}, STUDENT, TEACHER)
    params = hs.init_params(jax.random.key(0))
    assert jax.tree.map(jnp.shape, params) == {"hs": {"shared": {"kernel": (16, 24), "bias": (24,)}}}
    direct = build_objective({"direct_minilm": {"weight": 1.0}}, STUDENT, TEACHER)
    assert set(direct.init_params(jax.random.key(0))["direct_minilm"]) == {"q", "k", "v"}


# ---- composition -------------------------------------------------------------------------------

def expected_terms(aux, student, teacher, batch, ws, wt):
    """The same terms from the single functions, with the layers the config names resolved by hand."""
    mask = batch["attention_mask"]
    s_logits = gather_positions(student.hidden_states[-1] @ ws, batch["mlm_positions"])
    t_logits = gather_positions(teacher.hidden_states[-1] @ wt, batch["mlm_positions"])
    return {
        "od": od_loss(s_logits, t_logits, batch["mlm_weights"], 2.0),
        "mlm": mlm_ce_loss(s_logits, batch["mlm_ids"], batch["mlm_weights"]),
        "hs": hs_loss(student.hidden_states, teacher.hidden_states, ((1, (2, 4)), (2, (4,))), mask,
                      projections=aux["hs"], loss="cosine"),
        "minilmv2": minilmv2_loss([student.queries[1], student.keys[1], student.values[1]],
                                  [teacher.queries[2], teacher.keys[2], teacher.values[2]], mask, 4,
                                  (1.0, 1.0, 0.5))[0],
        "tinybert_attention": tinybert_attention_loss(student.attention_scores, teacher.attention_scores,
                                                      ((1, (2,)), (2, (4,))), mask),
    }


def test_objective_is_the_weighted_sum_of_the_single_functions():
    rng = np.random.default_rng(0)
    b, s, p = 3, 8, 3
    student, teacher = outputs(rng, STUDENT, b, s), outputs(rng, TEACHER, b, s)
    batch = batch_of(rng, b, s, p)
    ws, wt = (jnp.asarray(rng.normal(size=(d, V)), jnp.float32) for d in (16, 24))
    cfg = {"od": {"weight": 0.7, "temperature": 2.0, "chunk_size": 2}, "mlm": {"weight": 0.2},
           "hs": {"weight": 1.5, "map": "uniform_last", "loss": "cosine"},
           "minilmv2": {"weight": 2.0, "relation_heads": 4, "teacher_layer": -2, "vv": 0.5},
           "tinybert_attention": {"weight": 0.3, "map": "uniform"}}
    objective = build_objective(cfg, STUDENT, TEACHER)
    aux = objective.init_params(jax.random.key(3))
    loss, terms = jax.jit(lambda a, so, to, bt: objective(a, so, to, bt, lambda h: h @ ws, lambda h: h @ wt))(
        aux, student, teacher, batch)
    expected = jax.jit(expected_terms)(aux, student, teacher, batch, ws, wt)
    for name, value in expected.items():
        np.testing.assert_allclose(float(terms[name]), float(value), rtol=1e-5, err_msg=name)
    assert {"minilmv2/qq", "minilmv2/kk", "minilmv2/vv"} <= set(terms)
    weighted = sum(cfg[name]["weight"] * float(value) for name, value in expected.items())
    np.testing.assert_allclose(float(loss), weighted, rtol=1e-5)
    # Precomputed full logits (no heads passed) give the same od / mlm values.
    with_logits = lambda o, w: o._replace(mlm_logits=o.hidden_states[-1] @ w)
    _, terms_from_logits = jax.jit(objective)(aux, with_logits(student, ws), with_logits(teacher, wt), batch)
    for name in ("od", "mlm"):
        np.testing.assert_allclose(float(terms_from_logits[name]), float(terms[name]), rtol=1e-5)


def test_od_positions_all_uses_every_non_pad_token():
    rng = np.random.default_rng(1)
    b, s = 2, 6
    student, teacher = outputs(rng, STUDENT, b, s), outputs(rng, TEACHER, b, s)
    batch = batch_of(rng, b, s, 2)
    ws, wt = (jnp.asarray(rng.normal(size=(d, V)), jnp.float32) for d in (16, 24))
    objective = build_objective({"od": {"weight": 1.0, "positions": "all", "chunk_size": 4},
                                 "mlm": {"weight": 1.0}}, STUDENT, TEACHER)
    _, terms = jax.jit(lambda so, to: objective({}, so, to, batch, lambda h: h @ ws, lambda h: h @ wt))(
        student, teacher)
    s_logits, t_logits = student.hidden_states[-1] @ ws, teacher.hidden_states[-1] @ wt
    np.testing.assert_allclose(float(terms["od"]), float(od_loss(s_logits, t_logits, batch["attention_mask"])),
                               rtol=1e-5)
    np.testing.assert_allclose(float(terms["mlm"]), float(mlm_ce_loss(
        gather_positions(s_logits, batch["mlm_positions"]), batch["mlm_ids"], batch["mlm_weights"])), rtol=1e-5)


def test_missing_aux_params_is_a_clear_error():
    rng = np.random.default_rng(2)
    objective = build_objective({"hs": {"weight": 1.0}}, STUDENT, TEACHER)
    with pytest.raises(ValueError, match=r"aux_params has no hs projections; pass objective.init_params\(rng\)"):
        objective({}, outputs(rng, STUDENT, 2, 4), outputs(rng, TEACHER, 2, 4), batch_of(rng, 2, 4, 2))


def test_missing_mlm_heads_is_a_clear_error():
    rng = np.random.default_rng(2)
    objective = build_objective({"od": {"weight": 1.0}}, STUDENT, TEACHER)
    with pytest.raises(ValueError, match="student_mlm_head="):
        objective({}, outputs(rng, STUDENT, 2, 4), outputs(rng, TEACHER, 2, 4), batch_of(rng, 2, 4, 2))


# ---- OD for big vocabularies: chunked values/gradients, no [B, S, V] in the traced step ---------

def _shapes_in(jaxpr):
    """Every intermediate shape in a jaxpr, sub-jaxprs (scan/map/remat bodies) included."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (list, tuple)) else [param]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _shapes_in(inner)


def test_chunked_od_matches_unchunked_and_never_builds_full_logits():
    rng = np.random.default_rng(3)
    b, s, p, d, vocab, chunk = 2, 32, 10, 8, 1009, 3
    hs, ht = (jnp.asarray(rng.normal(size=(b, s, d)), jnp.float32) for _ in range(2))
    ws, wt = (jnp.asarray(rng.normal(size=(d, vocab)), jnp.float32) for _ in range(2))
    positions = jnp.asarray(rng.integers(0, s, size=(b, p)), jnp.int32)
    weights = jnp.asarray(rng.random((b, p)) < 0.7, jnp.float32)
    labels = jnp.asarray(rng.integers(0, vocab, size=(b, p)), jnp.int32)

    def loss(hs, ws, chunk_size):
        out = od_from_hidden(hs, ht, positions, weights, lambda h: h @ ws, lambda h: h @ wt, temperature=2.0,
                             labels_bp=labels, chunk_size=chunk_size)
        return out["od"] + out["mlm"], out

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (_, chunked), g_chunked = grad(hs, ws, chunk)
    (_, whole), g_whole = grad(hs, ws, p)
    for name in ("od", "mlm"):
        np.testing.assert_allclose(float(chunked[name]), float(whole[name]), rtol=1e-5)
    for a, c in zip(g_chunked, g_whole):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-6)
    # Forward and backward trace: the largest vocabulary-sized array is one chunk of one model.
    for chunk_size, expected in ((chunk, b * chunk * vocab), (p, b * p * vocab)):
        jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                               static_argnums=2)(hs, ws, chunk_size)
        vocab_sized = {shape for shape in _shapes_in(jaxpr.jaxpr) if vocab in shape} - {(d, vocab), (vocab, d)}
        assert max(int(np.prod(shape)) for shape in vocab_sized) == expected, sorted(vocab_sized)


# ---- sharded over 8 CPU devices == unsharded -----------------------------------------------------

def test_sharded_batch_gives_the_unsharded_values():
    assert len(jax.devices()) == 8
    rng = np.random.default_rng(4)
    b, s, p = 8, 8, 3
    student, teacher = outputs(rng, STUDENT, b, s), outputs(rng, TEACHER, b, s)
    batch = {k: jnp.asarray(v) for k, v in batch_of(rng, b, s, p).items()}
    ws, wt = (jnp.asarray(rng.normal(size=(d, V)), jnp.float32) for d in (16, 24))
    cfg = {"od": {"weight": 1.0, "chunk_size": 2}, "mlm": {"weight": 0.1}, "hs": {"weight": 1.0},
           "minilmv2": {"weight": 1.0, "relation_heads": 8}, "minilm": {"weight": 1.0},
           "direct_minilm": {"weight": 1.0}, "tinybert_attention": {"weight": 1.0}}
    objective = build_objective(cfg, STUDENT, TEACHER)
    aux = objective.init_params(jax.random.key(0))

    def step(aux, student, teacher, batch):
        def f(aux):
            return objective(aux, student, teacher, batch, lambda h: h @ ws, lambda h: h @ wt)
        return jax.value_and_grad(f, has_aux=True)(aux)

    (loss, terms), grads = jax.jit(step)(aux, student, teacher, batch)

    mesh = sharding.make_mesh(data=4, fsdp=2, tensor=1)
    place = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
    sharded = [jax.tree.map(place, t) for t in (student, teacher, batch)]
    assert sharded[2]["attention_mask"].sharding.spec[0] == ("data", "fsdp")
    (loss_sh, terms_sh), grads_sh = jax.jit(step)(jax.device_put(aux, sharding.replicated(mesh)), *sharded)
    assert len(loss_sh.sharding.device_set) == 8
    np.testing.assert_allclose(float(loss_sh), float(loss), rtol=1e-5)
    for name in terms:
        np.testing.assert_allclose(float(terms_sh[name]), float(terms[name]), rtol=1e-5, atol=1e-7, err_msg=name)
    for a, c in zip(jax.tree.leaves(grads_sh), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-6)
