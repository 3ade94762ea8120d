"""Roll a trained policy out and record its activations and emotion labels to HDF5.

The rollout acts exactly as an un-recorded one would (one ``predict`` per step). Activations
are computed for finished episodes by one batched forward pass over their observations (a block
of episodes at a time) with forward hooks on every Linear and activation module — the network is
deterministic, so these are the activations the acting network had — and labels
(``rl_lab.labels``) are computed from the same pass. The file is written block by block and
marked ``complete`` last.
Value-derived labels use one critic, named in the file's ``reference_critic`` attribute (the
network's own by default, another run's with ``--reference-critic``); hope and fear are
standardised with the mean and std of V on a few calibration episodes rolled out first with
seeds disjoint from the recorded ones and not stored (``value_calibration_*`` attributes).
What the recorder needs from a network is ``rl_lab.adapters.PolicyAdapter``; ``load_adapter``
picks the SB3 or the decision-transformer adapter for a run.

Vectorised recording (``n_envs``, ``rl-lab record --n-envs``, default ``DEFAULT_N_ENVS``):
``rollouts`` steps several environments together with one ``act_batch`` (one batched forward
pass) per step; each environment plays the next unplayed episode index (seed ``seed + i``) when
its episode ends, and finished episodes are yielded in index order. Finished episodes are then
processed in blocks of about ``flush_rows`` rows, one batched forward pass of the network and
of each twin per block, in both modes, so with deterministic actions a vectorised file equals the
sequential one exactly. A network that reads each reward as it acts (the decision transformer,
BC) is recorded one environment at a time (``can_batch``; the file's ``vectorised_fallback``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

import envs
from probes.activations import ActivationFile, ActivationWriter
from probes.errors import ProbeError
from probes.layout import TMP_MARK
from rl_lab.adapters import EpisodeForward, PolicyAdapter, load_sb3, make_adapter
from rl_lab.config import DT_ALGOS, TrainConfig
from rl_lab.devices import one_torch_thread
from rl_lab.dt.record import load_dt_adapter
from rl_lab.errors import LabError
from rl_lab.labels import (
    CALIBRATION_EPISODES,
    REFERENCE_CRITIC,
    VALUE_OUTPUT,
    ValueScale,
    episode_labels,
    hope_fear,
    label_meta,
    latent_label_name,
)
from rl_lab.runs import Run, RunStore, check_checkpoint, checkpoint_step, is_no_space
from rl_lab.train import ProgressFn, make_env


def load_adapter(run: Run, checkpoint: Path, deterministic: bool = False, device: str = "cpu") -> PolicyAdapter:
    """The adapter for a run's checkpoint, whatever trained it, its network on ``device``.

    ``device``: a resolved device (``rl_lab.devices.resolve_device``); a dt/bc run's transformer
    and its source critic go there too. The adapter's ``device`` (``adapter_device``) says where
    the network ran.
    """
    if run.info.get("algo") in DT_ALGOS:
        return load_dt_adapter(run, checkpoint, deterministic=deterministic, device=device)
    context = (run.info.get("config") or {}).get("context")
    return make_adapter(load_sb3(run, checkpoint, device=device), deterministic=deterministic,
                        history_window=context if isinstance(context, int) and context > 0 else TrainConfig.context)


def adapter_device(adapter: Any) -> str:
    """The device ``adapter``'s network runs on (``cpu`` for an adapter that does not say)."""
    return str(getattr(adapter, "device", "cpu"))


# --------------------------------------------------------------------------- labels: whose V, which scale
CALIBRATION_SEED_OFFSET = 1_000_000
"""Calibration episode i resets the env with ``seed + CALIBRATION_SEED_OFFSET + i``: never a recorded seed."""


@dataclass
class ReferenceCritic:
    """The critic whose V gives every value-derived label of a recording (``--reference-critic``).

    ``adapter`` is None for the recorded network's own critic (a decision transformer's own is its
    source run's critic); otherwise the named run's latest checkpoint, evaluated on the recorded
    observations (and, for a critic with memory, the episode so far).
    """

    run: str
    checkpoint: str = ""
    adapter: PolicyAdapter | None = None


