#!/usr/bin/env bash
# Runs the test suite: creates/reuses the virtual environment, then pytest. Extra args go to pytest.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/env.sh" test
cd "$repo_root"
exec python -m pytest -q "$@"
