"""The main probe of the sweep done with scikit-learn, on the same episode split and folds.

Used by the tests (scores must agree with ``probes.linear`` to 1e-3) and by
``benchmarks/probe_sweep.py`` (speed). It lives beside the tests, not in ``probes``, because
scikit-learn is a test extra; it is imported here lazily. Loads whole datasets into memory:
for checking, not for production use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from probes.activations import ActivationFile
from probes.logistic import CS
from probes.ridge import ALPHAS
from probes.splits import split_episodes, unique_episodes


def sklearn_scores(
    path: Path | str,
    *,
    labels: Sequence[str] | None = None,
    hooks: Sequence[str] | None = None,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> dict[tuple[str, str], float]:
    """Held-out score per ``(hook, label)``: StandardScaler + Ridge / LogisticRegression with
    the regularisation chosen by GridSearchCV over the lab's episode folds (R^2 for ridge,
    log-loss for logistic, as the lab).

    Parameters
    ----------
    path:
        Activation file.
    labels, hooks:
        Subsets to fit (default: all).
    seed, test_fraction:
        As ``probes.linear.probe_file``: they define the same split and folds.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import GridSearchCV, PredefinedSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out: dict[tuple[str, str], float] = {}
    with ActivationFile(path) as f:
        split = split_episodes(unique_episodes(f), test_fraction=test_fraction, seed=seed)
        groups = split.groups_of(f.episodes())
        train, test = groups < split.n_folds, groups == split.test_group
        cv = PredefinedSplit(groups[train])
        for hook in hooks or f.hooks:
            x = f.acts(hook).astype(np.float64)
            for label in labels or f.labels:
                y = f.label(label)
                if f.label_info(label)["kind"] == "discrete":
                    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, tol=1e-8))
                    grid = {"logisticregression__C": list(CS)}
                    search = GridSearchCV(model, grid, cv=cv, scoring="neg_log_loss")
                    search.fit(x[train], y[train])
                    out[(hook, label)] = float(accuracy_score(y[test], search.predict(x[test])))
                else:
                    model = make_pipeline(StandardScaler(), Ridge())
                    search = GridSearchCV(model, {"ridge__alpha": list(ALPHAS)}, cv=cv, scoring="r2")
                    search.fit(x[train], y[train])
                    out[(hook, label)] = float(r2_score(y[test], search.predict(x[test])))
    return out