def same_environment(run: Run, other: Run, role: str, why: str) -> None:
    """Refuse ``other`` (described as ``role``) unless it was trained on ``run``'s environment and settings."""
    cfg, other_cfg = run.info.get("config") or {}, other.info.get("config") or {}
    env_id = run.info.get("env_id") or cfg.get("env_id")
    other_env = other.info.get("env_id") or other_cfg.get("env_id")
    if env_id != other_env:
        raise LabError(f"{role} was trained on {other_env}, run {run.name!r} on {env_id}; {why}")
    if (cfg.get("env_kwargs") or {}) != (other_cfg.get("env_kwargs") or {}):
        raise LabError(f"{role} was trained with env settings {other_cfg.get('env_kwargs') or {}}, "
                       f"run {run.name!r} with {cfg.get('env_kwargs') or {}}; {why}")


def load_reference_critic(name: str, run: Run, runs_dir: Path | str | None = None,
                          device: str = "cpu") -> ReferenceCritic:
    """The reference critic named ``name`` for recordings of ``run`` (validated, loaded once on ``device``)."""
    store = RunStore(runs_dir)
    ref = run if name == run.name else store.get(name)
    algo = ref.info.get("algo")
    if algo in DT_ALGOS:
        hint = f"; name its source run {ref.info['source_run']!r}" if ref.info.get("source_run") else ""
        raise LabError(f"run {ref.name!r} is a {algo} run and has no critic of its own "
                       f"to be the reference critic{hint}")
    if ref.name == run.name:
        return ReferenceCritic(run.name)
    same_environment(run, ref, f"the reference critic {ref.name!r}",
                     "a reference critic must see the same observations")
    ckpt = ref.latest_checkpoint()
    return ReferenceCritic(ref.name, Path(ckpt).stem, load_adapter(ref, Path(ckpt), deterministic=True, device=device))


def calibration_seeds(seed: int, episodes: int, n: int) -> list[int]:
    """The env seeds of the calibration episodes: disjoint from the recorded ``seed .. seed+episodes-1``."""
    if episodes > CALIBRATION_SEED_OFFSET:
        raise LabError(f"--episodes must be at most {CALIBRATION_SEED_OFFSET} (the calibration episodes' seeds follow)")
    return [seed + CALIBRATION_SEED_OFFSET + i for i in range(n)]


def calibrate_value(env: Any, adapter: PolicyAdapter, reference: ReferenceCritic | None,
                    seeds: list[int], actor: PolicyAdapter | None = None) -> ValueScale:
    """Roll the policy out on ``seeds`` (nothing stored) and measure the mean and std of V there.

    ``env``: one environment, or a list of them to roll the episodes out together (``rollouts``).
    ``actor``: the policy that plays the episodes, when it is not ``adapter``'s (a replay's
    behaviour, ``Replay.actor``); V is the reference critic's, else ``adapter``'s own.
    """
    values = []
    for ep in rollouts(env if isinstance(env, list) else [env], actor or adapter, seeds, renders=False):
        obs_arr, act_arr, rew_arr, final = ep.arrays()
        if reference is None or reference.adapter is None:
            values.append(adapter.episode_forward(obs_arr, act_arr, rew_arr, final).values)
        else:
            values.append(reference.adapter.episode_forward(obs_arr, act_arr, rew_arr, final).values)
    return ValueScale.fit(values, seeds)


# --------------------------------------------------------------------------- rollouts
DEFAULT_N_ENVS = 8
"""Environments ``rl-lab record`` steps together by default (``--n-envs``); measured on 2 cores
(benchmarks/record_overhead.py): the batched forward pass amortises over 8 and more gains little."""


@dataclass
class Episode:
    """One rolled-out episode: what the recorder stores and feeds the network again."""

    index: int  # its place in the recording (seed = base seed + index)
    obs: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    texts: list = field(default_factory=list)  # the env's ansi rendering before each action
    latents: list = field(default_factory=list)  # info["latents"] before each action
    final_obs: Any = None  # the observation after the last action
    terminated: bool = False
    forward: EpisodeForward | None = None  # the network's pass, when read as soon as it was played
    inputs: dict = field(default_factory=dict)  # and its per-step inputs (``episode_inputs``)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """obs [T, ...] float32, actions [T, ...], rewards [T] float64 and the final observation."""
        return (np.asarray(self.obs, dtype=np.float32), np.asarray(self.actions),
                np.asarray(self.rewards, dtype=np.float64), np.asarray(self.final_obs, dtype=np.float32))


def can_batch(adapter: PolicyAdapter) -> str:
    """Why ``adapter`` cannot act for several environments at once ("" when it can).

    A network that is told each reward as the episode goes (``observe``: a decision transformer's
    return-to-go) or has no ``act_batch`` is rolled out one environment at a time.
    """
    if hasattr(adapter, "observe"):
        return f"{adapter.kind} adapter reads each reward as it acts (observe); recorded sequentially"
    if not callable(getattr(adapter, "act_batch", None)):
        return f"{adapter.kind} adapter has no batched act; recorded sequentially"
    return ""


