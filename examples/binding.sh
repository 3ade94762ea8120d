#!/usr/bin/env bash
# The binding experiment on lab/Binding-v0 (issue 18): does an agent that must reach "the red
# square" among a red circle, a green square and a green circle represent bound conjunctions or a
# bag of features?  For each observation mode (objects, grid), network (PPO-MLP, PPO-transformer)
# and seed: train, record, report how often each object was reached (target, colour lure, shape
# lure, foil; a bag-of-features policy reaches the target 25% of the time), run the conjunction
# probes on every layer (bound or bag, docs/probes.md), train a binding SAE on the last hidden
# layer (docs/sae.md) and compare it with the TopK SAE of equal parameter count.
#
#   bash examples/binding.sh [RUNS_DIR]          # default: runs/binding
#
# Knobs (environment): SEEDS ("0 1 2"), STEPS (PPO environment steps, 300000), EPISODES (recorded,
# 200), MODES ("objects grid"), POLICIES ("mlp transformer"), TRANSFORMER_STEPS (the transformer's
# environment steps: it solves the task sooner and runs ~10x slower; default STEPS), SAE_STEPS
# (binding/TopK SAE steps, empty = the default budget), SAE_SEEDS (seeds whose runs get the SAE
# comparison, the slowest stage; default SEEDS), STEER_EPISODES (40) and STEER_CONTROLS (20) for
# steering the target-cell direction at the SAE's layer (python -m rl_lab.steer.binding), at scales
# (s.d. of the projection) STEER_SCALES_MLP ("0,2,4,8") and STEER_SCALES_TRANSFORMER ("0,8,16,32,64":
# the transformer's residual stream moves nothing below ~16 s.d., the direction nor its controls). Results (one JSON per run and analysis) go to RESULTS
# (default: RUNS_DIR.results/). Finished stages are skipped on a rerun.
# Smoke run (proves the pipeline, not a measurement):
#   SEEDS=0 STEPS=2048 EPISODES=12 SAE_STEPS=20 bash examples/binding.sh /tmp/binding-smoke
set -euo pipefail

RUNS="${1:-runs/binding}"
RESULTS="${RESULTS:-${RUNS%/}.results}"
SEEDS="${SEEDS:-0 1 2}"
STEPS="${STEPS:-300000}"
EPISODES="${EPISODES:-200}"
MODES="${MODES:-objects grid}"
POLICIES="${POLICIES:-mlp transformer}"
TRANSFORMER_STEPS="${TRANSFORMER_STEPS:-$STEPS}"
SAE_STEPS="${SAE_STEPS:-}"
SAE_SEEDS="${SAE_SEEDS:-$SEEDS}"
STEER_EPISODES="${STEER_EPISODES:-40}"
STEER_CONTROLS="${STEER_CONTROLS:-20}"
STEER_SCALES_MLP="${STEER_SCALES_MLP:-0,2,4,8}"
STEER_SCALES_TRANSFORMER="${STEER_SCALES_TRANSFORMER:-0,8,16,32,64}"
mkdir -p "$RESULTS"

done_run() { [ -f "$RUNS/$1/run.json" ] && grep -q '"status": "done"' "$RUNS/$1/run.json"; }
recording() { compgen -G "$RUNS/$1/activations/*.h5" | sort | tail -n 1; }
save() { local out="$1"; shift; "$@" > "$out.tmp" && mv "$out.tmp" "$out"; }  # a killed stage leaves no result
policy_opts() {  # the transformer takes the fair comparison's settings (SB3's MLP ones make it unstable)
  case "$1" in
    mlp) ;;
    transformer) echo "--separate-critic --lr 1e-4 --epochs 4" ;;
  esac
}
sae_hook() {  # the last hidden layer of the actor: where the choice of object must be made
  case "$1" in
    mlp) echo "mlp_extractor.policy_net.3" ;;
    transformer) echo "blocks.1.hook_resid_post" ;;
  esac
}
steps_opt=()
[ -n "$SAE_STEPS" ] && steps_opt=(--steps "$SAE_STEPS")

