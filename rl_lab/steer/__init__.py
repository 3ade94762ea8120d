"""Interventions: turn a probe direction or an SAE latent into an edit of the running agent.

``rl-lab steer RUN --direction probe:LABEL@HOOK | sae:SAE_NAME/LATENT | diff:LABEL@HOOK`` adds,
erases or clamps the direction at its hook during live rollouts, at a sweep of scales, beside
random directions of the same norm, and measures what each edit does to behaviour (return,
KL from the clean policy, episode length, the env's ``behaviour_spec`` measures) with bootstrap
confidence intervals over episodes that share their seeds across conditions. See ``docs/steer.md``.

Modules: ``directions`` (where a direction comes from, its units, the random controls),
``intervene`` (the forward hook), ``policies`` (the steerable networks: SB3, DT/BC, recurrent),
``rollout`` (batched rollouts with common random numbers), ``leace`` (concept erasure and its
check), ``analysis`` (statistics, the table, the text plot), ``experiment`` (``steer``: the
whole experiment), ``world`` (``intervene``: interventions on the world, ``rl-lab intervene``).
"""

from __future__ import annotations

from rl_lab.steer.analysis import control_rank, dose_plot, format_table, parse_expect
from rl_lab.steer.directions import (
    Direction,
    DirectionSpec,
    control_directions,
    diff_direction,
    parse_direction,
    resolve_direction,
)
from rl_lab.steer.experiment import DEFAULT_CONTROLS, DEFAULT_SCALES, SteerConfig, steer
from rl_lab.steer.intervene import MODES, Edit, SteeringHook, make_edit, subspace_edit
from rl_lab.steer.policies import POLICY_LOADERS, SteerablePolicy, load_policy
from rl_lab.steer.world import InterveneConfig, format_intervention, intervene

__all__ = [
    "DEFAULT_CONTROLS",
    "DEFAULT_SCALES",
    "InterveneConfig",
    "POLICY_LOADERS",
    "SteerablePolicy",
    "control_directions",
    "control_rank",
    "dose_plot",
    "format_intervention",
    "intervene",
    "load_policy",
    "subspace_edit",
    "Direction",
    "DirectionSpec",
    "Edit",
    "MODES",
    "SteerConfig",
    "SteeringHook",
    "diff_direction",
    "format_table",
    "make_edit",
    "parse_direction",
    "parse_expect",
    "resolve_direction",
    "steer",
]
