#!/usr/bin/env bash
# The token- vs sequence-level mixture on the world (docs/mixture.md): Nash-MD-PG (beta
# 0.125, tau 0.02) against the learned PM of `launch/world_learned.sh`, with its
# alternative y' from the token-level mixture (the paper's) and from the sequence-level
# one by importance resampling of K token-level draws, each at seeds 0 and 1; then
# `nlhf evaluate` under P* with the learned-judge run's RLHF policies (tau 0.05, 0.2).
#   launch/world_mixture.sh runs/demo runs/learned runs/mixture [POLICY_STEPS [K]]
# DEMO_DIR must hold world/ and sft/ (`make demo`), LEARNED_DIR pm/ and rlhf_tau0.05/,
# rlhf_tau0.2/ (`launch/world_learned.sh`). POLICY_STEPS defaults to 600, K to 4. About
# 45 minutes on 2 CPU cores (a sequence-level run samples ~8x slower). DRY_RUN=1 prints
# the commands without running them.
set -euo pipefail
if [[ $# -lt 3 ]]; then echo "usage: $0 DEMO_DIR LEARNED_DIR OUT_DIR [POLICY_STEPS [K]]" >&2; exit 2; fi
DEMO=$1; LEARNED=$2; OUT=$3; STEPS=${4:-600}; K=${5:-4}
NLHF=${NLHF:-nlhf}
for need in "$DEMO/world/world.json" "$DEMO/sft/model_config.json" "$LEARNED/pm/judge.json" \
            "$LEARNED/rlhf_tau0.05/model_config.json" "$LEARNED/rlhf_tau0.2/model_config.json"; do
  [[ -e "$need" || "${DRY_RUN:-0}" == 1 ]] || { echo "$0: missing $need" >&2; exit 2; }
done
WORLD="$DEMO/world"
show_and_run() {
  echo "+ $(printf "%q " "$@")"
  [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}
policy() {  # NAME SEED [extra flags]
  local name=$1 seed=$2; shift 2
  show_and_run "$NLHF" train --gin_file=configs/experiments/world_nash_md.gin "--gin.MODEL_DIR='$OUT/$name'" \
    "--gin.SFT_DIR='$DEMO/sft'" "--gin.JUDGE_DIR='$LEARNED/pm'" --gin.TAU=0.02 "--gin.NUM_STEPS=$STEPS" \
    --gin.SAVE_EVERY=200 "--gin.SEED=$seed" "--gin_bindings=arrays.world_prompts.data_dir = '$WORLD'" \
    "--gin_bindings=vocab.world_vocabulary.data_dir = '$WORLD'" \
    "--gin_bindings=describe.StyleMonitor.data_dir = '$WORLD'" "$@"
}
for seed in 0 1; do
  policy "token_s$seed" "$seed"
  policy "sequence_s$seed" "$seed" "--gin.online.NashMDConfig.mixture='sequence'" \
    "--gin.online.NashMDConfig.mixture_candidates=$K"
done
show_and_run "$NLHF" evaluate --policy "sft=$DEMO/sft" \
  --policy "token_s0=$OUT/token_s0" --policy "sequence_s0=$OUT/sequence_s0" \
  --policy "token_s1=$OUT/token_s1" --policy "sequence_s1=$OUT/sequence_s1" \
  --policy "rlhf_tau0.05=$LEARNED/rlhf_tau0.05" --policy "rlhf_tau0.2=$LEARNED/rlhf_tau0.2" \
  --judge world --world_dir "$WORLD" --num_prompts 1000 --out "$OUT/evaluate"
