"""Interventions: turn a probe direction or an SAE latent into an edit of the running agent.

``rl-lab steer RUN --direction probe:LABEL@HOOK | sae:SAE_NAME/LATENT | diff:LABEL@HOOK`` adds,
erases or clamps the direction at its hook during live rollouts, at a sweep of scales, beside
random directions of the same norm, and measures what each edit does to behaviour (return,
KL from the clean policy, episode length, the env's ``behaviour_spec`` measures) with bootstrap
confidence intervals over episodes that share their seeds across conditions. See ``docs/steer.md``.

Modules: ``directions`` (where a direction comes from, its units), ``intervene`` (the forward
hook), ``rollout`` (batched rollouts with common random numbers), ``analysis`` (statistics and
the table), ``experiment`` (``steer``: the whole experiment).
"""

from __future__ import annotations

from rl_lab.steer.analysis import format_table, parse_expect
from rl_lab.steer.directions import Direction, DirectionSpec, diff_direction, parse_direction, resolve_direction
from rl_lab.steer.experiment import DEFAULT_SCALES, SteerConfig, steer
from rl_lab.steer.intervene import MODES, Edit, SteeringHook, make_edit

__all__ = [
    "DEFAULT_SCALES",
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
