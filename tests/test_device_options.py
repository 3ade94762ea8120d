"""``--device`` on ``rl-lab record``, ``steer`` and ``intervene`` (issue 19).

The session's tiny real PPO run (``tiny_run`` in conftest.py), copied before anything writes into
it. On a machine without CUDA, ``--device cuda`` must fail with one ``error:`` line and exit 2
before anything is created; ``--device cpu`` (and ``auto`` there) runs and says which device it used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from probes.activations import ActivationFile
from rl_lab.cli import main
from rl_lab.runs import RunStore

POLICY_HOOK = "mlp_extractor.policy_net.1"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda would run")


@pytest.fixture()
def run_copy(tiny_run: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    runs_dir, name = tiny_run
    shutil.copytree(runs_dir / name, tmp_path / name)
    return tmp_path, name


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (to see that nothing was written)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _fails_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "error:" in lines[0] and needle in lines[0], lines[0]


def test_record_on_the_cpu_says_so_in_the_file(run_copy: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = run_copy
    code = main(["record", name, "--episodes", "2", "--calibration-episodes", "1", "--n-envs", "2",
                 "--device", "cpu", "--overwrite", "--runs-dir", str(runs_dir)])
    assert code == 0
    (path,) = [Path(line) for line in capsys.readouterr().out.split()]
    with ActivationFile(path) as af:
        assert af.attrs["device"] == "cpu"
        assert af.complete and POLICY_HOOK in af.hooks

    # auto on a machine without CUDA is the CPU; the reference critic and random twins run there too
    from rl_lab.record import adapter_device, load_adapter

    run = RunStore(runs_dir).get(name)
    adapter = load_adapter(run, run.latest_checkpoint(), device="cpu")
    assert adapter_device(adapter) == "cpu" and adapter_device(adapter.random_twin(1)) == "cpu"


@no_cuda
@pytest.mark.parametrize("device, needle", [("cuda", "no CUDA device"), ("cuda:3", "no CUDA device"),
                                            ("tpu", "--device must be")])
def test_record_refuses_a_device_it_does_not_have(run_copy: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                                                  device: str, needle: str) -> None:
    runs_dir, name = run_copy
    before = _tree(runs_dir)
    _fails_with_one_line(["record", name, "--episodes", "2", "--device", device, "--overwrite",
                          "--runs-dir", str(runs_dir)], capsys, needle)
    assert _tree(runs_dir) == before  # checked before anything was created


def test_steer_on_the_cpu_names_its_device(run_copy: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = run_copy
    threads = torch.get_num_threads()
    code = main(["steer", name, "--direction", f"diff:threat@{POLICY_HOOK}", "--scales", "0,3",
                 "--episodes", "2", "--controls", "1", "--device", "auto", "--json", "--runs-dir", str(runs_dir)])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"] == "cpu"  # auto: no CUDA here
    assert doc["config"]["device"] == "cpu"
    assert json.loads(Path(doc["path"]).read_text())["device"] == "cpu"
    assert torch.get_num_threads() == threads  # one thread while steering, restored after


@no_cuda
def test_steer_and_intervene_refuse_cuda_before_writing(run_copy: tuple[Path, str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = run_copy
    before = _tree(runs_dir)
    _fails_with_one_line(["steer", name, "--direction", f"diff:threat@{POLICY_HOOK}", "--episodes", "2",
                          "--device", "cuda", "--runs-dir", str(runs_dir)], capsys, "no CUDA device")
    _fails_with_one_line(["intervene", name, "--do", "predator_adjacent", "--episodes", "2",
                          "--device", "cuda:0", "--runs-dir", str(runs_dir)], capsys, "no CUDA device")
    assert _tree(runs_dir) == before
    assert not (runs_dir / name / "steer").exists()


def test_intervene_on_the_cpu_names_its_device(run_copy: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = run_copy
    code = main(["intervene", name, "--do", "energy=0.05", "--at-step", "2", "--episodes", "2",
                 "--device", "cpu", "--json", "--runs-dir", str(runs_dir)])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"] == "cpu" and doc["config"]["device"] == "cpu"
