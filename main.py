"""Entry point: `python main.py --config=configs/<recipe>.py[:arg] --workdir=<dir or gs://...>`.

The same as the installed `distill-jax` command: flags, multi-process set-up and the dispatch on
config.mode live in distill_jax/cli.py. Any config field can be overridden, e.g.
`--config.total_steps=1000 --config.teacher.name=/ckpt`.
"""

from distill_jax.cli import run

if __name__ == "__main__":
    run()
