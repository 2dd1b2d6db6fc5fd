#!/usr/bin/env bash
# The worker side of launch/tpu_pod.sh: what each TPU VM host runs (through `gcloud ... ssh
# --worker=all --command=...`). Shipped inside the code tarball; tpu_pod.sh --setup extracts this
# one file first to install the rest.
#
#   pod_worker.sh python [--dry-run]       print the Python >= 3.11 that setup uses (see choose_python)
#   pod_worker.sh setup --commit=C         install ~/distill_jax-C.tar as the code, then the venv
#   pod_worker.sh start --run=R [--kind=train|prepare] [--logs_to=DIR] -- CMD...
#                                          run CMD detached (its own session), log to a file
#   pod_worker.sh status|logs|stop [--run=R] [--lines=N] [--timeout=S] [--force] [--follow]
#
# Layout on each worker (all outside the shipped tree, so a second setup replaces only the code):
#   ~/distill_jax                -> ~/distill_jax_code/<commit>   (symlink, switched atomically)
#   ~/distill_jax_venv           the venv (DISTILL_JAX_VENV overrides), made with the chosen Python
#   ~/distill_jax_runs/<run>/    worker-<i>.log (appended by every launch), .pid, .exit
#   ~/distill_jax_runs/current   -> the newest run (what status/logs/stop read without --run)
#
# Environment read here (all optional):
#   DISTILL_JAX_VENV             the venv's place (default ~/distill_jax_venv)
#   DISTILL_JAX_SETUP_EXTRAS     passed to scripts/env.sh as its argument (e.g. "test")
#   DISTILL_JAX_NO_INSTALL=1     scripts/env.sh refuses instead of installing (the rehearsal)
#   DISTILL_JAX_TPU=0|1          install requirements/tpu.txt (default: when /dev/accel* or /dev/vfio/* exist)
#   DISTILL_JAX_LOG_SYNC_S       seconds between copies of the log to <workdir>/logs (default 30)
#   DISTILL_JAX_COORDINATOR_ADDRESS, DISTILL_JAX_NUM_PROCESSES, DISTILL_JAX_PROCESS_ID
#                                appended to a training command as --coordinator_address=
#                                --num_processes= --process_id= when set. A TPU VM sets none of
#                                them (jax reads the TPU metadata); the localhost rehearsal's
#                                stand-in gcloud sets them, as a metadata server would.
set -uo pipefail

MIN_PYTHON=(3 11)
MANAGED_PYTHON="3.11"              # what `uv python install` provisions when the image has none
venv="${DISTILL_JAX_VENV:-$HOME/distill_jax_venv}"
code_link="$HOME/distill_jax"
code_root="$HOME/distill_jax_code"
runs_root="$HOME/distill_jax_runs"

die() { echo "pod_worker.sh ($(worker_label)): error: $*" >&2; exit 1; }

worker_id() {  # this host's worker index: the rehearsal's env, GKE's TPU_WORKER_ID, or the metadata
  if [ -n "${DISTILL_JAX_PROCESS_ID:-}" ]; then echo "$DISTILL_JAX_PROCESS_ID"; return; fi
  if [ -n "${TPU_WORKER_ID:-}" ]; then echo "$TPU_WORKER_ID"; return; fi
  local id
  id="$(curl -s -m 2 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null)"
  if [[ "$id" =~ ^[0-9]+$ ]]; then echo "$id"; else hostname; fi
}
worker_label() { echo "worker ${WORKER:-?}"; }

# ---------------------------------------------------------------------------------------------
# Python >= 3.11: the first of python3.13 / python3.12 / python3.11 / python3 on PATH that is new
# enough, else a managed one installed by uv (uv itself from the package index). Builtins only up
# to the decision, so it can be tested with a PATH that holds nothing but one interpreter.
# ---------------------------------------------------------------------------------------------
python_ok() { "$1" -c "import sys; sys.exit(sys.version_info[:2] < (${MIN_PYTHON[0]}, ${MIN_PYTHON[1]}))" 2>/dev/null; }

