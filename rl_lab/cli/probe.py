"""``rl-lab probe``: linear probes for every hook x label of a run's recordings (or one file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rl_lab.cli._common import add_runs_dir, runs_dir

HELP = "fit linear probes (hook x label, split by episode) beside their baselines; writes RUN/probes/<file>.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_OR_FILE", help="a run (all its recordings) or one activation .h5 file")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--labels", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--hooks", default=None, help="comma-separated hook names (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode split and bootstrap (default: 0)")
    add_runs_dir(parser)


def output_paths(h5: Path) -> tuple[Path, Path]:
    """Where a recording's probe results and weights go: RUN/probes/ for a run's file, else beside it."""
    if h5.parent.name == "activations":
        folder, stem = h5.parent.parent / "probes", h5.stem
    else:
        folder, stem = h5.parent, f"{h5.stem}.probes"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}.json", folder / f"{stem}.weights.npz"


def targets(target: str, args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """The activation files to probe and notes about the ones skipped."""
    from probes.activations import ActivationFile
    from probes.errors import ProbeError
    from rl_lab.errors import LabError
    from rl_lab.runs import RunStore

    path = Path(target)
    if path.suffix in (".h5", ".hdf5"):
        if not path.exists():
            raise LabError(f"no such activation file: {path}")
        ActivationFile(path).close()  # unreadable, foreign or cut files fail here, before any work
        return [path], []
    run = RunStore(runs_dir(args)).get(target)
    files = run.activation_files()
    if not files:
        raise LabError(f"run {run.name!r} has no recordings yet; run `rl-lab record {run.name}` first")
    good, notes = [], []
    for f in files:
        try:
            ActivationFile(f).close()
            good.append(f)
        except ProbeError as exc:
            notes.append(f"skipped {f.name}: {exc}")
    if not good:
        raise LabError(f"run {run.name!r} has no complete recording ({'; '.join(notes)})")
    return good, notes


def run(args: argparse.Namespace) -> int:
    from probes import linear

    files, notes = targets(args.target, args)
    labels = args.labels.split(",") if args.labels else None
    hooks = args.hooks.split(",") if args.hooks else None
    docs = []
    for f in files:
        out_json, weights = output_paths(f)
        print(f"probing {f} ...", file=sys.stderr)
        docs.append(linear.probe_file(f, labels=labels, hooks=hooks, seed=args.seed,
                                      out_json=out_json, weights_path=weights))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        if len(docs) == 1:
            doc = dict(docs[0])
            doc["notes"] = list(doc.get("notes", [])) + notes
        else:
            doc = {
                "schema_version": 1,
                "files": [d.get("file") for d in docs],
                "records": [r for d in docs for r in d.get("records", [])],
                "notes": [n for d in docs for n in d.get("notes", [])] + notes,
            }
        print(json.dumps(doc, indent=2, default=float))
        return 0
    for doc in docs:
        print(linear.format_table(doc))
        print()
        for sentence in linear.summarise(doc):
            print(f"  {sentence}")
        print()
    if len(docs) > 1 and hasattr(linear, "format_timeline"):
        print(linear.format_timeline(docs))
    for f in files:
        print(f"results: {output_paths(f)[0]}")
    return 0
