#!/usr/bin/env bash
# The whole pod path on this machine: launch/tpu_pod.sh driven end to end, its gcloud calls going to
# the stand-in tests/fake_gcloud/gcloud (N "workers" = directories on localhost, jax.distributed
# over gloo). Run from an activated test venv (scripts/env.sh test), e.g.
#
#   source .venv/bin/activate && bash launch/rehearse_pod.sh [--root=/tmp/pod_rehearsal] [--workers=2]
#
# Phases, each through tpu_pod.sh as a user runs it: --setup (ships HEAD, --allow-dirty), the
# detached launch, --status, --logs, kill -9 of worker 1's whole process group (a dead host), the
# survivors' exit 75 with the peer-lost line, the same launch again (resumes from the checkpoint),
# --stop (SIGTERM: checkpoint, exit 0). Prints the time from launch to step 1 for both launches.
#
# Nothing is installed: the workers reuse the active venv (DISTILL_JAX_VENV=$VIRTUAL_ENV,
# DISTILL_JAX_NO_INSTALL=1: scripts/env.sh refuses instead of installing if the stamp is stale).
# The teacher is a random 2 x 32 BERT with the real tokenizer (tests/tiny_models.py), the recipe
# configs/quickstart.py shrunk by flags, so each phase takes seconds of compute; on the loaded
# 2-core machine the whole rehearsal takes a few minutes.
set -euo pipefail

root=/tmp/distill_jax_pod_rehearsal workers=2 steps=400
while [ $# -gt 0 ]; do
  case "$1" in
    --root=*) root="${1#*=}" ;;
    --workers=*) workers="${1#*=}" ;;
    *) echo "rehearse_pod.sh: unknown argument '$1' (see the header of launch/rehearse_pod.sh)" >&2; exit 2 ;;
  esac
  shift
done
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VIRTUAL_ENV:-$repo/.venv}"
[ -f "$venv/.distill_jax_stamp_test" ] || { echo "rehearse_pod.sh: $venv has no test stamp: run scripts/env.sh test first and activate it" >&2; exit 2; }
rm -rf "$root" && mkdir -p "$root"

# The stand-in slice (tests/fake_gcloud/gcloud documents these).
export PATH="$repo/tests/fake_gcloud:$PATH" FAKE_GCLOUD_ROOT="$root/slice" FAKE_GCLOUD_WORKERS="$workers"
FAKE_GCLOUD_COORDINATOR_PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export FAKE_GCLOUD_COORDINATOR_PORT
export DISTILL_JAX_VENV="$venv" DISTILL_JAX_NO_INSTALL=1 DISTILL_JAX_SETUP_EXTRAS=test DISTILL_JAX_LOG_SYNC_S=5
export JAX_NUM_CPU_DEVICES=1 JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=3
unset PYTHONPATH

pod=(bash "$repo/launch/tpu_pod.sh" --tpu=rehearsal --zone=local-a)
workdir="$root/workdir/rehearsal"
log0="$root/slice/worker-0/distill_jax_runs/rehearsal/worker-0.log"
say() { echo; echo "## $(date -u +%H:%M:%S) $*"; }
wait_for_line() {  # $1 = extended regex in worker 0's log, $2 = timeout s; prints seconds waited
  local t0=$SECONDS
  until grep -Eq "$1" "$log0" 2>/dev/null; do
    if [ $((SECONDS - t0)) -gt "$2" ]; then echo "rehearse_pod.sh: no '$1' in worker 0's log after $2 s" >&2; tail -n 20 "$log0" >&2; exit 1; fi
    sleep 1
  done
  echo $((SECONDS - t0))
}

say "tiny teacher"
python -c "import sys; sys.path.insert(0, '$repo/tests'); from pathlib import Path; from tiny_models import save_tiny_bert; save_tiny_bert(Path('$root/teacher'), num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, with_mlm_head=False)"
launch=(--config=configs/quickstart.py:steps=$steps "--workdir=$workdir" --
        "--config.teacher.name=$root/teacher" --config.student.num_layers=2 --config.student.hidden_size=16
        --config.student.num_heads=2 --config.student.intermediate_size=32
        --config.objective.minilmv2.relation_heads=4 --config.data.max_documents=40 --config.data.seq_len=32
        --config.batch_size=8 --config.log_every=1 --config.checkpoint_every=10 --config.export=False
        "--config.compilation_cache_dir=$root/jax_cache")

say "setup ($workers workers)"
"${pod[@]}" --setup --allow-dirty

say "launch"
"${pod[@]}" "${launch[@]}"
echo "launch -> step 1: $(wait_for_line "step 1/$steps" 600) s (cold compilation cache)"
say "status"; "${pod[@]}" --status
wait_for_line "step 15/$steps" 600 > /dev/null
say "logs (last 3 lines of each worker)"; "${pod[@]}" --logs --lines=3

say "kill -9 worker 1's process group (a dead host)"
pid1="$(cat "$root/slice/worker-1/distill_jax_runs/rehearsal/worker-1.pid")"
kill -9 -- "-$pid1"
t0=$SECONDS
until ! "${pod[@]}" --status | grep -q alive; do
  [ $((SECONDS - t0)) -gt 120 ] && { echo "rehearse_pod.sh: survivors still alive 120 s after the kill" >&2; exit 1; }
  sleep 1
done
echo "survivors gone $((SECONDS - t0)) s after the kill"
"${pod[@]}" --status
grep "a peer process was lost" "$log0"
grep -q "worker 0: exit 75" "$log0" || { echo "rehearse_pod.sh: worker 0 did not exit 75" >&2; exit 1; }

say "the same launch again: resumes"
lines_before="$(wc -l < "$log0")"
"${pod[@]}" "${launch[@]}"
t0=$SECONDS
until tail -n +"$lines_before" "$log0" | grep -Eq "step [0-9]+/$steps"; do
  [ $((SECONDS - t0)) -gt 600 ] && { echo "rehearse_pod.sh: the relaunch logged no step in 600 s" >&2; exit 1; }
  sleep 1
done
echo "relaunch -> first step: $((SECONDS - t0)) s (warm compilation cache)"
tail -n +"$lines_before" "$log0" | grep "resumed from checkpoint"

say "stop"
"${pod[@]}" --stop --timeout=120
say "logs copied under the workdir"; ls -l "$workdir/logs"
echo; echo "rehearsal passed: $root"
