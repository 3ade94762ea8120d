"""``rl-lab probe``: linear probes for every hook x label of a run's recordings (or one file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from probes.layout import probe_output_paths
from rl_lab.cli.options import add_runs_dir, runs_dir

HELP = "fit linear probes (hook x label, split by episode) beside their baselines; writes RUN/probes/<file>.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_OR_FILE", help="a run (all its recordings) or one activation .h5 file")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--labels", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--hooks", default=None, help="comma-separated hook names (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode split and bootstrap (default: 0)")
    add_runs_dir(parser)


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
    from probes.results import SCHEMA_VERSION, ProbeResults

    files, notes = targets(args.target, args)
    labels = args.labels.split(",") if args.labels else None
    hooks = args.hooks.split(",") if args.hooks else None
    docs = []
    for f in files:
        out_json, weights = probe_output_paths(f)
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
            results = [ProbeResults.from_dict(d) for d in docs]
            doc = {
                "schema_version": SCHEMA_VERSION,
                "files": [r.file for r in results],
                "records": [rec.to_dict() for r in results for rec in r.records],
                "notes": [n for r in results for n in r.notes] + notes,
            }
        print(json.dumps(doc, indent=2, default=float))
        return 0
    for doc in docs:
        print(linear.format_table(doc))
        print()
        for sentence in linear.summarise(doc):
            print(f"  {sentence}")
        print()
    if len(docs) > 1:
        print(linear.format_timeline(docs))
    for f in files:
        print(f"results: {probe_output_paths(f)[0]}")
    return 0
