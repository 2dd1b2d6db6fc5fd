#!/usr/bin/env bash
# Runs distill_jax on this machine: one process, or N processes on localhost that talk through
# jax.distributed (gloo collectives on CPU) to rehearse a multi-host job on a laptop.
#
#   launch/local.sh --config=configs/quickstart.py --workdir=runs/quickstart [--dry-run]
#   launch/local.sh --config=configs/mha_l6_h384.py:runlocal --workdir=/tmp/mh --processes=2 \
#       --devices_per_process=4 [--port=12355] [--dry-run] [-- extra main.py flags]
#
#   --devices_per_process   fake CPU devices per process (JAX_NUM_CPU_DEVICES); 0 = JAX's default
#   --dry-run               print the commands instead of running them
set -euo pipefail

config="" workdir="" processes=1 devices=0 port=12355 dry_run=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --processes=*) processes="${1#*=}" ;;
    --devices_per_process=*) devices="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "local.sh: unknown argument '$1' (see the header of launch/local.sh)" >&2; exit 2 ;;
  esac
  shift
done
for required in config workdir; do
  if [ -z "${!required}" ]; then
    echo "local.sh: --$required=... is required" >&2; exit 2
  fi
done
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_prefix=()
[ "$devices" != 0 ] && env_prefix=(env "JAX_NUM_CPU_DEVICES=$devices")

if [ "$processes" = 1 ]; then
  cmd=(${env_prefix[@]+"${env_prefix[@]}"} python "$repo_root/main.py" "--config=$config" "--workdir=$workdir"
       ${extra[@]+"${extra[@]}"})
  if [ "$dry_run" = 1 ]; then printf '%q ' "${cmd[@]}"; printf '\n'; exit 0; fi
  exec "${cmd[@]}"
fi

pids=()
for ((i = 0; i < processes; i++)); do
  cmd=(${env_prefix[@]+"${env_prefix[@]}"} python "$repo_root/main.py" "--config=$config" "--workdir=$workdir"
       --distributed=on "--coordinator_address=127.0.0.1:$port" "--num_processes=$processes"
       "--process_id=$i" ${extra[@]+"${extra[@]}"})
  if [ "$dry_run" = 1 ]; then printf '%q ' "${cmd[@]}"; printf '&\n'; continue; fi
  "${cmd[@]}" &
  pids+=($!)
done
[ "$dry_run" = 1 ] && { echo wait; exit 0; }
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
