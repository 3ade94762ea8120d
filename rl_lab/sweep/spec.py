"""Sweep files: parse, validate and expand into trials (see ``docs/sweep.md``).

A sweep file is TOML::

    name = "smoke"                     # default: the file's stem
    envs = ["lab/Forage-v0"]
    algos = ["ppo"]
    seeds = [0, 1]                     # or a count: seeds = 3 -> 0, 1, 2
    pipeline = ["train", "record", "probe", "sae"]

    [grid]                             # every combination becomes its own condition
    learning_rate = [0.0003, 0.001]
    "env_kwargs.interoception" = [true, false]

    [stages.train]                     # options shared by every trial
    steps = 20000
    [stages.record]
    episodes = 20
    [stages.probe]
    hooks = ["mlp_extractor.value_net.1"]
    [stages.sae]
    hook = "mlp_extractor.value_net.1"

Every problem is reported as one :class:`~rl_lab.errors.LabError` sentence.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import gymnasium

import envs  # noqa: F401  (registers the lab/ ids)
from probes.linear import probe_file
from probes.sae.training import train_sae_on_file
from rl_lab.config import POLICIES, SB3_ALGOS, TrainConfig
from rl_lab.errors import LabError
from rl_lab.runs import RUN_NAME

STAGES = ("train", "record", "probe", "sae")
"""Pipeline stages, in the order they run for a trial."""

NEEDS = {"record": "train", "probe": "record", "sae": "record"}
"""The stage each stage reads the output of."""

TOP_KEYS = ("name", "envs", "algos", "seeds", "pipeline", "grid", "stages")

TRAIN_OPTIONS: dict[str, str] = {
    "steps": "int", "n_envs": "int", "gamma": "float", "learning_rate": "float?", "ent_coef": "float",
    "n_steps": "int?", "batch_size": "int?", "net_arch": "ints", "checkpoint_every": "int", "env_kwargs": "table",
    "policy": "policy", "context": "int", "d_model": "int", "n_layers": "int", "n_heads": "int", "lstm_hidden": "int",
    "separate_critic": "bool", "mlp_critic": "bool", "n_epochs": "int?", "target_kl": "float?",
}
"""``[stages.train]`` options and their types (``steps`` is ``TrainConfig.total_timesteps``)."""

RECORD_OPTIONS: dict[str, str] = {"episodes": "int", "seed": "int0", "deterministic": "bool"}
"""``[stages.record]`` options (arguments of ``rl_lab.record.record_run``)."""

GRID_TRAIN_KEYS = ("learning_rate", "gamma", "ent_coef", "n_steps", "batch_size", "net_arch", "n_envs",
                   "policy", "context", "d_model", "n_layers", "n_heads", "lstm_hidden", "separate_critic", "mlp_critic",
                   "n_epochs", "target_kl")
"""``TrainConfig`` fields a ``[grid]`` may vary; ``env_kwargs.<name>`` varies an environment option."""

ALIASES = {"learning_rate": "lr", "gamma": "gamma", "ent_coef": "ent", "n_steps": "nsteps",
           "batch_size": "bs", "net_arch": "arch", "n_envs": "nenvs", "policy": "pol", "context": "ctx",
           "d_model": "dm", "n_layers": "nl", "n_heads": "nh", "lstm_hidden": "lstm", "separate_critic": "sepc",
           "mlp_critic": "mlpc", "n_epochs": "ep", "target_kl": "kl"}
"""Short names of grid keys inside run names."""

PROBE_FIXED = ("path", "out_json", "weights_path")
SAE_FIXED = ("path", "out_dir", "progress", "overwrite")
MAX_NAME = 128


@dataclass
class Trial:
    """One cell of the grid for one seed: an ordinary run directory and its pipeline."""

    index: int
    name: str
    env_id: str
    algo: str
    seed: int
    params: dict[str, Any]
    """The grid values of this trial (``{"learning_rate": 0.001, "env_kwargs.size": 5}``)."""
    condition: str
    """Identifies the trial's condition: everything but the seed (``Forage-v0 ppo lr_0.001``)."""

    def train_config(self, options: Mapping[str, Any]) -> TrainConfig:
        """The trial's ``TrainConfig``: stage options, then grid values, then env/algo/seed."""
        opts = dict(options)
        env_kwargs = dict(opts.pop("env_kwargs", {}) or {})
        steps = opts.pop("steps", TrainConfig.total_timesteps)
        values: dict[str, Any] = {**opts, "total_timesteps": steps}
        for key, value in self.params.items():
            if key.startswith("env_kwargs."):
                env_kwargs[key.split(".", 1)[1]] = value
            else:
                values[key] = value
        return TrainConfig(env_id=self.env_id, algo=self.algo, seed=self.seed, env_kwargs=env_kwargs, **values)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "env_id": self.env_id, "algo": self.algo, "seed": self.seed,
                "params": dict(self.params), "condition": self.condition}