for mode in $MODES; do
  for policy in $POLICIES; do
    for s in $SEEDS; do
      name="binding-$mode-$policy-s$s"
      steps="$STEPS"; scales="$STEER_SCALES_MLP"
      if [ "$policy" = transformer ]; then steps="$TRANSFORMER_STEPS"; scales="$STEER_SCALES_TRANSFORMER"; fi
      done_run "$name" || rl-lab train --env lab/Binding-v0 --env-kwargs "{\"obs_mode\": \"$mode\"}" --algo ppo \
        --policy "$policy" $(policy_opts "$policy") --steps "$steps" --seed "$s" --name "$name" --runs-dir "$RUNS"
      [ -n "$(recording "$name")" ] || rl-lab record "$name" --episodes "$EPISODES" --seed "$s" --runs-dir "$RUNS"
      h5="$(recording "$name")"
      [ -f "$RESULTS/$name.probes.json" ] || save "$RESULTS/$name.probes.json" python -m probes.binding "$h5" --json
      hook="$(sae_hook "$policy")"
      [ -f "$RESULTS/$name.steer.json" ] || save "$RESULTS/$name.steer.json" python -m rl_lab.steer.binding "$name" \
        --hook "$hook" --episodes "$STEER_EPISODES" --controls "$STEER_CONTROLS" --scales "$scales" --seed "$s" --runs-dir "$RUNS" --json
      case " $SAE_SEEDS " in *" $s "*) ;; *) continue ;; esac
      [ -f "$RESULTS/$name.sae.json" ] || save "$RESULTS/$name.sae.json" rl-lab sae "$h5" --hook "$hook" \
        --arch binding --slots 2 "${steps_opt[@]}" --live-episodes 0 --overwrite --json
      [ -f "$RESULTS/$name.sae-compare.json" ] || save "$RESULTS/$name.sae-compare.json" python -m probes.sae.binding \
        "$h5" --hook "$hook" "${steps_opt[@]}" --json
    done
  done
done

# One table: reach rates, the verdict per layer and the SAE comparison of every run.
python - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path

results = Path(sys.argv[1])
roles = ("target", "colour_lure", "shape_lure", "foil")
print("== reach rates (recorded episodes) ==")
print(f"{'run':<40} " + " ".join(f"{r:>11}" for r in (*roles, "none")))
for path in sorted(results.glob("*.probes.json")):
    doc = json.loads(path.read_text())
    reach = doc.get("reach") or {}
    print(f"{path.name[:-len('.probes.json')]:<40} " + " ".join(f"{reach.get(r, float('nan')):>11.1%}" for r in (*roles, "none")))
print("\n== conjunctions bound per layer (probe beats the best bag probe on held-out episodes) ==")
for path in sorted(results.glob("*.probes.json")):
    doc = json.loads(path.read_text())
    for layer, res in doc["layers"].items():
        t = res["conjunctions"]["target"]
        print(f"{path.name[:-len('.probes.json')]:<40} {layer:<32} bound: {', '.join(res['bound']) or 'none':<40} "
              f"target probe {t['probe']:.3f} vs bag {max(t['bag_and'], t['bag_and_fit']):.3f}")
print("\n== steering the target-cell direction (pooled over the four corners; largest scale) ==")
for path in sorted(results.glob("*.steer.json")):
    v = json.loads(path.read_text())["verdict"]
    print(f"{path.name[:-len('.steer.json')]:<40} steered object {v['steered']:.1%} "
          f"[{v['steered_ci'][0]:.1%}, {v['steered_ci'][1]:.1%}] clean {v['clean_steered']:.1%} "
          f"best control {v['controls_max']:.1%} p {v['control_p_value']:.3f}; moves to it: {'yes' if v['moves_to_steered_object'] else 'no'}")
print("\n== binding SAE vs TopK at equal parameters (held-out) ==")
for path in sorted(results.glob("*.sae-compare.json")):
    doc = json.loads(path.read_text())
    b, t = doc["binding"], doc["topk"]
    print(f"{path.name[:-len('.sae-compare.json')]:<40} EV binding {b['explained_variance']:.4f} (w {b['width']}) "
          f"topk {t['explained_variance']:.4f} (w {t['width']}); conjunction-selective latents "
          f"{b.get('selective', 'n/a')} vs {t.get('selective', 'n/a')}")
EOF
