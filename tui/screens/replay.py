"""Episode replay: step through one recorded episode of an activation file.

The file is opened in a worker and only the episode on screen is read (its text view,
labels, rewards and one hook's activations); ``/steps/episode`` is read once to find where
episodes start and stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Header, Select, Static

from tui.charts import fmt_num, sparkline
from tui.messages import EpisodeLoaded, ReplayFileLoaded
from tui.screens.base import RunScreen


@dataclass
class FileMeta:
    """What the replay needs to know about an activation file before reading an episode."""

    path: Path
    n: int
    complete: bool
    env_id: str
    hooks: list[str]
    labels: list[str]
    has_text: bool
    episodes: list[tuple[int, int, int]]  # (episode id, first row, row after the last)


@dataclass
class Episode:
    """One episode's rows, read from the file."""

    index: int
    episode_id: int
    start: int
    text: list[str]
    reward: list[float]
    action: list[str]
    labels: dict[str, list[float]]
    hook: str
    acts: list[list[float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reward)


def read_meta(path: Path) -> FileMeta:
    """Open ``path`` (incomplete files allowed) and find its episodes (reads ``/steps/episode`` only)."""
    import numpy as np

    from probes.activations import ActivationFile

    with ActivationFile(path, allow_incomplete=True) as f:
        eps = f.episodes()
        episodes: list[tuple[int, int, int]] = []
        if len(eps):
            cuts = np.flatnonzero(np.diff(eps) != 0) + 1
            starts = np.concatenate([[0], cuts])
            stops = np.concatenate([cuts, [len(eps)]])
            episodes = [(int(eps[a]), int(a), int(b)) for a, b in zip(starts, stops)]
        has_text = bool(f.text(0)) if f.n else False
        return FileMeta(path, f.n, f.complete, str(f.attrs.get("env_id", "?")), f.hooks, f.labels, has_text, episodes)


def read_episode(meta: FileMeta, index: int, hook: str | None) -> Episode:
    """Read episode number ``index`` of ``meta.episodes``: text, rewards, actions, labels, one hook."""
    from probes.activations import ActivationFile

    ep_id, start, stop = meta.episodes[index]
    rows = slice(start, stop)
    with ActivationFile(meta.path, allow_incomplete=True) as f:
        text: list[str] = []
        if meta.has_text:
            raw = f.steps("text", rows)
            text = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in raw]
        reward = [float(x) for x in f.steps("reward", rows)]
        action = [str(a.tolist()) for a in f.steps("action", rows)]
        labels = {name: [float(v) for v in f.label(name, rows)] for name in meta.labels}
        acts = [list(map(float, row)) for row in f.acts(hook, rows)] if hook else []
    return Episode(index, ep_id, start, text, reward, action, labels, hook or "", acts)