@dataclass
class SweepSpec:
    """A validated sweep: what to run (``trials()``) and how (``pipeline``, ``stages``)."""

    name: str
    envs: list[str]
    algos: list[str]
    seeds: list[int]
    pipeline: list[str]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    file: str | None = None

    def trials(self) -> list[Trial]:
        """Expand envs x algos x grid x seeds, in that nesting order (seeds innermost)."""
        keys = list(self.grid)
        out: list[Trial] = []
        names: dict[str, Trial] = {}
        for env_id, algo in itertools.product(self.envs, self.algos):
            for combo in itertools.product(*(self.grid[k] for k in keys)):
                params = dict(zip(keys, combo))
                tag = "".join(f"-{_alias(k)}_{_format_value(v)}" for k, v in params.items())
                env_tag = env_tag_of(env_id)
                condition = " ".join([env_tag, algo, *(f"{_alias(k)}_{_format_value(v)}" for k, v in params.items())])
                for seed in self.seeds:
                    name = _fit_name(f"{self.name}-{env_tag}-{algo}-s{seed}{tag}")
                    trial = Trial(len(out), name, env_id, algo, seed, params, condition)
                    if name in names:
                        raise LabError(
                            f"trials {names[name].params} and {params} get the same run name {name!r}; "
                            "make the grid values distinguishable"
                        )
                    names[name] = trial
                    out.append(trial)
        return out

    def trial_fingerprint(self, trial: Trial) -> str:
        """A hash of everything that determines a trial's outputs (to notice an edited sweep)."""
        data = {"trial": trial.to_dict(), "pipeline": self.pipeline,
                "stages": {s: self.stages.get(s, {}) for s in self.pipeline}}
        return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "envs": self.envs, "algos": self.algos, "seeds": self.seeds,
                "pipeline": self.pipeline, "grid": self.grid, "stages": self.stages}


# --------------------------------------------------------------------------- loading
def load_sweep(
    path: Path | str | None,
    overrides: Mapping[str, Any] | None = None,
    check_env: bool = True,
) -> SweepSpec:
    """Read a sweep file (or nothing: flags only), apply ``overrides`` (dotted keys), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise LabError(f"no such sweep file: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise LabError(f"{path} is not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    if "name" not in raw:
        if path is None:
            raise LabError("a sweep needs a name: give a sweep file or --name")
        raw["name"] = Path(path).stem
    spec = validate(raw, check_env=check_env)
    spec.file = str(Path(path).resolve()) if path is not None else None
    return spec


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: VALUE is read as a TOML value, else kept as a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LabError(f"--set expects KEY=VALUE (e.g. stages.train.steps=2000), got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key, parsed


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw["a"]["b"]["c"] = value`` for ``key = "a.b.c"``; a ``grid`` key keeps its dots."""
    parts = key.split(".")
    if parts[0] == "grid" and len(parts) > 1:
        parts = ["grid", ".".join(parts[1:])]
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LabError(f"--set {key}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- validation
def validate(raw: Mapping[str, Any], check_env: bool = True) -> SweepSpec:
    """Check every key and value of a parsed sweep file; return the normalised spec."""
    raw = copy.deepcopy(dict(raw))
    _unknown(raw, TOP_KEYS, "sweep file")
    name = raw.get("name")
    if not isinstance(name, str) or not RUN_NAME.match(name) or len(name) > 64 or ".." in name:
        raise LabError(f"name: {name!r} is not a valid sweep name (letters, digits, '.', '_', '-'; at most 64)")
    envs = _str_list(raw.get("envs", ["lab/Forage-v0"]), "envs")
    algos = _str_list(raw.get("algos", ["ppo"]), "algos")
    for algo in algos:
        if algo not in SB3_ALGOS:
            raise LabError(f"algos: unknown algorithm {algo!r} (choose from {', '.join(SB3_ALGOS)})")
    seeds = _seeds(raw.get("seeds", [0]))
    pipeline = _pipeline(raw.get("pipeline", ["train", "record"]))
    stages_raw = raw.get("stages", {})
    if not isinstance(stages_raw, dict):
        raise LabError("stages: must be a table of [stages.<stage>] tables")
    _unknown(stages_raw, STAGES, "stages", what="stage")
    stages = {
        "train": _options(stages_raw.get("train", {}), TRAIN_OPTIONS, "stages.train"),
        "record": _options(stages_raw.get("record", {}), RECORD_OPTIONS, "stages.record"),
        "probe": _function_options(stages_raw.get("probe", {}), "stages.probe", probe_file, PROBE_FIXED),
        "sae": _function_options(stages_raw.get("sae", {}), "stages.sae", train_sae_on_file, SAE_FIXED),
    }
    if "sae" in pipeline and not isinstance(stages["sae"].get("hook"), str):
        raise LabError("stages.sae.hook: the sae stage needs a hook name (e.g. \"mlp_extractor.value_net.1\")")
    grid = _grid(raw.get("grid", {}))
    if check_env:
        for env_id in envs:
            _check_env(env_id)
    spec = SweepSpec(name, envs, algos, seeds, pipeline, grid, {k: v for k, v in stages.items() if v})
    for trial in spec.trials():  # names, and every trial's TrainConfig must build
        try:
            trial.train_config(stages["train"]).check_policy()
        except LabError as exc:
            raise LabError(f"trial {trial.name}: {exc}") from None
        except TypeError as exc:
            raise LabError(f"trial {trial.name}: {exc}") from None
    return spec


def _unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str, what: str = "key") -> None:
    for key in table:
        if key not in allowed:
            raise LabError(f"{where}: unknown {what} {key!r} (expected one of {', '.join(allowed)})")


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise LabError(f"{where}: expected a non-empty list of strings, got {value!r}")
    if len(set(value)) != len(value):
        raise LabError(f"{where}: {value!r} lists a value twice")
    return list(value)


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise LabError(f"seeds: a count of seeds must be positive, got {value}")
        return list(range(value))
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise LabError(f"seeds: expected a count or a list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise LabError(f"seeds: {value!r} lists a seed twice")
    return list(value)


def _pipeline(value: Any) -> list[str]:
    stages = _str_list(value, "pipeline")
    for stage in stages:
        if stage not in STAGES:
            raise LabError(f"pipeline: unknown stage {stage!r} (choose from {', '.join(STAGES)})")
    for stage in stages:
        if stage in NEEDS and NEEDS[stage] not in stages:
            raise LabError(f"pipeline: stage {stage!r} needs stage {NEEDS[stage]!r} in the pipeline")
    return [s for s in STAGES if s in stages]


def _check_type(value: Any, kind: str, where: str) -> Any:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool) and value > 0,
        "int0": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "int?": value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "float?": isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
        "bool": isinstance(value, bool),
        "ints": isinstance(value, list) and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value),
        "table": isinstance(value, dict),
        "policy": value in POLICIES,
    }[kind]
    if not ok:
        expected = {"int": "a positive integer", "int0": "a non-negative integer", "int?": "a positive integer",
                    "float": "a number", "float?": "a positive number", "bool": "true or false",
                    "ints": "a list of positive integers", "table": "a table",
                    "policy": f"one of {', '.join(POLICIES)}"}[kind]
        raise LabError(f"{where}: expected {expected}, got {value!r}")
    if kind == "float" and where.endswith("gamma") and not 0.0 < value <= 1.0:
        raise LabError(f"{where}: must be in (0, 1], got {value!r}")
    return float(value) if kind in ("float", "float?") else value


