#!/usr/bin/env bash
# Submits distill_jax to a SLURM GPU cluster (multi-node, one process per node).
#
#   launch/slurm.sh --config=configs/mha_l6_h384.py --workdir=/shared/runs/mha_l6_h384 \
#       [--nodes=2] [--gpus_per_node=8] [--time=24:00:00] [--partition=gpu] [--account=...] \
#       [--dry-run] [-- extra main.py flags]
#
#   --dry-run   print the sbatch command (and the srun line the batch script runs) instead.
#
# The batch script is launch/slurm_gpu.sbatch; CONFIG, WORKDIR, REPO_DIR and EXTRA reach it through
# the environment.
#
# Resubmitting the same command after a time-out or preemption resumes from the newest checkpoint
# in the workdir (the job also asks SLURM for SIGTERM 120 s before its time limit, and --requeue).
set -euo pipefail

config="" workdir="" nodes=1 gpus=8 time_limit="24:00:00" partition="" account="" dry_run=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --nodes=*) nodes="${1#*=}" ;;
    --gpus_per_node=*) gpus="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "slurm.sh: unknown argument '$1' (see the header of launch/slurm.sh)" >&2; exit 2 ;;
  esac
  shift
done
for required in config workdir; do
  if [ -z "${!required}" ]; then
    echo "slurm.sh: --$required=... is required" >&2; exit 2
  fi
done
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extra_flags="$(printf '%q ' ${extra[@]+"${extra[@]}"})"
extra_flags="${extra_flags% }"
[ "$extra_flags" = "''" ] && extra_flags=""

# The job's settings travel as environment variables (sbatch exports the submitting environment);
# not through --export=, whose commas would split config args such as ':map=last,runlocal'.
sbatch_cmd=(env "CONFIG=$config" "WORKDIR=$workdir" "REPO_DIR=$repo_root" "EXTRA=$extra_flags"
            sbatch --nodes="$nodes" --gpus-per-node="$gpus" --time="$time_limit")
[ -n "$partition" ] && sbatch_cmd+=(--partition="$partition")
[ -n "$account" ] && sbatch_cmd+=(--account="$account")
sbatch_cmd+=("$repo_root/launch/slurm_gpu.sbatch")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${sbatch_cmd[@]}"; printf '\n'
  printf '# each of the %s nodes then runs:\n' "$nodes"
  printf '%q ' srun --kill-on-bad-exit=1 python main.py "--config=$config" "--workdir=$workdir" \
    --distributed=on ${extra[@]+"${extra[@]}"}
  printf '\n'
else
  "${sbatch_cmd[@]}"
fi
