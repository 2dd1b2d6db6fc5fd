"""Entry point: `python main.py --config=configs/<recipe>.py[:arg] --workdir=<dir or gs://...>`.

The same as the installed `distill-jax` command (distill_jax/cli.py: flags, multi-process set-up,
the dispatch on config.mode; `--help` lists the recipes), plus the modes of this checkout that the
wheel does not ship. Any config field can be overridden, e.g.
`--config.total_steps=1000 --config.teacher.name=/ckpt`.
"""

from distill_jax.cli import MODES, run

# Repository-level modes (their code is not in the wheel): the study, studies/.
CHECKOUT_MODES = {**MODES, "study": "studies.driver:run_study"}

if __name__ == "__main__":
    run(modes=CHECKOUT_MODES)
