#!/usr/bin/env bash
# The pre-registered predictions of issue 16, tested on the five agents of the fair comparison
# (examples/fair-comparison.sh: ppo-mlp, ppo-tf, rppo, dt, bc of one seed). Every prediction is
# written below before it is run; every one is reported, whatever it says.
#
#   steering hunger up        -> distance_to_food down, ate_food up
#   steering thirst up        -> distance_to_water down
#   steering threat / fear up -> distance_to_threat up
#   steering arousal up       -> idle down
#   a predator placed adjacent (rl-lab intervene --do predator_adjacent) -> threat and fear readings
#                                rise, the prev_td_error reading falls
#
# Directions are the probe's (probe:LABEL@HOOK, from the run's latest `rl-lab probe` result) at the
# layer every agent acts from: the MLP's last actor layer, the transformers' last residual stream,
# the LSTM actor's hidden state. Each row: 20 random controls of the same norm (alternately isotropic
# and covariance-drawn), scales -4, 0, +4 standard deviations of the projection, --episodes episodes.
#
#   bash examples/predictions.sh [RUNS_DIR] [SEED]     # default: runs/fair-comparison 0
#   AGENTS="bc dt" bash examples/predictions.sh ...   # a subset (e.g. a second process from the other end;
#                                                     # finished rows are skipped, every file lands atomically)
#   python examples/predictions_table.py RUNS_DIR/predictions-s0    # the markdown table
set -euo pipefail

RUNS="${1:-runs/fair-comparison}"
S="${2:-0}"
EPISODES="${EPISODES:-10}"
OUT="$RUNS/predictions-s$S"
mkdir -p "$OUT"

declare -A HOOK=(
  ["ppo-mlp-s$S"]="mlp_extractor.policy_net.3"
  ["ppo-tf-s$S"]="blocks.1.hook_resid_post"
  ["rppo-s$S"]="lstm_actor.hidden"
  ["dt-s$S"]="blocks.1.hook_resid_post"
  ["bc-s$S"]="blocks.1.hook_resid_post"
)
PREDICTIONS=(
  "hunger distance_to_food:down"
  "hunger ate_food:up"
  "thirst distance_to_water:down"
  "threat distance_to_threat:up"
  "fear distance_to_threat:up"
  "arousal idle:down"
)

AGENTS="${AGENTS:-ppo-mlp ppo-tf rppo dt bc}"
for agent in $AGENTS; do
  run="$agent-s$S"
  [ -n "${HOOK[$run]:-}" ] || { echo "unknown agent $agent (ppo-mlp, ppo-tf, rppo, dt, bc)" >&2; exit 2; }
  hook="${HOOK[$run]}"
  for p in "${PREDICTIONS[@]}"; do
    read -r label expect <<< "$p"
    out="$OUT/steer--$run--$label--${expect%%:*}.json"
    [ -s "$out" ] && continue
    echo "steer $run probe:$label@$hook expect $expect" >&2
    rl-lab steer "$run" --direction "probe:$label@$hook" --scales=-4,0,4 --episodes "$EPISODES" \
      --expect "$expect" --seed "$S" --json --runs-dir "$RUNS" > "$out.tmp" && mv "$out.tmp" "$out"
  done
  out="$OUT/intervene--$run--predator_adjacent.json"
  if [ ! -s "$out" ]; then
    echo "intervene $run --do predator_adjacent" >&2
    rl-lab intervene "$run" --do predator_adjacent --at-step 10 --episodes 30 --seed "$S" --json \
      --runs-dir "$RUNS" > "$out.tmp" && mv "$out.tmp" "$out"
  fi
done
python "$(dirname "$0")/predictions_table.py" "$OUT"
