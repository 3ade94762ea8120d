"""The run directory's layout: every folder and file name of the contract in ``docs/design.md``.

This module is the one owner of those names. ``probes`` writes into run folders (probe results,
SAEs) but never imports ``rl_lab``, so the layout lives here, at the lowest layer that needs it;
``rl_lab.runs.Run`` is a :class:`RunLayout` that also carries ``run.json``. Nothing else builds a
path inside a run folder by hand.

::

    RUNS_DIR/
      <run-name>/                 RunLayout
        run.json  metrics.jsonl  eval.json  progress.csv  <i>.monitor.csv
        tensorboard/  checkpoints/  activations/  probes/  saes/<name>/  steer/  trajectories/
        activations/replay/<other-run>/  probes/replay/<other-run>/   another run's episodes replayed
      sweeps/<sweep>.json         RunsDirLayout.sweep_record
      comparisons/compare-*.json  RunsDirLayout.comparisons_dir

Standard library only: reading the layout never costs an import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from probes.errors import ProbeError

# ------------------------------------------------------------------ inside a run folder
RUN_JSON = "run.json"
METRICS_JSONL = "metrics.jsonl"
EVAL_JSON = "eval.json"
CHECKPOINTS = "checkpoints"
ACTIVATIONS = "activations"
PROBES = "probes"
SAES = "saes"
STEER = "steer"
TRAJECTORIES = "trajectories"
TENSORBOARD = "tensorboard"
PROGRESS_CSV = "progress.csv"
MONITOR_SUFFIX = ".monitor.csv"
REPLAY_BUFFER_SUFFIX = ".replay.pkl"
REPLAY = "replay"
"""``activations/replay/<run>/`` and ``probes/replay/<run>/``: recordings of this run's network on
another run's episodes, replayed action for action (``rl-lab record --replay``), and their probes."""

ACTIVATION_SUFFIX = ".h5"
PROBE_RESULTS_SUFFIX = ".json"
PROBE_WEIGHTS_SUFFIX = ".weights.npz"
CHECKPOINT_SUFFIXES = (".zip", ".pt")
LOG_SUFFIX = ".log"

# ------------------------------------------------------------------ inside saes/<name>/
SAE_CFG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
SAE_METRICS = "metrics.json"
SAE_FEATURES = "features.json"
SAE_FEATURES_NPZ = "features.npz"

# ------------------------------------------------------------------ beside the runs
SWEEPS = "sweeps"
COMPARISONS = "comparisons"
RESERVED_NAMES = frozenset({SWEEPS, COMPARISONS})
"""Folders of a runs directory that are not runs: no run may take their names."""

LOCK_FILE = ".lock"
"""``RUN/.lock``: held (``fcntl.flock``) by the one process that trains or resumes the run."""
TMP_MARK = ".tmp-"
"""Temporary names carry this mark (``step_X.h5.tmp-<pid>``, ``saes/.<name>.tmp-<pid>``): never listed."""

MAX_COMPONENT = 128
"""Longest name that becomes one path component. File systems allow 255 bytes; the lab appends
suffixes (``-topk-512``, ``.weights.npz``, ``.tmp-<pid>``) and keeps the rest for them."""


# ------------------------------------------------------------------ names that become paths
class UnsafeName(ProbeError, ValueError):
    """A name (run, hook, label, SAE, trajectories, ...) that cannot safely become a path component."""


