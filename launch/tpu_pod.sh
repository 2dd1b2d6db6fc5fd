#!/usr/bin/env bash
# Runs distill_jax on every host of a Cloud TPU VM pod slice (gcloud ... ssh --worker=all), detached.
#
#   launch/tpu_pod.sh --tpu=my-v5e-16 --zone=us-west4-a [--project=P] --setup      # once per slice
#   launch/tpu_pod.sh --tpu=... --zone=... --config=configs/mha_l6_h384.py \
#       --workdir=gs://my-bucket/runs/mha_l6_h384 [-- extra main.py flags, e.g. --config.total_steps=1000]
#   launch/tpu_pod.sh --tpu=... --zone=... --status | --logs [--lines=N] [--follow] | --stop [--force]
#   launch/tpu_pod.sh --tpu=... --zone=... --prepare --config=C --cache_dir=D [--worker=0]
#
#   --setup        ship the committed tree (`git archive HEAD`, never .venv/runs/.git) to every
#                  worker as ~/distill_jax (a second setup replaces it), provision a Python >= 3.11
#                  (python3.13/3.12/3.11/python3 on the image, else uv's managed 3.11), build the
#                  venv ~/distill_jax_venv outside the tree (scripts/env.sh + requirements/tpu.txt).
#                  Refused when tracked files have uncommitted changes, unless --allow-dirty (then
#                  HEAD ships without them). With --config/--workdir, the run starts right after.
#   (launch)       each worker starts `python main.py --config=C --workdir=W --distributed=on
#                  [extra]` in its own session (it survives this terminal and the ssh), logging to
#                  ~/distill_jax_runs/<run>/worker-<i>.log, copied every 30 s and at exit to
#                  <workdir>/logs/worker-<i>.log. Only process 0 prints progress lines.
#   --prepare      the same, detached, for `python -m distill_jax.data.prepare --config=C
#                  --cache_dir=D` (a gs:// cache_dir needs one worker: --worker=0).
#   --status       per worker: alive / exited <code>, and the log's last line.
#   --logs         the last --lines (20) of each worker's log; --follow tails worker 0's (the console).
#   --stop         SIGTERM to each worker's process group (the trainer saves a checkpoint and
#                  exits), waits up to --timeout=S (300), then reports; --force sends SIGKILL.
#   --run=NAME     the run's name on the workers (default: the workdir's last part; status, logs
#                  and stop default to the newest run).
#   --worker=all|N which workers (gcloud's --worker); default all.
#   --dry-run      print the commands instead of running them.
#
# jax.distributed finds the coordinator and the process ids from the TPU metadata. The workdir must
# be shared by all hosts (a gs:// bucket). After a preemption or a lost host: the run ends on every
# host (exit 75 names the checkpoint); on a recreated slice run --setup again (new disks), then the
# same launch command resumes from the newest checkpoint in the workdir.
set -euo pipefail

tpu="" zone="" project="" config="" workdir="" cache_dir="" run="" worker=all
setup=0 prepare=0 action="" dry_run=0 allow_dirty=0 lines=20 follow=0 timeout=300 force=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --cache_dir=*) cache_dir="${1#*=}" ;;
    --run=*) run="${1#*=}" ;;
    --worker=*) worker="${1#*=}" ;;
    --lines=*) lines="${1#*=}" ;;
    --timeout=*) timeout="${1#*=}" ;;
    --setup) setup=1 ;;
    --prepare) prepare=1 ;;
    --status|--logs|--stop) [ -n "$action" ] && { echo "tpu_pod.sh: give one of --status, --logs, --stop" >&2; exit 2; }
                            action="${1#--}" ;;
    --follow) follow=1 ;;
    --force) force=1 ;;
    --allow-dirty) allow_dirty=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (see the header of launch/tpu_pod.sh)" >&2; exit 2 ;;
  esac
  shift
done
for required in tpu zone; do
  if [ -z "${!required}" ]; then echo "tpu_pod.sh: --$required=... is required" >&2; exit 2; fi
done
launch=0
if [ -z "$action" ] && [ "$prepare" = 1 ]; then
  for required in config cache_dir; do
    if [ -z "${!required}" ]; then echo "tpu_pod.sh: --prepare needs --$required=..." >&2; exit 2; fi
  done
