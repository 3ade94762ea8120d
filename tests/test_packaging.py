"""The install is the product: declared dependencies, the layering rules, and cheap imports.

- every third-party module that ``envs``, ``probes``, ``rl_lab`` or ``tui`` imports at module
  level is a core dependency in ``pyproject.toml``; one imported only inside a function (an
  optional feature, such as the Ray backend) belongs to a core dependency or a non-test extra.
  The ``test`` extra never counts: it must not hide a missing dependency;
- ``lint-imports`` passes: the import contracts in ``pyproject.toml`` (``docs/design.md``);
- importing the command line, the app, or any ``probes`` module outside ``probes.sae`` does not
  load torch.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "probes", "rl_lab", "tui")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalise(re.match(r"[A-Za-z0-9._-]+", r.strip()).group(0)) for r in requirements}


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """``(top-level module, imported at module level)`` for every absolute import of a file."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try))
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], top))
            visit(child, nested)

    visit(tree, True)
    return found


def third_party_imports() -> dict[str, dict[str, bool]]:
    """Top-level module -> {file: imported at module level} over the four packages."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    out: dict[str, dict[str, bool]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for module, top in _imports(tree):
                if module in stdlib or module in PACKAGES:
                    continue
                where = out.setdefault(module, {})
                rel = str(path.relative_to(ROOT))
                where[rel] = where.get(rel, False) or top
    return out


def test_every_imported_third_party_module_is_declared() -> None:
    project = _pyproject()["project"]
    core = _requirement_names(project["dependencies"])
    extras = {name: _requirement_names(reqs) for name, reqs in project.get("optional-dependencies", {}).items()}
    optional = set().union(*(names for name, names in extras.items() if name != "test"))
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for module, files in sorted(third_party_imports().items()):
        # an optional extra (ray, minigrid) is not installed by the test extra: match it by name
        dists = {_normalise(d) for d in distributions.get(module, [])} or {_normalise(module)}
        at_top = [f for f, top in files.items() if top]
        if dists & core:
            continue
        if at_top:
            problems.append(f"{module} is imported at module level by {', '.join(at_top)} but is not a core dependency")
        elif not dists & optional:
            problems.append(f"{module} (imported by {', '.join(files)}) is declared by no dependency or non-test extra")
    assert not problems, "\n".join(problems)


def test_every_declared_dependency_is_used() -> None:
    """A core dependency nothing imports is dead weight on every install."""
    project = _pyproject()["project"]
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for module in third_party_imports():
        imported |= {_normalise(d) for d in distributions.get(module, [])}
    unused = _requirement_names(project["dependencies"]) - imported
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_requires_python_admits_what_the_code_uses() -> None:
    """``tomllib`` (used by the sweep files) is 3.11+; the declared floor must say so."""
    spec = _pyproject()["project"]["requires-python"]
    assert spec.replace(" ", "") == ">=3.11"


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert exe, "import-linter is part of the test extra: lint-imports must be installed"
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


def _loads_torch(module: str) -> list[str]:
    code = (f"import sys, {module}\n"
            "print(' '.join(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _probes_modules_outside_sae() -> list[str]:
    names = []
    for path in sorted((ROOT / "probes").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if len(parts) > 1 and parts[1] == "sae":
            continue
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts))
    return names


@pytest.mark.parametrize("module", ["rl_lab.cli", "tui.app", "probes.sae.config", *_probes_modules_outside_sae()])
def test_import_does_not_load_torch(module: str) -> None:
    assert _loads_torch(module) == [], f"importing {module} loads torch"


def test_torch_contract_names_every_probes_module_outside_sae() -> None:
    """The import-linter contract lists modules one by one: a new module must join the list."""
    contracts = _pyproject()["tool"]["importlinter"]["contracts"]
    torch_free = next(c for c in contracts if c["forbidden_modules"] == ["torch"])
    expected = set(_probes_modules_outside_sae()) | {"probes.sae", "probes.sae.config"}
    assert set(torch_free["source_modules"]) == expected
