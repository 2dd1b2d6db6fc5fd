"""The tiny trainer set-up shared by the end-to-end trainer tests (test_train, test_run_safety):
a random 4x32 BERT teacher with the real WordPiece tokenizer, its tokenized builtin corpus, the
8-device reference run and the config helpers. Fixtures are session-scoped and registered in
conftest.py, so every module reuses one teacher, one corpus and one reference run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tiny_models import save_tiny_bert

REPO = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 6


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A random 4x32 BertForMaskedLM with the real uncased WordPiece tokenizer, as an HF directory."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_teacher"), num_layers=4, hidden_size=32, num_heads=4,
                          intermediate_size=64, with_mlm_head=True)


@pytest.fixture(scope="session")
def compilation_cache() -> str:
    """The test session's persistent compilation cache (conftest.py sets JAX_COMPILATION_CACHE_DIR):
    the runs compile the same step many times (reference, killed, resumed, other processes), as a
    restarted pod job would, and load it from there."""
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory, tiny_teacher) -> str:
    """The tokenized builtin corpus, built once (later runs and processes only read it)."""
    from distill_jax import data

    cache = str(tmp_path_factory.mktemp("data_cache"))
    cfg = tiny_config(tiny_teacher, cache)
    data.build_packed_corpus(cfg.data, data.load_tokenizer(str(tiny_teacher)))
    return cache


@pytest.fixture(scope="session")
def run_8dev(tmp_path_factory, tiny_teacher, data_cache, compilation_cache):
    """The uninterrupted reference run, 8 devices as data=2 x fsdp=2 x tensor=2."""
    from distill_jax.train import run_training

    workdir = tmp_path_factory.mktemp("run_8dev")
    return run_training(tiny_config(tiny_teacher, data_cache, compilation_cache, data=2, fsdp=2, tensor=2), str(workdir))


def tiny_config(teacher_dir: Path, cache_dir: str, compilation_cache: str = "", **mesh):
    from configs import common

    c = common.base_config()
    c.teacher.name = str(teacher_dir)
    c.student.num_layers = 2
    c.student.hidden_size = 16
    c.student.num_heads = 2
    c.student.intermediate_size = 32
    c.objective.minilmv2 = dict(weight=1.0, relation_heads=4)
    c.objective.hs = dict(weight=0.5, map="uniform_cons")  # 16 -> 32: learned projections
    c.data.source = "builtin"
    c.data.max_documents = 40
    c.data.seq_len = 32
    c.data.cache_dir = cache_dir
    c.batch_size = 8
    c.total_steps = TOTAL_STEPS
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 2
    c.log_every = 1
    c.checkpoint_every = 2
    c.keep_checkpoints = 2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh.get("data", -1), mesh.get("fsdp", 1), mesh.get("tensor", 1)
    c.mesh.devices = mesh.get("devices", 0)
    c.compilation_cache_dir = compilation_cache
    return c


def write_config_file(path: Path, config) -> Path:
    """A config file main.py can load (--config=<file>), holding exactly `config`."""
    (path.parent / "tiny_config.json").write_text(json.dumps(config.to_dict()))
    path.write_text(
        "import json, os\nimport ml_collections\n\n"
        "def get_config(arg=None):\n"
        "    here = os.path.dirname(os.path.abspath(__file__))\n"
        "    with open(os.path.join(here, 'tiny_config.json')) as f:\n"
        "        return ml_collections.ConfigDict(json.load(f))\n")
    return path


def subprocess_env(num_devices: int) -> dict:
    env = dict(os.environ)
    env.update(JAX_NUM_CPU_DEVICES=str(num_devices), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    return env


def logged_losses(result) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in _history(result.summary["workdir"])}


def _history(workdir: str) -> list[dict]:
    return json.loads(Path(workdir, "checkpoints", "history.json").read_text())