choose_python() {  # prints the interpreter's path; with $1 = dry-run prints the uv plan instead
  local candidate path
  for candidate in python3.13 python3.12 python3.11 python3; do
    path="$(command -v "$candidate")" || continue
    if python_ok "$path"; then echo "$path"; return 0; fi
  done
  local uv_install="python3 -m pip install --user --quiet uv"
  local py_install="\$HOME/.local/bin/uv python install $MANAGED_PYTHON"
  if [ "${1:-}" = dry-run ]; then
    echo "uv: no python >= ${MIN_PYTHON[0]}.${MIN_PYTHON[1]} on PATH; would run: $uv_install && $py_install"
    return 0
  fi
  echo "[setup] no python >= ${MIN_PYTHON[0]}.${MIN_PYTHON[1]} on PATH: installing uv, then Python $MANAGED_PYTHON" >&2
  python3 -m pip install --user --quiet uv >&2 \
    || die "could not install uv (python3 -m pip install --user uv); install python3-pip or a Python >= 3.11"
  "$HOME/.local/bin/uv" python install "$MANAGED_PYTHON" >&2 \
    || die "uv python install $MANAGED_PYTHON failed (the managed Python downloads from GitHub: is it reachable?)"
  path="$("$HOME/.local/bin/uv" python find "$MANAGED_PYTHON")" || die "uv python find $MANAGED_PYTHON found nothing"
  echo "$path"
}

