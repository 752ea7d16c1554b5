"""A map-style dataset over one or more parsed tables, fetched a whole batch at a time.

The DataLoader calls :meth:`FaceDataset.__getitems__` with a batch of indices: one fancy index
per source table, then the (optional) albumentations pipeline per face at 48x48, and the batch
comes back already stacked, so there is no per-sample collation. Arrays memory-mapped from the
cache are re-opened by file name after pickling (DataLoader workers, ``ddp_spawn``) instead of
being copied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from fer_lightning.labels import FACE_SIZE


class FaceDataset(Dataset):
    """Faces and labels of ``parts``: pairs of (faces (M, 48, 48) uint8, rows (K,) int64 or
    None for all rows) with the matching ``labels`` of every part concatenated (N,) int64.

    Items are ``(face (48, 48) uint8 tensor, label int64 tensor)``; batches from
    :meth:`__getitems__` are ``(faces (B, 48, 48) uint8, labels (B,) int64)``.
    """

    def __init__(
        self,
        parts: Sequence[tuple[np.ndarray, np.ndarray | None]],
        labels: np.ndarray,
        transform: Any = None,
    ) -> None:
        self._faces = [faces for faces, _ in parts]
        self._rows = [rows for _, rows in parts]
        sizes = [
            len(f) if r is None else r.size for f, r in zip(self._faces, self._rows, strict=True)
        ]
        self._offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.size != self._offsets[-1]:
            raise ValueError(f"{self._offsets[-1]} faces but {self.labels.size} labels.")
        self.transform = transform
        self._seeded_for: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        faces, labels = self.__getitems__([index])
        return faces[0], labels[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} faces.")
        faces = np.empty((idx.size, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
        part = np.searchsorted(self._offsets, idx, side="right") - 1
        for p in np.unique(part):
            mask = part == p
            local = idx[mask] - self._offsets[p]
            rows = local if self._rows[p] is None else self._rows[p][local]
            faces[mask] = self._faces[p][rows]
        if self.transform is not None:
            self._seed_transform()
            for i in range(idx.size):
                faces[i] = self.transform(image=faces[i])["image"]
        return torch.from_numpy(faces), torch.from_numpy(self.labels[idx])

    def _seed_transform(self) -> None:
        """Seed albumentations from torch's per-process seed, once per process: each DataLoader
        worker (torch seeds them base_seed + worker id, from the run's seed) draws different,
        reproducible augmentations instead of the copies a fork would give."""
        key = (os.getpid(), torch.initial_seed())
        if self._seeded_for != key and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(torch.initial_seed() % 2**32)
            self._seeded_for = key

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Memory-mapped arrays travel as their file name, not as their data.
        state["_faces"] = [
            ("mmap", f.filename) if isinstance(f, np.memmap) and f.filename else f
            for f in self._faces
        ]
        state["_seeded_for"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_faces"] = [
            np.load(f[1], mmap_mode="r") if isinstance(f, tuple) else f for f in state["_faces"]
        ]
        self.__dict__.update(state)


class VoteDataset(FaceDataset):
    """Training faces whose targets come from FER+ label distributions ``targets`` (N, 8).

    ``draw=False`` (``crossentropy``): batches carry the distributions, (B, 8) float32.
    ``draw=True`` (``probability``): each face gets a hard label drawn from its distribution
    every time it is fetched, (B,) int64, from a generator seeded like the augmentation (by
    torch's per-process seed: reproducible, different in every DataLoader worker).
    ``labels`` holds each row's largest class (class counts, balanced sampling).
    """

    def __init__(
        self,
        parts: Sequence[tuple[np.ndarray, np.ndarray | None]],
        targets: np.ndarray,
        draw: bool,
        transform: Any = None,
    ) -> None:
        targets = np.asarray(targets, dtype=np.float32)
        super().__init__(parts, targets.argmax(axis=1), transform)
        self.targets = targets
        self.draw = draw
        cumulative = np.cumsum(targets.astype(np.float64), axis=1)
        self._cumulative = cumulative
        # Last class with any mass: guards the draw against rounding at the top end.
        self._last = (targets.shape[1] - 1 - np.argmax(targets[:, ::-1] > 0, axis=1)).astype(
            np.int64
        )
        self._rng: np.random.Generator | None = None
        self._rng_for: tuple[int, int] | None = None

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        faces, _ = super().__getitems__(indices)
        idx = np.asarray(indices, dtype=np.int64)
        if not self.draw:
            return faces, torch.from_numpy(self.targets[idx])
        cumulative = self._cumulative[idx]
        point = self._generator().random(idx.size) * cumulative[:, -1]
        drawn = np.minimum((cumulative <= point[:, None]).sum(axis=1), self._last[idx])
        return faces, torch.from_numpy(drawn.astype(np.int64))

    def _generator(self) -> np.random.Generator:
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._rng_for != key:
            self._rng = np.random.default_rng(torch.initial_seed())
            self._rng_for = key
        return self._rng


def collate_batch(batch: Any) -> Any:
    """DataLoader ``collate_fn``: batches from ``__getitems__`` (a tuple of two tensors) pass
    through; a list of single samples is stacked as usual."""
    if isinstance(batch, tuple):
        return batch
    return default_collate(batch)