def rollouts(env_list: list[Any], adapter: PolicyAdapter, seeds: list[int], renders: bool) -> Iterator[Episode]:
    """Roll ``adapter`` out for one episode per seed and yield the episodes in seed order.

    With one environment (or an adapter that ``can_batch`` refuses) episodes are played one after
    another with ``adapter.act``. With several, each environment plays the next unplayed seed when
    its episode ends, all of them step together with one ``adapter.act_batch`` per step, and a
    finished episode is held back until every earlier one is yielded: the order (and, with
    deterministic actions, every step) is the sequential rollout's.
    """
    if len(env_list) == 1 or can_batch(adapter):
        yield from _sequential(env_list[0], adapter, seeds, renders)
        return
    n = min(len(env_list), len(seeds))
    # Per-slot state in lists (slot -> ...): this loop runs once per step of all environments, so
    # its bookkeeping is kept to a few list operations per environment.
    playing: list[Episode | None] = [None] * n  # the episode each environment plays
    current: list[Any] = [None] * n  # its observation before the next action
    starts = [True] * n
    finished: dict[int, Episode] = {}
    next_seed = next_out = 0
    renderers = [env.render for env in env_list[:n]]
    steppers = [env.step for env in env_list[:n]]

    def start(slot: int) -> None:
        nonlocal next_seed
        obs, info = env_list[slot].reset(seed=seeds[next_seed])
        ep = playing[slot] = Episode(next_seed)
        ep.latents.append(info.get("latents", {}))
        current[slot] = obs
        next_seed += 1
        starts[slot] = True

    for slot in range(n):
        start(slot)
    slots = list(range(n))  # the environments still playing, in slot order
    while next_out < len(seeds):
        batch = [current[slot] for slot in slots]
        for slot, obs in zip(slots, batch):
            ep = playing[slot]
            if renders:
                ep.texts.append(renderers[slot]())
            ep.obs.append(obs)
        actions = adapter.act_batch(np.stack(batch), slots, [starts[s] for s in slots])
        ended = False
        for slot, action in zip(slots, actions):
            starts[slot] = False
            ep = playing[slot]
            ep.actions.append(action)
            obs, reward, terminated, truncated, info = steppers[slot](action)
            ep.rewards.append(reward)
            if terminated or truncated:
                ep.final_obs, ep.terminated = obs, bool(terminated)
                finished[ep.index] = ep
                playing[slot] = current[slot] = None
                if next_seed < len(seeds):
                    start(slot)
                else:
                    ended = True
            else:
                current[slot] = obs
                ep.latents.append(info.get("latents", {}))
        if ended:
            slots = [slot for slot in slots if playing[slot] is not None]
        while next_out in finished:
            yield finished.pop(next_out)
            next_out += 1


def _sequential(env: Any, adapter: PolicyAdapter, seeds: list[int], renders: bool) -> Iterator[Episode]:
    observe = getattr(adapter, "observe", None)
    for index, s in enumerate(seeds):
        obs, info = env.reset(seed=s)
        adapter.reset()
        ep = Episode(index)
        terminated = truncated = False
        while not (terminated or truncated):
            if renders:
                ep.texts.append(env.render())
            ep.latents.append(info.get("latents", {}))
            action = adapter.act(obs)
            ep.obs.append(obs)
            ep.actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            if observe is not None:
                observe(float(reward))  # e.g. a decision transformer lowers its return-to-go
            ep.rewards.append(reward)
        ep.final_obs, ep.terminated = obs, bool(terminated)
        yield ep


# --------------------------------------------------------------------------- replay
@dataclass
class Replay:
    """Another run's recorded episodes, played again action for action (``rl-lab record --replay``).

    Each episode resets the environment with the seed it was recorded with and steps it with the
    recorded actions, so the recorded network sees exactly the observations (and, through its
    input window, the actions and rewards) of run ``run``'s episodes while its own policy never
    acts: every network of a comparison can be recorded on one fixed set of situations. The
    environment must be deterministic given the seed and the actions; a replay that leaves the
    recorded observations is refused. ``actor`` is the behaviour's policy, which plays the
    calibration episodes that scale hope and fear.
    """

    run: str
    file: Path
    checkpoint: str
    recording_id: str
    seed: int
    deterministic: bool
    n_envs: int  # environments its calibration episodes were played in (sampled actions depend on it)
    obs: list[np.ndarray]
    actions: list[np.ndarray]
    actor: PolicyAdapter

    @property
    def seeds(self) -> list[int]:
        """The environment seed of each replayed episode (the recording's ``seed + index``)."""
        return [self.seed + i for i in range(len(self.actions))]


