#!/usr/bin/env bash
# Runs distill_jax on every host of a Cloud TPU VM pod slice (gcloud ... ssh --worker=all).
#
#   launch/tpu_pod.sh --tpu=my-v4-32 --zone=us-central2-b --config=configs/mha_l6_h384.py \
#       --workdir=gs://my-bucket/runs/mha_l6_h384 [--project=my-project] [--setup] [--dry-run] \
#       [-- extra main.py flags, e.g. --config.total_steps=1000]
#
#   --setup     first copy this repository to every worker and create its virtual environment
#               there (scripts/env.sh), plus the TPU build of jax (`jax[tpu]`).
#   --dry-run   print the gcloud commands instead of running them.
#
# Every host runs the same `python main.py ... --distributed=on`; jax.distributed finds the
# coordinator and the process ids from the TPU metadata. The workdir must be shared by all hosts
# (a gs:// bucket). On preemption (spot/preemptible VMs) the trainer saves on SIGTERM; run the same
# command again on the recreated slice and it resumes from the newest checkpoint in the workdir.
set -euo pipefail

tpu="" zone="" project="" config="" workdir="" setup=0 dry_run=0
remote_dir="distill_jax"   # relative to each worker's home directory
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --remote_dir=*) remote_dir="${1#*=}" ;;
    --setup) setup=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (see the header of launch/tpu_pod.sh)" >&2; exit 2 ;;
  esac
  shift
done
for required in tpu zone config workdir; do
  if [ -z "${!required}" ]; then
    echo "tpu_pod.sh: --$required=... is required" >&2; exit 2
  fi
done

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")

run() {  # prints the command (shell-quoted) with --dry-run, else runs it
  if [ "$dry_run" = 1 ]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$setup" = 1 ]; then
  run "${gcloud_tpu[@]}" scp --recurse "$repo_root" "$tpu:~/$remote_dir" "${where[@]}" --worker=all
  run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all \
    --command="cd ~/$remote_dir && bash scripts/env.sh && .venv/bin/pip install -q 'jax[tpu]'"
fi

train_cmd="cd ~/$remote_dir && source .venv/bin/activate && python main.py"
train_cmd+=" $(printf '%q ' "--config=$config" "--workdir=$workdir" --distributed=on ${extra[@]+"${extra[@]}"})"
run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="${train_cmd% }"
