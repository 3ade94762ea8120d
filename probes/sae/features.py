"""Per-latent statistics of a trained SAE over an activation file (``compute_features``).

For every latent: firing density, an activation histogram, the top-activating steps (with the
rendered observation and its neighbours in the episode) and its association with every label
(Pearson r for continuous labels, one-vs-rest AUROC per class for discrete ones).

Associations are computed three times: over all rows (``pearson``, ``auroc``: descriptive), over
the TRAINING episodes (``pearson_train``, ``auroc_train``) and over the HELD-OUT episodes
(``pearson_test``, ``auroc_test``) of ``probes.splits.split_episodes`` (the split every analysis
of the file uses). The best of thousands of latents for a label is a maximum: it is chosen on
the training episodes (``FeatureStore.best_latents``) and its held-out value is the one to report.

Computed in two streaming passes over ``/acts/<hook>``:

1. codes -> firing counts, max activation, Pearson sums, running top-n rows per latent;
2. codes -> histograms over fixed bins (``[0]`` = not firing, then ``bins`` equal bins up to the
   latent's max), overall and per class of every discrete label; AUROCs come from them.

Saved next to the SAE as ``features.json`` (small index: labels, classes, settings) and
``features.npz`` (arrays, one row per latent), see ``docs/sae.md``; read back with the
torch-free ``probes.features.FeatureStore``. Script: ``python -m probes.features SAE_DIR FILE.h5``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from probes.activations import ActivationFile
from probes.errors import ProbeError
from probes.features import SCHEMA_VERSION
from probes.layout import SAELayout
from probes.sae.model import load_sae
from probes.splits import split_episodes

MAX_CLASSES = 32
"""A discrete label's most frequent classes kept for AUROCs (rarer classes count as negatives)."""