def load_replay(name: str, run: Run, runs_dir: Path | str | None = None, episodes: int | None = None,
                device: str = "cpu") -> Replay:
    """Run ``name``'s latest recording, to be replayed through ``run``'s network (validated first).

    ``episodes``: replay the first ``episodes`` episodes (default: all of them).
    """
    other = RunStore(runs_dir).get(name)
    same_environment(run, other, f"run {other.name!r}", "a replay must happen in the same environment")
    files = other.activation_files()
    if not files:
        raise LabError(f"run {other.name!r} has no recording to replay; run `rl-lab record {other.name}` first")
    path = max(files, key=lambda p: (checkpoint_step(p), p.name))
    try:
        with ActivationFile(path) as af:
            obs, actions = af.steps("obs"), af.steps("action")
            index = af.steps("episode")
            attrs = dict(af.attrs)
    except ProbeError as exc:
        raise LabError(f"cannot replay run {other.name!r}: {exc}") from None
    if not len(index):
        raise LabError(f"cannot replay run {other.name!r}: its recording {path.name} holds no step")
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    if not np.array_equal(index[starts], np.arange(len(starts))):
        raise LabError(f"cannot replay run {other.name!r}: the episodes of {path.name} are not 0, 1, 2, ... in order")
    bounds = list(zip(starts, np.r_[starts[1:], len(index)]))
    if episodes is not None:
        if episodes > len(bounds):
            raise LabError(f"--episodes {episodes}: the recording {path.name} of run {other.name!r} has "
                           f"{len(bounds)} episodes to replay")
        bounds = bounds[:episodes]
    stem = str(attrs.get("checkpoint", ""))
    ckpt = next((c for c in other.checkpoints() if c.stem == stem), None)
    if ckpt is None:
        raise LabError(f"cannot replay run {other.name!r}: the checkpoint {stem!r} its recording {path.name} "
                       "was made with is gone (its policy plays the calibration episodes)")
    deterministic = bool(attrs.get("deterministic", False))
    replay = Replay(
        run=other.name, file=path, checkpoint=stem, recording_id=str(attrs.get("recording_id", "")),
        seed=int(attrs.get("seed", 0)), deterministic=deterministic, n_envs=max(1, int(attrs.get("n_envs", 1))),
        obs=[obs[a:b] for a, b in bounds], actions=[actions[a:b] for a, b in bounds],
        actor=load_adapter(other, ckpt, deterministic=deterministic, device=device),
    )
    # Played through once here (environment steps only, no network): an environment that leaves
    # the recording is refused before anything is created.
    cfg = other.info.get("config") or {}
    env = make_env(other.info.get("env_id") or cfg.get("env_id"), cfg.get("env_kwargs") or {})
    try:
        for _ in replayed(env, replay, renders=False):
            pass
    finally:
        env.close()
    return replay


def replayed(env: Any, replay: Replay, renders: bool) -> Iterator[Episode]:
    """The replay's episodes played again in ``env``: each reset with its seed, stepped with its actions.

    Raises ``LabError`` when the environment leaves the recorded episode (another observation, or
    an end at another step): the environment is then not deterministic given seed and actions, and
    what would be recorded is not the replayed run's episode.
    """
    for index, (s, obs_rec, actions) in enumerate(zip(replay.seeds, replay.obs, replay.actions)):
        obs, info = env.reset(seed=s)
        ep = Episode(index)
        last = len(actions) - 1
        for t, action in enumerate(actions):
            if not np.array_equal(np.asarray(obs, dtype=obs_rec.dtype), obs_rec[t]):
                raise LabError(f"the replay of run {replay.run!r} left its recording at episode {index}, step {t}: "
                               "the environment gave another observation (it is not deterministic given the "
                               "seed and the actions)")
            if renders:
                ep.texts.append(env.render())
            ep.latents.append(info.get("latents", {}))
            ep.obs.append(obs)
            ep.actions.append(action.item() if action.ndim == 0 else action)
            obs, reward, terminated, truncated, info = env.step(ep.actions[-1])
            ep.rewards.append(reward)
            if (terminated or truncated) != (t == last):
                raise LabError(f"the replay of run {replay.run!r} left its recording at episode {index}: the "
                               f"episode {'ended' if t < last else 'went on'} after step {t} "
                               "(the environment is not deterministic given the seed and the actions)")
        ep.final_obs, ep.terminated = obs, bool(terminated)
        yield ep