def safe_component(name: object, what: str) -> str:
    """Return ``name`` if it can be used as one path component inside a run folder, else raise.

    The one check for every name that becomes a path (run names, hook and label names, SAE
    names, trajectory names, steering outputs): a non-empty string of at most ``MAX_COMPONENT``
    characters, with no path separator, no NUL or control character, not starting with ``.``
    (``.``, ``..``, hidden and temporary names) nor ``-`` (read as an option), so it names
    exactly one entry of the folder it is joined to. ``what`` names it in the message
    (``"hook"``, ``"SAE name"``, ...). Raises :class:`UnsafeName` (a ``ProbeError``).
    """
    if not isinstance(name, str):
        raise UnsafeName(f"invalid {what}: expected text, got {type(name).__name__}")
    shown = name if len(name) <= 60 else name[:57] + "..."
    if not name:
        raise UnsafeName(f"invalid {what}: it is empty")
    if len(name) > MAX_COMPONENT:
        raise UnsafeName(f"invalid {what} {shown!r}: longer than {MAX_COMPONENT} characters "
                         "(it becomes a file name, and file systems limit those)")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise UnsafeName(f"invalid {what} {shown!r}: it may not contain a path separator")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafeName(f"invalid {what} {shown!r}: it may not contain control characters")
    if name.startswith("."):
        raise UnsafeName(f"invalid {what} {shown!r}: it may not start with '.'")
    if name.startswith("-"):
        raise UnsafeName(f"invalid {what} {shown!r}: it may not start with '-'")
    return name


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a hidden or temporary entry (a write in progress, a lock): never listed."""
    return path.name.startswith(".") or TMP_MARK in path.name


@dataclass
class RunLayout:
    """Where everything of one run lives. ``path`` is the run folder."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # files
    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``: one JSON object per log event."""
        return self.path / METRICS_JSONL

    @property
    def eval_path(self) -> Path:
        """``eval.json``: a dt/bc run's RTG calibration curve."""
        return self.path / EVAL_JSON

    @property
    def progress_csv(self) -> Path:
        """``progress.csv``: SB3's logger in CSV (one row per dump; kept across ``--resume``)."""
        return self.path / PROGRESS_CSV

    def monitor_csv(self, env_index: int) -> Path:
        """``<i>.monitor.csv``: SB3 ``Monitor``'s episodes of parallel environment ``i`` (SB3's own
        ``make_vec_env`` naming; ``stable_baselines3.common.monitor.load_results(RUN)`` reads them all)."""
        return self.path / f"{int(env_index)}{MONITOR_SUFFIX}"

    # folders
    @property
    def lock_path(self) -> Path:
        """``.lock``: the training lock (see ``rl_lab.runs.RunLock``)."""
        return self.path / LOCK_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def activations_dir(self) -> Path:
        return self.path / ACTIVATIONS

    @property
    def probes_dir(self) -> Path:
        return self.path / PROBES

    @property
    def saes_dir(self) -> Path:
        return self.path / SAES

    @property
    def steer_dir(self) -> Path:
        return self.path / STEER

    @property
    def trajectories_dir(self) -> Path:
        return self.path / TRAJECTORIES

    @property
    def tensorboard_dir(self) -> Path:
        """``tensorboard/``: TensorBoard event files (SB3's logger, DT/BC training; SAE training in
        ``tensorboard/saes/<name>/``); ``tensorboard --logdir RUNS_DIR`` shows every run."""
        return self.path / TENSORBOARD

    # named files inside the folders
    def checkpoint_path(self, step: int, suffix: str) -> Path:
        """``checkpoints/step_<step, 9 digits><suffix>`` (``.zip`` for SB3, ``.pt`` for the DT)."""
        if suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"checkpoint suffix {suffix!r} is not one of {CHECKPOINT_SUFFIXES}")
        return self.checkpoints_dir / f"step_{int(step):09d}{suffix}"

    def replay_buffer_path(self, checkpoint: Path) -> Path:
        """``checkpoints/step_<N>.replay.pkl``: the DQN replay buffer saved beside ``checkpoint``."""
        return self.checkpoints_dir / f"{Path(checkpoint).stem}{REPLAY_BUFFER_SUFFIX}"

    def activations_folder(self, replay: str | None = None) -> Path:
        """``activations/`` (the run's own episodes) or, with ``replay``, ``activations/replay/<replay>/``
        (run ``replay``'s episodes replayed through this run's network)."""
        if replay is None:
            return self.activations_dir
        return self.activations_dir / REPLAY / safe_component(replay, "replayed run name")

    def probes_folder(self, replay: str | None = None) -> Path:
        """``probes/`` or, with ``replay``, ``probes/replay/<replay>/``: the results of that folder's recordings."""
        if replay is None:
            return self.probes_dir
        return self.probes_dir / REPLAY / safe_component(replay, "replayed run name")

    def activation_path(self, stem: str, replay: str | None = None) -> Path:
        """``activations/<stem>.h5`` (``stem`` is a checkpoint stem such as ``step_000001000``);
        with ``replay``, ``activations/replay/<replay>/<stem>.h5``."""
        return self.activations_folder(replay) / f"{safe_component(stem, 'recording name')}{ACTIVATION_SUFFIX}"

    def probe_results_path(self, stem: str, replay: str | None = None) -> Path:
        """``probes/<stem>.json``: the probe results of ``activations/<stem>.h5`` (``replay``: of the replay's)."""
        return self.probes_folder(replay) / f"{safe_component(stem, 'recording name')}{PROBE_RESULTS_SUFFIX}"

    def probe_weights_path(self, stem: str, replay: str | None = None) -> Path:
        """``probes/<stem>.weights.npz``: the probe weights beside those results."""
        return self.probes_folder(replay) / f"{safe_component(stem, 'recording name')}{PROBE_WEIGHTS_SUFFIX}"

    def sae_dir(self, name: str) -> Path:
        """``saes/<name>/``: one trained SAE."""
        return self.saes_dir / safe_component(name, "SAE name")

    def sae_tensorboard_dir(self, name: str) -> Path:
        """``tensorboard/saes/<name>/``: the TensorBoard event files of SAE ``saes/<name>/``'s training."""
        return self.tensorboard_dir / SAES / safe_component(name, "SAE name")

    def steer_path(self, stem: str) -> Path:
        """``steer/<stem>.json``: one intervention experiment."""
        return self.steer_dir / f"{safe_component(stem, 'steering output name')}.json"

    def trajectories_path(self, name: str = "default") -> Path:
        """``trajectories/<name>.h5``: an offline dataset collected from this run."""
        return self.trajectories_dir / f"{safe_component(name, 'trajectories name')}.h5"

    # listings
    def activation_files(self, replay: str | None = None) -> list[Path]:
        """The run's recordings of its own episodes (``replay``: of that run's episodes replayed)."""
        folder = self.activations_folder(replay)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob(f"*{ACTIVATION_SUFFIX}") if not is_temporary(p))

    def probe_result_files(self, replay: str | None = None) -> list[Path]:
        """Every ``probes/<stem>.json`` (the weights files are not listed); ``replay``: of those recordings."""
        folder = self.probes_folder(replay)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob(f"*{PROBE_RESULTS_SUFFIX}") if not is_temporary(p))

    def all_activation_files(self) -> list[Path]:
        """The run's own recordings, then each replay's (``replays()``): every recording, for listings."""
        return self.activation_files() + [p for r in self.replays() for p in self.activation_files(r)]

    def all_probe_result_files(self) -> list[Path]:
        """The probe results of every recording, in ``all_activation_files`` order of folders."""
        return self.probe_result_files() + [p for r in self.replays() for p in self.probe_result_files(r)]

    def replays(self) -> list[str]:
        """The runs whose episodes this run's network was recorded on (``activations/replay/<run>/``)."""
        folder = self.activations_dir / REPLAY
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_temporary(p))

    def sae_dirs(self) -> list[Path]:
        if not self.saes_dir.is_dir():
            return []
        return sorted(p for p in self.saes_dir.iterdir() if p.is_dir() and not is_temporary(p))

    def steer_files(self) -> list[Path]:
        if not self.steer_dir.is_dir():
            return []
        return sorted(p for p in self.steer_dir.glob("*.json") if not is_temporary(p))

    def log_files(self) -> list[Path]:
        """``*.log`` files left in the run folder itself (by a user or a job; the app lists them)."""
        return sorted(self.path.glob(f"*{LOG_SUFFIX}"))


