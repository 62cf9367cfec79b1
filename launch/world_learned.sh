#!/usr/bin/env bash
# The world's known answer with learned judges: a world with extra comparisons between
# distinct styles (`nlhf world --n-style-comparisons`), a PM and an RM trained on it,
# Nash-MD-PG, online IPO and IPO-MD (beta 0.125) against the PM at tau 0.02 and RLHF
# against the RM at tau 0.05, 0.1 and 0.2,
# all from the SFT policy of a demo run; then `nlhf evaluate` under P* with the judges'
# style-level diagnostics.
#   launch/world_learned.sh runs/demo runs/learned [JUDGE_STEPS [POLICY_STEPS]]
# DEMO_DIR must hold world/ and sft/ (as `make demo` leaves them; the default seed-0
# world). The judges are those of `nlhf demo --preset paper`: the RM as the quick demo's
# (configs/demo/paper_rm.gin: 1,000 steps on the first 32,000 regular comparisons; the
# style comparisons make a Bradley-Terry RM worse), the PM from the RM for JUDGE_STEPS
# (default 4000) on every comparison of the style world (configs/demo/paper_pm.gin),
# then that PM fine-tuned on the style comparisons alone
# (configs/experiments/world_pm_style.gin, 2,000 steps), which the NLHF policies use.
# POLICY_STEPS defaults to 600, STYLE_COMPARISONS (env) to 30000. Why the extra
# comparisons: the default world's 90,000 pairs compare two faithful summaries of
# distinct styles too rarely for a PM to learn the style game (see
# docs/results-world.md). About 90 minutes on 2 CPU cores. DRY_RUN=1 prints the
# commands without running them.
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: $0 DEMO_DIR OUT_DIR [JUDGE_STEPS [POLICY_STEPS]]" >&2; exit 2; fi
DEMO=$1; OUT=$2; JUDGE_STEPS=${3:-4000}; STEPS=${4:-600}; STYLE=${STYLE_COMPARISONS:-30000}
NLHF=${NLHF:-nlhf}
for need in "$DEMO/world/world.json" "$DEMO/sft/model_config.json"; do
  [[ -e "$need" || "${DRY_RUN:-0}" == 1 ]] || { echo "$0: missing $need (run make demo first)" >&2; exit 2; }
done
WORLD="$DEMO/world"
JUDGE_WORLD="$OUT/world_style"
show_and_run() {
  echo "+ $(printf "%q " "$@")"
  [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}
judge() {  # KIND (pm or rm) INITIAL_CHECKPOINT [MORE_FLAGS...]
  local kind=$1 init=$2; shift 2
  show_and_run "$NLHF" train "--gin_file=configs/experiments/world_$kind.gin" \
    "--gin_file=configs/demo/paper_$kind.gin" "--gin.MODEL_DIR='$OUT/$kind'" \
    "--gin.INITIAL_CHECKPOINT='$init'" "$@" \
    "--gin_bindings=pairwise.world_data.data_dir = '$JUDGE_WORLD'"
}
policy() {  # NAME ALGORITHM JUDGE_DIR TAU
  show_and_run "$NLHF" train "--gin_file=configs/experiments/world_$2.gin" "--gin.MODEL_DIR='$OUT/$1'" \
    "--gin.SFT_DIR='$DEMO/sft'" "--gin.JUDGE_DIR='$3'" "--gin.TAU=$4" "--gin.NUM_STEPS=$STEPS" \
    "--gin.SAVE_EVERY=200" "--gin_bindings=arrays.world_prompts.data_dir = '$WORLD'" \
    "--gin_bindings=vocab.world_vocabulary.data_dir = '$WORLD'" \
    "--gin_bindings=describe.StyleMonitor.data_dir = '$WORLD'"
}
show_and_run "$NLHF" world --generate --out "$JUDGE_WORLD" --n-style-comparisons "$STYLE"
judge rm "$DEMO/sft"
judge pm "$OUT/rm" "--gin.NUM_STEPS=$JUDGE_STEPS"
show_and_run "$NLHF" train "--gin_file=configs/experiments/world_pm_style.gin" "--gin.MODEL_DIR='$OUT/pm_style'" \
  "--gin.INITIAL_CHECKPOINT='$OUT/pm'" "--gin_bindings=pairwise.world_data.data_dir = '$JUDGE_WORLD'"
policy nash_md nash_md "$OUT/pm_style" 0.02
policy online_ipo online_ipo "$OUT/pm_style" 0.02
policy ipo_md ipo_md "$OUT/pm_style" 0.02
for tau in 0.05 0.1 0.2; do policy "rlhf_tau$tau" rlhf "$OUT/rm" "$tau"; done
show_and_run "$NLHF" evaluate --policy "sft=$DEMO/sft" --policy "nash_md=$OUT/nash_md" \
  --policy "online_ipo=$OUT/online_ipo" --policy "ipo_md=$OUT/ipo_md" \
  --policy "rlhf_tau0.05=$OUT/rlhf_tau0.05" --policy "rlhf_tau0.1=$OUT/rlhf_tau0.1" \
  --policy "rlhf_tau0.2=$OUT/rlhf_tau0.2" --judge world --world_dir "$WORLD" --num_prompts 1000 \
  --judge_diagnostics "$OUT/pm_style,$OUT/rm" --tau_nash 0.02 --tau_rlhf 0.05 --out "$OUT/evaluate"
