"""The main probe of the sweep done with scikit-learn, on the same episode folds (nested CV).

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
from probes.splits import outer_folds, unique_episodes


def sklearn_scores(
    path: Path | str,
    *,
    labels: Sequence[str] | None = None,
    hooks: Sequence[str] | None = None,
    seed: int = 0,
    n_folds: int = 5,
) -> dict[tuple[str, str], float]:
    """Out-of-fold score per ``(hook, label)`` of nested CV: for each outer fold (the lab's
    ``outer_folds``, repeat 0), StandardScaler + Ridge / LogisticRegression with the
    regularisation chosen by GridSearchCV over the other outer folds (R^2 for ridge, log-loss for
    logistic, as the lab), refitted on them and scored on the fold; the score pools every
    out-of-fold prediction.

    Parameters
    ----------
    path:
        Activation file.
    labels, hooks:
        Subsets to fit (default: all).
    seed, n_folds:
        As ``probes.linear.probe_file`` (with ``n_repeats=1``): they define the same folds.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import GridSearchCV, PredefinedSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out: dict[tuple[str, str], float] = {}
    with ActivationFile(path) as f:
        folds = outer_folds(unique_episodes(f), n_folds=n_folds, n_repeats=1, seed=seed)
        groups = folds.folds_of(f.episodes())[0]
        for hook in hooks or f.hooks:
            x = f.acts(hook).astype(np.float64)
            for label in labels or f.labels:
                y = f.label(label)
                discrete = f.label_info(label)["kind"] == "discrete"
                pred = np.zeros(len(y), dtype=y.dtype if discrete else np.float64)
                for k in range(folds.n_folds):
                    train, test = groups != k, groups == k
                    cv = PredefinedSplit(groups[train])
                    if discrete:
                        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, tol=1e-8))
                        search = GridSearchCV(model, {"logisticregression__C": list(CS)}, cv=cv, scoring="neg_log_loss")
                    else:
                        model = make_pipeline(StandardScaler(), Ridge())
                        search = GridSearchCV(model, {"ridge__alpha": list(ALPHAS)}, cv=cv, scoring="r2")
                    search.fit(x[train], y[train])
                    pred[test] = search.predict(x[test])
                out[(hook, label)] = float(accuracy_score(y, pred) if discrete else r2_score(y, pred))
    return out
