"""``envs.make`` and friends: the one way the lab makes, describes and renders environments."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import gymnasium as gym

from envs._common import spec

LAB_ENV_IDS: tuple[str, ...] = ("lab/Forage-v0", "lab/Binding-v0", "lab/Chain-v0")

LatentFn = Callable[[gym.Env, Any], dict[str, float | int]]


# ---------------------------------------------------------------------- standard envs
_CARTPOLE_SPEC = {
    "cart_position": spec("continuous", "cart position (episode ends beyond +-2.4)", -2.4, 2.4),
    "cart_velocity": spec("continuous", "cart velocity (unbounded; typically within +-3)", -3.0, 3.0),
    "pole_angle": spec("continuous", "pole angle in radians (episode ends beyond +-0.2095)", -0.2095, 0.2095),
    "pole_angular_velocity": spec("continuous", "pole angular velocity (unbounded; typically within +-3.5)", -3.5, 3.5),
}


def _cartpole_latents(env: gym.Env, obs: Any) -> dict[str, float | int]:
    x, v, a, w = obs.tolist()
    return {"cart_position": x, "cart_velocity": v, "pole_angle": a, "pole_angular_velocity": w}


def _cartpole_text(env: gym.Env, latents: dict[str, float | int]) -> str:
    """One bar showing the cart on its track and the pole's lean, plus a status line."""
    if not latents:
        return ""
    width = 31
    x = float(latents["cart_position"])
    col = int(round((x + 2.4) / 4.8 * (width - 1)))
    col = min(max(col, 0), width - 1)
    angle = float(latents["pole_angle"])
    pole = "|" if abs(angle) < 0.03 else ("/" if angle < 0 else "\\")
    top = [" "] * width
    top[col] = pole
    track = ["-"] * width
    track[col] = "#"
    return "\n".join(
        ["".join(top), "".join(track), f"x{x:+.2f} v{float(latents['cart_velocity']):+.2f} "
         f"th{angle:+.3f} w{float(latents['pole_angular_velocity']):+.2f}"]
    )


def _known_latents(
    env_id: str, env: gym.Env
) -> tuple[dict[str, dict[str, Any]], LatentFn | None, Callable[..., str] | None]:
    """(latent_spec, latent function, text function) for a standard env id."""
    name = env_id.split("/")[-1]
    if name.startswith("CartPole-"):
        return dict(_CARTPOLE_SPEC), _cartpole_latents, _cartpole_text
    return {}, None, None


class LatentInfoWrapper(gym.Wrapper):
    """Adds ``info["latents"]`` (and a ``latent_spec``) to a standard Gymnasium env.

    Latents are derived from the observation where the env is known (CartPole; MiniGrid has its
    own wrapper, ``envs.minigrid.MiniGridLab``); for any other env they are an empty dict. With
    ``text=True`` the wrapper renders the state as text (``render_mode="ansi"``).
    """

    def __init__(
        self,
        env: gym.Env,
        latent_spec: dict[str, dict[str, Any]],
        latent_fn: LatentFn | None,
        text_fn: Callable[..., str] | None = None,
        text: bool = False,
    ) -> None:
        super().__init__(env)
        self.latent_spec = latent_spec
        self.behaviour_spec: dict[str, str] = {}
        self._latent_fn = latent_fn
        self._text_fn = text_fn
        self._text = text
        self._latents: dict[str, float | int] = {}

    @property
    def render_mode(self) -> str | None:  # type: ignore[override]
        return "ansi" if self._text else self.env.render_mode

    def _add(self, obs: Any, info: dict[str, Any]) -> dict[str, Any]:
        self._latents = self._latent_fn(self.env, obs) if self._latent_fn is not None else {}
        info["latents"] = self._latents
        return info

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs, self._add(obs, dict(info))

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._add(obs, dict(info))

    def render_text(self) -> str | None:
        """The current state as text, if this env has a text rendering."""
        if self._text_fn is None:
            return None
        return self._text_fn(self.env, self._latents)

    def render(self) -> Any:
        if self._text:
            return self.render_text()
        return self.env.render()


# ---------------------------------------------------------------------- public API
def _unknown(env_id: str) -> ValueError:
    return ValueError(
        f"unknown environment {env_id!r}; lab environments: {', '.join(LAB_ENV_IDS)} "
        "(or any registered Gymnasium id, e.g. CartPole-v1)"
    )