# --------------------------------------------------------------------------- recording
def resolve_checkpoints(run: Run, which: str | None) -> list[Path]:
    """``None``/``latest`` -> the last checkpoint; ``all``; a step number; or a file path."""
    ckpts = run.checkpoints()
    if not ckpts:
        raise LabError(f"run {run.name!r} has no checkpoint to record")
    if which in (None, "latest"):
        return [ckpts[-1]]
    if which == "all":
        return ckpts
    if which.isdigit():
        match = [c for c in ckpts if checkpoint_step(c) == int(which)]
        if not match:
            steps = ", ".join(str(checkpoint_step(c)) for c in ckpts)
            raise LabError(f"run {run.name!r} has no checkpoint at step {which} (has: {steps})")
        return match
    path = Path(which)
    if not path.is_file():
        raise LabError(f"no checkpoint {which!r} (use latest, all, a step number or a file)")
    return [check_checkpoint(run, path)]


def record(
    run: Run,
    checkpoint: Path,
    episodes: int = 20,
    seed: int = 0,
    deterministic: bool = False,
    out: Path | None = None,
    overwrite: bool = False,
    random_baseline: bool = True,
    adapter: PolicyAdapter | None = None,
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
    flush_rows: int = 4096,
    reference: ReferenceCritic | None = None,
    calibration_episodes: int = CALIBRATION_EPISODES,
    n_envs: int = 1,
    device: str = "cpu",
    replay: Replay | None = None,
) -> Path:
    """Record ``episodes`` episodes of ``checkpoint`` into ``RUN/activations/<ckpt>.h5``.

    Parameters
    ----------
    run:
        The run whose network is recorded.
    checkpoint:
        The checkpoint file (``Run.checkpoints()``).
    episodes:
        Number of whole episodes to roll out.
    seed:
        Seeds the environment resets (episode i uses ``seed + i``) and the policy's sampling.
    deterministic:
        Take the policy's most likely action instead of sampling.
    out:
        Output file (default ``RUN/activations/<checkpoint stem>.h5``).
    overwrite:
        Replace an existing recording instead of refusing.
    random_baseline:
        Also record the same architecture with random weights on the same observations
        (``RANDOM_TWINS`` initialisations: ``/acts_random``, ``/acts_random_1``, ...), the
        baseline that probes need the network for.
    adapter:
        An already loaded adapter for ``checkpoint`` (default: load it).
    progress:
        Called as ``progress(episodes_done, episodes)``.
    max_steps:
        Optional cap on the total number of steps (the episode under way is finished first).
    flush_rows:
        Buffered rows before a block is written to the file (bounds memory and what a crash loses).
    reference:
        The critic that gives every value-derived label (``load_reference_critic``); default: the
        network's own (a decision transformer's: its source run's critic).
    calibration_episodes:
        Episodes rolled out first, with seeds disjoint from the recorded ones and not stored, whose
        values give the mean and std that standardise hope and fear.
    n_envs:
        Environments stepped together (``rollouts``: one batched forward pass per step). Episode i
        still resets with ``seed + i`` and the file lists episodes in index order, so with
        deterministic actions the file equals the sequential one (``n_envs=1``); sampled actions
        differ (one draw per batch). A network that cannot act in a batch (``can_batch``: the
        decision transformer, BC) is recorded sequentially and the file's ``vectorised_fallback``
        attribute says why.
    device:
        Where the network loaded here (and its random twins) runs: ``cpu`` or ``cuda:N``
        (``rl_lab.devices.resolve_device``); observations go to it, activations come back as CPU
        arrays. The file's ``device`` attribute names the device the recorded network ran on.
    replay:
        Record the network on another run's episodes (``load_replay``) instead of its own: every
        episode of ``replay`` is played again action for action (``replayed``), into
        ``RUN/activations/replay/<other run>/<ckpt>.h5``; ``episodes``, ``seed``,
        ``deterministic`` and ``n_envs`` are then the replayed file's, and the behaviour's policy
        plays the calibration episodes in as many environments as it did there, so that a run
        replaying its own recording gets that recording's hope/fear scale, sampled actions or not.
    """
    if replay is not None:  # the replayed file's; its n_envs plays the calibration episodes as it did
        episodes, seed, deterministic, n_envs = len(replay.actions), replay.seed, replay.deterministic, replay.n_envs
    if episodes <= 0:
        raise LabError("--episodes must be positive")
    if calibration_episodes <= 0:
        raise LabError("--calibration-episodes must be positive")
    if n_envs <= 0:
        raise LabError("--n-envs must be positive")
    calib_seeds = calibration_seeds(seed, episodes, calibration_episodes)
    out = Path(out) if out else run.activation_path(Path(checkpoint).stem, replay.run if replay else None)
    replacing = out.exists()
    if replacing and not overwrite:
        raise LabError(f"{out} already exists; pass --overwrite to record it again")
    # Written under a temporary name and renamed over ``out`` when complete: a kill or a full disk
    # leaves the previous recording as it was (probe results of a replaced one read as stale).
    tmp = out.with_name(f"{out.name}{TMP_MARK}{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    try:
        with one_torch_thread():
            _record(run, checkpoint, episodes, seed, deterministic, tmp, random_baseline, adapter,
                    progress, max_steps, flush_rows, reference, calib_seeds, n_envs, device, replay)
        os.replace(tmp, out)
    except BaseException as exc:
        if replacing or not tmp.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, out)  # a first recording keeps its whole episodes, marked incomplete
        if is_no_space(exc):
            raise LabError(f"out of disk space while recording {out.name}; "
                           + ("the previous recording is unchanged" if replacing else "nothing complete was written")
                           ) from None
        raise
    return out


