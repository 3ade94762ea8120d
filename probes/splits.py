"""Episode-level train/test splits, grouped cross-validation folds and episode bootstraps.

Two kinds of split live here and nowhere else:

- ``outer_folds``: the probe sweep's repeated K-fold partition of the episodes (every episode
  is tested exactly once per repeat; the inner folds of outer fold k are the other outer folds);
- ``split_episodes``: one held-out test set plus CV folds over the rest (CCS and SAEs).

Steps inside one episode are strongly correlated, so every split in the lab is a split of
*episodes*: a random split of timesteps would put near-duplicate neighbouring steps on both
sides and report memorisation as decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probes.activations import ActivationFile

MAX_FOLDS = 5


@dataclass(frozen=True)
class EpisodeSplit:
    """Which episode is held out for testing and which CV fold each training episode is in.

    Attributes
    ----------
    episodes:
        Sorted unique episode ids of the file.
    group:
        For each entry of ``episodes``: its CV fold ``0..n_folds-1`` if it is a training
        episode, ``n_folds`` if it is a test episode.
    n_folds:
        Number of cross-validation folds over the training episodes (1 means: too few
        training episodes for CV; regularisation then falls back to a default).
    """

    episodes: np.ndarray
    group: np.ndarray
    n_folds: int

    @property
    def test_group(self) -> int:
        """The group id of the held-out test episodes."""
        return self.n_folds

    @property
    def train_episodes(self) -> np.ndarray:
        return self.episodes[self.group < self.n_folds]

    @property
    def test_episodes(self) -> np.ndarray:
        return self.episodes[self.group == self.n_folds]

    def groups_of(self, episode_ids: np.ndarray) -> np.ndarray:
        """Group id (fold or test) of each row, given the rows' episode ids."""
        idx = np.searchsorted(self.episodes, episode_ids)
        idx = np.clip(idx, 0, len(self.episodes) - 1)
        if not np.array_equal(self.episodes[idx], episode_ids):
            raise ValueError("episode id not in the split")
        return self.group[idx]

    def test_index_of(self, episode_ids: np.ndarray) -> np.ndarray:
        """Position of each (test) row's episode among ``test_episodes`` (for bootstraps)."""
        return np.searchsorted(self.test_episodes, episode_ids)


def unique_episodes(f: ActivationFile) -> np.ndarray:
    """Sorted unique episode ids, read in chunks (memory: one int per episode)."""
    seen: np.ndarray = np.zeros(0, dtype=np.int64)
    for _, block in f.iter_chunks("steps", "episode", rows_per_chunk=65536):
        seen = np.union1d(seen, np.unique(block))
    return seen.astype(np.int64)


def split_episodes(
    episodes: np.ndarray, *, test_fraction: float = 0.25, seed: int = 0, max_folds: int = MAX_FOLDS
) -> EpisodeSplit:
    """Split episodes into training (assigned to CV folds) and held-out test episodes.

    Parameters
    ----------
    episodes:
        Unique episode ids (any order; they are sorted).
    test_fraction:
        Fraction of episodes held out for testing (at least one, and at least one is kept
        for training).
    seed:
        Seed of the permutation; the same seed gives the same split.
    max_folds:
        Upper bound on the number of CV folds (fewer when there are fewer training episodes).

    Raises
    ------
    ValueError
        Fewer than two episodes: nothing can be held out.
    """
    eps = np.unique(np.asarray(episodes, dtype=np.int64))
    if len(eps) < 2:
        raise ValueError(f"{len(eps)} episode(s): at least 2 are needed to hold episodes out")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(eps))
    n_test = int(np.clip(round(test_fraction * len(eps)), 1, len(eps) - 1))
    n_train = len(eps) - n_test
    n_folds = int(min(max_folds, n_train))
    group = np.empty(len(eps), dtype=np.int64)
    group[order[:n_test]] = n_folds
    group[order[n_test:]] = np.arange(n_train) % n_folds
    return EpisodeSplit(episodes=eps, group=group, n_folds=n_folds)


