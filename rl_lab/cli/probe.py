"""``rl-lab probe``: linear probes for every hook x label of a run's recordings (or one file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from probes.layout import probe_output_paths
from rl_lab.cli.options import add_runs_dir, positive_int, runs_dir, seed

HELP = "fit linear probes (hook x label, split by episode) beside their baselines; writes RUN/probes/<file>.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_OR_FILE", help="a run (all its recordings) or one activation .h5 file")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--labels", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--hooks", default=None, help="comma-separated hook names (default: all)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the episode split and bootstrap (default: 0)")
    parser.add_argument("--folds", type=positive_int, default=5,
                        help="outer folds of the nested cross-validation, by episode (default: 5; at least 2)")
    parser.add_argument("--repeats", type=positive_int, default=1, help="repeats of the outer partition (default: 1)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes fitting feature sources side by side (default: one per core on large files)")
    parser.add_argument("--replay", metavar="RUN2", default=None,
                        help="probe the run's recordings on RUN2's episodes (`rl-lab record RUN --replay RUN2`) "
                             "instead of its own; results go to RUN/probes/replay/RUN2/")
    add_runs_dir(parser)


def targets(target: str, args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """The activation files to probe and notes about the ones skipped."""
    from probes.activations import ActivationFile
    from probes.errors import ProbeError
    from rl_lab.errors import LabError
    from rl_lab.runs import RunStore

    path = Path(target)
    replay = args.replay
    if path.suffix in (".h5", ".hdf5"):
        if replay is not None:
            raise LabError("--replay names a run's replayed recordings; give the run, not a file")
        if not path.exists():
            raise LabError(f"no such activation file: {path}")
        ActivationFile(path).close()  # unreadable, foreign or cut files fail here, before any work
        return [path], []
    run = RunStore(runs_dir(args)).get(target)
    files = run.activation_files(replay)
    if not files and replay is not None:
        raise LabError(f"run {run.name!r} has no recording on the episodes of run {replay!r}; run "
                       f"`rl-lab record {run.name} --replay {replay}` first")
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


def _names(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated list of names (None: all); an empty list is refused."""
    from rl_lab.errors import LabError

    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise LabError(f"{flag} names nothing; leave it out to use all")
    return names


def _check_names(files: list[Path], labels: list[str] | None, hooks: list[str] | None) -> None:
    """Refuse labels or hooks a file lacks, before any work starts."""
    from probes.activations import ActivationFile
    from rl_lab.errors import LabError

    for f in files:
        with ActivationFile(f, allow_incomplete=True) as af:
            for wanted, have, what in ((labels, af.labels, "label"), (hooks, af.hooks, "hook")):
                missing = [n for n in wanted or [] if n not in have]
                if missing:
                    shown = ", ".join(sorted(have))
                    shown = shown if len(shown) <= 200 else shown[:197] + "..."
                    raise LabError(f"{f.name} has no {what} {missing[0]!r} (available: {shown})")


def run(args: argparse.Namespace) -> int:
    from probes import linear
    from probes.results import SCHEMA_VERSION, ProbeResults

    files, notes = targets(args.target, args)
    labels = _names(args.labels, "--labels")
    hooks = _names(args.hooks, "--hooks")
    _check_names(files, labels, hooks)
    docs = []
    for f in files:
        out_json, weights = probe_output_paths(f)
        print(f"probing {f} ...", file=sys.stderr)
        docs.append(linear.probe_file(f, labels=labels, hooks=hooks, seed=args.seed, n_folds=args.folds,
                                      n_repeats=args.repeats, workers=args.workers, out_json=out_json,
                                      weights_path=weights, progress=linear.stderr_progress))
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