class ReplayScreen(RunScreen):
    """Step through a recorded episode with the env's text view, labels and hook activations."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="replay.back"),
        Binding("right", "step(1)", "Step", id="replay.next"),
        Binding("left", "step(-1)", "Back step", show=False),
        Binding("shift+right", "step(10)", "+10", show=False),
        Binding("shift+left", "step(-10)", "-10", show=False),
        Binding("home", "goto(0)", "Start", show=False),
        Binding("end", "goto(-1)", "End", show=False),
        Binding("right_square_bracket", "episode(1)", "Next episode", id="replay.episode"),
        Binding("left_square_bracket", "episode(-1)", "Prev episode", show=False),
        Binding("h", "next_hook", "Hook", id="replay.hook"),
        Binding("space", "play", "Play/pause", id="replay.play"),
    ]

    def __init__(self, run_name: str, file_name: str | None = None) -> None:
        """Args: run_name: the run. file_name: the activation file in ``RUN/activations`` (default: the
        newest of its own; ``replay/RUN2/<file>`` for a recording on RUN2's episodes)."""
        super().__init__(run_name)
        self.file_name = file_name
        self.meta: FileMeta | None = None
        self.episode: Episode | None = None
        self.t = 0
        self.hook: str | None = None
        self._timer: Any = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Select([], prompt="activation file", id="replay-file", compact=True)
        yield Static("Reading the activation file…", id="replay-info")
        with Horizontal(id="replay-body"):
            yield Static("", id="replay-text", markup=False)
            with VerticalScroll(id="replay-side"):
                yield Static("", id="replay-labels")
                yield Static("", id="replay-acts")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"replay — {self.run_name}"
        layout = self.run_layout
        files = layout.all_activation_files()  # its own recordings, then those on other runs' episodes
        if not files:
            self.query_one("#replay-info", Static).update(Text(
                f"No recordings for {self.run_name} yet: run `rl-lab record {self.run_name}` "
                "(or R on the run's detail screen).", style="italic"))
            return
        names = [self._relative(p) for p in files]
        own = layout.activation_files()
        chosen = self.file_name if self.file_name in names else self._relative(own[-1] if own else files[-1])
        select = self.query_one("#replay-file", Select)
        select.set_options([(n, n) for n in names])
        select.value = chosen
        self.open_file(chosen)

    @on(Select.Changed, "#replay-file")
    def _file_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and (self.meta is None or self._relative(self.meta.path) != event.value):
            self.open_file(event.value)

    def _relative(self, path: Path) -> str:
        """An activation file's name inside ``RUN/activations`` (``replay/RUN2/step_X.h5`` for a replay's)."""
        try:
            return path.relative_to(self.run_layout.activations_dir).as_posix()
        except ValueError:
            return path.name

    def open_file(self, name: str) -> None:
        """Start reading activation file ``name`` (meta, then its first episode)."""
        self.query_one("#replay-info", Static).update(f"Reading {name}…")
        self._load_meta(self.run_layout.activations_dir / name)

    @work(thread=True, exclusive=True, group="replay-meta")
    def _load_meta(self, path: Path) -> None:
        try:
            meta = read_meta(path)
        except Exception as exc:  # noqa: BLE001 - shown in the app, never raised
            self.post_message(ReplayFileLoaded(None, f"cannot read {path.name}: {exc}"))
            return
        self.post_message(ReplayFileLoaded(meta))

    @work(thread=True, exclusive=True, group="replay-episode")
    def _load_episode(self, index: int, hook: str | None, t: int) -> None:
        assert self.meta is not None
        try:
            ep = read_episode(self.meta, index, hook)
        except Exception as exc:  # noqa: BLE001
            self.post_message(EpisodeLoaded(None, t, f"cannot read episode {index}: {exc}"))
            return
        self.post_message(EpisodeLoaded(ep, t))

    def _show_error(self, error: str | None) -> None:
        error = error or "unreadable"
        self.query_one("#replay-info", Static).update(Text(error, style="bold red"))
        self.notify(error, severity="error")

    def on_replay_file_loaded(self, message: ReplayFileLoaded) -> None:
        message.stop()
        if message.meta is None:
            self._show_error(message.error)
            return
        self.meta = message.meta
        if not self.meta.episodes:
            self.query_one("#replay-info", Static).update(
                Text(f"{self.meta.path.name} holds no steps yet.", style="italic"))
            return
        if self.hook not in self.meta.hooks:
            self.hook = self.meta.hooks[0] if self.meta.hooks else None
        self._load_episode(0, self.hook, 0)

    def on_episode_loaded(self, message: EpisodeLoaded) -> None:
        message.stop()
        if message.episode is None:
            self._show_error(message.error)
            return
        self.episode = message.episode
        self.t = max(0, min(message.t, len(self.episode) - 1))
        self.show()

    def show(self) -> None:
        """Render the current step of the loaded episode."""
        meta, ep = self.meta, self.episode
        if meta is None or ep is None or not len(ep):
            return
        t = self.t
        info = Text()
        info.append(f"{self._relative(meta.path)}", style="bold")
        if not meta.complete:
            info.append("  INCOMPLETE (cut short or still being written)", style="bold red")
        info.append(f"  {meta.env_id}  episode {ep.index + 1}/{len(meta.episodes)} (id {ep.episode_id})"
                    f"  step {t + 1}/{len(ep)}  row {ep.start + t}")
        ret = sum(ep.reward[: t + 1])
        info.append(f"\naction {ep.action[t]}  reward {fmt_num(ep.reward[t])}  return so far {fmt_num(ret)}")
        self.query_one("#replay-info", Static).update(info)
        text = ep.text[t] if ep.text else "(this recording has no /steps/text view)"
        self.query_one("#replay-text", Static).update(text)
        self.query_one("#replay-labels", Static).update(self._labels_text(ep, t))
        self.query_one("#replay-acts", Static).update(self._acts_text(ep, t))

    def _labels_text(self, ep: Episode, t: int) -> Text:
        width = max(8, self.query_one("#replay-side").content_size.width - 25)
        out = Text("labels", style="bold")
        for name, series in ep.labels.items():
            line = sparkline(series, width)
            # mark the current step on the sparkline
            pos = min(len(line) - 1, int(t * len(line) / max(1, len(series)))) if line else 0
            out.append(f"\n{name[:14]:<14} {fmt_num(series[t]):>8} ")
            out.append(line[:pos], style="cyan")
            out.append(line[pos:pos + 1] or " ", style="bold reverse yellow")
            out.append(line[pos + 1:], style="cyan")
        if not ep.labels:
            out.append("\n(no labels in this file)", style="dim")
        return out

    def _acts_text(self, ep: Episode, t: int) -> Text:
        out = Text(f"\nhook {ep.hook or '—'}", style="bold")
        if not ep.acts:
            out.append("\n(no hook activations)", style="dim")
            return out
        vec = ep.acts[t]
        width = max(10, self.query_one("#replay-side").content_size.width - 2)
        out.append(f"  ({len(vec)} units, h: next hook)\n", style="dim")
        for i in range(0, len(vec), width):
            out.append(sparkline(vec[i:i + width]) + "\n", style="green")
        norms = [sum(v * v for v in row) ** 0.5 for row in ep.acts]
        out.append(f"‖a‖ over the episode (now {fmt_num(norms[t])})\n", style="dim")
        line = sparkline(norms, width)
        pos = min(len(line) - 1, int(t * len(line) / max(1, len(norms))))
        out.append(line[:pos], style="green")
        out.append(line[pos:pos + 1], style="bold reverse yellow")
        out.append(line[pos + 1:], style="green")
        return out

    # ------------------------------------------------------------------ actions

    def action_step(self, delta: int) -> None:
        if self.episode is None:
            return
        self.t = max(0, min(len(self.episode) - 1, self.t + delta))
        self.show()

    def action_goto(self, t: int) -> None:
        if self.episode is None:
            return
        self.t = len(self.episode) - 1 if t < 0 else t
        self.show()

    def action_episode(self, delta: int) -> None:
        if self.meta is None or self.episode is None:
            return
        index = (self.episode.index + delta) % len(self.meta.episodes)
        self._load_episode(index, self.hook, 0)

    def action_next_hook(self) -> None:
        if self.meta is None or not self.meta.hooks or self.episode is None:
            return
        hooks = self.meta.hooks
        self.hook = hooks[(hooks.index(self.hook) + 1) % len(hooks)] if self.hook in hooks else hooks[0]
        self._load_episode(self.episode.index, self.hook, self.t)

    def action_play(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
            return

        def tick() -> None:
            if self.episode is None or self.t >= len(self.episode) - 1:
                if self._timer is not None:
                    self._timer.stop()
                    self._timer = None
                return
            self.action_step(1)

        self._timer = self.set_interval(0.15, tick)