# ---------------------------------------------------------------------------------------------
# setup: unpack the shipped commit into its own directory, switch the link, build the venv
# ---------------------------------------------------------------------------------------------
alive_runs() {  # names of runs whose process is alive on this worker
  local pidfile
  for pidfile in "$runs_root"/*/worker-"$WORKER".pid; do
    [ -L "$(dirname "$pidfile")" ] && continue   # "current" points at a run listed anyway
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && basename "$(dirname "$pidfile")"
  done
}

setup() {
  local commit="$1" tarball="$HOME/distill_jax-$1.tar"
  [ -f "$tarball" ] || die "$tarball is missing (tpu_pod.sh --setup copies it first)"
  local running
  running="$(alive_runs | paste -sd ' ')"
  [ -z "$running" ] || die "run(s) $running still running here: stop them first (tpu_pod.sh --stop)"
  local new="$code_root/$commit"
  mkdir -p "$code_root"
  rm -rf "$new.tmp" && mkdir -p "$new.tmp" && tar -xf "$tarball" -C "$new.tmp" || die "could not unpack $tarball"
  rm -rf "$new" && mv "$new.tmp" "$new"
  if [ -d "$code_link" ] && [ ! -L "$code_link" ]; then
    echo "[setup] removing ~/distill_jax, a copied tree from an older launcher"
    rm -rf "$code_link"
  fi
  ln -sfn "$new" "$code_link.tmp-link" && mv -Tf "$code_link.tmp-link" "$code_link"
  local old
  for old in "$code_root"/*; do  # earlier commits: nothing runs them (checked above)
    [ "$old" = "$new" ] || rm -rf "$old"
  done
  rm -f "$tarball"

  local python
  python="$(choose_python)" || exit 1
  if [ -x "$venv/bin/python" ] && ! python_ok "$venv/bin/python"; then
    echo "[setup] $venv was made by $("$venv/bin/python" --version 2>&1): recreating it with $python"
    rm -rf "$venv"
  fi
  (cd "$new" && DISTILL_JAX_VENV="$venv" DISTILL_JAX_PYTHON="$python" \
     bash scripts/env.sh ${DISTILL_JAX_SETUP_EXTRAS:-}) || die "scripts/env.sh failed (above)"
  local tpu="${DISTILL_JAX_TPU:-auto}"
  if [ "$tpu" = auto ]; then
    tpu=0; compgen -G "/dev/accel*" > /dev/null || compgen -G "/dev/vfio/[0-9]*" > /dev/null && tpu=1
  fi
  if [ "$tpu" = 1 ]; then
    local stamp="$venv/.distill_jax_stamp_tpu" want
    want="$(cat "$new"/requirements/core.txt "$new"/requirements/tpu.txt | sha256sum | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
      "$venv/bin/python" -m pip install -q -r "$new/requirements/tpu.txt" || die "installing requirements/tpu.txt failed"
      echo "$want" > "$stamp"
    fi
  fi
  echo "[setup] worker $WORKER: code $commit at ~/distill_jax, venv $venv ($("$venv/bin/python" --version 2>&1)), tpu=$tpu"
}

# ---------------------------------------------------------------------------------------------
# start / _run: the detached run. `setsid nohup` makes _run a session leader with no terminal, so
# the ssh session (and the laptop's terminal) can end; its pid is the process group that stop kills.
# ---------------------------------------------------------------------------------------------
start() {
  local run="$1" kind="$2" logs_to="$3"; shift 3
  [ -L "$code_link" ] || die "no code at ~/distill_jax: run tpu_pod.sh --setup first"
  [ -x "$venv/bin/python" ] || die "no venv at $venv: run tpu_pod.sh --setup first"
  local dir="$runs_root/$run"
  mkdir -p "$dir"
  local pidfile="$dir/worker-$WORKER.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "run $run is already running here (pid $(cat "$pidfile")): tpu_pod.sh --stop first"
  fi
  rm -f "$pidfile" "$dir/worker-$WORKER.exit"
  ln -sfn "$run" "$runs_root/current"
  local cmd=("$@")
  if [ "$kind" = train ] && [ -n "${DISTILL_JAX_NUM_PROCESSES:-}" ]; then
    cmd+=("--coordinator_address=$DISTILL_JAX_COORDINATOR_ADDRESS"
          "--num_processes=$DISTILL_JAX_NUM_PROCESSES" "--process_id=$DISTILL_JAX_PROCESS_ID")
  fi
  setsid nohup bash "$code_link/launch/pod_worker.sh" _run "$dir" "$logs_to" "${cmd[@]}" \
    > /dev/null 2>&1 < /dev/null &
  local i
  for ((i = 0; i < 100; i++)); do [ -f "$pidfile" ] && break; sleep 0.1; done
  [ -f "$pidfile" ] || die "the detached run did not start (see $dir/worker-$WORKER.log)"
  echo "worker $WORKER: started $run (pid $(cat "$pidfile"), log ~/${dir#"$HOME"/}/worker-$WORKER.log)"
}

_run() {  # the session leader: cd, venv, the command; log sync beside it; exit code to a file
  local dir="$1" logs_to="$2"; shift 2
  local log="$dir/worker-$WORKER.log"
  echo $$ > "$dir/worker-$WORKER.pid.tmp" && mv "$dir/worker-$WORKER.pid.tmp" "$dir/worker-$WORKER.pid"
  exec >> "$log" 2>&1
  cd "$code_link" || exit 1
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "=== $(date -u '+%Y-%m-%d %H:%M:%S') UTC worker $WORKER, code $(basename "$(readlink -f .)"): $*"
  "$@" &
  local main=$! rc
  # Stop's SIGTERM reaches the whole group; this shell waits for the command to finish saving.
  trap ':' TERM INT HUP
  local sync=""
  if [ -n "$logs_to" ]; then  # python + etils.epath: the same storage path the trainer writes with
    python -m distill_jax.tools.sync_logs --src="$log" --dest="$logs_to/worker-$WORKER.log" \
      --pid="$main" --every="${DISTILL_JAX_LOG_SYNC_S:-30}" --final_after="$dir/worker-$WORKER.exit" &
    sync=$!
  fi
  while :; do
    wait "$main"; rc=$?
    kill -0 "$main" 2>/dev/null || break   # woken by a trapped signal while it still runs: wait on
  done
  echo "=== $(date -u '+%Y-%m-%d %H:%M:%S') UTC worker $WORKER: exit $rc"
  echo "$rc" > "$dir/worker-$WORKER.exit.tmp" && mv "$dir/worker-$WORKER.exit.tmp" "$dir/worker-$WORKER.exit"
  [ -n "$sync" ] && wait "$sync"   # its last copy, after the exit line above
  exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# status / logs / stop
# ---------------------------------------------------------------------------------------------
run_dir() {  # $1 = run name or ""; prints the directory or nothing
  local run="${1:-}"
  if [ -z "$run" ]; then
    [ -L "$runs_root/current" ] || return 1
    run="$(readlink "$runs_root/current")"
  fi
  [ -d "$runs_root/$run" ] && echo "$runs_root/$run"
}

last_line() { tail -n 50 "$1" 2>/dev/null | grep -v '^\s*$' | tail -n 1; }

status() {
  local dir
  dir="$(run_dir "$1")" || { echo "worker $WORKER: no run${1:+ $1}"; return 0; }
  local run pid
  run="$(basename "$dir")" pid="$(cat "$dir/worker-$WORKER.pid" 2>/dev/null)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    echo "worker $WORKER: $run alive (pid $pid) | $(last_line "$dir/worker-$WORKER.log")"
  elif [ -f "$dir/worker-$WORKER.exit" ]; then
    echo "worker $WORKER: $run exited $(cat "$dir/worker-$WORKER.exit") | $(last_line "$dir/worker-$WORKER.log")"
  else
    echo "worker $WORKER: $run gone without an exit code (killed?) | $(last_line "$dir/worker-$WORKER.log")"
  fi
}

logs() {
  local dir
  dir="$(run_dir "$1")" || { echo "worker $WORKER: no run${1:+ $1}"; return 0; }
  if [ "$3" = 1 ]; then exec tail -n "$2" -F "$dir/worker-$WORKER.log"; fi
  tail -n "$2" "$dir/worker-$WORKER.log" 2>/dev/null | sed "s/^/[worker $WORKER] /"
}

stop() {
  local dir
  dir="$(run_dir "$1")" || { echo "worker $WORKER: no run${1:+ $1}"; return 0; }
  local pid signal=TERM
  pid="$(cat "$dir/worker-$WORKER.pid" 2>/dev/null)"
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then status "$1"; return 0; fi
  [ "$3" = 1 ] && signal=KILL
  kill -s "$signal" -- "-$pid" 2>/dev/null
  local waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$2" ]; do sleep 1; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    echo "worker $WORKER: still alive $2 s after SIGTERM (pid $pid); tpu_pod.sh --stop --force sends SIGKILL"
    return 1
  fi
  [ "$signal" = KILL ] && [ ! -f "$dir/worker-$WORKER.exit" ] && echo 137 > "$dir/worker-$WORKER.exit"
  status "$1"
}

# ---------------------------------------------------------------------------------------------
what="${1:-}"; shift || true
run="" kind=train logs_to="" lines=20 timeout=300 force=0 follow=0 commit="" dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --run=*) run="${1#*=}" ;;
    --kind=*) kind="${1#*=}" ;;
    --logs_to=*) logs_to="${1#*=}" ;;
    --lines=*) lines="${1#*=}" ;;
    --timeout=*) timeout="${1#*=}" ;;
    --commit=*) commit="${1#*=}" ;;
    --force) force=1 ;;
    --follow) follow=1 ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) [ "$what" = _run ] && break
       echo "pod_worker.sh: unknown argument '$1' (see the header of launch/pod_worker.sh)" >&2; exit 2 ;;
  esac
  shift
done
case "$what" in
  python) if [ "$dry" = 1 ]; then choose_python dry-run; else choose_python; fi; exit $? ;;
esac
WORKER="$(worker_id)"
case "$what" in
  setup) [ -n "$commit" ] || die "setup needs --commit=..."; setup "$commit" ;;
  start) [ -n "$run" ] || die "start needs --run=..."; [ $# -gt 0 ] || die "start needs -- CMD"
         start "$run" "$kind" "$logs_to" "$@" ;;
  _run) _run "$@" ;;
  status) status "$run" ;;
  logs) logs "$run" "$lines" "$follow" ;;
  stop) stop "$run" "$timeout" "$force" ;;
  *) echo "pod_worker.sh: unknown command '$what' (python, setup, start, status, logs, stop)" >&2; exit 2 ;;
esac
