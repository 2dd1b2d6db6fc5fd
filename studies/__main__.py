"""`python -m studies`: the distillation-methods study (studies/driver.py) from a config.

    python -m studies --workdir=$HOME/.cache/distill_jax/study/cpu --config.report_dir=docs/study
    python -m studies --config=configs/study.py:preset=cpu,student=3x192 --config.report_dir=docs/study_3x192 \\
        --workdir=$HOME/.cache/distill_jax/study/cpu_3x192

Without --config it runs configs/study.py (its default preset, cpu). The same run as
`python main.py --config=configs/study.py:<args> --workdir=<dir>`: the flags, `--config.*`
overrides, multi-process start-up and one-line errors of distill_jax/cli.py. A config whose
config.mode is not 'study' is refused (this usage, then one line naming the mode).
"""

from __future__ import annotations

import os
import sys

STUDY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "study.py")


def main(argv: list[str] | None = None) -> None:
    from distill_jax import cli

    argv = list(sys.argv if argv is None else argv)
    if not any(a in ("--config", "-config") or a.startswith(("--config=", "-config=")) for a in argv[1:]):
        argv.insert(1, f"--config={STUDY_CONFIG}")
    # This entry runs one mode: cli.main refuses any other config.mode with the modes it knows.
    cli.MODES = {"study": "studies.driver:run_study"}
    cli.run(argv)


if __name__ == "__main__":
    main()
