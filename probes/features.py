"""Fast read access to the per-latent statistics of an SAE (``FeatureStore``), without torch.

``probes.sae.features.compute_features`` writes them next to the SAE as ``features.json``
(small index: labels, classes, settings) and ``features.npz`` (arrays, one row per latent), see
``docs/sae.md``. ``FeatureStore`` loads them once; ``latent(i)`` and ``sorted_by(...)`` are then
array look-ups (well under a millisecond). The TUI reads SAEs through it, so this module never
imports torch; the script loads the writer when it runs.

Label associations exist over all rows (``pearson``, ``auroc``) and, in files written since the
held-out split was added, over the training and the held-out episodes (``*_train``, ``*_test``;
``index["split"]`` says which). The best latents for a label are chosen on the training
episodes and reported on the held-out ones (``best_latents``); a maximum over thousands of
latents on the rows it was chosen on is not a finding.

Script: ``python -m probes.features SAE_DIR FILE.h5`` computes them; ``python -m probes.features SAE_DIR
--show I --best LABEL`` describes latents from them (``describe``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from probes.errors import ProbeError
from probes.layout import SAELayout
from probes.scripts import ScriptParser

SCHEMA_VERSION = 1
"""Version of the ``features.json`` / ``features.npz`` format."""
SORT_KEYS = ("density", "max_activation", "mean_activation", "association", "pearson", "auroc")
SPLITS = ("all", "train", "test")
"""Rows a label association is computed on: every row, the training or the held-out episodes."""


class FeatureStore:
    """Read access to ``features.json`` + ``features.npz``: one latent at a time, or sorted.

    Parameters
    ----------
    sae_dir:
        The SAE directory holding the two files.
    """

    def __init__(self, sae_dir: Path | str) -> None:
        self.dir = Path(sae_dir)
        layout = SAELayout(self.dir)
        jpath, npath = layout.features_path, layout.features_npz_path
        if not layout.has_features():
            raise ProbeError(f"{self.dir} has no feature statistics (run python -m probes.features {self.dir} FILE.h5)")
        self.index: dict[str, Any] = json.loads(jpath.read_text())
        with np.load(npath) as data:
            self.arrays = {k: data[k] for k in data.files}
        self.labels = {m["name"]: m for m in self.index["labels"]}
        self.d_sae = int(self.index["d_sae"])
        self._text_rows = self.arrays["text_rows"]
        self._blob = self.arrays["text_blob"].tobytes()

    def __len__(self) -> int:
        return self.d_sae

    def text(self, row: int) -> str:
        """Stored text of ``row`` ("" if the file had none or the row was not needed)."""
        i = int(np.searchsorted(self._text_rows, row))
        if i >= len(self._text_rows) or self._text_rows[i] != row:
            return ""
        off = self.arrays["text_offsets"]
        return self._blob[off[i] : off[i + 1]].decode("utf-8")

    def _context(self, row: int) -> list[dict[str, Any]]:
        ctx = int(self.index["context"])
        i = int(np.searchsorted(self._text_rows, row))
        if i >= len(self._text_rows) or self._text_rows[i] != row:
            return []
        eps = self.arrays["episodes_of_text_rows"]
        out = []
        for o in range(-ctx, ctx + 1):
            j = int(np.searchsorted(self._text_rows, row + o))
            if j < len(self._text_rows) and self._text_rows[j] == row + o and eps[j] == eps[i]:
                out.append({"offset": o, "row": row + o, "text": self.text(row + o)})
        return out

    @property
    def has_heldout(self) -> bool:
        """Whether the file has associations on training and held-out episodes."""
        return "pearson_test" in self.arrays and "auroc_test" in self.arrays

    def _array(self, kind: str, split: str) -> np.ndarray:
        """``pearson`` or ``auroc`` over ``split`` rows."""
        if split not in SPLITS:
            raise ProbeError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        if split == "all":
            return self.arrays[kind]
        if not self.has_heldout:
            raise ProbeError(f"{self.dir} has no held-out associations (recompute: python -m probes.features {self.dir} FILE.h5)")
        return self.arrays[f"{kind}_{split}"]

    def label_scores(self, i: int) -> dict[str, dict[str, Any]]:
        """Association of latent ``i`` with every label (all rows; with ``pearson_train`` /
        ``pearson_test`` or ``auroc_train`` / ``auroc_test`` of the same class when the file has them)."""
        out: dict[str, dict[str, Any]] = {}
        for m in self.index["labels"]:
            if m["kind"] == "continuous":
                entry: dict[str, Any] = {"kind": "continuous", "pearson": _f(self.arrays["pearson"][m["pearson_row"], i])}
                if self.has_heldout:
                    entry["pearson_train"] = _f(self.arrays["pearson_train"][m["pearson_row"], i])
                    entry["pearson_test"] = _f(self.arrays["pearson_test"][m["pearson_row"], i])
            else:
                per = {str(c): _f(self.arrays["auroc"][r, i]) for c, r in zip(m["auroc_classes"], m["auroc_rows"])}
                vals = self.arrays["auroc"][m["auroc_rows"], i]
                best = int(np.nanargmax(vals)) if np.isfinite(vals).any() else 0
                entry = {"kind": "discrete", "auroc": _f(vals[best]), "class": m["auroc_classes"][best], "per_class": per}
                if self.has_heldout:
                    # the class is chosen on the training episodes, its AUROC reported on held-out ones
                    tr = self.arrays["auroc_train"][m["auroc_rows"], i]
                    k = int(np.nanargmax(tr)) if np.isfinite(tr).any() else 0
                    entry["class_train"] = m["auroc_classes"][k]
                    entry["auroc_train"] = _f(tr[k])
                    entry["auroc_test"] = _f(self.arrays["auroc_test"][m["auroc_rows"][k], i])
            out[m["name"]] = entry
        return out

    def best_latents(self, label: str, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` latents most associated with ``label`` on the TRAINING episodes, each with
        its association on the held-out episodes (the number to report).

        Returns dicts ``{"latent", "train", "test", "class"}``: |Pearson r| ordering for a
        continuous label (signed r reported), best-class AUROC for a discrete one (the class is
        the one chosen on training episodes).
        """
        if label not in self.labels:
            raise ProbeError(f"no label {label!r} (have: {', '.join(self.labels) or 'none'})")
        order = self.sorted_by("association", label, split="train")[:k]
        m = self.labels[label]
        out = []
        for i in order:
            i = int(i)
            if m["kind"] == "continuous":
                row = m["pearson_row"]
                out.append({"latent": i, "train": _f(self.arrays["pearson_train"][row, i]),
                            "test": _f(self.arrays["pearson_test"][row, i]), "class": None})
            else:
                scores = self.label_scores(i)[label]
                out.append({"latent": i, "train": scores["auroc_train"], "test": scores["auroc_test"],
                            "class": scores["class_train"]})
        return out

    def latent(self, i: int) -> dict[str, Any]:
        """Everything about latent ``i``: density, histogram, top steps with texts, label scores."""
        if not 0 <= i < self.d_sae:
            raise ProbeError(f"latent {i} out of range (the SAE has {self.d_sae})")
        a = self.arrays
        bins = int(self.index["bins"])
        mx = float(a["max_activation"][i])
        top = []
        for j in range(a["top_rows"].shape[1]):
            row = int(a["top_rows"][i, j])
            if row < 0:
                break
            top.append({"row": row, "episode": int(a["top_episode"][i, j]), "t": int(a["top_t"][i, j]),
                        "activation": float(a["top_acts"][i, j]), "text": self.text(row),
                        "context": self._context(row)})
        return {
            "index": i,
            "density": float(a["density"][i]),
            "max_activation": mx,
            "mean_activation": float(a["mean_activation"][i]),
            "histogram": {"edges": [mx * b / bins for b in range(bins + 1)], "zero": int(a["hist"][i, 0]),
                          "counts": a["hist"][i, 1:].tolist()},
            "top": top,
            "labels": self.label_scores(i),
        }

    def scores(self, key: str, label: str | None = None, split: str = "all") -> np.ndarray:
        """One value per latent: ``density``, ``max_activation``, ``mean_activation``, or with a
        ``label``: ``pearson`` (continuous), ``auroc`` (discrete: best class), ``association``
        (|pearson| or best-class AUROC), over ``split`` rows (``all``, ``train``, ``test``)."""
        if key not in SORT_KEYS:
            raise ProbeError(f"unknown sort key {key!r} (choose from {', '.join(SORT_KEYS)})")
        if key in ("density", "max_activation", "mean_activation"):
            return self.arrays[key].astype(np.float64)
        if label is None or label not in self.labels:
            raise ProbeError(f"sorting by {key} needs a label (one of {', '.join(self.labels) or 'none'})")
        m = self.labels[label]
        if m["kind"] == "continuous":
            if key == "auroc":
                raise ProbeError(f"{label} is continuous: sort by pearson or association")
            r = self._array("pearson", split)[m["pearson_row"]].astype(np.float64)
            return np.abs(r) if key == "association" else r
        if key == "pearson":
            raise ProbeError(f"{label} is discrete: sort by auroc or association")
        vals = self._array("auroc", split)[m["auroc_rows"]].astype(np.float64)
        with np.errstate(all="ignore"):
            return np.where(np.isfinite(vals).any(axis=0), np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=0), np.nan)

    def sorted_by(
        self, key: str, label: str | None = None, descending: bool = True, split: str = "all"
    ) -> np.ndarray:
        """Latent indices ordered by ``scores(key, label, split)``; NaNs (silent latents) go last."""
        s = self.scores(key, label, split)
        filled = np.where(np.isnan(s), -np.inf if descending else np.inf, s)
        order = np.argsort(-filled if descending else filled, kind="stable")
        return order


