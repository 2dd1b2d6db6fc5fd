"""The TPU plan (python -m distill_jax.plan): Cloud TPU names map to libtpu topologies as MaxText
maps them, a tiny recipe compiles for a real v5e topology through libtpu from a config.json alone,
the collectives it reports carry the gradient bytes, a step too big for HBM is reported as not
fitting with XLA's numbers, --search finds the microbatch count that fits, and bad input is one
line. (The plan on fake CPU devices against train.py's own compiled step: tests/test_train.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import common
from distill_jax import plan

REPO = Path(__file__).resolve().parents[1]


def _libtpu():
    try:
        import libtpu  # noqa: F401
    except ImportError:
        pytest.skip('libtpu is not installed (pip install "libtpu==0.0.42.*")')


def write_bert_shapes(out: Path, hidden_size: int = 32, intermediate_size: int = 64,
                      max_position_embeddings: int = 64) -> Path:
    """A 2-layer, 4-head BERT of this width as nothing but a config.json in `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 512, "hidden_size": hidden_size, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings}))
    return out


@pytest.fixture(scope="module")
def shapes_only_teacher(tmp_path_factory) -> Path:
    """A teacher that is nothing but a config.json (no weights, no tokenizer): all a plan needs."""
    return write_bert_shapes(tmp_path_factory.mktemp("shapes_only_teacher"))


def tiny_recipe(teacher: Path, batch_size: int = 8):
    c = common.base_config()
    c.teacher.name = str(teacher)
    c.student.num_layers, c.student.hidden_size = 1, 16
    c.student.num_heads, c.student.intermediate_size = 2, 32
    c.objective.minilmv2 = dict(weight=1.0, relation_heads=4)
    c.data.seq_len = 64
    c.batch_size = batch_size
    return c


@pytest.mark.parametrize("name, libtpu_name, chips", [
    ("v4-8", "v4:2x2x1", 4), ("v4-32", "v4:2x2x4", 16), ("v4-128", "v4:4x4x4", 64),
    ("v4-4096", "v4:8x16x16", 2048), ("v5p-128", "v5:4x4x4", 64), ("v5p-1024", "v5:8x8x8", 512),
    ("v5e-1", "v5e:1x1", 1), ("v5e-16", "v5e:4x4", 16), ("v5e-128", "v5e:8x16", 128),
    ("v5e-256", "v5e:16x16", 256), ("v5litepod-8", "v5e:2x4", 8), ("v6e-64", "v6e:8x8", 64),
])
def test_cloud_tpu_names_map_to_libtpu_topologies_as_maxtext(name, libtpu_name, chips):
    # Reference: MaxText's accelerator_to_spec_map.py (v4/v5p names count TensorCores, 2 per chip).
    topo = plan.parse_topology(name)
    assert (topo.libtpu_name, topo.chips, topo.platform) == (libtpu_name, chips, "tpu")
    assert topo.megacore == name.startswith(("v4", "v5p"))


def test_libtpu_and_cpu_names_pass_through():
    assert plan.parse_topology("v5e:2x2").chips == 4
    assert plan.parse_topology("v5:2x2x2").generation == "v5p"
    assert plan.parse_topology("cpu:8") == plan.Topology(name="cpu:8", platform="cpu", chips=8)


@pytest.mark.parametrize("name, message", [
    ("v5e-12", r"--topology='v5e-12': v5e slices come in sizes 1, 4, 8"),
    ("v4-6", r"--topology='v4-6': v4 slices come in sizes 8, 16"),
    ("tpu-v9-8", r"--topology='tpu-v9-8' unknown: use a Cloud TPU name"),
])
def test_unknown_topologies_are_one_line(name, message):
    with pytest.raises(ValueError, match=message) as info:
        plan.parse_topology(name)
    assert "\n" not in str(info.value)


def test_tiny_recipe_on_v5e_4_from_config_json_alone(shapes_only_teacher):
    _libtpu()
    result = plan.plan_config(tiny_recipe(shapes_only_teacher), plan.parse_topology("v5e-4"))
    assert result["fits"] is True and result["chips"] == 4
    assert result["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and result["rows_per_chip"] == 2
    # v5e: 16 GB of HBM per chip (Cloud TPU datasheet), of which XLA lets a program use 15.75 GiB.
    assert result["hbm_bytes"] == 17_200_000_000
    assert result["hbm_usable_bytes"] == pytest.approx(15.75 * 2**30, rel=1e-3)
    per_chip = result["per_chip"]
    # Pure data parallelism: every chip holds the whole float32 student, counted from the shapes.
    h, f, v, p = 16, 32, 512, 64
    student_params = (v + p + 2) * h + 2 * h + (4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h) \
        + (h * h + h)  # embeddings + LN, one layer, pooler
    assert per_chip["student_params"] == 4 * student_params
    assert per_chip["optimizer_state"] >= 2 * per_chip["student_params"]  # Adam's mu and nu
    assert 0 < per_chip["total"] <= result["hbm_usable_bytes"]
    assert result["headroom_bytes"] == result["hbm_usable_bytes"] - per_chip["total"]
    # Data parallelism all-reduces the float32 gradients once per step, except those XLA knows are
    # zero: MiniLMv2 reads only the last layer's Q/K/V, so its attention output, FFN and norms, and
    # the pooler, get none. What is left moves, plus a few float32 scalars (the metrics).
    unused = (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h + (h * h + h)
    reduce = result["collectives"]["all-reduce"]
    assert 4 * (student_params - unused) <= reduce["bytes_per_step"] <= 4 * (student_params - unused) + 64
    assert result["flops_per_step"] > 0 and result["step_s_at_peak"] > 0


def test_attention_auto_takes_the_splash_kernel_on_tpu_per_chip(tmp_path):
    """config.attention_impl='auto' (the default): on a TPU mesh, for sequences the kernel's
    128-token tile divides, the frozen teacher runs the Pallas splash kernel inside a shard_map over
    the batch axes (one custom call per chip, no batch gathered), the student too once its attention
    dropout is 0; 'xla' keeps XLA's attention, and so does 'auto' for 64-token sequences."""
    _libtpu()
    from distill_jax import train_setup

    teacher = write_bert_shapes(tmp_path / "teacher", max_position_embeddings=128)
    devices = plan.topology_devices(plan.parse_topology("v5e-4"))

    def build(**changes):
        config = tiny_recipe(teacher)
        config.data.seq_len = 128
        for field, value in changes.items():
            section, _, name = field.rpartition(".")
            (config[section] if section else config)[name] = value
        mesh = train_setup.make_config_mesh(config, devices)
        hf, source = plan.teacher_config_json(config.teacher.name)
        setup = train_setup.build_train_setup(config, mesh, teacher_hf=hf, abstract=True, teacher_source=source)
        return setup, setup.lower().compile().as_text()

    # Two student layers: the first one's attention output feeds the last layer's Q/K/V, which
    # MiniLMv2 reads (a last layer's attention output is unused, and XLA drops it).
    shipped, hlo = build(**{"student.num_layers": 2})
    assert shipped.attention_paths() == {"teacher": "splash", "student": "explicit (student.attention_dropout=0.1)"}
    assert "tpu_custom_call" in hlo and "all-gather" not in hlo
    no_dropout, hlo_both = build(**{"student.num_layers": 2, "student.attention_dropout": 0.0})
    assert no_dropout.attention_paths() == {"teacher": "splash", "student": "splash"}
    # + the student's kernels: forward, and the backward's dq and dkv.
    assert hlo_both.count("tpu_custom_call") >= hlo.count("tpu_custom_call") + 3
    xla, hlo_xla = build(attention_impl="xla")
    assert xla.attention_paths()["teacher"] == "jax.nn.dot_product_attention"
    assert "tpu_custom_call" not in hlo_xla
    short, hlo_short = build(**{"data.seq_len": 64})
    assert short.attention_paths()["teacher"] == "jax.nn.dot_product_attention"
    assert "tpu_custom_call" not in hlo_short


def test_the_frozen_teacher_is_copied_per_fsdp_group_unless_asked(tmp_path):
    """config.teacher.shard_over_fsdp=False (the default): the teacher's parameters keep a full copy
    per fsdp group, so its matmuls need no collective; True shards them like the student's, and the
    compiled step (v5e-4, data 2 x fsdp 2) gathers them, moving several times the bytes."""
    _libtpu()
    teacher = write_bert_shapes(tmp_path / "teacher", hidden_size=64, intermediate_size=256)
    topo = plan.parse_topology("v5e-4")
    results = {}
    for shard in (False, True):
        config = tiny_recipe(teacher, batch_size=16)
        config.mesh.data, config.mesh.fsdp = 2, 2
        config.teacher.shard_over_fsdp = shard
        results[shard] = plan.plan_config(config, topo)
    # float32 teacher: embeddings (512 + 64 + 2 rows) + LN, 2 layers, pooler; all of it per chip.
    h, f = 64, 256
    teacher_params = (512 + 64 + 2) * h + 2 * h + 2 * (4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h) \
        + (h * h + h)
    assert results[False]["per_chip"]["teacher_params"] == 4 * teacher_params
    assert results[True]["per_chip"]["teacher_params"] < 4 * teacher_params / 1.9
    moved = {k: sum(c["bytes_per_step"] for c in r["collectives"].values()) for k, r in results.items()}
    assert moved[True] > 2 * moved[False], moved


def test_attention_choices_are_checked_in_one_line(shapes_only_teacher):
    from distill_jax import train_setup

    config = tiny_recipe(shapes_only_teacher)
    config.attention_impl = "flash"
    with pytest.raises(ValueError, match=r"^config.attention_impl='flash': use one of 'auto', 'xla'"):
        train_setup.check_config(config)
    resolve = train_setup.resolve_attention_impl
    assert resolve("auto", "tpu", "float32", 32, 512) == "splash"
    assert resolve("auto", "tpu", "float32", 32, 64) is None  # padded to the 128-token tile: XLA's
    assert resolve("auto", "cpu", "bfloat16", 64, 512) == "heads_first"
    assert resolve("xla", "cpu", "float32", 64, 512) is None
    # cuDNN's fused attention takes bf16/fp16 and head sizes that are multiples of 8 up to 128.
    assert resolve("auto", "gpu", "bfloat16", 64, 512) == "cudnn"
    assert resolve("auto", "gpu", "float32", 64, 512) is None
    assert resolve("auto", "gpu", "bfloat16", 256, 512) is None
    assert resolve("xla", "tpu", "bfloat16", 64, 512) is None
    with pytest.raises(ValueError, match=r"config.attention_impl='splash' needs TPU devices \(these are cpu\)"):
        resolve("splash", "cpu", "float32", 64, 512)
    with pytest.raises(ValueError, match=r"config.attention_impl='cudnn' needs NVIDIA GPUs \(these are tpu\)"):
        resolve("cudnn", "tpu", "bfloat16", 64, 512)


@pytest.mark.slow  # ~100 s on 2 loaded cores: the fitting 2-microbatch step is a big compile
def test_a_step_too_big_for_hbm_does_not_fit_and_search_finds_the_microbatches(shapes_only_teacher):
    """131072 x 64 rows of a tiny MiniLMv2 step need ~25 GiB of temporaries per v5e chip; two
    microbatches halve the activations that are live at once."""
    _libtpu()
    topo = plan.parse_topology("v5e-4")
    devices = plan.topology_devices(topo)
    config = tiny_recipe(shapes_only_teacher, batch_size=4 * 2**15)
    hf, source = plan.teacher_config_json(config.teacher.name)
    first = plan.plan_config(config, topo, devices, teacher_hf=hf, teacher_source=source)
    assert first["fits"] is False
    oom = first["out_of_memory"]
    assert oom["usable_bytes"] == pytest.approx(15.75 * 2**30, rel=1e-3)
    assert oom["required_bytes"] > oom["usable_bytes"]
    assert plan.format_report(first).count("does not fit") == 1
    found = plan.search(config, topo, devices, teacher_hf=hf, teacher_source=source, first=first,
                        log=lambda _: None)
    assert found["smallest_microbatches"] == 2
    assert "--config.microbatches=2" in plan.format_search(found)


def test_shape_errors_are_named_before_compiling(shapes_only_teacher):
    """What the run would refuse, the plan refuses from shapes alone (no weights to copy here)."""
    config = tiny_recipe(shapes_only_teacher)
    config.student.init = "teacher"  # widths 16 vs the teacher's 32
    with pytest.raises(ValueError, match=r"init='teacher' needs the student's hidden_size \(16\)"):
        plan.plan_config(config, plan.parse_topology("cpu:8"))
    config = tiny_recipe(shapes_only_teacher, batch_size=12)
    with pytest.raises(ValueError, match=r"config\.batch_size=12 / config\.microbatches=1 = 12 rows"):
        plan.plan_config(config, plan.parse_topology("cpu:8"))


def test_collectives_walk_while_bodies_and_count_async_pairs_once():
    hlo = """HloModule m, entry_computation_layout={()->()}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%body (p: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %p = (s32[], f32[1024]{0}) parameter(0)
  %x = f32[1024]{0} get-tuple-element(%p), index=1
  %ar = f32[1024]{0} all-reduce(%x), channel_id=7, replica_groups=[1,4]<=[4], to_apply=%add
  ROOT %t = (s32[], f32[1024]{0}) tuple(%i, %ar)
}

%cond (p.1: (s32[], f32[1024])) -> pred[] {
  %p.1 = (s32[], f32[1024]{0}) parameter(0)
  ROOT %lt = pred[] constant(true)
}

ENTRY %main (w: bf16[256,64]) -> f32[1024] {
  %w = bf16[256,64]{1,0} parameter(0)
  %ags = (bf16[256,64]{1,0}, bf16[1024,64]{1,0}) all-gather-start(%w), channel_id=3, dimensions={0}
  %agd = bf16[1024,64]{1,0} all-gather-done(%ags)
  %init = (s32[], f32[1024]{0}) tuple(%c, %z)
  %loop = (s32[], f32[1024]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  ROOT %r = f32[1024]{0} get-tuple-element(%loop), index=1
}
"""
    summary = plan.summarise_collectives(plan.collectives(hlo))
    assert summary == {"all-gather": {"count": 1, "bytes_per_step": 1024 * 64 * 2},
                       "all-reduce": {"count": 4, "bytes_per_step": 4 * 1024 * 4}}


def test_out_of_memory_message_is_parsed():
    text = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
            "temporaries (14.12G) exceeds available HBM (15.75G).")
    oom = plan.parse_out_of_memory(text)
    assert oom["required_bytes"] == int(14.12 * 2**30) and oom["usable_bytes"] == int(15.75 * 2**30)


def test_shipped_teacher_shapes_are_the_hub_configs():
    """bert-base-uncased's shapes are transformers' BertConfig defaults; the shipped files load as
    EncoderConfigs of the published sizes."""
    import transformers

    from distill_jax.models import EncoderConfig
    from distill_jax.models.hf_io import known_hub_config

    bert = known_hub_config("bert-base-uncased")
    reference = transformers.BertConfig().to_dict()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps"):
        assert bert[key] == reference[key], key
    sizes = {name: EncoderConfig.from_hf_dict(known_hub_config(name))
             for name in ("bert-large-uncased", "roberta-base", "xlm-roberta-base", "xlm-roberta-large")}
    assert (sizes["bert-large-uncased"].num_layers, sizes["bert-large-uncased"].hidden_size) == (24, 1024)
    assert sizes["roberta-base"].vocab_size == 50265 and sizes["roberta-base"].max_seq_len == 512
    assert sizes["xlm-roberta-base"].vocab_size == sizes["xlm-roberta-large"].vocab_size == 250002
    assert known_hub_config("FacebookAI/xlm-roberta-base") == known_hub_config("xlm-roberta-base")
    assert known_hub_config("someone/bert-base-uncased") is None


def _cli(*args, timeout=120):
    env = {**os.environ, "TPU_WORKER_HOSTNAMES": "localhost", "PYTHONPATH": str(REPO),
           "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "distill_jax.plan", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--topology=v5e-12"], "--topology='v5e-12': v5e slices come in sizes"),
    (["--topology=cpu:4", "--config.mesh.data=3"], "mesh data*fsdp*tensor = 3*1*1 = 3 but 4 devices"),
    (["--topology=v5e-4", "--config.mesh.data=3"], "mesh data*fsdp*tensor = 3*1*1 = 3 but 4 devices"),
    (["--topology=cpu:4", "--config.batch_size=6"], "config.batch_size=6 / config.microbatches=1 = 6 rows"),
])
def test_cli_errors_are_one_line(args, message):
    proc = _cli("--config=configs/quickstart.py", *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_cli_plans_the_quickstart_on_fake_cpu_devices(tmp_path):
    out = tmp_path / "plan.json"
    proc = _cli("--config=configs/quickstart.py", "--topology=cpu:4", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["chips"] == 4 and result["fits"] is None  # no HBM verdict for CPU devices
    assert "per chip:" in proc.stdout and "analytic FLOPs per step" in proc.stdout
    # On CPU the arguments are exactly the shards the plan counts (TPU layouts pad them), less the
    # inputs jit drops because the step never reads them: MiniLMv2 on the teacher's last layer
    # reads its Q/K/V only, so that layer's attention output, FFN and norms and the pooler go
    # (all-MiniLM-L6-v2: width 384, FFN 1536, float32).
    parts = result["per_chip"]
    held = sum(parts[k] for k in ("student_params", "aux_params", "teacher_params",
                                  "optimizer_state", "batch")) + 4  # + the int32 step
    d, f = 384, 1536
    unread = 4 * ((d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d + (d * d + d))
    assert result["memory"]["arguments"] == held - unread
    assert np.isfinite(result["flops_per_step"])


def test_plan_table_covers_every_recipe_plan_line():
    """docs/results/plan.md's table (python -m benchmarks.plan_table --write_doc) has a row for
    every `python -m distill_jax.plan` line in the recipes' docstrings, at that slice."""
    from benchmarks.plan_table import PLAN_MARKERS, PLAN_PAGE, recipe_plans

    start, end = PLAN_MARKERS
    table = PLAN_PAGE.read_text().split(start, 1)[1].split(end, 1)[0]
    plans = recipe_plans()
    assert len(plans) >= 6
    for recipe, arg, topology in plans:
        name = f"`{recipe}{':' + arg if arg else ''}`"
        assert any(line.startswith(f"| {name} | {topology} ") for line in table.splitlines()), name


@pytest.mark.parametrize("kind, peak", [
    ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v4", 275e12), ("TPU v6 lite", 918e12), ("TPU v3", 61.5e12), ("TPU v2", 22.5e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA A10", 125e12),
    ("NVIDIA A10G", None), ("NVIDIA L40S", None), ("cpu", None),
])
def test_one_peak_table_matches_device_kinds_exactly(kind, peak):
    """JAX's device_kind strings: v5p reports "TPU v5", v5e "TPU v5 lite"; A10 must not match
    A100 / A10G, L4 not L40S. v2/v3 list one device per TensorCore (half the chip's figure)."""
    from distill_jax.metrics import datasheet_peak_flops

    assert datasheet_peak_flops(kind) == peak


@pytest.mark.parametrize("name", ["v4-8", "v5p-8", "v5e-4", "v6e-4"])
def test_tpu_peaks_agree_with_the_pallas_chip_table(name):
    """The datasheet table (MFU, the plan's step-time floor) against jax.experimental.pallas.tpu's
    own chip figures, per JAX device (megacore v4/v5p: the whole chip)."""
    from distill_jax.metrics import datasheet_peak_flops

    topo = plan.parse_topology(name)
    assert datasheet_peak_flops(f"TPU {topo.generation}") == pytest.approx(
        plan.chip_info(topo).bf16_flops_per_s, rel=0.005)
