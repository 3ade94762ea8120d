#!/usr/bin/env bash
# Issue 17 end to end on MiniGrid: PPO learns DoorKey-5x5, a decision transformer is trained on
# its checkpoints' trajectories, recorded on fresh episodes, and an SAE is trained inside it on
# blocks.0.hook_resid_post, judged on held-out episodes (L0, explained variance, MSE, dead/dense
# fractions, action-loss recovered with the SAE spliced in, return recovered in live episodes).
# The closing section describes three latents from their top-activating steps (rendered grids).
#
#   bash examples/minigrid-dt-sae.sh [RUNS_DIR]        # default: runs/minigrid
#
# Budget knobs: RL_STEPS (50000), DT_STEPS (2000 gradient steps, early stopping on held-out loss),
# TRAJ_EPISODES (50 per source checkpoint), EPISODES (300 recorded), WIDTH (256), K (8).
# About 15 min on 2 cores. Finished stages are skipped on a rerun.
set -euo pipefail

RUNS="${1:-runs/minigrid}"
ENV="${ENV:-MiniGrid-DoorKey-5x5-v0}"
RL_STEPS="${RL_STEPS:-50000}"
DT_STEPS="${DT_STEPS:-2000}"
TRAJ_EPISODES="${TRAJ_EPISODES:-50}"
EPISODES="${EPISODES:-300}"
WIDTH="${WIDTH:-256}"
K="${K:-8}"
HOOK="${HOOK:-blocks.0.hook_resid_post}"

done_run() { [ -f "$RUNS/$1/run.json" ] && grep -q '"status": "done"' "$RUNS/$1/run.json"; }
recorded() { compgen -G "$RUNS/$1/activations/*.h5" > /dev/null; }

done_run dk || rl-lab train --env "$ENV" --algo ppo --steps "$RL_STEPS" --seed 0 --name dk --runs-dir "$RUNS"
done_run dk-dt || rl-lab train --algo dt --from dk --steps "$DT_STEPS" --seed 0 --patience 10 \
  --episodes-per-policy "$TRAJ_EPISODES" --trajectories "ep$TRAJ_EPISODES" --eval-episodes 20 \
  --name dk-dt --runs-dir "$RUNS"
recorded dk-dt || rl-lab record dk-dt --episodes "$EPISODES" --seed 1000 --runs-dir "$RUNS"
sae="$RUNS/dk-dt/saes/$HOOK-topk-$WIDTH"
[ -f "$sae/metrics.json" ] || rl-lab sae dk-dt --hook "$HOOK" --width "$WIDTH" --k "$K" --epochs 200 \
  --live-episodes 20 --runs-dir "$RUNS"
# three latents, each chosen as the one most associated with an environment latent on the training
# episodes (its held-out association is the number to read), described from its top steps
python -m probes.features "$sae" --best distance_to_door --best key_visible --best reward