@dataclass
class SAELayout:
    """The files of one SAE folder (``RUN/saes/<name>/`` or any ``--out``)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def cfg_path(self) -> Path:
        return self.path / SAE_CFG

    @property
    def weights_path(self) -> Path:
        return self.path / SAE_WEIGHTS

    @property
    def metrics_path(self) -> Path:
        return self.path / SAE_METRICS

    @property
    def features_path(self) -> Path:
        return self.path / SAE_FEATURES

    @property
    def features_npz_path(self) -> Path:
        return self.path / SAE_FEATURES_NPZ

    def has_features(self) -> bool:
        """Both halves of the feature summary are there."""
        return self.features_path.exists() and self.features_npz_path.exists()


@dataclass
class RunsDirLayout:
    """What a runs directory holds beside the runs themselves."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def run_dir(self, name: str) -> Path:
        """The folder of run ``name`` (validate ``name`` first: ``rl_lab.runs.check_run_name``)."""
        return self.root / name

    @property
    def sweeps_dir(self) -> Path:
        return self.root / SWEEPS

    def sweep_record(self, name: str) -> Path:
        """``sweeps/<name>.json``: a sweep's trial statuses and aggregate."""
        return self.sweeps_dir / f"{safe_component(name, 'sweep name')}.json"

    def sweep_records(self) -> list[Path]:
        """Every ``sweeps/<name>.json``, by name."""
        if not self.sweeps_dir.is_dir():
            return []
        return sorted(self.sweeps_dir.glob("*.json"))

    @property
    def comparisons_dir(self) -> Path:
        """``comparisons/``: the documents ``rl-lab compare`` writes."""
        return self.root / COMPARISONS

    def shared_marker(self, token: str) -> Path:
        """``.shared-<token>``: a hidden file a Ray node writes to prove it sees this directory
        (``rl_lab.sweep.backends.check_shared_runs_dir``); removed right after the check."""
        return self.root / f".shared-{safe_component(token, 'marker token')}"


