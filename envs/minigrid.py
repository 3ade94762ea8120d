"""MiniGrid tasks as lab environments: flat one-hot (or image) observations, latents, text, ``do``.

``envs.make("MiniGrid-...")`` wraps the MiniGrid env in ``MiniGridLab``, which turns MiniGrid's
dictionary observation (``image``: the agent's 7x7 egocentric view as object / colour / state
indices; ``direction``; ``mission``) into an array an SB3 ``MlpPolicy`` (or the lab's CNN, or the
decision transformer) can read, and adds ``info["latents"]`` and ``info["behaviour"]`` per task,
a text rendering and, where cheap, ``do`` interventions. The layouts are in docs/envs.md.

Observation (``obs``):

* ``"onehot"`` (default) — float32 vector ``[view: V*V*20 | direction: 4 | mission: M]``. The view
  is row-major over the agent's view, row 0 the farthest row ahead, row V-1 the agent's own
  (the agent is at row V-1, column V//2, facing up the view); each cell is the one-hot object
  type (11: ``minigrid.core.constants.OBJECT_TO_IDX``), one-hot colour (6: ``COLOR_TO_IDX``) and
  one-hot state (3: ``STATE_TO_IDX``), MiniGrid's raw indices (empty and unseen cells carry
  colour 0 and state 0, as MiniGrid encodes them). ``direction`` is the agent's compass heading.
  The mission: a task whose mission string is fixed (DoorKey, Empty, Memory, ...) has it dropped
  (M = 0); a task whose ``MissionSpace`` has placeholders (e.g. ``GoToObject``: colour x object)
  encodes the chosen value of each placeholder one-hot (M = sum of the placeholder list sizes).
  Free-form language missions (BabyAI) are dropped: the tasks are then not solvable from the
  observation alone.
* ``"image"`` — float32 ``[20 + 4 + M, V, V]``: the same one-hot view as channel planes (channel
  ``k`` of cell (row, col) is the vector's ``(row * V + col) * 20 + k``), then the direction and
  mission one-hots as constant planes; the input of ``--policy cnn``.
* ``"pixels"`` — uint8 ``[3, V*tile_size, V*tile_size]``: the RGB picture of the agent's view
  (MiniGrid's ``get_pov_render``; ``tile_size`` pixels a cell, default 8); direction and mission
  are not in it. Also a ``--policy cnn`` input.
"""

from __future__ import annotations

import itertools
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs._common import check_choice, check_int, spec

OBS_MODES = ("onehot", "image", "pixels")
N_OBJECTS, N_COLOURS, N_STATES = 11, 6, 3
CELL = N_OBJECTS + N_COLOURS + N_STATES
"""One-hot width of one view cell: object type, colour, state."""
MAX_MISSIONS = 10_000
"""Largest number of distinct missions a placeholder MissionSpace may generate to be encoded."""

_GOAL_TASKS = ("EmptyEnv", "DoorKeyEnv", "FourRoomsEnv", "MultiRoomEnv", "LavaGapEnv", "CrossingEnv",
               "DistShiftEnv", "DynamicObstaclesEnv", "LockedRoomEnv")
"""MiniGrid classes whose episodes end on a goal cell: they get the goal latents."""

_GOAL, _KEY, _DOOR, _BALL = 8, 5, 4, 6  # OBJECT_TO_IDX of the objects the latents track

_ARROWS = {0: ">", 1: "v", 2: "<", 3: "^"}
_TILE = {"wall": "#", "floor": "_", "key": "k", "ball": "o", "box": "b", "goal": "G", "lava": "~"}


def _task(env: gym.Env) -> str:
    name = type(env.unwrapped).__name__
    if name == "DoorKeyEnv":
        return "doorkey"
    if name == "MemoryEnv":
        return "memory"
    return "goal" if name in _GOAL_TASKS else "other"


def _manhattan(a: Any, b: Any) -> int:
    return abs(int(a[0]) - int(b[0])) + abs(int(a[1]) - int(b[1]))


