"""``lab/Forage-v0``: a homeostatic foraging gridworld with a predator.

After Keramati & Gutkin (2014), "Homeostatic reinforcement learning for integrating reward
collection and physiological stability" (eLife 3:e04811). The agent has internal variables
``H = (energy, water, health)`` in [0, 1] with set-points ``H*``; energy and water decay
every step. Stepping on the food cell restores energy, on the water cell restores water
(each source then reappears on a random free cell). A predator wanders the grid, chasing
the agent with some probability; contact costs health and the predator retreats to a far
cell. Energy, water or health reaching 0 ends the episode (``terminated``); the step cap
ends it by truncation.

Reward (``reward_mode``):

* ``"plain"`` (default) — +1 per food or water taken while its level is below its
  set-point (taking it when sated pays nothing), ``-predator_penalty`` per bite,
  ``-death_penalty`` on termination. PPO learns this within a demo budget.
* ``"drive"`` — drive reduction, ``r_t = scale * (D(H_t) - D(H_{t+1}))`` with
  ``D(H) = (sum_i |h*_i - h_i|^n)^(1/m)`` (n > m > 1 as in the paper; defaults n=4, m=2),
  minus ``death_penalty`` on termination. Health (set-point 1) is one of the ``h_i``, so a
  bite is a loss of drive-reduction reward. The drive terms telescope over an episode
  (they are potential-based shaping with potential ``-D``), so this mode needs a larger
  budget than ``"plain"``; see docs/envs.md for the measurements.

Observation (float32 vector): ``obs_mode="vector"`` (default) gives the agent's position and
the offsets to food, water and predator, each divided by ``size - 1``; ``obs_mode="grid"``
gives four flattened one-hot ``size x size`` planes (agent, food, water, predator). With
``interoception=True`` the internal variables (energy, water, health) are appended.

Actions: 0 up, 1 right, 2 down, 3 left, 4 stay.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs._common import RandomBuffer, check_choice, check_float, check_int, spec

ACTION_NAMES = ("up", "right", "down", "left", "stay")
_DR = (-1, 0, 1, 0, 0)
_DC = (0, 1, 0, -1, 0)

BEHAVIOUR_SPEC = {
    "distance_to_threat": "Manhattan distance from the agent to the predator after the step",
    "ate_food": "1 if the agent took food this step, else 0",
    "drank_water": "1 if the agent drank water this step, else 0",
    "bitten": "1 if the predator caught the agent this step, else 0",
    "distance_to_food": "Manhattan distance from the agent to the food after the step",
    "distance_to_water": "Manhattan distance from the agent to the water after the step",
    "idle": "1 if the agent's cell did not change this step (it stayed, or walked into a wall), else 0",
}

DO_TARGETS: dict[str, dict[str, Any]] = {
    "predator_adjacent": {"description": "the predator moves to a cell next to the agent (the first free one of "
                                         "up, right, down, left)", "value": None},
    "predator_far": {"description": "the predator moves to the free cell farthest from the agent "
                                    "(ties: the first in row-major order)", "value": None},
    "food_adjacent": {"description": "the food moves to a cell next to the agent (the first free one of up, "
                                     "right, down, left): food in reach", "value": None},
    "water_adjacent": {"description": "the water moves to a cell next to the agent (first free of up, right, "
                                      "down, left)", "value": None},
    "energy": {"description": "set the energy level to VALUE", "value": [0.0, 1.0], "default": 0.1},
    "water": {"description": "set the water level to VALUE", "value": [0.0, 1.0], "default": 0.1},
    "hunger": {"description": "set the hunger to VALUE: energy = energy_set_point - VALUE", "value": [0.0, 1.0],
               "default": 0.7},
    "thirst": {"description": "set the thirst to VALUE: water = water_set_point - VALUE", "value": [0.0, 1.0],
               "default": 0.7},
    "health": {"description": "set the health to VALUE", "value": [0.0, 1.0], "default": 0.2},
}


class ForageEnv(gym.Env):
    """Homeostatic foraging with two competing drives (energy, water) and a predator.

    Args:
        size: side of the square grid (4..32).
        max_steps: episode length cap (truncation).
        reward_mode: ``"plain"`` (needed items, bites, death) or ``"drive"`` (drive reduction).
        interoception: append (energy, water, health) to the observation.
        obs_mode: ``"vector"`` (positions/offsets) or ``"grid"`` (one-hot planes).
        energy_decay, water_decay: loss of each internal variable per step.
        food_gain, water_gain: gain from one food / water (the level is capped at 1).
        energy_set_point, water_set_point: the set-points h* (health's is 1).
        init_low, init_high: energy and water start uniform in [init_low, init_high].
        drive_n, drive_m: exponents of the drive ``D(H) = (sum |h*-h|^n)^(1/m)``.
        reward_scale: multiplies the drive-reduction reward.
        predator_speed: probability that the predator moves in a step.
        chase_prob: when it moves, probability that it steps towards the agent (else random).
        predator_damage: health lost per bite.
        predator_penalty: reward lost per bite in ``"plain"`` mode.
        death_penalty: reward lost when the episode terminates (starved, dehydrated, killed).
        render_mode: ``None`` or ``"ansi"``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 8}

    def __init__(
        self,
        size: int = 7,
        max_steps: int = 200,
        reward_mode: str = "plain",
        interoception: bool = True,
        obs_mode: str = "vector",
        energy_decay: float = 0.005,
        water_decay: float = 0.005,
        food_gain: float = 0.3,
        water_gain: float = 0.3,
        energy_set_point: float = 0.8,
        water_set_point: float = 0.8,
        init_low: float = 0.3,
        init_high: float = 0.7,
        drive_n: float = 4.0,
        drive_m: float = 2.0,
        reward_scale: float = 1.0,
        predator_speed: float = 0.3,
        chase_prob: float = 0.5,
        predator_damage: float = 0.4,
        predator_penalty: float = 1.0,
        death_penalty: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.size = check_int("size", size, 4, 32)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.reward_mode = check_choice("reward_mode", reward_mode, ("drive", "plain"))
        if not isinstance(interoception, (bool, np.bool_)):
            raise ValueError(f"interoception must be True or False, got {interoception!r}")
        self.interoception = bool(interoception)
        self.obs_mode = check_choice("obs_mode", obs_mode, ("vector", "grid"))
        self.energy_decay = check_float("energy_decay", energy_decay, 0.0, 1.0)
        self.water_decay = check_float("water_decay", water_decay, 0.0, 1.0)
        self.food_gain = check_float("food_gain", food_gain, 0.0, 1.0)
        self.water_gain = check_float("water_gain", water_gain, 0.0, 1.0)
        self.energy_set_point = check_float("energy_set_point", energy_set_point, 0.0, 1.0)
        self.water_set_point = check_float("water_set_point", water_set_point, 0.0, 1.0)
        self.init_low = check_float("init_low", init_low, 0.0, 1.0, lo_open=True)
        self.init_high = check_float("init_high", init_high, 0.0, 1.0, lo_open=True)
        if self.init_low > self.init_high:
            raise ValueError(f"init_low ({init_low}) must not exceed init_high ({init_high})")
        self.drive_n = check_float("drive_n", drive_n, 0.0, lo_open=True)
        self.drive_m = check_float("drive_m", drive_m, 0.0, lo_open=True)
        self.reward_scale = check_float("reward_scale", reward_scale, 0.0, lo_open=True)
        self.predator_speed = check_float("predator_speed", predator_speed, 0.0, 1.0)
        self.chase_prob = check_float("chase_prob", chase_prob, 0.0, 1.0)
        self.predator_damage = check_float("predator_damage", predator_damage, 0.0, 1.0)
        self.predator_penalty = check_float("predator_penalty", predator_penalty, 0.0)
        self.death_penalty = check_float("death_penalty", death_penalty, 0.0)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode

        s = self.size
        self._scale = 1.0 / (s - 1)
        self._max_dist = 2 * (s - 1)
        self._far = s // 2  # the predator (re)appears at least this far from the agent
        n_intero = 3 if self.interoception else 0
        if self.obs_mode == "vector":
            n_obs = 8 + n_intero
            low = np.full(n_obs, -1.0, dtype=np.float32)
            low[:2] = 0.0
            low[8:] = 0.0
        else:
            n_obs = 4 * s * s + n_intero
            low = np.zeros(n_obs, dtype=np.float32)
        self.observation_space = spaces.Box(low, np.ones(n_obs, dtype=np.float32), dtype=np.float32)
        self.action_space = spaces.Discrete(5)
        self._grid = np.zeros(n_obs, dtype=np.float32) if self.obs_mode == "grid" else None

        dmax = 2.0 * (s - 1)
        e_sp, w_sp = self.energy_set_point, self.water_set_point
        d_max = self._drive(0.0 if e_sp >= 0.5 else 1.0, 0.0 if w_sp >= 0.5 else 1.0, 0.0)
        self.latent_spec: dict[str, dict[str, Any]] = {
            "energy": spec("continuous", "internal energy level (0 = starved)", 0.0, 1.0),
            "water": spec("continuous", "internal water level (0 = dehydrated)", 0.0, 1.0),
            "health": spec("continuous", "health; each predator bite removes predator_damage", 0.0, 1.0),
            "hunger": spec("continuous", "energy deficit below its set-point, max(0, h*_energy - energy)", 0.0, e_sp),
            "thirst": spec("continuous", "water deficit below its set-point, max(0, h*_water - water)", 0.0, w_sp),
            "drive": spec("continuous", "homeostatic drive D(H) = (sum_i |h*_i - h_i|^n)^(1/m) over energy, water, health", 0.0, d_max),
            "threat": spec("continuous", "1 / (1 + Manhattan distance to the predator)", 1.0 / (1.0 + dmax), 1.0),
            "distance_to_threat": spec("continuous", "Manhattan distance from the agent to the predator", 0.0, dmax),
            "distance_to_food": spec("continuous", "Manhattan distance from the agent to the food", 0.0, dmax),
            "distance_to_water": spec("continuous", "Manhattan distance from the agent to the water", 0.0, dmax),
            "predator_adjacent": spec("discrete", "1 if the predator is within one step (Manhattan distance <= 1), else 0", 0, 1),
            "dominant_need": spec("discrete", "0 if hunger >= thirst (food is the more urgent need), 1 if thirst is larger", 0, 1),
            "agent_row": spec("discrete", "agent's row (0 = top)", 0, s - 1),
            "agent_col": spec("discrete", "agent's column (0 = left)", 0, s - 1),
            "step": spec("discrete", "steps taken in this episode", 0, self.max_steps),
        }
        self.behaviour_spec: dict[str, str] = dict(BEHAVIOUR_SPEC)
        self.do_targets: dict[str, dict[str, Any]] = DO_TARGETS

        self._rand = RandomBuffer(self.np_random)
        # State (set in reset): positions as (row, col) ints, internal variables as floats.
        self._ar = self._ac = self._fr = self._fc = self._wr = self._wc = self._pr = self._pc = 0
        self._energy = self._water = self._health = 1.0
        self._t = 0
        self._d = 0.0
        self._last_reward = 0.0
        self._last_action: int | None = None

    # ------------------------------------------------------------------ dynamics helpers
    def _drive(self, energy: float, water: float, health: float) -> float:
        n = self.drive_n
        total = (
            abs(self.energy_set_point - energy) ** n
            + abs(self.water_set_point - water) ** n
            + (1.0 - health) ** n
        )
        return total ** (1.0 / self.drive_m)

    def _free_cell(self, taken: tuple[tuple[int, int], ...]) -> tuple[int, int]:
        """A uniformly random cell not in ``taken``."""
        s = self.size
        while True:
            k = self._rand.integer(s * s)
            cell = (k // s, k % s)
            if cell not in taken:
                return cell

    def _far_cell(self) -> tuple[int, int]:
        """A uniformly random cell at least ``size // 2`` steps from the agent."""
        s, ar, ac, far = self.size, self._ar, self._ac, self._far
        while True:
            k = self._rand.integer(s * s)
            r, c = k // s, k % s
            if abs(r - ar) + abs(c - ac) >= far:
                return r, c

    def _move_predator(self) -> None:
        rand = self._rand
        if rand.random() >= self.predator_speed:
            return
        pr, pc = self._pr, self._pc
        if rand.random() < self.chase_prob:
            dr, dc = self._ar - pr, self._ac - pc
            if dr == 0 and dc == 0:
                return
            adr, adc = abs(dr), abs(dc)
            if adr > adc or (adr == adc and rand.random() < 0.5):
                pr += 1 if dr > 0 else -1
            else:
                pc += 1 if dc > 0 else -1
        else:
            a = rand.integer(4)
            pr += _DR[a]
            pc += _DC[a]
            last = self.size - 1
            pr = 0 if pr < 0 else (last if pr > last else pr)
            pc = 0 if pc < 0 else (last if pc > last else pc)
        self._pr, self._pc = pr, pc

    # ------------------------------------------------------------------ observation / info
    def _obs(self) -> np.ndarray:
        ar, ac, k = self._ar, self._ac, self._scale
        if self._grid is None:
            values = [
                ar * k, ac * k,
                (self._fr - ar) * k, (self._fc - ac) * k,
                (self._wr - ar) * k, (self._wc - ac) * k,
                (self._pr - ar) * k, (self._pc - ac) * k,
            ]
            if self.interoception:
                values += (self._energy, self._water, self._health)
            return np.array(values, dtype=np.float32)
        g, s = self._grid, self.size
        plane = s * s
        g[: 4 * plane] = 0.0
        g[ar * s + ac] = 1.0
        g[plane + self._fr * s + self._fc] = 1.0
        g[2 * plane + self._wr * s + self._wc] = 1.0
        g[3 * plane + self._pr * s + self._pc] = 1.0
        if self.interoception:
            g[4 * plane] = self._energy
            g[4 * plane + 1] = self._water
            g[4 * plane + 2] = self._health
        return g.copy()

    def _latents(self) -> dict[str, float | int]:
        ar, ac = self._ar, self._ac
        d_pred = abs(self._pr - ar) + abs(self._pc - ac)
        energy, water = self._energy, self._water
        hunger = self.energy_set_point - energy
        thirst = self.water_set_point - water
        hunger = hunger if hunger > 0.0 else 0.0
        thirst = thirst if thirst > 0.0 else 0.0
        return {
            "energy": energy,
            "water": water,
            "health": self._health,
            "hunger": hunger,
            "thirst": thirst,
            "drive": self._d,
            "threat": 1.0 / (1.0 + d_pred),
            "distance_to_threat": float(d_pred),
            "distance_to_food": float(abs(self._fr - ar) + abs(self._fc - ac)),
            "distance_to_water": float(abs(self._wr - ar) + abs(self._wc - ac)),
            "predator_adjacent": 1 if d_pred <= 1 else 0,
            "dominant_need": 0 if hunger >= thirst else 1,
            "agent_row": ar,
            "agent_col": ac,
            "step": self._t,
        }

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._rand.reset(self.np_random)
        rand = self._rand
        lo, span = self.init_low, self.init_high - self.init_low
        self._energy = lo + span * rand.random()
        self._water = lo + span * rand.random()
        self._health = 1.0
        self._t = 0
        self._ar, self._ac = self._free_cell(())
        self._fr, self._fc = self._free_cell(((self._ar, self._ac),))
        self._wr, self._wc = self._free_cell(((self._ar, self._ac), (self._fr, self._fc)))
        self._pr, self._pc = self._far_cell()
        self._d = self._drive(self._energy, self._water, self._health)
        self._last_reward = 0.0
        self._last_action = None
        info = {
            "latents": self._latents(),
            "behaviour": {
                "distance_to_threat": float(abs(self._pr - self._ar) + abs(self._pc - self._ac)),
                "ate_food": 0,
                "drank_water": 0,
                "bitten": 0,
                "distance_to_food": float(abs(self._fr - self._ar) + abs(self._fc - self._ac)),
                "distance_to_water": float(abs(self._wr - self._ar) + abs(self._wc - self._ac)),
                "idle": 0,
            },
        }
        return self._obs(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < 5:
            raise ValueError(f"action must be in 0..4, got {action!r}")
        self._t += 1
        before = (self._ar, self._ac)
        last = self.size - 1
        # Move the agent (walls block).
        r = self._ar + _DR[a]
        c = self._ac + _DC[a]
        r = 0 if r < 0 else (last if r > last else r)
        c = 0 if c < 0 else (last if c > last else c)
        self._ar, self._ac = r, c
        # Metabolism, then consumption.
        energy = self._energy - self.energy_decay
        water = self._water - self.water_decay
        ate = drank = bitten = 0
        needed = 0  # items taken while their level was below its set-point
        if r == self._fr and c == self._fc:
            ate = 1
            needed += energy < self.energy_set_point
            energy = min(1.0, energy + self.food_gain)
            self._fr, self._fc = self._free_cell(((r, c), (self._wr, self._wc)))
        if r == self._wr and c == self._wc:
            drank = 1
            needed += water < self.water_set_point
            water = min(1.0, water + self.water_gain)
            self._wr, self._wc = self._free_cell(((r, c), (self._fr, self._fc)))
        energy = energy if energy > 0.0 else 0.0
        water = water if water > 0.0 else 0.0
        # The predator: contact if the agent walked into it, else it moves and may catch.
        if not (r == self._pr and c == self._pc):
            self._move_predator()
        health = self._health
        if r == self._pr and c == self._pc:
            bitten = 1
            health = health - self.predator_damage
            health = health if health > 0.0 else 0.0
            self._pr, self._pc = self._far_cell()
        self._energy, self._water, self._health = energy, water, health

        terminated = energy <= 0.0 or water <= 0.0 or health <= 0.0
        truncated = (not terminated) and self._t >= self.max_steps
        d_new = self._drive(energy, water, health)
        if self.reward_mode == "drive":
            reward = self.reward_scale * (self._d - d_new)
        else:
            reward = float(needed) - self.predator_penalty * bitten
        if terminated:
            reward -= self.death_penalty
        self._d = d_new
        self._last_reward = reward
        self._last_action = a
        d_pred = abs(self._pr - r) + abs(self._pc - c)
        info = {
            "latents": self._latents(),
            "behaviour": {
                "distance_to_threat": float(d_pred),
                "ate_food": ate,
                "drank_water": drank,
                "bitten": bitten,
                "distance_to_food": float(abs(self._fr - r) + abs(self._fc - c)),
                "distance_to_water": float(abs(self._wr - r) + abs(self._wc - c)),
                "idle": int((r, c) == before),
            },
        }
        return self._obs(), float(reward), terminated, truncated, info

    # ------------------------------------------------------------------ interventions
    def _adjacent_free(self, taken: tuple[tuple[int, int], ...]) -> tuple[int, int]:
        """The first in-grid cell of up, right, down, left of the agent not in ``taken``."""
        last = self.size - 1
        for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1)):
            r, c = self._ar + dr, self._ac + dc
            if 0 <= r <= last and 0 <= c <= last and (r, c) not in taken:
                return r, c
        raise RuntimeError("no free cell next to the agent")  # impossible: 4 neighbours, <= 3 taken

    def do(self, target: str, value: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Set a latent now (an intervention on the world): ``target`` is a key of ``do_targets``.

        Deterministic: no random numbers are drawn, so the rest of the episode's random stream is
        unchanged. Returns the new observation and an ``info`` with the new ``latents``; the
        drive is recomputed (the next reward under ``reward_mode="drive"`` starts from it).
        """
        if target not in DO_TARGETS:
            raise ValueError(f"unknown do target {target!r}; choose one of {', '.join(DO_TARGETS)}")
        spec_ = DO_TARGETS[target]
        if spec_["value"] is not None:
            value = spec_["default"] if value is None else check_float(target, value, *spec_["value"])
        elif value is not None:
            raise ValueError(f"do target {target!r} takes no value")
        agent, food, water, pred = (self._ar, self._ac), (self._fr, self._fc), (self._wr, self._wc), (self._pr, self._pc)
        if target == "predator_adjacent":
            self._pr, self._pc = self._adjacent_free((food, water))
        elif target == "predator_far":
            s = self.size
            cells = [(r, c) for r in range(s) for c in range(s) if (r, c) not in (agent, food, water)]
            self._pr, self._pc = max(cells, key=lambda rc: abs(rc[0] - self._ar) + abs(rc[1] - self._ac))
        elif target == "food_adjacent":
            self._fr, self._fc = self._adjacent_free((water, pred))
        elif target == "water_adjacent":
            self._wr, self._wc = self._adjacent_free((food, pred))
        elif target == "energy":
            self._energy = float(value)
        elif target == "water":
            self._water = float(value)
        elif target == "hunger":
            self._energy = min(1.0, max(0.0, self.energy_set_point - float(value)))
        elif target == "thirst":
            self._water = min(1.0, max(0.0, self.water_set_point - float(value)))
        elif target == "health":
            self._health = float(value)
        self._d = self._drive(self._energy, self._water, self._health)
        return self._obs(), {"latents": self._latents()}

    # ------------------------------------------------------------------ rendering
    def render_text(self) -> str:
        """The current state as a text grid plus one status line (for any render_mode)."""
        s = self.size
        rows = [["."] * s for _ in range(s)]
        rows[self._wr][self._wc] = "W"
        rows[self._fr][self._fc] = "F"
        rows[self._ar][self._ac] = "A"
        rows[self._pr][self._pc] = "P"
        sep = " " if s <= 19 else ""
        lines = [sep.join(row) for row in rows]
        lines.append(
            f"t{self._t} E{self._energy:.2f} W{self._water:.2f} H{self._health:.1f} "
            f"r{self._last_reward:+.2f}"
        )
        return "\n".join(lines)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self.render_text()
        return None
