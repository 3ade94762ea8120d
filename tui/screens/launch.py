"""Launch: a training form that starts ``rl-lab train`` as a separate process, then follows it."""

from __future__ import annotations

from datetime import datetime
import threading
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.widgets import Button, Footer, Header, Input, Label, ProgressBar, Select, Static

from rl_lab.config import POLICIES, TRANSFORMER_ALGOS
from rl_lab.errors import LabError
from rl_lab.runs import RUN_NAME, Run, read_run_json
from tui.charts import fmt_num
from tui.data import MetricsTail
from tui.jobs import Job
from tui.messages import LaunchProgress
from tui.screens.base import LabScreen
from tui.widgets.chart import LineChart

ENVS: tuple[str, ...] = ("lab/Forage-v0", "lab/Binding-v0", "lab/Chain-v0", "CartPole-v1")
ALGOS: tuple[str, ...] = ("ppo", "a2c", "dqn", "recurrent-ppo")


@dataclass
class LaunchSpec:
    """The validated form: everything ``rl-lab train`` needs."""

    env: str
    algo: str
    steps: int
    seed: int
    name: str
    lr: float | None
    n_envs: int | None
    gamma: float | None
    policy: str = "mlp"
    """``mlp`` or ``transformer`` (ppo/a2c: the BC transformer trained by RL)."""

    def args(self, supported: set[str]) -> list[str]:
        """``rl-lab train`` arguments; optional hyperparameters only if the parser has them."""
        out = ["--env", self.env, "--algo", self.algo, "--steps", str(self.steps),
               "--seed", str(self.seed), "--name", self.name]
        if self.policy != "mlp":
            out += ["--policy", self.policy]
        for opt, value in (("--lr", self.lr), ("--n-envs", self.n_envs), ("--gamma", self.gamma)):
            if value is not None and (not supported or opt in supported):
                out += [opt, str(value)]
        return out


def default_name(env: str, algo: str, seed: int, policy: str = "mlp") -> str:
    """``forage-ppo-s0-20240101-120000`` (``forage-ppo-transformer-s0-...``): a fresh, valid run name."""
    short = env.split("/")[-1].split("-v")[0].lower()
    agent = algo if policy == "mlp" else f"{algo}-{policy}"
    return f"{short}-{agent}-s{seed}-{datetime.now():%Y%m%d-%H%M%S}"


def parse_form(values: dict[str, str]) -> LaunchSpec:
    """Validate the form's strings.

    Args:
        values: field id -> text for ``env``, ``algo``, ``policy``, ``steps``, ``seed``, ``name``,
            ``lr``, ``n_envs``, ``gamma`` (empty optional fields mean the command's default; a
            missing ``policy`` is ``mlp``).

    Raises:
        LabError: with one sentence naming the bad field.
    """
    def number(key: str, kind: type, optional: bool = False) -> Any:
        text = values.get(key, "").strip()
        if not text:
            if optional:
                return None
            raise LabError(f"{key} is required")
        try:
            return kind(text)
        except ValueError:
            raise LabError(f"{key} must be a {'whole ' if kind is int else ''}number, got {text!r}") from None

    env, algo = values.get("env") or "", values.get("algo") or ""
    if not env:
        raise LabError("choose an environment")
    if algo not in ALGOS:
        raise LabError(f"algorithm must be one of {', '.join(ALGOS)}")
    policy = values.get("policy") or "mlp"
    if policy not in POLICIES:
        raise LabError(f"policy must be one of {', '.join(POLICIES)}")
    if policy != "mlp" and algo not in TRANSFORMER_ALGOS:
        raise LabError(f"the {policy} policy is for {' or '.join(TRANSFORMER_ALGOS)}, not {algo}")
    steps = number("steps", int)
    if steps <= 0:
        raise LabError("steps must be positive")
    seed = number("seed", int)
    lr = number("lr", float, optional=True)
    if lr is not None and not 0 < lr < 1:
        raise LabError("learning rate must be in (0, 1)")
    n_envs = number("n_envs", int, optional=True)
    if n_envs is not None and n_envs <= 0:
        raise LabError("n_envs must be positive")
    gamma = number("gamma", float, optional=True)
    if gamma is not None and not 0 < gamma <= 1:
        raise LabError("gamma must be in (0, 1]")
    name = values.get("name", "").strip() or default_name(env, algo, seed, policy)
    if not RUN_NAME.match(name) or ".." in name:
        raise LabError(f"invalid run name {name!r}: use letters, digits, '.', '_' and '-'")
    return LaunchSpec(env, algo, steps, seed, name, lr, n_envs, gamma, policy)