@dataclass(frozen=True)
class OuterFolds:
    """A repeated K-fold partition of the episodes for nested cross-validation.

    Attributes
    ----------
    episodes:
        Sorted unique episode ids of the file.
    fold:
        ``[n_repeats, n_episodes]``: the outer fold ``0..n_folds-1`` of each episode in each
        repeat. In repeat r, outer fold k is scored by a probe trained on the other folds, whose
        regularisation is chosen by leave-one-fold-out CV over those other folds (the inner folds).
    n_folds:
        Number of outer folds K (at most the number of episodes).
    """

    episodes: np.ndarray
    fold: np.ndarray
    n_folds: int

    @property
    def n_repeats(self) -> int:
        return int(self.fold.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(len(self.episodes))

    @property
    def nested(self) -> bool:
        """Whether the inner CV has at least two folds (else regularisation takes its default)."""
        return self.n_folds >= 3

    def index_of(self, episode_ids: np.ndarray) -> np.ndarray:
        """Position of each row's episode among ``episodes`` (for per-episode sums and bootstraps)."""
        episode_ids = np.asarray(episode_ids)
        idx = np.clip(np.searchsorted(self.episodes, episode_ids), 0, len(self.episodes) - 1)
        if not np.array_equal(self.episodes[idx], episode_ids):
            raise ValueError("episode id not in the folds")
        return idx

    def folds_of(self, episode_ids: np.ndarray) -> np.ndarray:
        """``[n_repeats, n_rows]``: the outer fold of each row in each repeat."""
        return self.fold[:, self.index_of(episode_ids)]


def outer_folds(episodes: np.ndarray, *, n_folds: int = MAX_FOLDS, n_repeats: int = 1, seed: int = 0) -> OuterFolds:
    """Assign episodes to ``n_folds`` outer folds, ``n_repeats`` times with different permutations.

    Folds are balanced in episodes (sizes differ by at most one). Repeat 0 depends only on
    ``seed``; each further repeat is a fresh permutation.

    Raises
    ------
    ValueError
        Fewer than two episodes, ``n_folds < 2`` or ``n_repeats < 1``.
    """
    eps = np.unique(np.asarray(episodes, dtype=np.int64))
    if len(eps) < 2:
        raise ValueError(f"{len(eps)} episode(s): at least 2 are needed to hold episodes out")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be at least 1, got {n_repeats}")
    k = int(min(n_folds, len(eps)))
    rng = np.random.default_rng(seed)
    fold = np.empty((n_repeats, len(eps)), dtype=np.int64)
    for r in range(n_repeats):
        order = rng.permutation(len(eps))
        fold[r, order] = np.arange(len(eps)) % k
    return OuterFolds(episodes=eps, fold=fold, n_folds=k)


def bootstrap_counts(n_items: int, n_draws: int, seed: int) -> np.ndarray:
    """``(n_draws, n_items)`` multiplicities of items resampled with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_items, size=(n_draws, n_items))
    offsets = (np.arange(n_draws) * n_items)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_draws * n_items).reshape(n_draws, n_items)


def percentile_ci(values: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval ``[low, high]`` of bootstrap values (NaNs ignored)."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return [float("nan"), float("nan")]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return [float(low), float(high)]


def episode_row_masks(
    row_episodes: np.ndarray, *, test_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_mask, test_mask)`` over rows whose episode ids are ``row_episodes``.

    The held-out episodes are those of ``split_episodes`` with the same ``test_fraction`` and
    ``seed``, so every analysis that splits a file holds out the same episodes.
    """
    row_episodes = np.asarray(row_episodes)
    split = split_episodes(np.unique(row_episodes), test_fraction=test_fraction, seed=seed)
    test = np.isin(row_episodes, split.test_episodes)
    return ~test, test
