#!/usr/bin/env bash
# The world's known answer with perfect judges: Nash-MD-PG against the raters P*
# (configs/overlays/oracle_judge.gin) and RLHF against P*'s Bradley-Terry reward
# (configs/overlays/oracle_bt_reward.gin), both from the SFT policy of a demo run, then
# the P* matrix, style table and style curves of `nlhf evaluate`.
#   launch/world_oracle.sh runs/demo runs/oracle [STEPS [TAU]]
# DEMO_DIR must hold world/ and sft/ (as `make demo` leaves them). STEPS defaults to
# 1800 and TAU to 0.02 (the world's prediction: Nash 89% concise, RLHF 100% exhaustive,
# P*(Nash > RLHF) = 0.627); an RLHF run at the paper's tau 0.05 is added for comparison.
# About 40 minutes on 2 CPU cores. DRY_RUN=1 prints the commands without running them.
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: $0 DEMO_DIR OUT_DIR [STEPS [TAU]]" >&2; exit 2; fi
DEMO=$1; OUT=$2; STEPS=${3:-1800}; TAU=${4:-0.02}
NLHF=${NLHF:-nlhf}
for need in "$DEMO/world/world.json" "$DEMO/sft/model_config.json"; do
  [[ -e "$need" || "${DRY_RUN:-0}" == 1 ]] || { echo "$0: missing $need (run make demo first)" >&2; exit 2; }
done
WORLD="$DEMO/world"
run() {  # NAME ALGORITHM OVERLAY TAU
  local cmd=("$NLHF" train "--gin_file=configs/experiments/world_$2.gin" "--gin_file=configs/overlays/$3.gin"
             "--gin.MODEL_DIR='$OUT/$1'" "--gin.SFT_DIR='$DEMO/sft'" "--gin.TAU=$4" "--gin.NUM_STEPS=$STEPS"
             "--gin.SAVE_EVERY=200" "--gin_bindings=arrays.world_prompts.data_dir = '$WORLD'"
             "--gin_bindings=vocab.world_vocabulary.data_dir = '$WORLD'"
             "--gin_bindings=describe.StyleMonitor.data_dir = '$WORLD'")
  echo "+ $(printf "%q " "${cmd[@]}")"
  [[ "${DRY_RUN:-0}" == 1 ]] || "${cmd[@]}"
}
run nash_md nash_md oracle_judge "$TAU"
run rlhf rlhf oracle_bt_reward "$TAU"
run rlhf_tau0.05 rlhf oracle_bt_reward 0.05
eval_cmd=("$NLHF" evaluate --policy "sft=$DEMO/sft" --policy "nash_md=$OUT/nash_md" --policy "rlhf=$OUT/rlhf"
          --policy "rlhf_tau0.05=$OUT/rlhf_tau0.05" --judge world --world_dir "$WORLD" --num_prompts 1000
          --out "$OUT/evaluate")
echo "+ $(printf "%q " "${eval_cmd[@]}")"
[[ "${DRY_RUN:-0}" == 1 ]] || "${eval_cmd[@]}"
