"""Configs: every recipe loads (as main.py loads it), names a valid objective for its teacher's
shape, documents its launch command, and `:runlocal` shrinks it to a CPU run without changing what
is trained."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from ml_collections import config_flags

from configs import common
from distill_jax.losses import build_objective

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("mha_l6_h384", "hs_l6_h384", "od_l6_h384", "minilm_l6_h384", "xlmr_l6_h384")


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.{name}").get_config(arg)


def check_objective(c):
    # The hub teachers' shapes as shipped for the plan (distill_jax/models/hub_configs), or the
    # quickstart's offline teacher's real config.json.
    from distill_jax.models import EncoderConfig
    from distill_jax.plan import teacher_config_json

    cfg = EncoderConfig.from_hf_dict(teacher_config_json(c.teacher.name)[0])
    teacher = dict(num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads)
    student = dict(num_layers=c.student.num_layers, hidden_size=c.student.hidden_size,
                   num_heads=c.student.num_heads)
    return build_objective(c.objective, student, teacher)


@pytest.mark.parametrize("name", RECIPES + ("quickstart",))
def test_recipe_loads_validates_and_documents_its_launch_command(name):
    c = load(name)
    module = importlib.import_module(f"configs.{name}")
    assert f"python main.py --config=configs/{name}.py" in module.__doc__
    assert c.mode == "distill"
    objective = check_objective(c)
    assert objective.term_names
    assert c.batch_size % c.microbatches == 0
    assert 0 <= c.optim.warmup_steps <= c.total_steps
    json.dumps(c.to_dict())  # serialisable: it goes into summary.json


@pytest.mark.parametrize("name", RECIPES)
def test_pod_recipe_names_the_slice_to_plan_and_its_mesh_fits_it(name):
    """Each pod recipe's docstring carries `python -m distill_jax.plan ... --topology=<slice>` (the
    table of docs/results/plan.md is generated from these lines); the recipe's mesh and batch split over that slice."""
    from benchmarks.plan_table import PLAN_LINE
    from distill_jax import sharding
    from distill_jax.plan import parse_topology

    lines = [m for m in PLAN_LINE.findall(importlib.import_module(f"configs.{name}").__doc__) if m[0] == name]
    assert lines, f"configs/{name}.py names no plan command"
    for _, arg, topology in lines:
        c, topo = load(name, arg or None), parse_topology(topology)
        data, fsdp, tensor = sharding.resolve_mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, topo.chips)
        assert (c.batch_size // c.microbatches) % (data * fsdp) == 0


def test_pod_recipes_follow_the_published_settings():
    mha = load("mha_l6_h384")
    assert (mha.student.num_layers, mha.student.hidden_size, mha.student.num_heads,
            mha.student.intermediate_size) == (6, 384, 12, 1536)
    assert mha.objective.minilmv2.relation_heads == 48 and mha.teacher.name == "bert-base-uncased"
    assert (mha.batch_size, mha.total_steps, mha.data.seq_len) == (1024, 400_000, 512)
    assert load("xlmr_l6_h384", "large").objective.minilmv2.relation_heads == 64
    assert load("minilm_l6_h384").student.num_heads == 12
    od = load("od_l6_h384")
    assert check_objective(od).needs_mlm_batch and check_objective(od).needs_teacher_mlm_head


@pytest.mark.parametrize("name", RECIPES)
def test_runlocal_shrinks_the_run_but_keeps_what_is_trained(name):
    full, local = load(name), load(name, "runlocal")
    assert local.batch_size <= 8 and local.total_steps <= 50 and local.data.seq_len <= 128
    assert local.data.source == "builtin" and local.data.max_documents > 0
    assert local.teacher.dtype == local.student.dtype == "float32"
    assert local.objective.to_dict() == full.objective.to_dict()
    assert local.student.to_dict() == dict(full.student.to_dict(), dtype="float32")
    assert local.teacher.name == full.teacher.name
    check_objective(local)


@pytest.mark.parametrize("strategy", ["last", "uniform", "uniform_cons", "uniform_last", "1:2+3:6+6:12"])
def test_hs_layer_maps(strategy):
    c = load("hs_l6_h384", f"map={strategy}")
    objective = check_objective(c)
    pairs = objective.config["hs"]["pairs"]
    if strategy == "last":
        assert [(s, tuple(t)) for s, t in pairs] == [(6, (12,))]
    elif strategy == "uniform_cons":
        assert [(s, tuple(t)) for s, t in pairs] == [(i, (2 * i - 1, 2 * i)) for i in range(1, 7)]
    elif "+" in strategy:
        assert [(s, tuple(t)) for s, t in pairs] == [(1, (2,)), (3, (6,)), (6, (12,))]
    else:
        assert len(pairs) == 6


def test_hs_identity_map_is_refused_for_unequal_depths():
    with pytest.raises(ValueError, match=r"objective\.hs\.map"):
        check_objective(load("hs_l6_h384", "map=identity"))


def test_bad_args_name_the_problem():
    with pytest.raises(ValueError, match="map='diagonal'"):
        load("hs_l6_h384", "map=diagonal")
    with pytest.raises(ValueError, match="config arg 'runlcal' unknown"):
        load("mha_l6_h384", "runlcal")


def test_parse_arg_types():
    args = common.parse_arg("steps=12,runlocal,lr=0.5,name=a:b", steps=0, runlocal=False, lr=1.0,
                            name="", flag=True)
    assert (args.steps, args.runlocal, args.lr, args.name, args.flag) == (12, True, 0.5, "a:b", True)
    assert common.parse_arg("flag=false", flag=True).flag is False


def test_main_loads_configs_with_overrides_like_the_command_line():
    """config_flags (what main.py uses): the file, its ':arg', then --config.x overrides."""
    from absl import flags

    argv = ["prog", "--config=configs/hs_l6_h384.py:map=last,runlocal", "--config.total_steps=7",
            "--config.objective.hs.loss=cosine", "--config.teacher.name=/local/bert"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)  # main.py reads sys.argv itself
    fv(argv)
    c = fv.config
    assert (c.total_steps, c.objective.hs.loss, c.objective.hs.map) == (7, "cosine", "last")
    assert c.teacher.name == "/local/bert" and c.batch_size == 8


def test_finetuning_shares_the_distillation_adamw_schema_and_its_old_names_still_set_it():
    """config.finetune.optim holds exactly distill_jax.optim.AdamW's fields, as config.optim does;
    the old command-line names (--config.finetune.adam_b1=...) set the same value; a run's
    fingerprint keeps the names its records were written with."""
    import dataclasses

    from absl import flags

    from distill_jax.evaluate import run as glue_run
    from distill_jax.optim import AdamW

    names = {f.name for f in dataclasses.fields(AdamW)}
    assert set(load("glue").finetune.optim) == names <= set(common.base_config().optim)
    argv = ["prog", "--config=configs/glue.py:task=rte", "--config.finetune.adam_b1=0.8",
            "--config.finetune.weight_decay=0.05", "--config.finetune.optim.eps=1e-8"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    recipe = glue_run.task_recipe(fv.config, "rte")
    assert recipe.optim == AdamW(b1=0.8, b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip_norm=1.0)
    assert recipe.identity() == {"epochs": 3, "batch_size": 32, "max_len": 128, "pad_multiple": 16,
                                 "group_by_length": True, "warmup_ratio": 0.1, "weight_decay": 0.05,
                                 "adam_b1": 0.8, "adam_b2": 0.999, "adam_eps": 1e-8, "grad_clip_norm": 1.0}
    with pytest.raises(ValueError, match=r"^config\.finetune\.optim\.b2=1\.0 is out of range"):
        bad = load("glue")
        bad.finetune.optim.b2 = 1.0
        glue_run.task_recipe(bad, "rte")


def test_quickstart_is_offline_and_cpu_sized():
    c = load("quickstart")
    from distill_jax.models import resolve_model_dir
    assert (resolve_model_dir(c.teacher.name) / "model.safetensors").is_file()
    assert c.data.source == "builtin" and c.teacher.dtype == "float32"
    assert c.batch_size * c.data.seq_len * c.total_steps <= 32 * 64 * 400  # minutes on 2 cores
    assert load("quickstart", "steps=50").total_steps == 50


def _parse(argv):
    from absl import flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def test_quickstart_warmup_follows_a_shortened_run_and_an_explicit_one_wins():
    """--config.total_steps=N below the default warmup (20) used to fail; the warmup is 10% of
    whatever total_steps becomes, through steps=N or --config.total_steps=N."""
    from distill_jax.optim import learning_rate_schedule

    for argv, (total, warmup) in [
            (["p", "--config=configs/quickstart.py"], (200, 20)),
            (["p", "--config=configs/quickstart.py:steps=50"], (50, 5)),
            (["p", "--config=configs/quickstart.py", "--config.total_steps=10"], (10, 1)),
            (["p", "--config=configs/quickstart.py", "--config.total_steps=10",
              "--config.optim.warmup_steps=3"], (10, 3))]:
        c = _parse(argv)
        assert (c.total_steps, c.optim.warmup_steps) == (total, warmup), argv
        assert c.to_dict()["optim"]["warmup_steps"] == warmup  # what config.json records
        learning_rate_schedule(c.optim.learning_rate, c.optim.warmup_steps, c.total_steps)
    # A warmup longer than the run names both ways out.
    with pytest.raises(ValueError, match=r"warmup_steps=20 must lie in \[0, total_steps=10\]: set "
                                         r"--config.optim.warmup_steps too, .*quickstart.py:steps=10\)$"):
        learning_rate_schedule(5e-4, 20, 10)


def test_main_rejects_an_unknown_mode(tmp_path):
    proc = subprocess.run(
        [sys.executable, "main.py", "--config=configs/quickstart.py", "--config.mode=bogus",
         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "config.mode='bogus'" in proc.stderr
