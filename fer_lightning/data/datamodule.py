"""The LightningDataModule: loading and batching the splits of a dataset source.

Which faces make the ``train``, ``val`` and ``test`` splits is the source's business
(:mod:`fer_lightning.data.sources`, one module per dataset, chosen by ``conf/data/<name>.yaml``).
Batches leave the DataLoader as ``(faces (N, 48, 48) uint8, labels (N,) int64)``, or, for FER+
training with ``data.ferplus.labels=crossentropy``, ``(faces, label distributions (N, 8)
float32)``: all per-pixel CPU work (the albumentations pipeline, training only) happens at
48x48. Once the batch is on the device, :meth:`FERDataModule.on_after_batch_transfer` makes the
model input, (N, 3, S, S) float in [0, 1], with one batched interpolation
(:func:`to_model_input`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, WeightedRandomSampler

from fer_lightning.data.augment import build_augment
from fer_lightning.data.csv_reader import ON_BAD_ROW
from fer_lightning.data.dataset import FaceDataset, VoteDataset, collate_batch
from fer_lightning.data.errors import DatasetError
from fer_lightning.data.sources.base import DataSource, Split, make_source
from fer_lightning.faces.transforms import to_model_input
from fer_lightning.models.presets import check_input_size, default_input_size

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class FERDataModule(pl.LightningDataModule):
    """Train / val / test loaders of a dataset source's 48x48 faces; the device-side resize to
    ``input_size``.

    Args:
        source: the dataset (:class:`~fer_lightning.data.sources.base.DataSource`): a built
            source, its class or a partial of it (the YAML's ``source: {_target_: ...,
            _partial_: true}``), or a dataset name (``fer2013``, ``fer2013_faces_jaffe``,
            ``ferplus``, ``jaffe``, ``faces``, ``synthetic``).
        dataset: the name runs record (``data.dataset``); it must be the source's.
        root: the data folder (``${paths.data_dir}``); the source's locations are relative to it.
        batch_size / eval_batch_size: training / validation and test batch sizes
            (``eval_batch_size=None`` -> ``batch_size``).
        num_workers, pin_memory, persistent_workers: passed to every DataLoader.
        drop_last: drop the last incomplete training batch.
        balanced_sampler: draw training samples with probability inverse to their class count.
        input_size: side of the network input, a multiple of 32 (default: the paper's, 224).
        augment: ``{TransformName: {arg: value}}`` albumentations pipeline for training at 48x48;
            ``None`` or ``{}`` -> no augmentation (the configs default to the paper's).
        on_bad_row: ``error`` (default) or ``skip`` bad CSV rows (reported with line numbers).
        cache_dir: parsed-array cache (default ``<root>/.cache``); ``use_cache=False`` parses
            every CSV on every setup.
        num_classes, label_names: the classes the config expects (the model's head follows
            them); they must be the source's, else a ``ValueError``.
        **settings: the dataset's own keys (``fer2013``, ``synthetic``, ``ferplus``, ``folds``,
            ``fold``...), given to the source's constructor.
    """

    def __init__(
        self,
        source: DataSource | str | Callable[..., DataSource],
        *,
        dataset: str | None = None,
        root: str = "data",
        batch_size: int = 48,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = False,
        balanced_sampler: bool = False,
        input_size: int | None = None,
        augment: Mapping[str, Any] | None = None,
        on_bad_row: str = "error",
        cache_dir: str | None = None,
        use_cache: bool = True,
        num_classes: int | None = None,
        label_names: Sequence[str] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.source = make_source(source, root, settings)
        self.dataset = self.source.name
        self.root = self.source.root
        self.label_names: tuple[str, ...] = tuple(self.source.label_names)
        self.num_classes = len(self.label_names)
        self._check_config(dataset, num_classes, _plain(label_names))
        self.input_size = check_input_size(input_size or default_input_size(), "data.input_size")
        self._set_batching(batch_size, eval_batch_size, drop_last, balanced_sampler)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self._set_reading(on_bad_row, cache_dir, use_cache)
        # Checked now, so that a bad pipeline fails before any data is read.
        self.augment_config = _plain(augment)
        self._augment = build_augment(self.augment_config)
        self.train_set: FaceDataset | None = None
        self.val_set: FaceDataset | None = None
        self.test_set: FaceDataset | None = None

    def _check_config(
        self, dataset: str | None, num_classes: int | None, label_names: Sequence[str] | None
    ) -> None:
        """``data.dataset``, ``data.num_classes`` and ``data.label_names`` (which the model's
        head and the run's records follow) must be the source's."""
        names = self.label_names
        if dataset is not None and dataset != self.dataset:
            raise ValueError(
                f"data.dataset={dataset}, but data.source reads {self.dataset} "
                f"({type(self.source).__name__}); choose the dataset with data={dataset}."
            )
        if num_classes is not None and int(num_classes) != len(names):
            raise ValueError(
                f"data.num_classes={num_classes}, but the {self.dataset} data have {len(names)} "
                f"classes ({', '.join(names)}); use the data config's value."
            )
        if label_names is not None and tuple(label_names) != names:
            raise ValueError(
                f"data.label_names={list(label_names)} are not the {self.dataset} classes "
                f"{list(names)} (in this order)."
            )

    def _set_batching(
        self, batch_size: int, eval_batch_size: int | None, drop_last: bool, balanced: bool
    ) -> None:
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError("data.batch_size and data.eval_batch_size must be >= 1.")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.drop_last = drop_last
        self.balanced_sampler = balanced

    def _set_reading(self, on_bad_row: str, cache_dir: str | None, use_cache: bool) -> None:
        if on_bad_row not in ON_BAD_ROW:
            raise ValueError(f"data.on_bad_row must be one of {ON_BAD_ROW}, not {on_bad_row!r}.")
        self.on_bad_row = on_bad_row
        default = self.root / ".cache"
        self.cache_dir = (Path(cache_dir) if cache_dir else default) if use_cache else None

    @property
    def is_synthetic(self) -> bool:
        """Whether the training faces are this project's generated synthetic faces (also for
        the FER+-format synthetic files, wherever data.fer2013 points)."""
        return self.source.synthetic

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Find (or generate) the files and parse every CSV into the cache (once, on one
        process; setup() in every process then memory-maps the cached arrays)."""
        self.source.prepare(self.cache_dir, self.on_bad_row)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits (cheap after prepare_data: cached arrays are memory-mapped).
        Callable any number of times; the first call does the work."""
        if self.train_set is not None:
            return
        splits = self.source.load(self.cache_dir, self.on_bad_row)
        self.train_set = _dataset(splits["train"], self._augment)
        self.val_set = _dataset(splits["val"], None)
        self.test_set = _dataset(splits["test"], None)
        self._check_training_size()
        log.info(
            "data %s: train %d, val %d, test %d faces; training classes %s",
            self.dataset,
            len(self.train_set),
            len(self.val_set),
            len(self.test_set),
            dict(zip(self.label_names, self.class_counts().tolist(), strict=True)),
        )

    def _check_training_size(self) -> None:
        train_size = len(self._require("train_set"))
        if self.drop_last and train_size < self.batch_size:
            raise DatasetError(
                f"data.batch_size={self.batch_size} is larger than the {train_size} training "
                "faces with data.drop_last=true: not one training step would run. Lower "
                "data.batch_size or set data.drop_last=false."
            )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """(faces (N, 48, 48) uint8, targets) -> (model input (N, 3, S, S) float [0, 1],
        targets): (N,) int64 labels, or (N, C) float label distributions."""
        faces, labels = batch
        return to_model_input(faces, self.input_size), labels

    # ----------------------------------------------------------------- class statistics
    def _require(self, name: str) -> FaceDataset:
        dataset = getattr(self, name)
        if dataset is None:
            raise RuntimeError(f"FERDataModule.{name} is built by setup(); call setup() first.")
        return dataset

    def class_counts(self) -> Tensor:
        """(num_classes,) int64: training faces per class (FER+ label distributions: by their
        largest class)."""
        labels = self._require("train_set").labels
        return torch.from_numpy(np.bincount(labels, minlength=self.num_classes).astype(np.int64))

    def class_weights(self) -> Tensor:
        """(num_classes,) float32 inverse-frequency weights, mean 1 over the classes present; a
        class with no training faces gets 0 (and a warning), since it can never be the target."""
        counts = self.class_counts().double()
        present = counts > 0
        weights = torch.zeros(self.num_classes, dtype=torch.float64)
        weights[present] = 1.0 / counts[present]
        weights[present] *= present.sum() / weights[present].sum()
        missing = [self.label_names[i] for i in torch.nonzero(~present).flatten().tolist()]
        if missing:
            log.warning("No training faces of %s: class weight 0.", ", ".join(missing))
        return weights.float()

    # ----------------------------------------------------------------- loaders
    def _loader(
        self, dataset: FaceDataset, batch_size: int, train: bool, sampler: Sampler | None = None
    ) -> DataLoader:
        if train and self.balanced_sampler:
            per_class = np.bincount(dataset.labels, minlength=self.num_classes).astype(np.float64)
            weights = 1.0 / per_class[dataset.labels]
            sampler = WeightedRandomSampler(torch.from_numpy(weights), len(dataset), True)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=train and self.drop_last,
            collate_fn=collate_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._require("train_set"), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """FER2013 PublicTest (FER+: its majority labels; a fold: the next fold's subjects).
        Under DDP each process scores its share of the faces, each face once (see
        :func:`unpadded_distributed_sampler`): the validation accuracy picks the best checkpoint."""
        val_set = self._require("val_set")
        sampler = unpadded_distributed_sampler(val_set)
        return self._loader(val_set, self.eval_batch_size, train=False, sampler=sampler)

    def test_dataloader(self) -> DataLoader:
        """FER2013 PrivateTest (FER+: its majority labels; a fold: the fold's subjects)."""
        return self._loader(self._require("test_set"), self.eval_batch_size, train=False)


def unpadded_distributed_sampler(dataset: FaceDataset) -> Sampler | None:
    """In a distributed run (a process group with two or more processes), a sampler that gives
    each process every N-th face of ``dataset`` and no face twice; None otherwise (Lightning's
    own sampler, or none). Lightning's DistributedSampler pads the split with repeated faces to a
    multiple of the process count, so metrics synchronised over the processes would count those
    faces twice. Processes may then score one face fewer; each must score at least one (DDP syncs
    its buffers on the first forward), so a split smaller than the process count keeps the
    padded sampler."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world_size = torch.distributed.get_world_size()
    if world_size < 2 or len(dataset) < world_size:
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)


def _dataset(split: Split, transform: Any) -> FaceDataset:
    """The torch Dataset of a split: labels, or label distributions when the split has them."""
    if split.targets is None:
        return FaceDataset(split.parts, split.labels, transform)
    return VoteDataset(split.parts, split.targets, split.draw, transform)