def _read_labels(af: ActivationFile) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Label metadata, the centred continuous labels [N, Lc] and discrete class indices [N, Ld]."""
    meta: list[dict[str, Any]] = []
    cont: list[np.ndarray] = []
    disc: list[np.ndarray] = []
    n_auroc = 0
    for name in af.labels:
        info = af.label_info(name)
        values = af.label(name)
        if info["kind"] == "discrete":
            classes, counts = np.unique(values, return_counts=True)
            keep = classes[np.argsort(-counts, kind="stable")[:MAX_CLASSES]]
            keep = np.sort(keep)
            idx = np.full(len(values), -1, dtype=np.int64)
            for j, c in enumerate(keep):
                idx[values == c] = j
            if len(keep) == 2:  # binary: one AUROC, for the larger class value (e.g. 1 = "afraid")
                rows = [n_auroc + 1]
                auroc_classes = [keep[1].item()]
            else:
                rows = list(range(n_auroc, n_auroc + len(keep)))
                auroc_classes = [c.item() for c in keep]
            meta.append({"name": name, "kind": "discrete", "description": info["description"],
                         "classes": [c.item() for c in keep], "auroc_classes": auroc_classes,
                         "auroc_rows": rows, "disc_col": len(disc)})
            n_auroc += len(keep)
            disc.append(idx)
        else:
            v = values.astype(np.float64)
            finite = np.isfinite(v)
            v = np.where(finite, v - (v[finite].mean() if finite.any() else 0.0), 0.0)
            meta.append({"name": name, "kind": "continuous", "description": info["description"],
                         "pearson_row": len(cont)})
            cont.append(v)
    n = af.n
    cont_arr = np.stack(cont, axis=1) if cont else np.zeros((n, 0))
    disc_arr = np.stack(disc, axis=1) if disc else np.zeros((n, 0), dtype=np.int64)
    return meta, cont_arr, disc_arr


def _read_texts(af: ActivationFile, rows: np.ndarray) -> list[str]:
    """Texts of the sorted unique ``rows``, reading only the chunks that hold them."""
    if len(rows) == 0 or not af.has_step("text"):
        return [""] * len(rows)
    out: list[str] = []
    step = max(af.chunk_size("steps", "text"), 4096)
    pos = 0
    for start in range(0, af.n, step):
        stop = min(start + step, af.n)
        end = int(np.searchsorted(rows, stop))
        if end > pos:
            block = af.read("steps", "text", slice(start, stop))
            for r in rows[pos:end]:
                v = block[r - start]
                out.append(v.decode() if isinstance(v, bytes) else str(v))
            pos = end
    return out


@torch.no_grad()
def compute_features(
    sae_dir: Path | str,
    path: Path | str,
    *,
    n_top: int = 10,
    context: int = 2,
    bins: int = 32,
    rows_per_block: int = 8192,
    progress: bool = True,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Path:
    """Compute the statistics of every latent of the SAE in ``sae_dir`` over the file ``path``.

    Parameters
    ----------
    sae_dir:
        A directory written by ``probes.sae.model.save_sae`` (its ``hook_name`` says which acts to read).
    path:
        The activation file (every row is used, training and held-out episodes alike).
    n_top:
        Top-activating steps kept per latent.
    context:
        Neighbouring steps (each side, same episode) whose text is kept with each top step.
    bins:
        Histogram bins over ``(0, max activation]`` (bin 0 counts the rows where it is silent).
    rows_per_block:
        Rows encoded at a time (bounds memory: ``rows_per_block × d_sae`` floats).
    progress:
        tqdm bars on stderr.
    test_fraction, seed:
        The episode split (``probes.splits.split_episodes``) of the train / held-out associations.

    Returns the directory, now holding ``features.json`` and ``features.npz``.
    """
    t0 = time.perf_counter()
    out = Path(sae_dir)
    sae, cfg = load_sae(out)
    hook = cfg.hook_name
    d = cfg.d_sae
    with ActivationFile(path) as af:
        if af.hook_dim(hook) != cfg.d_in:
            raise ProbeError(f"{hook} has {af.hook_dim(hook)} dimensions in {af.path.name}, the SAE {cfg.d_in}")
        n = af.n
        if n == 0:
            raise ProbeError(f"{af.path.name} has no rows")
        episodes = af.episodes()
        t_in_ep = af.steps("t")
        meta, cont, disc = _read_labels(af)
        lc = cont.shape[1]
        n_auroc = sum(len(m["classes"]) for m in meta if m["kind"] == "discrete")
        try:
            split = split_episodes(np.unique(episodes), test_fraction=test_fraction, seed=seed)
            part = (split.groups_of(episodes) == split.test_group).astype(np.int64)  # 0 train, 1 held out
        except ValueError:  # one episode: nothing can be held out
            split, part = None, np.zeros(n, dtype=np.int64)
        n_part = np.bincount(part, minlength=2)

        # ---- pass 1: counts, sums, max, running top-n
        fires = torch.zeros(d, dtype=torch.int64)
        sum_z = torch.zeros(d, dtype=torch.float64)
        sum_z2 = torch.zeros(d, dtype=torch.float64)
        sum_zy = torch.zeros(d, lc, dtype=torch.float64)
        # per part (train / held out): sum z, sum z^2, sum z*y; sums of y and y^2 come from `cont`
        p_z = torch.zeros(2, d, dtype=torch.float64)
        p_z2 = torch.zeros(2, d, dtype=torch.float64)
        p_zy = torch.zeros(2, d, lc, dtype=torch.float64)
        max_z = torch.zeros(d)
        top_vals = torch.zeros(0, d)
        top_rows = torch.zeros(0, d, dtype=torch.int64)
        n_pass = 2 * -(-n // rows_per_block)
        bar = tqdm(total=n_pass, desc="features", file=sys.stderr, disable=not progress, leave=False)
        for sl, block in af.iter_chunks("acts", hook, rows_per_block):
            z = sae.encode(torch.from_numpy(block))  # [n_b, d]
            zd = z.double()
            fires += (z > 0).sum(dim=0)
            sum_z += zd.sum(dim=0)
            sum_z2 += zd.pow(2).sum(dim=0)
            if lc:
                sum_zy += zd.T @ torch.from_numpy(cont[sl])
            for k in (0, 1):
                mk = torch.from_numpy(part[sl] == k)
                zk = zd[mk]
                p_z[k] += zk.sum(dim=0)
                p_z2[k] += zk.pow(2).sum(dim=0)
                if lc:
                    p_zy[k] += zk.T @ torch.from_numpy(cont[sl][part[sl] == k])
            max_z = torch.maximum(max_z, z.max(dim=0).values)
            kk = min(n_top, len(z))
            v, r = z.topk(kk, dim=0)  # [kk, d]
            top_vals = torch.cat([top_vals, v])
            top_rows = torch.cat([top_rows, r + sl.start])
            if len(top_vals) > n_top:
                v, j = top_vals.topk(n_top, dim=0)
                top_vals, top_rows = v, top_rows.gather(0, j)
            bar.update()

        # ---- pass 2: histograms (overall and per class of every discrete label)
        nb = bins + 1
        safe_max = torch.where(max_z > 0, max_z, torch.ones_like(max_z))
        hist = torch.zeros(d * nb, dtype=torch.int64)
        class_hist = torch.zeros(max(n_auroc, 1) * d * nb, dtype=torch.int64)
        part_hist = torch.zeros(2 * d * nb, dtype=torch.int64)
        part_class_hist = torch.zeros(2 * max(n_auroc, 1) * d * nb, dtype=torch.int64)
        n_cells = max(n_auroc, 1) * d * nb
        offsets = [0]
        for m in meta:
            if m["kind"] == "discrete":
                m["class_offset"] = offsets[0]
                offsets[0] += len(m["classes"])
        for sl, block in af.iter_chunks("acts", hook, rows_per_block):
            z = sae.encode(torch.from_numpy(block))
            r, lat = (z > 0).nonzero(as_tuple=True)
            b = (z[r, lat] / safe_max[lat] * bins).ceil().long().clamp(1, bins)
            cell = lat * nb + b
            hist += torch.bincount(cell, minlength=d * nb)
            row_part = torch.from_numpy(part[sl])[r]
            part_hist += torch.bincount(row_part * (d * nb) + cell, minlength=2 * d * nb)
            for m in meta:
                if m["kind"] != "discrete":
                    continue
                cls = torch.from_numpy(disc[sl, m["disc_col"]])[r]
                ok = cls >= 0
                flat = (cls[ok] + m["class_offset"]) * (d * nb) + cell[ok]
                class_hist += torch.bincount(flat, minlength=class_hist.numel())
                part_class_hist += torch.bincount(row_part[ok] * n_cells + flat, minlength=part_class_hist.numel())
            bar.update()
        bar.close()

        hist = hist.view(d, nb)
        hist[:, 0] = n - hist[:, 1:].sum(dim=1)
        class_hist = class_hist.view(-1, d, nb)[:n_auroc]
        aurocs = np.full((n_auroc, d), np.nan, dtype=np.float32)
        for m in meta:
            if m["kind"] != "discrete":
                continue
            for j in range(len(m["classes"])):
                c = m["class_offset"] + j
                n_pos = int((disc[:, m["disc_col"]] == j).sum())
                class_hist[c, :, 0] = n_pos - class_hist[c, :, 1:].sum(dim=1)
                aurocs[c] = _auroc_from_hist(class_hist[c].numpy(), hist.numpy())
        # the same per part (train / held out)
        part_hist = part_hist.view(2, d, nb)
        part_class_hist = part_class_hist.view(2, -1, d, nb)[:, :n_auroc]
        part_aurocs = np.full((2, n_auroc, d), np.nan, dtype=np.float32)
        for k in (0, 1):
            part_hist[k, :, 0] = int(n_part[k]) - part_hist[k, :, 1:].sum(dim=1)
            for m in meta:
                if m["kind"] != "discrete":
                    continue
                for j in range(len(m["classes"])):
                    c = m["class_offset"] + j
                    n_pos = int(((disc[:, m["disc_col"]] == j) & (part == k)).sum())
                    part_class_hist[k, c, :, 0] = n_pos - part_class_hist[k, c, :, 1:].sum(dim=1)
                    part_aurocs[k, c] = _auroc_from_hist(part_class_hist[k, c].numpy(), part_hist[k].numpy())

        # ---- Pearson r per continuous label
        nf = float(n)
        var_z = (sum_z2 - sum_z.pow(2) / nf).numpy()
        var_y = (cont**2).sum(axis=0) if lc else np.zeros(0)
        cov = sum_zy.numpy()  # labels are centred, so sum z*y_c is n * cov
        with np.errstate(invalid="ignore", divide="ignore"):
            pearson = (cov / np.sqrt(np.outer(var_z, var_y))).T.astype(np.float32)  # [Lc, d]
        pearson[~np.isfinite(pearson)] = np.nan
        part_pearson = np.full((2, lc, d), np.nan, dtype=np.float32)
        for k in (0, 1):
            nk = float(n_part[k])
            if nk < 2 or not lc:
                continue
            yk = cont[part == k]
            sy, syy = yk.sum(axis=0), (yk**2).sum(axis=0)
            vz = (p_z2[k] - p_z[k].pow(2) / nk).numpy()
            vy = syy - sy**2 / nk
            cv = p_zy[k].numpy() - np.outer(p_z[k].numpy(), sy) / nk
            with np.errstate(invalid="ignore", divide="ignore"):
                r_k = (cv / np.sqrt(np.outer(vz, vy))).T
            part_pearson[k] = np.where(np.isfinite(r_k), r_k, np.nan)

        # ---- texts of top steps and their neighbours (same episode only)
        tv, tr = top_vals.T.contiguous().numpy(), top_rows.T.contiguous().numpy()  # [d, n_top]
        tr = np.where(tv > 0, tr, -1)
        tv = np.where(tv > 0, tv, 0.0).astype(np.float32)
        if tr.shape[1] < n_top:
            pad = n_top - tr.shape[1]
            tr = np.pad(tr, ((0, 0), (0, pad)), constant_values=-1)
            tv = np.pad(tv, ((0, 0), (0, pad)))
        valid = tr >= 0
        base = tr[valid]
        need = [base]
        for o in range(-context, context + 1):
            nb_rows = base + o
            ok = (nb_rows >= 0) & (nb_rows < n)
            ok[ok] &= episodes[nb_rows[ok]] == episodes[base[ok]]
            need.append(nb_rows[ok])
        text_rows = np.unique(np.concatenate(need)) if base.size else np.zeros(0, dtype=np.int64)
        texts = _read_texts(af, text_rows)
        encoded = [t.encode("utf-8") for t in texts]
        text_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        text_offsets[1:] = np.cumsum([len(e) for e in encoded])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        top_ep = np.where(valid, episodes[np.maximum(tr, 0)], -1)
        top_t = np.where(valid, t_in_ep[np.maximum(tr, 0)], -1)
        file_path = str(af.path.resolve())

    density = (fires.double() / n).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_act = np.where(fires.numpy() > 0, sum_z.numpy() / np.maximum(fires.numpy(), 1), 0.0)
    arrays = {
        "density": density.astype(np.float32),
        "max_activation": max_z.numpy().astype(np.float32),
        "mean_activation": mean_act.astype(np.float32),
        "hist": hist.numpy(),
        "top_rows": tr.astype(np.int64),
        "top_acts": tv,
        "top_episode": top_ep.astype(np.int64),
        "top_t": top_t.astype(np.int64),
        "pearson": pearson if lc else np.zeros((0, d), dtype=np.float32),
        "auroc": aurocs,
        "pearson_train": part_pearson[0],
        "pearson_test": part_pearson[1],
        "auroc_train": part_aurocs[0],
        "auroc_test": part_aurocs[1],
        "text_rows": text_rows.astype(np.int64),
        "text_offsets": text_offsets,
        "text_blob": blob,
        "episodes_of_text_rows": episodes[text_rows].astype(np.int64) if len(text_rows) else np.zeros(0, dtype=np.int64),
    }
    for m in meta:
        m.pop("disc_col", None)
        m.pop("class_offset", None)
    index = {
        "schema_version": SCHEMA_VERSION,
        "file": file_path,
        "hook_name": hook,
        "d_sae": d,
        "n_rows": n,
        "bins": bins,
        "n_top": n_top,
        "context": context,
        "labels": meta,
        "split": {
            "test_fraction": test_fraction, "seed": seed,
            "n_train_rows": int(n_part[0]), "n_test_rows": int(n_part[1]),
            "n_train_episodes": int(len(split.train_episodes)) if split is not None else int(len(np.unique(episodes))),
            "n_test_episodes": int(len(split.test_episodes)) if split is not None else 0,
            "test_episodes": [int(e) for e in split.test_episodes] if split is not None else [],
        },
        "seconds": time.perf_counter() - t0,
    }
    layout = SAELayout(out)
    tmp = layout.features_npz_path.with_name(layout.features_npz_path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, layout.features_npz_path)
    tmp_json = layout.features_path.with_name(layout.features_path.name + ".tmp")
    tmp_json.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp_json, layout.features_path)
    return out


def _auroc_from_hist(pos: np.ndarray, total: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC of every latent from binned activations.

    ``pos`` and ``total`` are ``[d, bins+1]`` counts (positives; all rows). A positive beats a
    negative in a lower bin, ties within a bin count one half (exact for "fires vs silent").
    """
    pos = pos.astype(np.float64)
    neg = total.astype(np.float64) - pos
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wins / (n_pos * n_neg)).astype(np.float32)