elif [ -z "$action" ] && { [ "$setup" = 0 ] || [ -n "$config$workdir" ]; }; then
  launch=1
  for required in config workdir; do
    if [ -z "${!required}" ]; then echo "tpu_pod.sh: --$required=... is required" >&2; exit 2; fi
  done
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")
worker_script="bash ~/distill_jax/launch/pod_worker.sh"

run() {  # prints the command (shell-quoted) with --dry-run, else runs it
  if [ "$dry_run" = 1 ]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}
on_workers() {  # $1 = the shell command each worker runs
  run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker="$worker" --command="$1"
}
quoted() { local q; q="$(printf '%q ' "$@")"; echo "${q% }"; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -n "$action" ]; then
  case "$action" in
    status) on_workers "$worker_script status${run:+ --run=$(quoted "$run")}" ;;
    logs) if [ "$follow" = 1 ]; then
            [ "$worker" = all ] && worker=0   # process 0 is the one that prints progress
            on_workers "$worker_script logs --follow --lines=$(quoted "$lines")${run:+ --run=$(quoted "$run")}"
          else
            on_workers "$worker_script logs --lines=$(quoted "$lines")${run:+ --run=$(quoted "$run")}"
          fi ;;
    stop) on_workers "$worker_script stop --timeout=$(quoted "$timeout")${run:+ --run=$(quoted "$run")}$([ "$force" = 1 ] && echo ' --force')" ;;
  esac
  exit
fi

if [ "$setup" = 1 ]; then
  dirty="$(git -C "$repo_root" status --porcelain --untracked-files=no)"
  commit="$(git -C "$repo_root" rev-parse --short=12 HEAD)"
  if [ -n "$dirty" ] && [ "$allow_dirty" = 0 ]; then
    echo "tpu_pod.sh: $(echo "$dirty" | wc -l) tracked file(s) have uncommitted changes (e.g. $(echo "$dirty" | head -n1 | cut -c4-)): commit them, or pass --allow-dirty to ship HEAD ($commit) without them" >&2
    exit 2
  fi
  echo "# shipping commit $commit: $(git -C "$repo_root" log -1 --format=%s HEAD | cut -c1-80)${dirty:+ (uncommitted changes NOT shipped)}"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  tarball="$tmp/distill_jax-$commit.tar"
  run git -C "$repo_root" archive --format=tar -o "$tarball" HEAD
  run "${gcloud_tpu[@]}" scp "$tarball" "$tpu:~/distill_jax-$commit.tar" "${where[@]}" --worker="$worker"
  # The worker script comes out of the tarball itself, then installs the rest (launch/pod_worker.sh).
  on_workers "tar -xOf ~/distill_jax-$commit.tar launch/pod_worker.sh > ~/.distill_jax_pod_worker.sh && bash ~/.distill_jax_pod_worker.sh setup --commit=$commit"
fi

if [ "$launch" = 1 ] || [ "$prepare" = 1 ]; then
  if [ "$prepare" = 1 ]; then
    kind=prepare
    cmd=(python -m distill_jax.data.prepare "--config=$config" "--cache_dir=$cache_dir" ${extra[@]+"${extra[@]}"})
    run="${run:-prepare}"
    logs_to=""
  else
    kind=train
    cmd=(python main.py "--config=$config" "--workdir=$workdir" --distributed=on ${extra[@]+"${extra[@]}"})
    name="${workdir%/}"; name="${name##*/}"
    run="${run:-${name:-run}}"
    logs_to="${workdir%/}/logs"  # the workdir's layout: distill_jax/workdir_layout.py (LOGS)
  fi
  on_workers "$worker_script start --run=$(quoted "$run") --kind=$kind${logs_to:+ --logs_to=$(quoted "$logs_to")} -- $(quoted "${cmd[@]}")"
  if [ "$dry_run" = 0 ]; then
    base="launch/tpu_pod.sh --tpu=$tpu --zone=$zone${project:+ --project=$project}"
    echo "started $run on worker(s) $worker, detached: $base --logs --follow (process 0), $base --status, $base --stop${logs_to:+; logs also copied to $logs_to/}"
  fi
fi
