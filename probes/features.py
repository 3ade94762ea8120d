"""Fast read access to the per-latent statistics of an SAE (``FeatureStore``), without torch.

``probes.sae.features.compute_features`` writes them next to the SAE as ``features.json``
(small index: labels, classes, settings) and ``features.npz`` (arrays, one row per latent), see
``docs/sae.md``. ``FeatureStore`` loads them once; ``latent(i)`` and ``sorted_by(...)`` are then
array look-ups (well under a millisecond). The TUI reads SAEs through it, so this module never
imports torch; the script loads the writer when it runs.

Script: ``python -m probes.features SAE_DIR FILE.h5``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from probes.errors import ProbeError
from probes.layout import SAELayout

SCHEMA_VERSION = 1
"""Version of the ``features.json`` / ``features.npz`` format."""
SORT_KEYS = ("density", "max_activation", "mean_activation", "association", "pearson", "auroc")


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

    def label_scores(self, i: int) -> dict[str, dict[str, Any]]:
        """Association of latent ``i`` with every label."""
        out: dict[str, dict[str, Any]] = {}
        for m in self.index["labels"]:
            if m["kind"] == "continuous":
                out[m["name"]] = {"kind": "continuous", "pearson": _f(self.arrays["pearson"][m["pearson_row"], i])}
            else:
                per = {str(c): _f(self.arrays["auroc"][r, i]) for c, r in zip(m["auroc_classes"], m["auroc_rows"])}
                vals = self.arrays["auroc"][m["auroc_rows"], i]
                best = int(np.nanargmax(vals)) if np.isfinite(vals).any() else 0
                out[m["name"]] = {"kind": "discrete", "auroc": _f(vals[best]),
                                  "class": m["auroc_classes"][best], "per_class": per}
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

    def scores(self, key: str, label: str | None = None) -> np.ndarray:
        """One value per latent: ``density``, ``max_activation``, ``mean_activation``, or with a
        ``label``: ``pearson`` (continuous), ``auroc`` (discrete: best class), ``association``
        (|pearson| or best-class AUROC)."""
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
            r = self.arrays["pearson"][m["pearson_row"]].astype(np.float64)
            return np.abs(r) if key == "association" else r
        if key == "pearson":
            raise ProbeError(f"{label} is discrete: sort by auroc or association")
        vals = self.arrays["auroc"][m["auroc_rows"]].astype(np.float64)
        with np.errstate(all="ignore"):
            return np.where(np.isfinite(vals).any(axis=0), np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=0), np.nan)

    def sorted_by(self, key: str, label: str | None = None, descending: bool = True) -> np.ndarray:
        """Latent indices ordered by ``scores(key, label)``; NaNs (silent latents) go last."""
        s = self.scores(key, label)
        filled = np.where(np.isnan(s), -np.inf if descending else np.inf, s)
        order = np.argsort(-filled if descending else filled, kind="stable")
        return order


def _f(x: Any) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probes.features", description="Per-latent statistics of a trained SAE over an activation file.")
    parser.add_argument("sae_dir", type=Path, help="directory written by probes.sae")
    parser.add_argument("file", type=Path, help="activation file (.h5)")
    parser.add_argument("--top", type=int, default=10, help="top-activating steps kept per latent (default 10)")
    parser.add_argument("--context", type=int, default=2, help="neighbouring steps kept each side (default 2)")
    parser.add_argument("--bins", type=int, default=32, help="histogram bins (default 32)")
    args = parser.parse_args(argv)
    from probes.sae.features import compute_features  # the writer needs torch; the reader does not

    try:
        out = compute_features(args.sae_dir, args.file, n_top=args.top, context=args.context, bins=args.bins)
        store = FeatureStore(out)
    except ProbeError as exc:
        print(f"probes.features: error: {exc}", file=sys.stderr)
        return 2
    alive = int((store.arrays["density"] > 0).sum())
    print(f"features of {store.d_sae} latents ({alive} fire) written to {out}")
    for name in store.labels:
        best = store.sorted_by("association", name)[:3]
        print(f"  {name}: top latents {', '.join(str(int(i)) for i in best)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
