r"""``lab/Chain-v0``: a chain MDP whose values and TD errors are known in closed form.

States ``0 .. n-1`` in a row; the episode starts in ``start`` (default 0, or uniformly in
``0 .. n-2`` when ``start=None``). Actions: 0 left, 1 right. With probability ``slip`` a
move goes the other way. Moving left from state 0 stays in 0. Entering state ``n-1`` (the
goal) pays ``reward`` and ends the episode (``terminated``); every other step pays
``step_reward`` (default 0). ``max_steps`` truncates (the closed-form values below are for
the untruncated MDP; with the defaults a reasonable policy never meets the cap).

Exact values. Under a policy that goes right with probability ``p`` the chain moves right
with probability ``q = p (1 - slip) + (1 - p) slip`` and left with ``1 - q``. For
``s < n-1``

    V(s) = q [ r(s+1) + gamma V(s+1) ] + (1 - q) [ step_reward + gamma V(max(s-1, 0)) ],
    V(n-1) = 0 (terminal),

with ``r(s+1) = reward`` if ``s+1 = n-1`` else ``step_reward``. This is the linear system
``(I - gamma P) V = r_bar`` over the ``n-1`` non-terminal states, solved exactly by
:func:`true_values`. With ``q = 1`` and ``step_reward = 0`` it reduces to
``V(s) = reward * gamma^(n-2-s)``. The TD error of a transition ``s -> s'`` with reward
``r`` is ``delta = r + gamma V(s') [s' not terminal] - V(s)``; under the policy that
defines V, ``E[delta | s] = 0``.

The env reports, as latents, V and the TD error under the uniform policy (p = 1/2) and
under the optimal policy (found by exact policy iteration, :func:`optimal_policy`; with
the default rewards it is "always right" when ``slip <= 1/2``), for the env's own
``gamma`` (set it to the agent's discount).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs._common import RandomBuffer, check_float, check_int, spec


def true_values(
    n: int,
    gamma: float,
    policy_right_prob: float | np.ndarray,
    slip: float = 0.0,
    reward: float = 1.0,
    step_reward: float = 0.0,
) -> np.ndarray:
    """Exact state values ``V`` (shape ``(n,)``, ``V[n-1] = 0``) of the chain under a policy.

    ``policy_right_prob`` is the probability ``p`` of pressing right, one number for every
    state or an array of ``n-1`` numbers (one per non-goal state). Solves
    ``(I - gamma P) V = r_bar`` over the non-terminal states, where the chain goes right
    with probability ``q = p (1 - slip) + (1 - p) slip``. See the module docstring.
    """
    n = check_int("n", n, 2)
    gamma = check_float("gamma", gamma, 0.0, 1.0)
    slip = check_float("slip", slip, 0.0, 1.0)
    m = n - 1  # non-terminal states 0 .. n-2
    p = np.broadcast_to(np.asarray(policy_right_prob, dtype=np.float64), (m,)) if np.ndim(policy_right_prob) == 0 \
        else np.asarray(policy_right_prob, dtype=np.float64)
    if p.shape != (m,) or not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError(f"policy_right_prob must be a probability or {m} probabilities, got {policy_right_prob!r}")
    q = p * (1.0 - slip) + (1.0 - p) * slip
    a = np.eye(m)
    b = np.full(m, step_reward, dtype=np.float64)
    for s in range(m):
        if s + 1 == m:  # right enters the goal
            b[s] += q[s] * (reward - step_reward)
        else:
            a[s, s + 1] -= gamma * q[s]
        a[s, max(s - 1, 0)] -= gamma * (1.0 - q[s])  # left, reflecting at 0
    try:
        v = np.linalg.solve(a, b)
    except np.linalg.LinAlgError as exc:  # gamma = 1 and the goal is never reached
        raise ValueError(f"values are undefined for gamma={gamma}: the goal is unreachable under this policy") from exc
    return np.append(v, 0.0)


def optimal_policy(
    n: int, gamma: float, slip: float = 0.0, reward: float = 1.0, step_reward: float = 0.0
) -> np.ndarray:
    """The optimal deterministic policy as ``n-1`` right-probabilities (0 or 1), by exact policy iteration."""
    m = n - 1
    p = np.full(m, 1.0 if slip <= 0.5 else 0.0)
    for _ in range(2 * n + 10):
        v = true_values(n, gamma, p, slip, reward, step_reward)
        go_right = np.empty(m)
        for s in range(m):
            right = reward if s + 1 == m else step_reward + gamma * v[s + 1]
            left = step_reward + gamma * v[max(s - 1, 0)]
            q_right = (1 - slip) * right + slip * left
            q_left = (1 - slip) * left + slip * right
            go_right[s] = 1.0 if q_right >= q_left - 1e-12 else 0.0
        if np.array_equal(go_right, p):
            return p
        p = go_right
    return p


class ChainEnv(gym.Env):
    """A chain of ``n`` states with the reward at the right end (see the module docstring).

    Args:
        n: number of states including the goal (3..1000).
        slip: probability that a move goes the opposite way, in [0, 1).
        gamma: discount used for the value and TD-error latents, in [0, 1).
        reward: reward for entering the goal.
        step_reward: reward for every other step (e.g. -0.01 for a step cost).
        start: start state in 0..n-2, or None for a uniformly random non-goal state.
        max_steps: episode cap (truncation); default 4 n.
        render_mode: ``None`` or ``"ansi"``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 8}

    def __init__(
        self,
        n: int = 8,
        slip: float = 0.0,
        gamma: float = 0.99,
        reward: float = 1.0,
        step_reward: float = 0.0,
        start: int | None = 0,
        max_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.n = check_int("n", n, 3, 1000)
        self.slip = check_float("slip", slip, 0.0, 1.0)
        if self.slip >= 1.0:
            raise ValueError(f"slip must lie in [0, 1), got {slip}")
        self.gamma = check_float("gamma", gamma, 0.0, 1.0)
        if self.gamma >= 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {gamma}")
        self.reward = check_float("reward", reward, -1e6, 1e6)
        self.step_reward = check_float("step_reward", step_reward, -1e6, 1e6)
        self.start = None if start is None else check_int("start", start, 0, self.n - 2)
        self.max_steps = 4 * self.n if max_steps is None else check_int("max_steps", max_steps, 1)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode

        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.n,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        kw = dict(slip=self.slip, reward=self.reward, step_reward=self.step_reward)
        self.values_uniform = true_values(self.n, self.gamma, 0.5, **kw)
        self.policy_optimal = optimal_policy(self.n, self.gamma, **kw)
        self.values_optimal = true_values(self.n, self.gamma, self.policy_optimal, **kw)
        self._vu = self.values_uniform.tolist()
        self._vo = self.values_optimal.tolist()
        self._eye = np.eye(self.n, dtype=np.float32)

        lo_r, hi_r = min(self.reward, self.step_reward, 0.0), max(self.reward, self.step_reward, 0.0)
        v_all = self._vu + self._vo
        v_lo, v_hi = min(v_all), max(v_all)
        td_lo, td_hi = lo_r + v_lo - v_hi, hi_r + v_hi - v_lo
        self.latent_spec: dict[str, dict[str, Any]] = {
            "state": spec("discrete", "index of the current state (n-1 = goal)", 0, self.n - 1),
            "distance_to_goal": spec("discrete", "steps from the current state to the goal, n-1-state", 0, self.n - 1),
            "at_goal": spec("discrete", "1 once the goal has been entered, else 0", 0, 1),
            "value_uniform": spec("continuous", "exact V(state) under the uniform policy (p_right = 1/2), discount gamma", v_lo, v_hi),
            "value_optimal": spec("continuous", "exact V(state) under the optimal policy, discount gamma", v_lo, v_hi),
            "td_error_uniform": spec("continuous", "r + gamma V(s') - V(s) of the last transition under V_uniform (0 at reset)", td_lo, td_hi),
            "td_error_optimal": spec("continuous", "r + gamma V(s') - V(s) of the last transition under V_optimal (0 at reset)", td_lo, td_hi),
            "slipped": spec("discrete", "1 if the last move went opposite to the action, else 0", 0, 1),
            "step": spec("discrete", "steps taken in this episode", 0, self.max_steps),
        }
        self.behaviour_spec: dict[str, str] = {
            "distance_to_goal": "steps from the current state to the goal",
            "pressed_right": "1 if the action was right, else 0",
            "reached_goal": "1 if this step entered the goal, else 0",
        }
        self.do_targets: dict[str, dict[str, Any]] = {
            "state": {"description": f"move to state VALUE (0..{self.n - 2}; the goal cannot be set)",
                      "value": [0, self.n - 2], "default": 0},
            "near_goal": {"description": f"move to state {self.n - 2}, one step from the goal", "value": None},
            "start": {"description": "move back to state 0", "value": None},
        }
        self._rand = RandomBuffer(self.np_random)
        self._s = 0
        self._t = 0
        self._last_reward = 0.0

    def _latents(self, td_u: float, td_o: float, slipped: int) -> dict[str, float | int]:
        s = self._s
        return {
            "state": s,
            "distance_to_goal": self.n - 1 - s,
            "at_goal": 1 if s == self.n - 1 else 0,
            "value_uniform": self._vu[s],
            "value_optimal": self._vo[s],
            "td_error_uniform": td_u,
            "td_error_optimal": td_o,
            "slipped": slipped,
            "step": self._t,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._rand.reset(self.np_random)
        self._s = self.start if self.start is not None else self._rand.integer(self.n - 1)
        self._t = 0
        self._last_reward = 0.0
        info = {
            "latents": self._latents(0.0, 0.0, 0),
            "behaviour": {"distance_to_goal": float(self.n - 1 - self._s), "pressed_right": 0, "reached_goal": 0},
        }
        return self._eye[self._s].copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if a not in (0, 1):
            raise ValueError(f"action must be 0 (left) or 1 (right), got {action!r}")
        s = self._s
        goal = self.n - 1
        slipped = 1 if self.slip > 0.0 and self._rand.random() < self.slip else 0
        right = (a == 1) != bool(slipped)
        if s == goal:  # stepped past the end of an episode: the goal is absorbing
            s_next = goal
        else:
            s_next = s + 1 if right else (s - 1 if s > 0 else 0)
        terminated = s_next == goal
        reward = self.reward if terminated and s != goal else (0.0 if terminated else self.step_reward)
        self._t += 1
        truncated = (not terminated) and self._t >= self.max_steps
        g = self.gamma
        td_u = reward + g * self._vu[s_next] - self._vu[s]  # V[goal] = 0 (terminal)
        td_o = reward + g * self._vo[s_next] - self._vo[s]
        self._s = s_next
        self._last_reward = reward
        info = {
            "latents": self._latents(td_u, td_o, slipped),
            "behaviour": {
                "distance_to_goal": float(goal - s_next),
                "pressed_right": a,
                "reached_goal": 1 if terminated and s != goal else 0,
            },
        }
        return self._eye[s_next].copy(), float(reward), terminated, truncated, info

    def do(self, target: str, value: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Move the chain to another state now (an intervention on the world; no random numbers drawn).

        The TD-error latents are 0 afterwards: no transition has happened since.
        """
        if target not in self.do_targets:
            raise ValueError(f"unknown do target {target!r}; choose one of {', '.join(self.do_targets)}")
        if target == "state":
            v = 0 if value is None else value
            if isinstance(v, bool) or float(v) != int(v):
                raise ValueError(f"state must be an integer, got {value!r}")
            self._s = check_int("state", int(v), 0, self.n - 2)
        elif value is not None:
            raise ValueError(f"do target {target!r} takes no value")
        else:
            self._s = self.n - 2 if target == "near_goal" else 0
        return self._eye[self._s].copy(), {"latents": self._latents(0.0, 0.0, 0)}

    def render_text(self) -> str:
        """The chain as one line of cells plus a status line."""
        n, s = self.n, self._s
        if n <= 38:
            cells = ["."] * n
            cells[-1] = "G"
            cells[s] = "A"
            line = "".join(cells)
        else:
            line = f"[{s:>4d} / {n - 1}]"
        return f"{line}\ns{s} t{self._t} V*{self._vo[s]:.3f} r{self._last_reward:+.2f}"

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self.render_text()
        return None
