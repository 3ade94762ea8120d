"""Where SAE training rows come from: an in-memory tensor or an HDF5 file streamed in blocks.

Both sources give the training loop the same three things: ``sample`` (a random subset, for the
pre-bias and the input scale), ``batches`` (an endless, reshuffled stream of training batches)
and ``blocks`` (one ordered pass, for evaluation). ``H5Source`` never holds more than its shuffle
buffer: blocks of whole HDF5 chunks are read in a random order, pooled into a buffer of a few
blocks, permuted, and cut into batches; what is left over joins the next buffer. ``split_rows``
says which rows train and which are held out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from probes.activations import ActivationFile
from probes.errors import ProbeError
from probes.splits import episode_row_masks

BUFFER_BYTES = 64 * 1024 * 1024
"""Upper bound on the shuffle buffer of ``H5Source`` (rows × d_in × 4 bytes)."""


def split_rows(episodes: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Split rows by episode: returns ``(train_mask, test_mask, notes)`` over the rows.

    ``episodes`` holds each row's episode id. The held-out episodes are those of the lab's one
    episode split, ``probes.splits.split_episodes`` (``test_fraction`` of them, at least one).
    A file with a single episode cannot be split by episode; its last ``test_fraction`` of rows
    are held out instead and a note says so.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ProbeError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    notes: list[str] = []
    if len(np.unique(episodes)) >= 2:
        train, test = episode_row_masks(episodes, test_fraction=test_fraction, seed=seed)
    else:
        n = len(episodes)
        cut = int(n * (1.0 - test_fraction))
        test = np.zeros(n, dtype=bool)
        test[cut:] = True
        train = ~test
        notes.append("the file holds a single episode: its last rows were held out instead of whole episodes")
    if test.all() or not test.any():
        raise ProbeError("not enough rows to hold some out for evaluation")
    return train, test, notes


class TensorSource:
    """Training rows held in memory (the benchmark's baseline and the tests' fast path).

    Parameters
    ----------
    x:
        ``[n, d_in]`` float32 rows.
    """

    def __init__(self, x: torch.Tensor | np.ndarray) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32).contiguous()
        if self.x.ndim != 2 or len(self.x) == 0:
            raise ProbeError("training data must be a non-empty [n, d] array")
        self.n_rows = int(self.x.shape[0])
        self.d_in = int(self.x.shape[1])

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """Up to ``n`` random rows."""
        idx = rng.choice(self.n_rows, size=min(n, self.n_rows), replace=False)
        return self.x[torch.from_numpy(np.sort(idx))]

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[torch.Tensor]:
        """Endless batches; the rows are reshuffled at every epoch."""
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch_size = min(batch_size, self.n_rows)
        while True:
            perm = torch.randperm(self.n_rows, generator=gen)
            for start in range(0, self.n_rows - batch_size + 1, batch_size):
                yield self.x[perm[start : start + batch_size]]

    def blocks(self, rows: int = 8192) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """One ordered pass: ``(row_indices, block)`` pairs."""
        for start in range(0, self.n_rows, rows):
            stop = min(start + rows, self.n_rows)
            yield np.arange(start, stop), self.x[start:stop]


class H5Source:
    """Rows of one or several hooks of an activation file, restricted to a row mask, streamed in blocks.

    Parameters
    ----------
    path:
        The activation file.
    hook:
        The hook name (``/acts/<hook>``), or a list of hook names: then ``sample``, ``batches`` and
        ``blocks`` give a dict hook -> rows, the same rows of every hook, and each block of the
        file is read once for all of them (``probes.sae.multi``: many SAEs in one pass).
    mask:
        ``[N]`` bool: which rows belong to this source (e.g. the training episodes).
    block_rows:
        Rows per read; by default a whole number of HDF5 chunks of at least 4,096 rows.
    """

    def __init__(self, path: Path | str, hook: str | list[str], mask: np.ndarray, block_rows: int | None = None
                 ) -> None:
        self.path = Path(path)
        self.keyed = not isinstance(hook, str)
        self.hooks = list(hook) if self.keyed else [hook]
        if not self.hooks:
            raise ProbeError("no hook to read")
        self.hook = self.hooks[0]
        self.file = ActivationFile(self.path)
        self.dims = {h: self.file.hook_dim(h) for h in self.hooks}
        self.d_in = self.dims[self.hook]
        if len(mask) != self.file.n:
            raise ProbeError(f"row mask has {len(mask)} rows, the file {self.file.n}")
        self.mask = np.asarray(mask, dtype=bool)
        self.n_rows = int(self.mask.sum())
        if self.n_rows == 0:
            raise ProbeError("no rows selected for training")
        chunk = self.file.chunk_size("acts", self.hook)
        self.block_rows = block_rows or chunk * max(1, -(-4096 // chunk))
        starts = np.arange(0, self.file.n, self.block_rows)
        # Only blocks that hold at least one selected row.
        self.starts = np.array([s for s in starts if self.mask[s : s + self.block_rows].any()], dtype=np.int64)

    def _read(self, start: int) -> list[np.ndarray]:
        """The selected rows of the block at ``start``, one array per hook."""
        stop = min(start + self.block_rows, self.file.n)
        keep = self.mask[start:stop]
        out = []
        for hook in self.hooks:
            block = self.file.acts(hook, slice(start, stop))
            out.append(block if keep.all() else block[keep])  # no copy when the whole block is selected
        return out

    def _out(self, parts: list[np.ndarray]) -> torch.Tensor | dict[str, torch.Tensor]:
        tensors = [torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)) for p in parts]
        return dict(zip(self.hooks, tensors)) if self.keyed else tensors[0]

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor | dict[str, torch.Tensor]:
        """Up to ``n`` random rows, read from randomly chosen blocks."""
        parts: list[list[np.ndarray]] = []
        have = 0
        for start in rng.permutation(self.starts):
            blocks = self._read(int(start))
            parts.append(blocks)
            have += len(blocks[0])
            if have >= n:
                break
        rows = [np.concatenate([p[i] for p in parts]) for i in range(len(self.hooks))]
        if len(rows[0]) > n:
            pick = np.sort(rng.choice(len(rows[0]), size=n, replace=False))
            rows = [r[pick] for r in rows]
        return self._out(rows)

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[torch.Tensor | dict[str, torch.Tensor]]:
        """Endless shuffled batches: blocks in random order through a shuffle buffer (one
        permutation for every hook, so a batch holds the same rows of each)."""
        batch_size = min(batch_size, self.n_rows)
        width = sum(self.dims.values())
        buffer_rows = max(2 * batch_size, min(BUFFER_BYTES // (4 * width), 16 * self.block_rows))
        left = [np.empty((0, self.dims[h]), dtype=np.float32) for h in self.hooks]
        while True:
            order = rng.permutation(self.starts)
            i = 0
            while i < len(order):
                parts = [[x] for x in left]
                have = len(left[0])
                while have < buffer_rows and i < len(order):
                    blocks = self._read(int(order[i]))
                    for part, block in zip(parts, blocks):
                        part.append(block)
                    have += len(blocks[0])
                    i += 1
                perm = rng.permutation(have)
                pools = [torch.from_numpy(np.concatenate(part)[perm]) for part in parts]
                n_full = have // batch_size
                for b in range(n_full):
                    batch = [pool[b * batch_size : (b + 1) * batch_size] for pool in pools]
                    yield dict(zip(self.hooks, batch)) if self.keyed else batch[0]
                left = [pool[n_full * batch_size :].numpy() for pool in pools]

    def blocks(self, rows: int | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor | dict[str, torch.Tensor]]]:
        """One ordered pass over the selected rows: ``(row_indices, block)`` pairs."""
        for start in self.starts:
            stop = min(int(start) + self.block_rows, self.file.n)
            m = self.mask[start:stop]
            yield np.arange(start, stop)[m], self._out(self._read(int(start)))

    def close(self) -> None:
        self.file.close()