def _make_recording_env(env_id: str, env_kwargs: dict) -> Any:
    """One environment rendering ``ansi`` text when it can, else none."""
    env = make_env(env_id, env_kwargs, render_mode="ansi")
    if getattr(env, "render_mode", None) != "ansi":
        env.close()
        env = make_env(env_id, env_kwargs)
    return env


RANDOM_TWINS = 3
"""Random-weights twins recorded per hook (``/acts_random``, ``/acts_random_1``, ...): the baseline is
their mean, so one lucky initialisation does not decide a verdict. Twin i is initialised with
``seed + 10_007 + 7_919 * i`` (twin 0 as before there were several)."""


def _record(run: Run, checkpoint: Path, episodes: int, seed: int, deterministic: bool, out: Path,
            random_baseline: bool, adapter: PolicyAdapter | None, progress: ProgressFn | None,
            max_steps: int | None, flush_rows: int, reference: ReferenceCritic | None = None,
            calib_seeds: list[int] | None = None, n_envs: int = 1, device: str = "cpu",
            replay: Replay | None = None) -> Path:
    if adapter is None:
        adapter = load_adapter(run, Path(checkpoint), deterministic=deterministic, device=device)
    twins = [adapter.random_twin(seed + 10_007 + 7_919 * i) for i in range(RANDOM_TWINS)] if random_baseline else []
    torch.manual_seed(seed)  # after the twin's initialisation: the rollout's sampling depends on seed only
    cfg = run.info.get("config", {})
    env_id = run.info.get("env_id") or cfg.get("env_id")
    fallback = can_batch(replay.actor if replay else adapter) if n_envs > 1 else ""
    n_envs = 1 if fallback else max(1, min(n_envs, episodes))
    env_list = [_make_recording_env(env_id, cfg.get("env_kwargs") or {}) for _ in range(n_envs)]
    env = env_list[0]
    renders = getattr(env, "render_mode", None) == "ansi"
    spec = envs.latent_spec(env)
    gamma = float(cfg.get("gamma", 0.99))
    # Whose V gives the value-derived labels: the reference critic, the network's own, or (for a
    # decision transformer, which has none) its source run's critic.
    if reference is not None and reference.adapter is None:
        reference = None  # the run named itself: its own critic
    if reference is not None:
        critic_run, critic_ckpt, value_from = reference.run, reference.checkpoint, REFERENCE_CRITIC
    elif getattr(adapter, "critic_run", None):
        critic_run, critic_ckpt, value_from = adapter.critic_run, adapter.critic_checkpoint, REFERENCE_CRITIC
    else:
        critic_run, critic_ckpt, value_from = run.name, Path(checkpoint).stem, VALUE_OUTPUT
    # An adapter that computes a label the lab does not define, or computes one from another output
    # (a DQN's arousal from its Q-values), says so: label -> derived_from.
    sources = dict(getattr(adapter, "label_sources", {}))
    if getattr(adapter, "is_dqn", False):
        sources.setdefault("arousal", VALUE_OUTPUT)  # max Q - min Q
    meta = label_meta(spec, adapter.linear_in, value_from=value_from, derived_from=sources)
    try:
        seeds = calib_seeds or calibration_seeds(seed, episodes, CALIBRATION_EPISODES)
        scale = calibrate_value(env_list, adapter, reference, seeds, actor=replay.actor if replay else None)
    except BaseException:
        _close(env_list)
        raise
    torch.manual_seed(seed)  # the recorded rollouts sample as if no calibration had run
    attrs = {
        "run": run.name,
        "checkpoint": Path(checkpoint).stem,
        "checkpoint_step": checkpoint_step(Path(checkpoint)),
        "env_id": env_id,
        "env_kwargs": cfg.get("env_kwargs") or {},
        "policy_kind": run.info.get("algo", adapter.kind),
        "gamma": gamma,
        "seed": seed,
        "deterministic": deterministic,
        "hooks": adapter.hooks,
        "n_envs": n_envs,  # environments stepped together (rollouts); 1: sequential
        "device": adapter_device(adapter),  # where the recorded network ran (--device)
        "reference_critic": critic_run,
        "reference_critic_checkpoint": critic_ckpt,
        **scale.attrs(),
    }
    if replay is not None:
        # Another run's episodes, not this network's: its actions, its seeds (``seed``, ``deterministic``).
        attrs.update(replay_of=replay.run, replay_checkpoint=replay.checkpoint,
                     replay_recording_id=replay.recording_id, replay_file=replay.file.name)
    if fallback:
        attrs["vectorised_fallback"] = fallback  # --n-envs was asked for but this network acts alone
    if getattr(adapter, "input_window", None):
        attrs["input_window"] = adapter.input_window  # what the network receives (probes' input-matched baseline)
    writer = ActivationWriter(out, attrs, meta)
    total = block_rows = 0
    # Episodes are processed and written in blocks of about ``flush_rows`` rows: one batched forward
    # pass of the network (and of each twin) over the block's steps, one HDF5 append (appends cost
    # per call), and a crash loses at most one block (the file is then left without ``complete``).
    block: list[Episode] = []

    def write_block() -> None:
        if block:
            writer.append(*_block_rows(block, adapter, twins, reference, scale, spec, gamma, renders))
            writer.flush()
            block.clear()

    try:
        episodes_played = replayed(env, replay, renders) if replay is not None else \
            rollouts(env_list, adapter, [seed + i for i in range(episodes)], renders)
        for ep in episodes_played:
            if not callable(getattr(adapter, "episodes_forward", None)):
                # An adapter that keeps what it gave the network while acting (a decision
                # transformer's return-to-go) is read before the next episode is played.
                ep.forward = adapter.episode_forward(*ep.arrays())
                ep.inputs = adapter.episode_inputs(ep.arrays()[2]) if hasattr(adapter, "episode_inputs") else {}
            block.append(ep)
            block_rows += len(ep.rewards)
            total += len(ep.rewards)
            if block_rows >= flush_rows:
                write_block()
                block_rows = 0
            if progress is not None:
                progress(ep.index + 1, episodes)
            if max_steps is not None and total >= max_steps:
                break
        write_block()
    except BaseException:
        try:
            write_block()  # keep the whole episodes recorded so far
        finally:
            writer.close(complete=False)
        _close(env_list)
        raise
    writer.close(complete=True)
    _close(env_list)
    return out