def _options(table: Any, schema: Mapping[str, str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise LabError(f"{where}: expected a table, got {table!r}")
    _unknown(table, tuple(schema), where)
    return {k: _check_type(v, schema[k], f"{where}.{k}") for k, v in table.items()}


def _function_options(table: Any, where: str, fn: Callable[..., Any], fixed: tuple[str, ...]) -> dict[str, Any]:
    """Options passed through to a probes function, checked against its signature."""
    if not isinstance(table, dict):
        raise LabError(f"{where}: expected a table, got {table!r}")
    params = inspect.signature(fn).parameters
    allowed = tuple(p for p in params if p not in fixed)
    _unknown(table, allowed, where)
    return dict(table)


def _grid(table: Any) -> dict[str, list[Any]]:
    if not isinstance(table, dict):
        raise LabError(f"grid: expected a table of lists, got {table!r}")
    grid: dict[str, list[Any]] = {}
    for key, values in table.items():
        if key not in GRID_TRAIN_KEYS and not (key.startswith("env_kwargs.") and len(key) > len("env_kwargs.")):
            raise LabError(
                f"grid: unknown key {key!r} (expected env_kwargs.<option> or one of {', '.join(GRID_TRAIN_KEYS)})"
            )
        if isinstance(values, dict) or not isinstance(values, list) or not values:
            raise LabError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        if key in TRAIN_OPTIONS:
            kind = TRAIN_OPTIONS[key]
            values = [_check_type(v, kind, f"grid.{key}") for v in values]
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise LabError(f"grid.{key}: {values!r} lists a value twice")
        grid[key] = values
    return grid


def _check_env(env_id: str) -> None:
    try:
        gymnasium.spec(env_id)
    except Exception as exc:  # gymnasium's NameNotFound / VersionNotFound / Error
        raise LabError(f"envs: unknown environment {env_id!r} ({str(exc).splitlines()[0]})") from None


# --------------------------------------------------------------------------- names
def env_tag_of(env_id: str) -> str:
    """``lab/Forage-v0`` -> ``Forage-v0`` (the part of an env id used in run names)."""
    return _clean(env_id.split("/")[-1].replace(":", "-"))


def _alias(key: str) -> str:
    if key.startswith("env_kwargs."):
        return _clean(key.split(".", 1)[1])
    return ALIASES.get(key, key)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return _clean(format(value, "g").replace("+", ""))
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    if isinstance(value, dict):
        return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]
    return _clean(str(value))


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "", text) or "x"


def _fit_name(name: str) -> str:
    """Keep a run name within the store's 128 characters (a hash of the whole keeps it unique)."""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - 9]}-{digest}"