def make(env_id: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """Make an environment: ``lab/...`` ids directly, standard ids wrapped to report latents.

    MiniGrid ids (``MiniGrid-*``, ``BabyAI-*``) are wrapped by ``envs.minigrid.MiniGridLab``: its
    options ``obs`` (``"onehot"``, ``"image"``, ``"pixels"``) and ``tile_size`` are taken from
    ``kwargs``, the rest go to the MiniGrid env.

    Every env made here puts ``info["latents"]`` in ``reset`` and ``step`` and answers
    ``envs.latent_spec(env)``. Raises ValueError for an unknown id or a bad configuration.
    """
    import envs  # noqa: F401  (registers the lab/ ids)

    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")
    name = env_id.split("/")[-1]
    is_minigrid = name.startswith(("MiniGrid-", "BabyAI-"))
    minigrid_options: dict[str, Any] = {}
    if is_minigrid:
        try:
            importlib.import_module("minigrid")  # registers the MiniGrid ids
        except ImportError as exc:
            raise ValueError(f"{env_id} needs the 'minigrid' package (pip install minigrid)") from exc
        # the lab wrapper's options (envs.minigrid.MiniGridLab); the rest go to the MiniGrid env
        minigrid_options = {k: kwargs.pop(k) for k in ("obs", "tile_size") if k in kwargs}
    try:
        gym.spec(env_id)
    except gym.error.Error:
        raise _unknown(env_id) from None

    is_lab = env_id in LAB_ENV_IDS
    if is_lab and render_mode not in (None, "ansi"):
        raise ValueError(f"{env_id} renders only as text: render_mode must be None or 'ansi', got {render_mode!r}")
    text = False
    if not is_lab and render_mode == "ansi":
        creator = gym.spec(env_id).entry_point
        if isinstance(creator, str):
            creator = gym.envs.registration.load_env_creator(creator)
        metadata = getattr(creator, "metadata", None)
        modes = metadata.get("render_modes", []) if isinstance(metadata, dict) else []
        if "ansi" not in modes:
            text, render_mode = True, None
    try:
        env = gym.make(env_id, render_mode=render_mode, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ValueError(f"{env_id} got an unknown option: {str(exc).split(' was raised')[0]}") from exc
        raise
    except gym.error.Error as exc:  # e.g. DependencyNotInstalled for Box2D or MuJoCo ids
        raise ValueError(f"cannot make {env_id}: {str(exc).splitlines()[0]}") from exc
    if is_lab:
        return env
    if is_minigrid:
        from envs import minigrid as lab_minigrid

        return lab_minigrid.wrap(env, text=text, **minigrid_options)
    spec_, latent_fn, text_fn = _known_latents(env_id, env)
    if text and text_fn is None:
        env.close()
        raise ValueError(f"{env_id} has no text rendering (render_mode='ansi')")
    return LatentInfoWrapper(env, spec_, latent_fn, text_fn, text=text)


def _find_attr(env: Any, name: str) -> Any:
    getter = getattr(env, "get_wrapper_attr", None)
    if getter is not None:
        try:
            return getter(name)
        except AttributeError:
            return None
    return getattr(env, name, None)


def latent_spec(env: gym.Env) -> dict[str, dict[str, Any]]:
    """The ``latent_spec`` of an env, looked up through any wrappers ({} if it has none)."""
    found = _find_attr(env, "latent_spec")
    if not found:
        return {}
    return {name: {**entry, "range": list(entry["range"])} for name, entry in found.items()}


def behaviour_spec(env: gym.Env) -> dict[str, str]:
    """The ``behaviour_spec`` of an env, looked up through any wrappers ({} if it has none)."""
    found = _find_attr(env, "behaviour_spec")
    return dict(found) if found else {}


def do_targets(env: gym.Env) -> dict[str, dict[str, Any]]:
    """The env's interventions on the world (``do_targets``: name -> description, value range,
    default), looked up through any wrappers ({} if it offers none)."""
    found = _find_attr(env, "do_targets")
    return {name: dict(entry) for name, entry in found.items()} if found else {}


def do(env: gym.Env, target: str, value: float | None = None) -> tuple[Any, dict[str, Any]]:
    """Set a latent of ``env`` now (its ``do(target, value)``); returns ``(obs, info)`` with the new
    observation and ``info["latents"]``. Deterministic: it draws no random numbers."""
    method = _find_attr(env, "do")
    if not callable(method):
        raise ValueError(f"{getattr(env.spec, 'id', type(env).__name__)} offers no do interventions")
    return method(target, value)


def text_render(env: gym.Env) -> str | None:
    """The env's current state as text (its ansi rendering), or None if it has none."""
    render_text = _find_attr(env, "render_text")
    if callable(render_text):
        return render_text()
    if getattr(env, "render_mode", None) == "ansi":
        out = env.render()
        return out if isinstance(out, str) else None
    return None