def recording_place(path: Path | str) -> tuple[RunLayout, str | None] | None:
    """The run an activation file belongs to and the run whose episodes it replays, else None.

    ``RUN/activations/X.h5`` -> ``(RUN, None)``; ``RUN/activations/replay/OTHER/X.h5`` ->
    ``(RUN, "OTHER")``. Only the position is checked; whether ``RUN/run.json`` exists is the
    caller's question.
    """
    p = Path(path).resolve()
    if p.parent.name == ACTIVATIONS:
        return RunLayout(p.parent.parent), None
    if p.parent.parent.name == REPLAY and p.parent.parent.parent.name == ACTIVATIONS:
        return RunLayout(p.parent.parent.parent.parent), p.parent.name
    return None


def run_of_file(path: Path | str) -> RunLayout | None:
    """The run folder an activation file sits in (``RUN/activations/X.h5`` -> ``RUN``, also for a
    replay's ``RUN/activations/replay/OTHER/X.h5``), else None (``recording_place``)."""
    place = recording_place(path)
    return place[0] if place else None


def recording_of_results(path: Path | str) -> Path | None:
    """The activation file a run's probe results were computed from (``RUN/probes/X.json`` ->
    ``RUN/activations/X.h5``; a replay's ``probes/replay/OTHER/X.json`` -> ``activations/replay/OTHER/X.h5``),
    else None."""
    p = Path(path)
    stem = p.name.removesuffix(PROBE_RESULTS_SUFFIX)
    if p.parent.name == PROBES:
        return RunLayout(p.parent.parent).activation_path(stem)
    if p.parent.parent.name == REPLAY and p.parent.parent.parent.name == PROBES:
        return RunLayout(p.parent.parent.parent.parent).activation_path(stem, p.parent.name)
    return None


def probe_output_paths(h5: Path | str) -> tuple[Path, Path]:
    """Where a recording's probe results and weights go.

    ``RUN/probes/<stem>.json`` and ``.weights.npz`` for a run's recording
    (``RUN/probes/replay/OTHER/`` for a replay's); beside any other file as ``<stem>.probes.json``
    and ``<stem>.probes.weights.npz``.
    """
    h5 = Path(h5)
    place = recording_place(h5)
    if place is not None:
        run, replay = place
        return run.probe_results_path(h5.stem, replay), run.probe_weights_path(h5.stem, replay)
    stem = f"{h5.stem}.probes"
    return h5.parent / f"{stem}{PROBE_RESULTS_SUFFIX}", h5.parent / f"{stem}{PROBE_WEIGHTS_SUFFIX}"


def sae_output_dir(h5: Path | str, name: str) -> Path:
    """``RUN/saes/<name>/`` for a run's recording, else ``<stem>.saes/<name>/`` beside the file."""
    h5 = Path(h5)
    run = run_of_file(h5)
    if run is not None:
        return run.sae_dir(name)
    return h5.resolve().parent / f"{h5.stem}.saes" / safe_component(name, "SAE name")


def sae_tensorboard_dir(h5: Path | str, name: str) -> Path:
    """Where SAE ``name``'s training events go: ``RUN/tensorboard/saes/<name>/`` for a run's
    recording (beside the run's other events), else ``<stem>.tensorboard/saes/<name>/`` beside the file."""
    h5 = Path(h5)
    run = run_of_file(h5)
    if run is not None:
        return run.sae_tensorboard_dir(name)
    return h5.resolve().parent / f"{h5.stem}.{TENSORBOARD}" / SAES / safe_component(name, "SAE name")