class LaunchScreen(LabScreen):
    """The training form; after launch, the run's progress and live learning curve."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="launch.back"),
        Binding("ctrl+l", "launch", "Launch", id="launch.launch", priority=True),
        Binding("ctrl+x", "stop", "Stop", id="launch.stop", priority=True),
        Binding("ctrl+o", "open", "Open run", id="launch.open", priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.job: Job | None = None
        self.spec: LaunchSpec | None = None
        self._tail: MetricsTail | None = None
        self._lock = threading.Lock()
        self.final_status: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Grid(id="launch-form"):
            yield Label("environment")
            yield Select([(e, e) for e in ENVS], value=ENVS[0], allow_blank=False, id="env", compact=True)
            yield Label("algorithm")
            yield Select([(a, a) for a in ALGOS], value="ppo", allow_blank=False, id="algo", compact=True)
            yield Label("policy")
            yield Select([(p, p) for p in POLICIES], value="mlp", allow_blank=False, id="policy", compact=True)
            yield Label("steps")
            yield Input("50000", id="steps", type="integer", compact=True)
            yield Label("seed")
            yield Input("0", id="seed", type="integer", compact=True)
            yield Label("name")
            yield Input("", id="name", placeholder="auto", compact=True)
            yield Label("learning rate")
            yield Input("", id="lr", placeholder="algo default", compact=True)
            yield Label("n envs")
            yield Input("", id="n_envs", placeholder="default", compact=True)
            yield Label("gamma")
            yield Input("", id="gamma", placeholder="0.99", compact=True)
        with Horizontal(id="launch-buttons"):
            yield Button("Launch (ctrl+l)", variant="primary", id="launch-go", compact=True)
            yield Button("Stop (ctrl+x)", variant="error", id="launch-stop", disabled=True, compact=True)
            yield Button("Open run (ctrl+o)", id="launch-open", disabled=True, compact=True)
        yield Static("Fill in the form and launch; training runs as a separate process.", id="launch-status")
        yield ProgressBar(total=100, show_eta=True, id="launch-progress")
        yield LineChart("episode return", id="launch-chart")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "launch training"
        self.query_one("#steps", Input).focus()
        self.set_interval(self.lab.poll_interval / 2, self.follow)

    def form_values(self) -> dict[str, str]:
        """The form's fields as strings."""
        values = {k: str(self.query_one(f"#{k}", Select).value) for k in ("env", "algo", "policy")}
        for k in ("steps", "seed", "name", "lr", "n_envs", "gamma"):
            values[k] = self.query_one(f"#{k}", Input).value
        return values

    # ------------------------------------------------------------------ actions

    @on(Button.Pressed, "#launch-go")
    def action_launch(self) -> None:
        if self.job is not None and self.job.poll() is None:
            self.notify("a training run is already being followed here; stop it or open a new launch screen",
                        severity="warning")
            return
        try:
            spec = parse_form(self.form_values())
        except LabError as exc:
            self.notify(str(exc), severity="error")
            return
        if self.lab.run_layout(spec.name).path.exists():
            self.notify(f"run {spec.name!r} already exists; choose another name", severity="error")
            return
        from tui.screens.dialogs import command_options

        supported = command_options("train")
        if not supported:
            self.notify("rl-lab train is not available in this installation", severity="error")
            return
        try:
            self.job = self.lab.jobs.start("train", spec.name, spec.args(supported))
        except OSError as exc:
            self.notify(f"cannot start training: {exc}", severity="error")
            return
        self.spec = spec
        self.final_status = None
        self._tail = MetricsTail(self.lab.run_layout(spec.name).metrics_path)
        self.query_one("#name", Input).value = spec.name
        self.query_one("#launch-stop", Button).disabled = False
        self.query_one("#launch-open", Button).disabled = False
        self.query_one("#launch-chart", LineChart).set_data([], [], f"episode return — {spec.name}")
        self.notify(f"training {spec.name} started (pid {self.job.pid})")

    @on(Button.Pressed, "#launch-stop")
    def action_stop(self) -> None:
        if self.job is None or self.spec is None:
            self.notify("nothing launched yet", severity="warning")
            return
        if self.job.poll() is not None:
            self.notify(f"{self.spec.name} has already finished", severity="warning")
            return
        if self.job.interrupt():
            self.notify(f"sent SIGINT to {self.spec.name}; it will checkpoint and stop")

    @on(Button.Pressed, "#launch-open")
    def action_open(self) -> None:
        if self.spec is None:
            self.notify("nothing launched yet", severity="warning")
            return
        if not self.lab.run_layout(self.spec.name).run_json.exists():
            self.notify(f"{self.spec.name} has not written run.json yet", severity="warning")
            return
        self.lab.open_run(self.spec.name)

    # ------------------------------------------------------------------ following the run

    @work(thread=True, group="launch-follow")
    def follow(self) -> None:
        """Read the launched run's run.json and new metrics (in a worker)."""
        if self.job is None or self.spec is None or self._tail is None:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            path = self.lab.run_layout(self.spec.name).path
            info: dict[str, Any] | None = None
            status = "starting"
            try:
                info = read_run_json(path)
                status = Run(path, info).status
            except LabError:
                pass
            self._tail.poll()
            curve = self._tail.curve("episode_return")
            code = self.job.poll()
            last = self.job.last_lines(1)
            self.post_message(LaunchProgress(info, status, curve, code, last[-1] if last else ""))
        finally:
            self._lock.release()

    def on_launch_progress(self, message: LaunchProgress) -> None:
        if self.spec is None or self.job is None:
            return
        message.stop()
        info, status, curve = message.info or {}, message.status, message.curve
        code, last = message.returncode, message.last_line
        total = info.get("total_timesteps") or self.spec.steps
        done = info.get("steps_done") or 0
        bar = self.query_one("#launch-progress", ProgressBar)
        bar.update(total=float(total), progress=float(min(done, total)))
        xs, ys = [x for x, _ in curve], [y for _, y in curve]
        title = f"episode return — {self.spec.name}"
        if ys:
            title += f"  latest {fmt_num(ys[-1])}, best {fmt_num(max(ys))}"
        self.query_one("#launch-chart", LineChart).set_data(xs, ys, title)
        text = Text()
        text.append(self.spec.name, style="bold")
        if code is None:
            text.append(f"  {status}  {fmt_num(done)}/{fmt_num(total)} steps  pid {self.job.pid}")
        else:
            final = status if status in ("done", "failed", "interrupted") else self.job.state
            text.append(f"  {final} (exit {code})  {fmt_num(done)}/{fmt_num(total)} steps",
                        style="green" if final == "done" else "red")
            if info.get("error"):
                text.append(f"\n{info['error']}", style="red")
            if self.final_status is None:
                self.final_status = final
                self.query_one("#launch-stop", Button).disabled = True
        if last:
            text.append(f"\n{last[-160:]}", style="dim")
        self.query_one("#launch-status", Static).update(text)