def _forward(adapter: PolicyAdapter, episodes: list[tuple]) -> list[EpisodeForward]:
    """``episode_forward`` of each episode, as one batched pass when the adapter has ``episodes_forward``."""
    many = getattr(adapter, "episodes_forward", None)
    return many(episodes) if callable(many) else [adapter.episode_forward(*e) for e in episodes]


def _block_rows(block: list[Episode], adapter: PolicyAdapter, twins: list[Any], reference: ReferenceCritic | None,
                scale: ValueScale, spec: dict, gamma: float, renders: bool
                ) -> tuple[dict, dict, dict, list[dict] | None, dict | None]:
    """The rows of a block of episodes as ``ActivationWriter.append`` takes them."""
    arrays = [ep.arrays() for ep in block]
    fwds = [ep.forward for ep in block] if block[0].forward is not None else _forward(adapter, arrays)
    if reference is not None and reference.adapter is not None:
        critic = _forward(reference.adapter, arrays)
    else:
        critic = fwds
    twin_fwds = [_forward(twin, [(o, a, r, o[-1]) for o, a, r, _ in arrays]) for twin in twins]
    parts = []
    for i, ep in enumerate(block):
        obs_arr, act_arr, rew_arr, _ = arrays[i]
        T = len(rew_arr)
        values, final_value = critic[i].values, critic[i].final_value
        labels = episode_labels(values, rew_arr, ep.terminated, final_value, gamma)
        labels.update(hope_fear(values, scale))
        labels.update(fwds[i].extra_labels)
        labels["action"] = act_arr.reshape(T, -1)[:, 0].astype(np.int64) if act_arr.dtype.kind in "iu" \
            else act_arr.reshape(T, -1)[:, 0]
        for key, column in _latent_columns(ep.latents, list(spec)).items():
            labels[latent_label_name(key)] = column
        done = np.zeros(T, dtype=bool)
        done[-1] = True
        steps: dict[str, Any] = {
            "obs": obs_arr,
            "action": act_arr,
            "reward": rew_arr.astype(np.float32),
            "done": done,
            "episode": np.full(T, ep.index, dtype=np.int64),
            "t": np.arange(T, dtype=np.int64),
        }
        if renders:
            steps["text"] = ep.texts
        inputs = ep.inputs if ep.forward is not None else \
            adapter.episode_inputs(rew_arr) if hasattr(adapter, "episode_inputs") else {}
        parts.append((steps, labels, fwds[i].acts, [t[i].acts for t in twin_fwds], inputs))

    def cat(dicts: list[dict]) -> dict:
        out = {}
        for key in dicts[0]:
            values = [d[key] for d in dicts]
            out[key] = [x for v in values for x in v] if isinstance(values[0], list) else np.concatenate(values)
        return out

    steps, labels, acts, inputs = (cat([p[i] for p in parts]) for i in (0, 1, 2, 4))
    twin_acts = [cat([p[3][i] for p in parts]) for i in range(len(twins))]
    return steps, labels, acts, twin_acts or None, inputs or None


