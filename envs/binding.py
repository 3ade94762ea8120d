"""``lab/Binding-v0``: reach the object that has both goal features (a feature-binding task).

A ``size x size`` grid holds ``n_objects`` objects, each a conjunction colour x shape (all
different). The goal, given in the observation as one-hot colour + one-hot shape, names one
of them, the *target*. The scene always holds the full crossing of two colours and two
shapes: the target (c, s), a *colour lure* (c, s'), a *shape lure* (c', s) and a *foil*
(c', s'); any further objects are random conjunctions other than the target. Every colour
and shape in the scene is therefore on two objects, each object shares a feature with two
others, and only the goal's *binding* picks the target: a bag-of-features reader of the
scene ("red is there, square is there") and a bound one ("the red square is there") make
different predictions, and nothing but the goal tells the target apart (with three objects
the target would be the one sharing a feature with both others — a shortcut).

``layout="corners"`` (default): the four objects sit in the four corners (in a random
assignment) and the agent starts in the centre — a clean four-way choice.
``layout="random"``: objects and agent on random distinct cells.

Stepping onto an object ends the episode: ``+reward`` for the target, ``-wrong_penalty``
for any other. Every step also pays ``step_reward`` (default -0.01) plus
``shaping * (d_before - d_after)``, the progress made towards the target in Manhattan
distance (default 0.1; 0 turns it off). Actions: 0 up, 1 right, 2 down, 3 left.

Observation (float32), ``obs_mode="objects"`` (default): for each object slot its offset
from the agent ``(drow, dcol) / (size-1)``, one-hot colour, one-hot shape (which conjunction
is in which slot is random every episode; with ``layout="corners"`` slot i is corner i:
top-left, top-right, bottom-left, bottom-right); then the agent's position / (size-1); then
the goal's one-hot colour and shape. ``obs_mode="grid"``: flattened planes (agent, one per
colour, one per shape, each ``size x size``) followed by the goal's one-hot colour and
shape — there colour and shape meet only through the cell they share.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs._common import RandomBuffer, check_choice, check_float, check_int, spec

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "star")
_SHAPE_CHARS = ("o", "s", "t", "*")
_DR = (-1, 0, 1, 0)
_DC = (0, 1, 0, -1)


DO_TARGETS: dict[str, dict[str, Any]] = {
    "target_adjacent": {"description": "the agent moves to a free cell next to the target (first of up, right, "
                                       "down, left of the target)", "value": None},
    "colour_lure_adjacent": {"description": "the agent moves to a free cell next to the colour lure", "value": None},
    "swap_goal_shape": {"description": "the goal names the colour lure's conjunction: target <-> colour lure, "
                                       "shape lure <-> foil (objects stay where they are)", "value": None},
    "swap_goal_colour": {"description": "the goal names the shape lure's conjunction: target <-> shape lure, "
                                        "colour lure <-> foil", "value": None},
}


class BindingEnv(gym.Env):
    """Reach the object with the goal's colour AND shape, past lures that share one of them.

    Args:
        size: side of the grid (3..12).
        n_objects: objects on the grid (4..min(n_colours * n_shapes, 8); 4 with corners).
        n_colours, n_shapes: feature values in play (2..4 each).
        reward: reward for reaching the target.
        wrong_penalty: reward lost for reaching any other object.
        step_reward: reward of every step (a small cost by default).
        shaping: reward per step of progress towards the target (``shaping * (d_before -
            d_after)`` in Manhattan distance; 0 turns it off).
        max_steps: episode cap (truncation).
        obs_mode: ``"objects"`` (object list) or ``"grid"`` (feature planes).
        layout: ``"corners"`` (objects in the corners, agent in the centre) or ``"random"``.
        render_mode: ``None`` or ``"ansi"``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 8}

    def __init__(
        self,
        size: int = 5,
        n_objects: int = 4,
        n_colours: int = 2,
        n_shapes: int = 2,
        reward: float = 1.0,
        wrong_penalty: float = 1.0,
        step_reward: float = -0.01,
        shaping: float = 0.1,
        max_steps: int = 50,
        obs_mode: str = "objects",
        layout: str = "corners",
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.size = check_int("size", size, 3, 12)
        self.n_colours = check_int("n_colours", n_colours, 2, len(COLOURS))
        self.n_shapes = check_int("n_shapes", n_shapes, 2, len(SHAPES))
        max_obj = min(self.n_colours * self.n_shapes, 8, self.size * self.size - 1)
        self.n_objects = check_int("n_objects", n_objects, 4, max_obj)
        self.layout = check_choice("layout", layout, ("corners", "random"))
        if self.layout == "corners" and self.n_objects != 4:
            raise ValueError(f"layout='corners' holds exactly 4 objects, got n_objects={n_objects}")
        self.reward = check_float("reward", reward, 0.0, 1e6, lo_open=True)
        self.wrong_penalty = check_float("wrong_penalty", wrong_penalty, 0.0, 1e6)
        self.step_reward = check_float("step_reward", step_reward, -1e6, 1e6)
        self.shaping = check_float("shaping", shaping, 0.0, 1e6)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.obs_mode = check_choice("obs_mode", obs_mode, ("objects", "grid"))
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode

        s, nc, ns, k = self.size, self.n_colours, self.n_shapes, self.n_objects
        self.colours = COLOURS[:nc]
        self.shapes = SHAPES[:ns]
        self._scale = 1.0 / (s - 1)
        if self.obs_mode == "objects":
            self._slot = 2 + nc + ns
            n_obs = k * self._slot + 2 + nc + ns
            low = np.zeros(n_obs, dtype=np.float32)
            for i in range(k):
                low[i * self._slot : i * self._slot + 2] = -1.0
        else:
            n_obs = (1 + nc + ns) * s * s + nc + ns
            low = np.zeros(n_obs, dtype=np.float32)
        self.observation_space = spaces.Box(low, np.ones(n_obs, dtype=np.float32), dtype=np.float32)
        self.action_space = spaces.Discrete(4)
        self._buf = np.zeros(n_obs, dtype=np.float32)

        dmax = 2.0 * (s - 1)
        latent_spec: dict[str, dict[str, Any]] = {
            "target_index": spec("discrete", "slot (in the observation's object list) of the target", 0, k - 1),
            "target_colour": spec("discrete", f"goal colour index ({', '.join(self.colours)})", 0, nc - 1),
            "target_shape": spec("discrete", f"goal shape index ({', '.join(self.shapes)})", 0, ns - 1),
            "target_row": spec("discrete", "row of the target (0 = top)", 0, s - 1),
            "target_col": spec("discrete", "column of the target (0 = left)", 0, s - 1),
            "distance_to_target": spec("continuous", "Manhattan distance from the agent to the target", 0.0, dmax),
            "colour_lure_row": spec("discrete", "row of the colour lure (target's colour, other shape)", 0, s - 1),
            "colour_lure_col": spec("discrete", "column of the colour lure", 0, s - 1),
            "distance_to_colour_lure": spec("continuous", "Manhattan distance from the agent to the colour lure", 0.0, dmax),
            "shape_lure_row": spec("discrete", "row of the shape lure (target's shape, other colour)", 0, s - 1),
            "shape_lure_col": spec("discrete", "column of the shape lure", 0, s - 1),
            "distance_to_shape_lure": spec("continuous", "Manhattan distance from the agent to the shape lure", 0.0, dmax),
            "foil_row": spec("discrete", "row of the foil (neither the target's colour nor its shape)", 0, s - 1),
            "foil_col": spec("discrete", "column of the foil", 0, s - 1),
            "distance_to_foil": spec("continuous", "Manhattan distance from the agent to the foil", 0.0, dmax),
            "distance_to_nearest_object": spec("continuous", "Manhattan distance from the agent to the nearest object", 0.0, dmax),
            "agent_row": spec("discrete", "agent's row", 0, s - 1),
            "agent_col": spec("discrete", "agent's column", 0, s - 1),
            "step": spec("discrete", "steps taken in this episode", 0, self.max_steps),
        }
        for name in self.colours + self.shapes:
            latent_spec[f"{name}_row"] = spec(
                "discrete", f"row of the {name} object nearest the agent, -1 if none", -1, s - 1
            )
            latent_spec[f"{name}_col"] = spec(
                "discrete", f"column of the {name} object nearest the agent, -1 if none", -1, s - 1
            )
        self.latent_spec = latent_spec
        self.behaviour_spec: dict[str, str] = {
            "distance_to_target": "Manhattan distance from the agent to the target after the step",
            "reached_target": "1 if this step reached the target, else 0",
            "reached_colour_lure": "1 if this step reached the colour lure, else 0",
            "reached_shape_lure": "1 if this step reached the shape lure, else 0",
            "reached_foil": "1 if this step reached the foil (neither goal feature), else 0",
            "reached_other": "1 if this step reached one of the further random objects, else 0",
        }

        self.do_targets: dict[str, dict[str, Any]] = DO_TARGETS

        self._rand = RandomBuffer(self.np_random)
        # State: objects as lists (slot order); roles index into them.
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._col_ids: list[int] = []
        self._shape_ids: list[int] = []
        self._target = self._colour_lure = self._shape_lure = self._foil = 0
        self._ar = self._ac = 0
        self._t = 0
        self._last_reward = 0.0
        self._hit = -1
        self._agent_cell = -1
        self._feature_slots: list[tuple[str, str, list[int]]] = []

    # ------------------------------------------------------------------ layout
    def _layout(self) -> None:
        rand, nc, ns, k, s = self._rand, self.n_colours, self.n_shapes, self.n_objects, self.size
        tc, ts = rand.integer(nc), rand.integer(ns)
        oc = (tc + 1 + rand.integer(nc - 1)) % nc  # another colour
        os_ = (ts + 1 + rand.integer(ns - 1)) % ns  # another shape
        # target, colour lure, shape lure, foil, then random others (never the target)
        conj = [(tc, ts), (tc, os_), (oc, ts), (oc, os_)]
        while len(conj) < k:
            c = (rand.integer(nc), rand.integer(ns))
            if c not in conj:
                conj.append(c)
        # Shuffle which conjunction goes to which slot (Fisher-Yates); remember the roles.
        order = list(range(k))
        for i in range(k - 1, 0, -1):
            j = rand.integer(i + 1)
            order[i], order[j] = order[j], order[i]
        conj = [conj[i] for i in order]
        self._target = order.index(0)
        self._colour_lure = order.index(1)
        self._shape_lure = order.index(2)
        self._foil = order.index(3)
        self._col_ids = [c for c, _ in conj]
        self._shape_ids = [sh for _, sh in conj]
        if self.layout == "corners":
            last = s - 1
            self._rows = [0, 0, last, last]
            self._cols = [0, last, 0, last]
            self._ar = self._ac = s // 2
            return
        # Distinct random cells for the objects and the agent.
        cells: list[int] = []
        while len(cells) < k + 1:
            cell = rand.integer(s * s)
            if cell not in cells:
                cells.append(cell)
        self._rows = [c // s for c in cells[:k]]
        self._cols = [c % s for c in cells[:k]]
        self._ar, self._ac = cells[k] // s, cells[k] % s

    # ------------------------------------------------------------------ observation / info
    def _static_obs(self) -> None:
        """Write the parts of the observation that stay fixed within an episode."""
        b = self._buf
        b[:] = 0.0
        nc, ns = self.n_colours, self.n_shapes
        if self.obs_mode == "objects":
            w = self._slot
            for i in range(self.n_objects):
                b[i * w + 2 + self._col_ids[i]] = 1.0
                b[i * w + 2 + nc + self._shape_ids[i]] = 1.0
            o = self.n_objects * w + 2
        else:
            s = self.size
            plane = s * s
            for i in range(self.n_objects):
                cell = self._rows[i] * s + self._cols[i]
                b[(1 + self._col_ids[i]) * plane + cell] = 1.0
                b[(1 + nc + self._shape_ids[i]) * plane + cell] = 1.0
            o = (1 + nc + ns) * plane
        t = self._target
        b[o + self._col_ids[t]] = 1.0
        b[o + nc + self._shape_ids[t]] = 1.0
        self._agent_cell = -1

    def _obs(self) -> np.ndarray:
        b, ar, ac, k = self._buf, self._ar, self._ac, self._scale
        if self.obs_mode == "objects":
            w = self._slot
            rows, cols = self._rows, self._cols
            for i in range(self.n_objects):
                b[i * w] = (rows[i] - ar) * k
                b[i * w + 1] = (cols[i] - ac) * k
            o = self.n_objects * w
            b[o] = ar * k
            b[o + 1] = ac * k
        else:
            if self._agent_cell >= 0:
                b[self._agent_cell] = 0.0
            self._agent_cell = ar * self.size + ac
            b[self._agent_cell] = 1.0
        return b.copy()

    def _dist(self, i: int) -> int:
        return abs(self._rows[i] - self._ar) + abs(self._cols[i] - self._ac)

    def _latents(self) -> dict[str, float | int]:
        t, cl, sl, fo = self._target, self._colour_lure, self._shape_lure, self._foil
        rows, cols = self._rows, self._cols
        dists = [self._dist(i) for i in range(self.n_objects)]
        latents: dict[str, float | int] = {
            "target_index": t,
            "target_colour": self._col_ids[t],
            "target_shape": self._shape_ids[t],
            "target_row": rows[t],
            "target_col": cols[t],
            "distance_to_target": float(dists[t]),
            "colour_lure_row": rows[cl],
            "colour_lure_col": cols[cl],
            "distance_to_colour_lure": float(dists[cl]),
            "shape_lure_row": rows[sl],
            "shape_lure_col": cols[sl],
            "distance_to_shape_lure": float(dists[sl]),
            "foil_row": rows[fo],
            "foil_col": cols[fo],
            "distance_to_foil": float(dists[fo]),
            "distance_to_nearest_object": float(min(dists)),
            "agent_row": self._ar,
            "agent_col": self._ac,
            "step": self._t,
        }
        for row_key, col_key, slots in self._feature_slots:
            if not slots:
                latents[row_key] = latents[col_key] = -1
                continue
            best = slots[0]  # nearest object with this feature; ties -> lowest slot
            for i in slots:
                if dists[i] < dists[best]:
                    best = i
            latents[row_key] = rows[best]
            latents[col_key] = cols[best]
        return latents

    def _behaviour(self, hit: int) -> dict[str, float | int]:
        return {
            "distance_to_target": float(self._dist(self._target)),
            "reached_target": 1 if hit == self._target else 0,
            "reached_colour_lure": 1 if hit == self._colour_lure else 0,
            "reached_shape_lure": 1 if hit == self._shape_lure else 0,
            "reached_foil": 1 if hit == self._foil else 0,
            "reached_other": 1 if hit >= 0 and hit not in (self._target, self._colour_lure, self._shape_lure, self._foil) else 0,
        }

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._rand.reset(self.np_random)
        self._layout()
        self._feature_slots = [
            (f"{name}_row", f"{name}_col", [i for i, f in enumerate(ids) if f == v])
            for names, ids in ((self.colours, self._col_ids), (self.shapes, self._shape_ids))
            for v, name in enumerate(names)
        ]
        self._static_obs()
        self._t = 0
        self._last_reward = 0.0
        self._hit = -1
        return self._obs(), {"latents": self._latents(), "behaviour": self._behaviour(-1)}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < 4:
            raise ValueError(f"action must be in 0..3, got {action!r}")
        if self._hit >= 0:  # stepped past the end of an episode: stay on the object, no reward
            self._t += 1
            self._last_reward = 0.0
            info = {"latents": self._latents(), "behaviour": self._behaviour(-1)}
            return self._obs(), 0.0, True, False, info
        d_before = self._dist(self._target)
        last = self.size - 1
        r = self._ar + _DR[a]
        c = self._ac + _DC[a]
        self._ar = 0 if r < 0 else (last if r > last else r)
        self._ac = 0 if c < 0 else (last if c > last else c)
        self._t += 1
        hit = -1
        for i in range(self.n_objects):
            if self._rows[i] == self._ar and self._cols[i] == self._ac:
                hit = i
                break
        reward = self.step_reward + self.shaping * (d_before - self._dist(self._target))
        if hit == self._target:
            reward += self.reward
        elif hit >= 0:
            reward -= self.wrong_penalty
        terminated = hit >= 0
        truncated = (not terminated) and self._t >= self.max_steps
        self._last_reward = reward
        self._hit = hit
        info = {"latents": self._latents(), "behaviour": self._behaviour(hit)}
        return self._obs(), float(reward), terminated, truncated, info

    # ------------------------------------------------------------------ interventions
    def do(self, target: str, value: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Change the scene now (an intervention on the world): ``target`` is a key of ``do_targets``.

        Deterministic (no random numbers are drawn). Returns the new observation and an ``info``
        with the new ``latents``.
        """
        if target not in DO_TARGETS:
            raise ValueError(f"unknown do target {target!r}; choose one of {', '.join(DO_TARGETS)}")
        if value is not None:
            raise ValueError(f"do target {target!r} takes no value")
        if target in ("target_adjacent", "colour_lure_adjacent"):
            i = self._target if target == "target_adjacent" else self._colour_lure
            objects = set(zip(self._rows, self._cols))
            last = self.size - 1
            for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1)):
                r, c = self._rows[i] + dr, self._cols[i] + dc
                if 0 <= r <= last and 0 <= c <= last and (r, c) not in objects:
                    self._ar, self._ac = r, c
                    break
            else:
                raise ValueError(f"no free cell next to the object for {target!r}")
        elif target == "swap_goal_shape":  # the goal now names the colour lure (same colour, other shape)
            self._target, self._colour_lure = self._colour_lure, self._target
            self._shape_lure, self._foil = self._foil, self._shape_lure
            self._static_obs()
        else:  # swap_goal_colour: the goal now names the shape lure (other colour, same shape)
            self._target, self._shape_lure = self._shape_lure, self._target
            self._colour_lure, self._foil = self._foil, self._colour_lure
            self._static_obs()
        return self._obs(), {"latents": self._latents()}

    # ------------------------------------------------------------------ rendering
    def render_text(self) -> str:
        """The grid (two characters per object: colour initial + shape) and a status line."""
        s = self.size
        rows = [[" ." for _ in range(s)] for _ in range(s)]
        for i in range(self.n_objects):
            cell = self.colours[self._col_ids[i]][0].upper() + _SHAPE_CHARS[self._shape_ids[i]]
            rows[self._rows[i]][self._cols[i]] = cell
        rows[self._ar][self._ac] = "[]" if self._hit < 0 else "[" + rows[self._ar][self._ac][0]
        lines = [" ".join(row) for row in rows]
        t = self._target
        goal = f"{self.colours[self._col_ids[t]]} {self.shapes[self._shape_ids[t]]}"
        lines.append(f"goal {goal} t{self._t} r{self._last_reward:+.2f}")
        return "\n".join(lines)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self.render_text()
        return None
