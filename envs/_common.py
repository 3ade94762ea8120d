"""Small helpers shared by the lab environments: validation and a seeded random buffer."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError unless it is an integer in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_float(
    name: str, value: Any, lo: float, hi: float | None = None, *, lo_open: bool = False
) -> float:
    """Return ``value`` as a float, or raise ValueError unless it lies in [lo, hi] ((lo, hi] if lo_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    too_low = value <= lo if lo_open else value < lo
    if not np.isfinite(value) or too_low or (hi is not None and value > hi):
        left = "(" if lo_open else "["
        right = f"{hi}]" if hi is not None else "inf)"
        raise ValueError(f"{name} must lie in {left}{lo}, {right}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value``, or raise ValueError unless it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class RandomBuffer:
    """Uniform [0, 1) floats drawn from a Generator in blocks, handed out one at a time.

    ``Generator.random()`` costs about a microsecond per call; taking floats from a
    pre-drawn block as Python floats is several times cheaper. The stream is a pure
    function of the generator's state, so seeding stays exact.
    """

    __slots__ = ("_rng", "_block", "_values", "_i")

    def __init__(self, rng: np.random.Generator, block: int = 1024) -> None:
        self._rng = rng
        self._block = block
        self._values: list[float] = []
        self._i = 0

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._values = []
        self._i = 0

    def random(self) -> float:
        i = self._i
        if i >= len(self._values):
            self._values = self._rng.random(self._block).tolist()
            i = 0
        self._i = i + 1
        return self._values[i]

    def integer(self, n: int) -> int:
        """A uniform integer in [0, n)."""
        return min(int(self.random() * n), n - 1)


def spec(kind: str, description: str, lo: float, hi: float) -> dict[str, Any]:
    """One ``latent_spec`` entry."""
    return {"kind": kind, "description": description, "range": [lo, hi]}