class MissionCode:
    """The one-hot code of a mission built from ``MissionSpace`` placeholders (empty if fixed)."""

    def __init__(self, mission_space: Any) -> None:
        placeholders = getattr(mission_space, "ordered_placeholders", None) or []
        self.sizes = [len(p) for p in placeholders]
        self.width = sum(self.sizes)
        self.placeholders = [list(p) for p in placeholders]
        self._codes: dict[str, np.ndarray] = {}
        if not placeholders:
            return
        n = int(np.prod(self.sizes))
        if n > MAX_MISSIONS:
            raise ValueError(f"the mission space has {n} missions; at most {MAX_MISSIONS} can be encoded")
        offsets = np.cumsum([0] + self.sizes[:-1])
        for combo in itertools.product(*(range(s) for s in self.sizes)):
            text = mission_space.mission_func(*(p[i] for p, i in zip(placeholders, combo)))
            code = np.zeros(self.width, dtype=np.float32)
            code[offsets + np.asarray(combo)] = 1.0
            self._codes.setdefault(text, code)

    def encode(self, mission: str) -> np.ndarray:
        if not self.width:
            return np.zeros(0, dtype=np.float32)
        try:
            return self._codes[mission]
        except KeyError:
            raise ValueError(f"mission {mission!r} is not one of the mission space's") from None


