#!/usr/bin/env bash
# Runs the tests: creates/reuses the virtual environment, then pytest.
#   bash scripts/test.sh          what CI runs (.ci/run): every test not marked slow
#   bash scripts/test.sh --all    also the slow end-to-end tests (multi-process runs, the pod
#                                 rehearsal, the study end to end, TPU compiles): before merging a
#                                 change to the trainer, the data path, the launcher or the plan
# Other arguments go to pytest (a later -m replaces the default one, e.g. -m slow).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/env.sh" test
cd "$repo_root"
if [[ "${1:-}" == "--all" ]]; then
  shift
  exec python -m pytest -q "$@"
fi
exec python -m pytest -q -m "not slow" "$@"
