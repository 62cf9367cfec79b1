#!/usr/bin/env bash
# One process per GPU under SLURM; JAX reads the SLURM environment to connect them.
#   NODES=2 GPUS_PER_NODE=8 launch/slurm_gpu.sh configs/experiments/tldr_nashmd.gin /shared/runs/nashmd [flags]
# Submits with srun (run it inside an allocation) or prints the command (DRY_RUN=1).
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: $0 GIN_FILE MODEL_DIR [extra nlhf train flags]" >&2; exit 2; fi
GIN_FILE=$1; MODEL_DIR=$2; shift 2
NODES=${NODES:-1}; GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NLHF=${NLHF:-nlhf}
CMD=(srun --nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-task=1
     "$NLHF" train "--gin_file=$GIN_FILE" "--gin.MODEL_DIR='$MODEL_DIR'"
     --gin_file=configs/overlays/accelerator_bf16.gin --distributed=auto "$@")
echo "+ ${CMD[*]}"
[[ "${DRY_RUN:-0}" == 1 ]] && exit 0
exec "${CMD[@]}"