def label_score_text(name: str, score: dict[str, Any]) -> str:
    """``fear r +0.53`` or ``threat AUROC 0.91 (1)`` for one entry of ``FeatureStore.label_scores``."""
    if score.get("kind") == "continuous":
        r = score.get("pearson")
        return f"{name} r " + ("—" if r is None else f"{r:+.2f}")
    auc = score.get("auroc")
    return f"{name} AUROC " + ("—" if auc is None else f"{auc:.2f}") + f" ({score.get('class')})"


def score_strength(score: dict[str, Any]) -> float:
    """How strongly a label score departs from chance: |r|, or |AUROC - 0.5| * 2."""
    if score.get("kind") == "continuous":
        return abs(score.get("pearson") or 0.0)
    auc = score.get("auroc")
    return 0.0 if auc is None else abs(auc - 0.5) * 2


def heldout_score(score: dict[str, Any]) -> dict[str, Any]:
    """The held-out version of a label score (``pearson_test`` / ``auroc_test``, with the class
    chosen on the training episodes) when there is one, else ``score`` itself."""
    if score.get("kind") == "continuous" and "pearson_test" in score:
        return {"kind": "continuous", "pearson": score.get("pearson_test")}
    if score.get("kind") == "discrete" and "auroc_test" in score:
        return {"kind": "discrete", "auroc": score.get("auroc_test"), "class": score.get("class_train")}
    return score


