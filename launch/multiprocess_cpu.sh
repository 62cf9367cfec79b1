#!/usr/bin/env bash
# N local processes with D fake CPU devices each, talking through jax.distributed on
# 127.0.0.1: tests multi-host code paths on one machine.
#   NPROC=2 DEVICES=2 launch/multiprocess_cpu.sh configs/experiments/copy_sft.gin runs/mp [flags]
#   launch/multiprocess_cpu.sh configs/experiments/world_nash_md.gin runs/mp_nash \
#       --gin.SFT_DIR="'runs/world_sft'" --gin.JUDGE_DIR="'runs/world_pm'"   (a policy run)
# Extra --gin_file=... flags add overlays (e.g. configs/overlays/oracle_judge.gin).
# Each process logs to MODEL_DIR/process_<i>.log. DRY_RUN=1 prints the commands only.
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: $0 GIN_FILE MODEL_DIR [extra nlhf train flags]" >&2; exit 2; fi
GIN_FILE=$1; MODEL_DIR=$2; shift 2
NPROC=${NPROC:-2}; DEVICES=${DEVICES:-2}; PORT=${PORT:-$((20000 + RANDOM % 20000))}
NLHF=${NLHF:-nlhf}
mkdir -p "$MODEL_DIR"
pids=()
for ((i = 0; i < NPROC; i++)); do
  CMD=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES" JAX_PLATFORMS=cpu
       "$NLHF" train "--gin_file=$GIN_FILE" "--gin.MODEL_DIR='$MODEL_DIR'"
       "--coordinator_address=127.0.0.1:$PORT" "--num_processes=$NPROC" "--process_id=$i" "$@")
  echo "+ ${CMD[*]} > $MODEL_DIR/process_$i.log"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    "${CMD[@]}" > "$MODEL_DIR/process_$i.log" 2>&1 &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
if [[ $status -ne 0 ]]; then
  echo "a process failed (exit $status); logs:" >&2
  tail -n 20 "$MODEL_DIR"/process_*.log >&2
fi
exit $status
