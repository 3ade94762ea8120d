"""RL Lab environments: Gymnasium envs with ground-truth latents, registered under ``lab/``.

Importing this package registers ``lab/Forage-v0``, ``lab/Binding-v0`` and ``lab/Chain-v0``
(cheaply: gymnasium and numpy only; each env module is imported when first made).
``envs.make`` is the one way the lab makes environments (MiniGrid ids through ``envs.minigrid``);
see ``docs/envs.md``.
"""

from __future__ import annotations

import gymnasium as gym

from envs.api import LAB_ENV_IDS, behaviour_spec, do, do_targets, latent_spec, make, text_render

__all__ = ["LAB_ENV_IDS", "behaviour_spec", "do", "do_targets", "latent_spec", "make", "text_render"]

_ENTRY_POINTS = {
    "lab/Forage-v0": "envs.forage:ForageEnv",
    "lab/Binding-v0": "envs.binding:BindingEnv",
    "lab/Chain-v0": "envs.chain:ChainEnv",
}

for _env_id, _entry_point in _ENTRY_POINTS.items():
    if _env_id not in gym.registry:
        # No max_episode_steps: each env truncates itself (its cap is a constructor argument).
        gym.register(id=_env_id, entry_point=_entry_point)
