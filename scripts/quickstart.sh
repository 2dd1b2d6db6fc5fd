#!/usr/bin/env bash
# The embedded default: distils the offline all-MiniLM-L6-v2 teacher into a 3x384 student with
# MiniLMv2 relations on the builtin corpus, on this machine's CPU (minutes on 2 cores).
# Extra args go to main.py, e.g. --config.total_steps=50.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/env.sh"
cd "$repo_root"
exec python main.py --config=configs/quickstart.py --workdir="${WORKDIR:-$repo_root/runs/quickstart}" "$@"
