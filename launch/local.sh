#!/usr/bin/env bash
# Train on this machine (CPU, one GPU, or all local GPUs as one process).
#   launch/local.sh configs/experiments/copy_sft.gin runs/copy_sft [--gin.KEY=VALUE ...]
# DRY_RUN=1 prints the command without running it.
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: $0 GIN_FILE MODEL_DIR [extra nlhf train flags]" >&2; exit 2; fi
GIN_FILE=$1; MODEL_DIR=$2; shift 2
NLHF=${NLHF:-nlhf}
CMD=("$NLHF" train "--gin_file=$GIN_FILE" "--gin.MODEL_DIR='$MODEL_DIR'" "$@")
echo "+ ${CMD[*]}"
[[ "${DRY_RUN:-0}" == 1 ]] && exit 0
exec "${CMD[@]}"