def _f(x: Any) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


def describe(store: FeatureStore, i: int, top: int = 3, labels: int = 4) -> str:
    """A text description of latent ``i``: how often and how strongly it fires, the labels it
    tracks on held-out episodes (or all rows, for older files), and its ``top`` top-activating
    steps (one per episode first) with their stored renders and the neighbouring steps' renders."""
    d = store.latent(i)
    lines = [f"latent {i}: fires on {d['density']:.1%} of steps, max {d['max_activation']:.3g}, "
             f"mean {d['mean_activation']:.3g}"]
    scored = []
    for name, e in d["labels"].items():
        h = heldout_score(e)  # all rows in files without the held-out split
        v = h.get("pearson") if h["kind"] == "continuous" else h.get("auroc")
        if v is None:
            continue
        what = f"r {v:+.2f}" if h["kind"] == "continuous" else f"AUROC {v:.2f} for {h.get('class')}"
        scored.append((score_strength(h), f"{name} ({what})"))
    scored.sort(key=lambda x: -x[0])
    where = "held-out episodes" if store.has_heldout else "all rows"
    lines.append(f"  tracks ({where}): " + (", ".join(t for _, t in scored[:labels]) or "no label"))
    # one step per episode first: ten top steps from one stuck episode say less than three episodes
    seen: set[int] = set()
    first = [st for st in d["top"] if not (st["episode"] in seen or seen.add(st["episode"]))]
    steps = (first + [st for st in d["top"] if st not in first])[:top]
    for rank, step in enumerate(steps, 1):
        lines.append(f"  top step {rank}: activation {step['activation']:.3g}, episode {step['episode']}, t {step['t']}")
        ctx = step["context"] or [{"offset": 0, "text": step["text"]}]
        for c in ctx:
            if not c["text"]:
                continue
            mark = "this step" if c["offset"] == 0 else f"step {c['offset']:+d}"
            lines.append(f"    [{mark}]")
            lines.extend("      " + ln for ln in c["text"].splitlines())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ScriptParser(prog="python -m probes.features",
                          description="Per-latent statistics of a trained SAE over an activation file; "
                                      "with --show/--best, describe latents from them.")
    parser.add_argument("sae_dir", type=Path, help="directory written by probes.sae")
    parser.add_argument("file", type=Path, nargs="?",
                        help="activation file (.h5); optional with --show/--best when the statistics exist")
    parser.add_argument("--top", type=int, default=10, help="top-activating steps kept per latent (default 10)")
    parser.add_argument("--context", type=int, default=2, help="neighbouring steps kept each side (default 2)")
    parser.add_argument("--bins", type=int, default=32, help="histogram bins (default 32)")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="fraction of episodes held out (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode split (default 0)")
    parser.add_argument("--show", type=int, action="append", default=[], metavar="LATENT",
                        help="describe this latent: density, held-out label associations, top steps as "
                             "rendered (repeatable)")
    parser.add_argument("--best", action="append", default=[], metavar="LABEL",
                        help="describe the latent most associated with LABEL, chosen on the training "
                             "episodes (repeatable)")
    parser.add_argument("--show-top", type=int, default=3, help="top steps printed per described latent (default 3)")
    args = parser.parse_args(argv)
    if not 0.0 < args.test_fraction < 1.0:
        print("probes.features: error: --test-fraction must be in (0, 1)", file=sys.stderr)
        return 2
    if args.show_top < 1:
        print("probes.features: error: --show-top must be at least 1", file=sys.stderr)
        return 2
    describing = bool(args.show or args.best)
    if args.file is None:
        if not describing:
            print("probes.features: error: an activation file is needed to compute the statistics", file=sys.stderr)
            return 2
        try:
            store = FeatureStore(args.sae_dir)
        except ProbeError as exc:
            print(f"probes.features: error: {exc}", file=sys.stderr)
            return 2
    else:
        from probes.sae.features import (
            compute_features,  # the writer needs torch; the reader does not
        )

        try:
            out = compute_features(args.sae_dir, args.file, n_top=args.top, context=args.context, bins=args.bins,
                                   test_fraction=args.test_fraction, seed=args.seed)
            store = FeatureStore(out)
        except ProbeError as exc:
            print(f"probes.features: error: {exc}", file=sys.stderr)
            return 2
        _summary(store, out)
    try:
        chosen = [(i, "") for i in args.show]
        for label in args.best:
            b = store.best_latents(label, 1)[0]
            chosen.append((b["latent"], f"the latent most associated with {label} on training episodes"))
        texts = [(describe(store, i, top=args.show_top), why) for i, why in chosen]
    except ProbeError as exc:
        print(f"probes.features: error: {exc}", file=sys.stderr)
        return 2
    for text, why in texts:
        print()
        if why:
            print(f"# {why}")
        print(text)
    return 0


def _summary(store: FeatureStore, out: Path) -> None:
    alive = int((store.arrays["density"] > 0).sum())
    print(f"features of {store.d_sae} latents ({alive} fire) written to {out}")
    if store.has_heldout:
        sp = store.index["split"]
        print(f"best latents per label, chosen on {sp['n_train_episodes']} training episodes; "
              f"value on {sp['n_test_episodes']} held-out episodes (train value in brackets)")
        for name, m in store.labels.items():
            what = "r" if m["kind"] == "continuous" else "AUROC"
            parts = [f"{b['latent']}: {what} {_fmt(b['test'])} ({_fmt(b['train'])})" for b in store.best_latents(name, 3)]
            print(f"  {name}: " + ", ".join(parts))
    else:
        for name in store.labels:
            best = store.sorted_by("association", name)[:3]
            print(f"  {name}: top latents {', '.join(str(int(i)) for i in best)}")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


if __name__ == "__main__":
    sys.exit(main())