def _latent_columns(latents: list[dict], keys: list[str]) -> dict[str, np.ndarray]:
    """Each latent's values over an episode's steps, NaN at a step whose info lacks it."""
    if not keys:
        return {}
    try:
        rows = list(map(itemgetter(*keys), latents))  # one C-level lookup per step
        columns = zip(*rows) if len(keys) > 1 else [rows]
    except KeyError:
        columns = [[lat.get(key, np.nan) for lat in latents] for key in keys]
    return {key: np.asarray(column) for key, column in zip(keys, columns)}


def _close(env_list: list[Any]) -> None:
    for env in env_list:
        env.close()


def record_run(
    run_name: str,
    runs_dir: Path | str | None = None,
    checkpoint: str | None = None,
    episodes: int | None = 20,
    seed: int = 0,
    deterministic: bool = False,
    overwrite: bool = False,
    progress_factory: Callable[[str], tuple[ProgressFn, Callable[[], None]]] | None = None,
    reference_critic: str | None = None,
    calibration_episodes: int = CALIBRATION_EPISODES,
    n_envs: int = 1,
    device: str = "cpu",
    replay: str | None = None,
) -> list[Path]:
    """Record one or several checkpoints of a run (``checkpoint``: latest, all, a step, a file).

    ``reference_critic``: the run whose critic gives every value-derived label (default: the run's
    own; a dt/bc run's source run). ``n_envs``: environments stepped together (``record``).
    ``device``: where the networks run (``record``; resolve ``--device`` first with
    ``rl_lab.devices.resolve_device``). ``replay``: record on that run's latest recorded episodes
    instead of the network's own (``load_replay``; ``episodes`` then takes the first ones, None:
    all), into ``RUN/activations/replay/<replay>/``.
    """
    run = RunStore(runs_dir).get(run_name)
    paths = []
    ckpts = resolve_checkpoints(run, checkpoint)
    if calibration_episodes <= 0:
        raise LabError("--calibration-episodes must be positive")
    if episodes is not None and episodes <= 0:
        raise LabError("--episodes must be positive")
    episodes_played = load_replay(replay, run, runs_dir, episodes=episodes, device=device) if replay else None
    reference = load_reference_critic(reference_critic, run, runs_dir, device=device) if reference_critic else None
    for ckpt in ckpts:
        target = run.activation_path(ckpt.stem, episodes_played.run if episodes_played else None)
        if checkpoint == "all" and target.exists() and not overwrite:
            paths.append(target)
            continue
        progress, close = progress_factory(f"record {ckpt.stem}") if progress_factory else (None, lambda: None)
        try:
            paths.append(record(run, ckpt, episodes=episodes or 20, seed=seed, deterministic=deterministic,
                                overwrite=overwrite, progress=progress, reference=reference,
                                calibration_episodes=calibration_episodes, n_envs=n_envs, device=device,
                                replay=episodes_played))
        finally:
            close()
    return paths
