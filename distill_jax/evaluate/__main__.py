"""`python -m distill_jax.evaluate --config=configs/glue.py:task=rte,model=<dir> --workdir=<dir>`:
the GLUE driver without main.py (same flags, same output)."""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/glue.py[:args]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for runs/ and the result table")


def main(argv):
    del argv
    from distill_jax.evaluate import run_from_config

    config = _CONFIG.value
    if config.get("mode", "glue") != "glue":
        raise app.UsageError(f"config.mode={config.mode!r}: python -m distill_jax.evaluate runs GLUE configs only")
    run_from_config(config, _WORKDIR.value or config.get("output_dir") or "")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
