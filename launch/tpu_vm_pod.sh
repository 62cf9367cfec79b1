#!/usr/bin/env bash
# Run on every worker of a Cloud TPU VM pod slice (JAX finds its peers itself).
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm_pod.sh \
#       configs/experiments/tldr_nashmd.gin gs://bucket/runs/nashmd [flags]
# The repository must already be installed on every worker (e.g. `pip install -e .`
# in ~/nlhf_jax). DRY_RUN=1 prints the command only.
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: $0 GIN_FILE MODEL_DIR [extra nlhf train flags]" >&2; exit 2; fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
GIN_FILE=$1; MODEL_DIR=$2; shift 2
REPO_DIR=${REPO_DIR:-~/nlhf_jax}
EXTRA=$(printf " %q" "$@")
REMOTE="cd $REPO_DIR && nlhf train --gin_file=$GIN_FILE --gin.MODEL_DIR=\"'$MODEL_DIR'\" --gin_file=configs/overlays/accelerator_bf16.gin --distributed=auto$EXTRA"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$REMOTE")
echo "+ ${CMD[*]}"
[[ "${DRY_RUN:-0}" == 1 ]] && exit 0
exec "${CMD[@]}"