class MiniGridLab(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A MiniGrid env as the lab uses it (see the module docstring).

    Parameters
    ----------
    env:
        A MiniGrid env (``gymnasium.make("MiniGrid-...")``).
    obs:
        ``"onehot"`` (flat vector), ``"image"`` (one-hot planes [C, V, V]) or ``"pixels"`` (RGB [3, H, W]).
    tile_size:
        Pixels per cell for ``obs="pixels"``.
    text:
        Render as text (``render_mode`` reads ``"ansi"``).
    """

    def __init__(self, env: gym.Env, obs: str = "onehot", tile_size: int = 8, text: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, obs=obs, tile_size=tile_size, text=text)
        gym.Wrapper.__init__(self, env)
        u = env.unwrapped
        self.obs_mode = check_choice("obs", obs, OBS_MODES)
        self.tile_size = check_int("tile_size", tile_size, 1, 64)
        self._text = bool(text)
        self.view = int(u.agent_view_size)
        self.mission_code = MissionCode(u.observation_space["mission"])
        self.task = _task(env)
        V, M = self.view, self.mission_code.width
        self.obs_size = V * V * CELL + 4 + M
        if self.obs_mode == "onehot":
            self.observation_space = spaces.Box(0.0, 1.0, shape=(self.obs_size,), dtype=np.float32)
        elif self.obs_mode == "image":
            self.observation_space = spaces.Box(0.0, 1.0, shape=(CELL + 4 + M, V, V), dtype=np.float32)
        else:
            side = V * self.tile_size
            self.observation_space = spaces.Box(0, 255, shape=(3, side, side), dtype=np.uint8)
        self._cell_base = (np.arange(V * V) * CELL)[:, None] + np.array([0, N_OBJECTS, N_OBJECTS + N_COLOURS])
        self.latent_spec = self._make_latent_spec()
        self.behaviour_spec = self._make_behaviour_spec()
        self.do_targets: dict[str, dict[str, Any]] = _DO_TARGETS.get(self.task, {})
        self._latents: dict[str, float | int] = {}
        self._last_reward = 0.0

    # ------------------------------------------------------------------ observation
    @property
    def render_mode(self) -> str | None:  # type: ignore[override]
        return "ansi" if self._text else self.env.render_mode

    def _vector(self, raw: dict[str, Any]) -> np.ndarray:
        """The flat one-hot vector of a MiniGrid observation dict."""
        V = self.view
        image = np.asarray(raw["image"]).transpose(1, 0, 2).reshape(V * V, 3)  # [x, y, c] -> row-major cells
        out = np.zeros(self.obs_size, dtype=np.float32)
        out[(self._cell_base + image).ravel()] = 1.0
        out[V * V * CELL + int(raw["direction"])] = 1.0
        if self.mission_code.width:
            out[V * V * CELL + 4:] = self.mission_code.encode(raw["mission"])
        return out

    def observation(self, raw: dict[str, Any]) -> np.ndarray:
        """The observation in this wrapper's mode for a MiniGrid observation dict."""
        if self.obs_mode == "pixels":
            picture = self.env.unwrapped.get_pov_render(tile_size=self.tile_size)  # [H, W, 3]
            return np.ascontiguousarray(picture.transpose(2, 0, 1), dtype=np.uint8)
        vec = self._vector(raw)
        if self.obs_mode == "onehot":
            return vec
        V = self.view
        grid = vec[: V * V * CELL].reshape(V, V, CELL).transpose(2, 0, 1)
        rest = vec[V * V * CELL:]
        planes = np.broadcast_to(rest[:, None, None], (len(rest), V, V))
        return np.concatenate([grid, planes]).astype(np.float32)

    # ------------------------------------------------------------------ latents
    def _make_latent_spec(self) -> dict[str, dict[str, Any]]:
        u = self.env.unwrapped
        w, h = int(u.width), int(u.height)
        far = (w - 3) + (h - 3)  # the largest Manhattan distance between interior cells
        out = {
            "agent_x": spec("discrete", "agent's column in the grid", 0, w - 1),
            "agent_y": spec("discrete", "agent's row in the grid", 0, h - 1),
            "agent_dir": spec("discrete", "agent's direction (0 right, 1 down, 2 left, 3 up)", 0, 3),
            "carrying": spec("discrete", "type index (minigrid OBJECT_TO_IDX) of the carried object, 0 if none", 0, 10),
            "step": spec("discrete", "steps taken in this episode", 0, int(u.max_steps)),
        }
        if self.task in ("goal", "doorkey"):
            out["goal_visible"] = spec("discrete", "1 if the goal cell is in the agent's view (not occluded)", 0, 1)
            out["distance_to_goal"] = spec("discrete", "Manhattan distance from the agent to the goal", 0, far)
        if self.task == "doorkey":
            out.update({
                "key_held": spec("discrete", "1 if the agent carries the key", 0, 1),
                "door_open": spec("discrete", "1 if the door is open", 0, 1),
                "door_locked": spec("discrete", "1 if the door is still locked", 0, 1),
                "key_visible": spec("discrete", "1 if the key lies in the agent's view (0 once held)", 0, 1),
                "door_visible": spec("discrete", "1 if the door is in the agent's view", 0, 1),
                "distance_to_key": spec("discrete", "Manhattan distance to the key (0 while held)", 0, far),
                "distance_to_door": spec("discrete", "Manhattan distance to the door", 0, far),
                "past_door": spec("discrete", "1 if the agent is in the goal's room (right of the wall)", 0, 1),
            })
        if self.task == "memory":
            out.update({
                "cue": spec("discrete", "the object shown in the start room: 0 key, 1 ball", 0, 1),
                "cue_visible": spec("discrete", "1 if the cue object is in the agent's view", 0, 1),
                "correct_side": spec("discrete", "where the matching object is at the hallway's end: 0 up, 1 down", 0, 1),
                "distance_to_correct": spec("discrete", "Manhattan distance to the cell that wins", 0, far),
                "distance_to_wrong": spec("discrete", "Manhattan distance to the cell that loses", 0, far),
            })
        return out

    def _make_behaviour_spec(self) -> dict[str, str]:
        out = {"moved": "1 if the agent's cell changed this step, else 0",
               "turned": "1 if the agent's direction changed this step, else 0"}
        if self.task in ("goal", "doorkey"):
            out["reached_goal"] = "1 if this step reached the goal, else 0"
            out["distance_to_goal"] = "Manhattan distance to the goal after the step"
        if self.task == "doorkey":
            out["picked_up_key"] = "1 if the agent picked up the key this step, else 0"
            out["opened_door"] = "1 if the door opened this step, else 0"
        if self.task == "memory":
            out["chose_correct"] = "1 if this step reached the matching object's cell, else 0"
            out["chose_wrong"] = "1 if this step reached the other object's cell, else 0"
        return out

    def _objects(self) -> dict[int, tuple[int, int, Any]]:
        """Object type index -> (x, y, object) of the first object of that type in the grid."""
        grid = self.env.unwrapped.grid
        w = grid.width
        found: dict[int, tuple[int, int, Any]] = {}
        for k, obj in enumerate(grid.grid):
            if obj is not None:
                t = _TYPE_INDEX.get(obj.type, -1)
                if t not in found:
                    found[t] = (k % w, k // w, obj)
        return found

    def _visible(self, image: np.ndarray, x: int, y: int, type_idx: int) -> int:
        coords = self.env.unwrapped.relative_coords(x, y)
        if coords is None:
            return 0
        return int(image[coords[0], coords[1], 0] == type_idx)

    def _compute_latents(self, raw: dict[str, Any]) -> dict[str, float | int]:
        u = self.env.unwrapped
        pos = (int(u.agent_pos[0]), int(u.agent_pos[1]))
        carrying = u.carrying
        out: dict[str, float | int] = {
            "agent_x": pos[0], "agent_y": pos[1], "agent_dir": int(u.agent_dir),
            "carrying": _TYPE_INDEX.get(carrying.type, 0) if carrying is not None else 0,
            "step": int(u.step_count),
        }
        if self.task == "other":
            return out
        image = np.asarray(raw["image"])
        objs = self._objects()
        if self.task in ("goal", "doorkey"):
            goal = objs.get(_GOAL)
            out["goal_visible"] = self._visible(image, goal[0], goal[1], _GOAL) if goal else 0
            out["distance_to_goal"] = _manhattan(pos, goal) if goal else 0
        if self.task == "doorkey":
            held = int(carrying is not None and carrying.type == "key")
            key, door = objs.get(_KEY), objs.get(_DOOR)
            out["key_held"] = held
            out["door_open"] = int(bool(door and door[2].is_open))
            out["door_locked"] = int(bool(door and door[2].is_locked))
            out["key_visible"] = self._visible(image, key[0], key[1], _KEY) if key else 0
            out["door_visible"] = self._visible(image, door[0], door[1], _DOOR) if door else 0
            out["distance_to_key"] = _manhattan(pos, key) if key and not held else 0
            out["distance_to_door"] = _manhattan(pos, door) if door else 0
            out["past_door"] = int(bool(door and pos[0] > door[0]))
        if self.task == "memory":
            cx, cy = 1, int(u.height) // 2 - 1
            cue = u.grid.get(cx, cy)
            cue_idx = _TYPE_INDEX.get(cue.type, _KEY) if cue is not None else _KEY
            out["cue"] = int(cue_idx == _BALL)
            out["cue_visible"] = self._visible(image, cx, cy, cue_idx)
            out["correct_side"] = int(u.success_pos[1] > int(u.height) // 2)
            out["distance_to_correct"] = _manhattan(pos, u.success_pos)
            out["distance_to_wrong"] = _manhattan(pos, u.failure_pos)
        return out

    def _behaviour(self, before: dict[str, float | int], after: dict[str, float | int],
                   terminated: bool, reward: float) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "moved": int((before.get("agent_x"), before.get("agent_y")) != (after["agent_x"], after["agent_y"])),
            "turned": int(before.get("agent_dir") != after["agent_dir"]),
        }
        if self.task in ("goal", "doorkey"):
            out["reached_goal"] = int(terminated and reward > 0)
            out["distance_to_goal"] = float(after["distance_to_goal"])
        if self.task == "doorkey":
            out["picked_up_key"] = int(after["key_held"] and not before.get("key_held", 0))
            out["opened_door"] = int(after["door_open"] and not before.get("door_open", 0))
        if self.task == "memory":
            pos = (after["agent_x"], after["agent_y"])
            u = self.env.unwrapped
            out["chose_correct"] = int(terminated and pos == tuple(u.success_pos))
            out["chose_wrong"] = int(terminated and pos == tuple(u.failure_pos))
        return out

    # ------------------------------------------------------------------ gym API
    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        raw, info = self.env.reset(**kwargs)
        self._latents = self._compute_latents(raw)
        self._last_reward = 0.0
        info = dict(info)
        info["latents"] = self._latents
        info["behaviour"] = self._behaviour(self._latents, self._latents, False, 0.0)
        return self.observation(raw), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        raw, reward, terminated, truncated, info = self.env.step(action)
        before = self._latents
        self._latents = self._compute_latents(raw)
        self._last_reward = float(reward)
        info = dict(info)
        info["latents"] = self._latents
        info["behaviour"] = self._behaviour(before, self._latents, bool(terminated), float(reward))
        return self.observation(raw), float(reward), terminated, truncated, info

    # ------------------------------------------------------------------ interventions
    def do(self, target: str, value: float | None = None) -> tuple[Any, dict[str, Any]]:
        """Set a latent now (``do_targets``); returns the new observation and ``info["latents"]``.

        Deterministic: no random numbers are drawn.
        """
        if target not in self.do_targets:
            offered = ", ".join(self.do_targets) or "none"
            raise ValueError(f"unknown do target {target!r} for this MiniGrid task; it offers: {offered}")
        if value is not None:
            raise ValueError(f"do target {target!r} takes no value")
        u = self.env.unwrapped
        if u.grid is None:
            raise ValueError("reset the environment before a do intervention")
        objs = self._objects()
        if target == "key_held":
            key = objs.get(_KEY)
            if key is not None:
                u.grid.set(key[0], key[1], None)
                key[2].cur_pos = np.array([-1, -1])
                u.carrying = key[2]
        elif target in ("door_open", "door_locked"):
            door = objs.get(_DOOR)
            if door is not None:
                door[2].is_open = target == "door_open"
                door[2].is_locked = target == "door_locked"
        elif target == "swap_cue":
            from minigrid.core.world_object import Ball, Key

            cx, cy = 1, int(u.height) // 2 - 1
            cue = u.grid.get(cx, cy)
            u.grid.set(cx, cy, (Key if cue is not None and cue.type == "ball" else Ball)("green"))
            u.success_pos, u.failure_pos = u.failure_pos, u.success_pos
        raw = u.gen_obs()
        self._latents = self._compute_latents(raw)
        return self.observation(raw), {"latents": self._latents}

    # ------------------------------------------------------------------ rendering
    def render_text(self) -> str:
        """The whole grid as text (one character a cell, the agent an arrow) and a status line."""
        u = self.env.unwrapped
        if u.grid is None:
            return ""
        lines = []
        ax, ay = int(u.agent_pos[0]), int(u.agent_pos[1])
        for y in range(u.grid.height):
            row = []
            for x in range(u.grid.width):
                if (x, y) == (ax, ay):
                    row.append(_ARROWS[int(u.agent_dir)])
                    continue
                obj = u.grid.get(x, y)
                if obj is None:
                    row.append(".")
                elif obj.type == "door":
                    row.append("/" if obj.is_open else ("L" if obj.is_locked else "D"))
                else:
                    row.append(_TILE.get(obj.type, "?"))
            lines.append(" ".join(row))
        lat = self._latents
        status = f"t{int(u.step_count)} r{self._last_reward:+.2f}"
        if u.carrying is not None:
            status += f" holding {u.carrying.type}"
        if "door_open" in lat:
            status += " door " + ("open" if lat["door_open"] else ("locked" if lat["door_locked"] else "closed"))
        if "distance_to_goal" in lat:
            status += f" goal d{lat['distance_to_goal']}"
        if "cue" in lat:
            status += " cue " + ("ball" if lat["cue"] else "key") + " correct " + ("down" if lat["correct_side"] else "up")
        lines.append(status)
        return "\n".join(lines)

    def render(self) -> Any:
        if self._text:
            return self.render_text()
        return self.env.render()


_TYPE_INDEX = {"unseen": 0, "empty": 1, "wall": 2, "floor": 3, "door": 4, "key": 5, "ball": 6, "box": 7,
               "goal": 8, "lava": 9, "agent": 10}
"""minigrid's OBJECT_TO_IDX (copied so that this module imports without minigrid; checked in the tests)."""

_DO_TARGETS: dict[str, dict[str, dict[str, Any]]] = {
    "doorkey": {
        "key_held": {"description": "the agent now carries the key (it leaves the grid)", "value": None},
        "door_open": {"description": "the door is unlocked and open", "value": None},
        "door_locked": {"description": "the door is closed and locked", "value": None},
    },
    "memory": {
        "swap_cue": {"description": "the cue in the start room becomes the other object (key <-> ball), so the "
                                    "other end of the hallway now wins", "value": None},
    },
}


def wrap(env: gym.Env, obs: str = "onehot", tile_size: int = 8, text: bool = False) -> MiniGridLab:
    """Wrap a MiniGrid env for the lab (``MiniGridLab``); raises ValueError for a bad option."""
    try:
        return MiniGridLab(env, obs=obs, tile_size=tile_size, text=text)
    except ValueError:
        env.close()
        raise
