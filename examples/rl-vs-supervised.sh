#!/usr/bin/env bash
# The lab's question on lab/Forage-v0: do emotion-like variables emerge more under RL than under
# supervision on the same data?  For each seed: a PPO agent (RL), then a decision transformer (DT)
# and a behaviour-cloning transformer (BC) trained by supervision on that agent's own trajectories
# (every checkpoint plus a random policy); all three recorded by the same recorder and probed on
# the same labels; then `rl-lab compare` puts them side by side with intervals across seeds.
#
#   bash examples/rl-vs-supervised.sh [RUNS_DIR]        # default: runs/rl-vs-supervised
#
# Knobs (environment): SEEDS (default "0 1 2"), PPO_STEPS (1600000; 400000 for a quick look), DT_STEPS (3000, at most: training
# stops early on held-out loss), TRAJ_EPISODES (40 per source checkpoint), EPISODES (40 recorded).
# About 25 minutes a seed on one core (12 of them PPO); seeds can run as parallel invocations with
# SEEDS="0 1" and SEEDS="2", then a final run (all stages done) prints the comparison over all seeds.
# Finished stages are skipped on a rerun.
set -euo pipefail

RUNS="${1:-runs/rl-vs-supervised}"
SEEDS="${SEEDS:-0 1 2}"
PPO_STEPS="${PPO_STEPS:-1600000}"
DT_STEPS="${DT_STEPS:-3000}"
TRAJ_EPISODES="${TRAJ_EPISODES:-40}"
EPISODES="${EPISODES:-40}"
LABELS="value,td_error,hope,fear,surprise,mood,arousal,return_to_go,hunger,thirst,threat,distance_to_threat"
PPO_HOOKS="mlp_extractor.policy_net.1,mlp_extractor.policy_net.3,mlp_extractor.value_net.1,mlp_extractor.value_net.3"
DT_HOOKS="blocks.0.hook_resid_post,blocks.0.mlp.hook_post,blocks.1.hook_resid_post,blocks.1.mlp.hook_post"

done_run() { [ -f "$RUNS/$1/run.json" ] && grep -q '"status": "done"' "$RUNS/$1/run.json"; }
probed() { compgen -G "$RUNS/$1/probes/*.json" > /dev/null; }

names=()
for s in $SEEDS; do
  done_run "ppo-s$s" || rl-lab train --algo ppo --steps "$PPO_STEPS" --checkpoint-every $((PPO_STEPS / 10)) \
    --seed "$s" --name "ppo-s$s" --runs-dir "$RUNS"
  for algo in dt bc; do
    done_run "$algo-s$s" || rl-lab train --algo "$algo" --from "ppo-s$s" --steps "$DT_STEPS" --seed "$s" \
      --episodes-per-policy "$TRAJ_EPISODES" --trajectories "ep$TRAJ_EPISODES" --name "$algo-s$s" --runs-dir "$RUNS"
  done
  for algo in ppo dt bc; do
    hooks="$PPO_HOOKS"; [ "$algo" = ppo ] || hooks="$DT_HOOKS"
    compgen -G "$RUNS/$algo-s$s/activations/*.h5" > /dev/null || \
      rl-lab record "$algo-s$s" --episodes "$EPISODES" --seed "$s" --runs-dir "$RUNS"
    probed "$algo-s$s" || rl-lab probe "$algo-s$s" --labels "$LABELS" --hooks "$hooks" --seed "$s" \
      --runs-dir "$RUNS" > /dev/null
  done
  names+=("ppo-s$s" "dt-s$s" "bc-s$s")
done

echo "== every network's best hook (PPO's critic included) =="
rl-lab compare "${names[@]}" --runs-dir "$RUNS"
echo
echo "== acting hooks only: PPO's actor beside the transformers (no critic) =="
rl-lab compare "${names[@]}" --hooks 'mlp_extractor.policy_net.*' --hooks 'blocks.*' --runs-dir "$RUNS"
