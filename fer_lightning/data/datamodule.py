"""The LightningDataModule: FER2013 (+ FACES + JAFFE), FER+, subject-disjoint folds of JAFFE or
FACES, or the synthetic set, from ``data.root``.

Batches leave the DataLoader as ``(faces (N, 48, 48) uint8, labels (N,) int64)``, or, for FER+
training with ``data.ferplus.labels=crossentropy``, ``(faces, label distributions (N, 8) float32)``:
all per-pixel CPU work (the albumentations pipeline, training only) happens at 48x48. Once the
batch is on the device, :meth:`FERDataModule.on_after_batch_transfer` makes the model input,
(N, 3, S, S) float in [0, 1], with one batched interpolation (:func:`to_model_input`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, WeightedRandomSampler

from fer_lightning.data.augment import build_augment
from fer_lightning.data.cache import load_table
from fer_lightning.data.csv_reader import ON_BAD_ROW
from fer_lightning.data.dataset import FaceDataset, collate_batch
from fer_lightning.data.errors import DatasetError, DatasetNotFoundError
from fer_lightning.data.ferplus import (
    LABEL_FILE,
    LABEL_MODES,
    FerPlusData,
    VoteDataset,
    find_label_file,
    load_ferplus,
)
from fer_lightning.data.folds import check_fold_count, fold_rows, read_subjects
from fer_lightning.data.sources import USAGE_FILES, SplitRef, find_csv_files, load_splits
from fer_lightning.data.synthetic import generate_synthetic_csv
from fer_lightning.faces.transforms import to_model_input
from fer_lightning.labels import EMOTIONS, FERPLUS_EMOTIONS
from fer_lightning.models.presets import check_input_size, default_input_size

log = logging.getLogger(__name__)

DATASETS = ("fer2013", "fer2013_faces_jaffe", "ferplus", "jaffe", "faces", "synthetic")
SYNTHETIC_KEYS = ("train_per_class", "val_per_class", "test_per_class", "seed")
FERPLUS_KEYS = ("labels", "file")
# Datasets split into subject-disjoint folds.
FOLD_DATASETS = ("jaffe", "faces")

# How to obtain each dataset, for the message when it is missing.
WHERE_TO_GET = {
    "fer2013": (
        "FER2013 comes from Kaggle: 'Challenges in Representation Learning: Facial Expression "
        "Recognition Challenge' (fer2013.csv, or icml_face_data.csv). Put it there"
    ),
    "faces": (
        "FACES (Max Planck Institute, https://faces.mpdl.mpg.de, on request): convert the JPEGs "
        "with `python -m fer_lightning.data prepare faces SRC {path}/faces.csv`"
    ),
    "jaffe": (
        "JAFFE (https://zenodo.org/record/3451524): convert the TIFFs with "
        "`python -m fer_lightning.data prepare jaffe SRC {path}/jaffe.csv`"
    ),
    "ferplus": (
        "FER+ labels come from https://github.com/microsoft/FERPlus (fer2013new.csv, MIT): put "
        "the file beside the FER2013 CSV, or name it with data.ferplus.file=PATH"
    ),
}


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class FERDataModule(pl.LightningDataModule):
    """Train / val / test loaders of 48x48 faces; the device-side resize to ``input_size``.

    Args:
        dataset: ``fer2013``, ``fer2013_faces_jaffe`` (training adds all of FACES and JAFFE;
            validation and test stay FER2013's), ``ferplus`` (FER2013's pixels with FER+'s
            labels, 8 classes), ``jaffe`` or ``faces`` (subject-disjoint folds) or
            ``synthetic`` (generated on first use, no download).
        root: the data folder (``${paths.data_dir}``); the sources below are relative to it.
        batch_size / eval_batch_size: training / validation and test batch sizes
            (``eval_batch_size=None`` -> ``batch_size``).
        num_workers, pin_memory, persistent_workers: passed to every DataLoader.
        input_size: side of the network input, a multiple of 32 (default: the paper's, 224).
        augment: ``{TransformName: {arg: value}}`` albumentations pipeline for training at 48x48;
            ``None`` or ``{}`` -> no augmentation (the configs default to the paper's).
        balanced_sampler: draw training samples with probability inverse to their class count.
        on_bad_row: ``error`` (default) or ``skip`` bad CSV rows (reported with line numbers).
        cache_dir: parsed-array cache (default ``<root>/.cache``; ``None`` in config -> default).
        use_cache: ``False`` parses every CSV on every setup.
        fer2013, faces, jaffe: dataset locations (file or folder), relative to ``root``.
        synthetic: ``{train_per_class, val_per_class, test_per_class, seed}`` (required for
            ``dataset="synthetic"``; ``conf/data/synthetic.yaml`` has the defaults) and optionally
            ``dir`` (default ``<root>/synthetic``).
        drop_last: drop the last incomplete training batch.
        num_classes, label_names: the classes the config expects (``conf/data/*.yaml``); they
            must be the dataset's (7 FER2013 emotions; FER+: 8), else a ``ValueError``.
        ferplus: ``{labels: majority|probability|crossentropy, file: null or a path}`` for
            ``dataset="ferplus"`` (:mod:`fer_lightning.data.ferplus` states the rules); ``file``
            is the label file, default ``fer2013new.csv`` beside the FER2013 CSV.
        fold, folds: for ``jaffe`` and ``faces``: test on subject fold ``fold`` of ``folds``,
            validate on the next fold, train on the rest (:mod:`fer_lightning.data.folds`).

    After :meth:`setup`, ``ferplus_report`` holds FER+'s rows per split, kept and dropped by
    reason, and ``fold_subjects`` the subjects of each split of a fold.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str = "data",
        batch_size: int = 48,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        input_size: int | None = None,
        augment: Mapping[str, Any] | None = None,
        balanced_sampler: bool = False,
        on_bad_row: str = "error",
        eval_batch_size: int | None = None,
        cache_dir: str | None = None,
        use_cache: bool = True,
        fer2013: str = "fer2013",
        faces: str = "faces",
        jaffe: str = "jaffe",
        synthetic: Mapping[str, Any] | None = None,
        drop_last: bool = False,
        num_classes: int | None = None,
        label_names: Sequence[str] | None = None,
        ferplus: Mapping[str, Any] | None = None,
        fold: int = 0,
        folds: int = 10,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {DATASETS}, not {dataset!r}.")
        if on_bad_row not in ON_BAD_ROW:
            raise ValueError(f"data.on_bad_row must be one of {ON_BAD_ROW}, not {on_bad_row!r}.")
        input_size = check_input_size(input_size or default_input_size(), "data.input_size")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError("data.batch_size and data.eval_batch_size must be >= 1.")
        self.dataset = dataset
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.input_size = input_size
        self.augment_config = _plain(augment)
        self.balanced_sampler = balanced_sampler
        self.on_bad_row = on_bad_row
        self.cache_dir = (
            (Path(cache_dir) if cache_dir else self.root / ".cache") if use_cache else None
        )
        self.sources = {"fer2013": fer2013, "faces": faces, "jaffe": jaffe}
        unknown = set(_plain(synthetic) or {}) - {*SYNTHETIC_KEYS, "dir"}
        if unknown:
            raise ValueError(f"data.synthetic: unknown keys {sorted(unknown)}.")
        self.synthetic = dict(_plain(synthetic) or {})
        self.drop_last = drop_last
        self.label_names: tuple[str, ...] = FERPLUS_EMOTIONS if dataset == "ferplus" else EMOTIONS
        self.num_classes = len(self.label_names)
        _check_classes(dataset, self.label_names, num_classes, _plain(label_names))
        self.ferplus = {"labels": "majority", "file": None, **dict(_plain(ferplus) or {})}
        unknown = set(self.ferplus) - set(FERPLUS_KEYS)
        if unknown:
            raise ValueError(f"data.ferplus: unknown keys {sorted(unknown)}.")
        if self.ferplus["labels"] not in LABEL_MODES:
            raise ValueError(
                f"data.ferplus.labels must be one of {LABEL_MODES}, not {self.ferplus['labels']!r}."
            )
        check_fold_count(folds)
        if not 0 <= fold < folds:
            raise ValueError(f"data.fold={fold} is outside 0..{folds - 1} (data.folds={folds}).")
        self.fold, self.folds = fold, folds
        self.ferplus_report: dict[str, dict[str, Any]] = {}
        self.fold_subjects: dict[str, list[str]] = {}
        # Built in setup(); augmentation is checked now so that a bad config fails at once.
        self._augment = build_augment(self.augment_config)
        missing = [k for k in SYNTHETIC_KEYS if k not in self.synthetic]
        if dataset == "synthetic" and missing:
            raise ValueError(
                f"data.synthetic needs {', '.join(missing)} (see conf/data/synthetic.yaml)."
            )
        self.train_set: FaceDataset | None = None
        self.val_set: FaceDataset | None = None
        self.test_set: FaceDataset | None = None

    # ----------------------------------------------------------------- locating the data
    def _source_path(self, name: str) -> Path:
        path = Path(self.sources[name]).expanduser()
        return path if path.is_absolute() else self.root / path

    def _synthetic_csv(self) -> Path:
        folder = self.synthetic.get("dir") or self.root / "synthetic"
        sizes = {k: int(self.synthetic[k]) for k in SYNTHETIC_KEYS}
        return generate_synthetic_csv(folder, **sizes)

    def _source_files(self) -> dict[str, Path]:
        """Name -> path of every source this dataset needs (the synthetic CSV is generated)."""
        if self.dataset == "synthetic":
            return {"synthetic": self._synthetic_csv()}
        if self.dataset in FOLD_DATASETS:
            names = [self.dataset]
        else:
            names = ["fer2013"] + (
                ["faces", "jaffe"] if self.dataset == "fer2013_faces_jaffe" else []
            )
        paths = {name: self._source_path(name) for name in names}
        for name, path in paths.items():
            try:
                find_csv_files(path)
            except DatasetNotFoundError as err:
                raise DatasetNotFoundError(
                    f"{name} dataset not found: {err}\n"
                    f"Looked at {path} (data.root={self.root}, data.{name}={self.sources[name]}): "
                    f"a file, or a folder with fer2013.csv, icml_face_data.csv, train.csv/val.csv/"
                    f"test.csv (optionally .gz) or a single CSV.\n"
                    f"{WHERE_TO_GET[name].format(path=path)}.\n"
                    f"Check a file with `python -m fer_lightning.data check PATH`. "
                    f"To run without any download, use data=synthetic."
                ) from None
        return paths

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Generate the synthetic CSV if missing and parse every CSV into the cache (once, on
        one process; setup() in every process then memory-maps the cached arrays)."""
        files = self._source_files()
        if self.cache_dir is None:
            return  # nothing to fill: setup() parses in every process
        for path in files.values():
            load_splits(path, self.cache_dir, self.on_bad_row)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits (cheap after prepare_data: cached arrays are memory-mapped).
        Callable any number of times; the first call does the work."""
        if self.train_set is not None:
            return
        if self.dataset == "ferplus":
            self._setup_ferplus()
            return
        if self.dataset in FOLD_DATASETS:
            self._setup_fold()
            return
        splits = {
            name: load_splits(p, self.cache_dir, self.on_bad_row)
            for name, p in self._source_files().items()
        }
        main_name = "synthetic" if self.dataset == "synthetic" else "fer2013"
        main = splits[main_name]
        for split in ("train", "val", "test"):
            if split not in main:
                raise DatasetError(
                    f"{self._source_label(main_name)}: no {split} split (need Usage values "
                    f"Training, PublicTest and PrivateTest, or train.csv, val.csv and test.csv)."
                )
        train_parts = [main["train"]]
        for extra in ("faces", "jaffe"):
            train_parts.extend(splits.get(extra, {}).values())  # every row trains
        # FACES and JAFFE only add training faces: validation and test stay FER2013's.
        self.train_set = self._dataset(train_parts, self._augment)
        self.val_set = self._dataset([main["val"]], None)
        self.test_set = self._dataset([main["test"]], None)
        self._log_sizes()

    def _log_sizes(self) -> None:
        train_size = len(self._require("train_set"))
        if self.drop_last and train_size < self.batch_size:
            raise DatasetError(
                f"data.batch_size={self.batch_size} is larger than the {train_size} training "
                "faces with data.drop_last=true: not one training step would run. Lower "
                "data.batch_size or set data.drop_last=false."
            )
        counts = self.class_counts()
        log.info(
            "data %s: train %d, val %d, test %d faces; training classes %s",
            self.dataset,
            len(self._require("train_set")),
            len(self._require("val_set")),
            len(self._require("test_set")),
            dict(zip(self.label_names, counts.tolist(), strict=True)),
        )

    def _ferplus_files(self) -> tuple[Path, Path]:
        """(the FER2013 pixel CSV with Usage, the FER+ label file)."""
        source = self._source_path("fer2013")
        files = find_csv_files(source)
        if len(files) != 1:
            raise DatasetError(
                f"{source}: FER+ labels follow Kaggle's single FER2013 file row by row, but this "
                f"folder has {', '.join(f.name for f in files)}. Put {' or '.join(USAGE_FILES)} "
                "there (data.fer2013=...)."
            )
        configured = self.ferplus.get("file")
        if configured:
            label_file = Path(str(configured)).expanduser()
            label_file = label_file if label_file.is_absolute() else self.root / label_file
            if not label_file.is_file():
                raise DatasetNotFoundError(
                    f"FER+ label file not found: {label_file} (data.ferplus.file={configured}, "
                    f"data.root={self.root}).\n{WHERE_TO_GET['ferplus']}."
                )
            return files[0], label_file
        found = find_label_file(files[0].parent)
        if found is None:
            raise DatasetNotFoundError(
                f"FER+ label file not found: looked for {LABEL_FILE} (optionally .gz) beside "
                f"{files[0]}.\n{WHERE_TO_GET['ferplus']}.\nTo run without any download, use "
                "data=synthetic."
            )
        return files[0], found

    def _setup_ferplus(self) -> None:
        pixel_file, label_file = self._ferplus_files()
        mode = str(self.ferplus["labels"])
        data: FerPlusData = load_ferplus(
            pixel_file, label_file, mode, self.cache_dir, self.on_bad_row
        )
        self.ferplus_report = data.report()
        faces = data.table.faces
        train = data.splits["train"]
        for split, targets in data.splits.items():
            if targets.rows.size == 0:
                raise DatasetError(
                    f"{label_file}: no {split} rows left after dropping "
                    f"{', '.join(f'{r} {n}' for r, n in targets.drop_counts().items())}."
                )
        if train.targets is None:
            self.train_set = FaceDataset([(faces, train.rows)], train.labels, self._augment)
        else:
            draw = mode == "probability"
            self.train_set = VoteDataset([(faces, train.rows)], train.targets, draw, self._augment)
        # Accuracy is measured against the majority label, as the FER+ papers report it.
        val, test = data.splits["val"], data.splits["test"]
        self.val_set = FaceDataset([(faces, val.rows)], val.labels)
        self.test_set = FaceDataset([(faces, test.rows)], test.labels)
        self._log_sizes()

    def _setup_fold(self) -> None:
        name = self.dataset
        source = self._source_path(name)
        files = find_csv_files(source)
        if len(files) != 1:
            raise DatasetError(
                f"{source}: expected the single CSV made by `python -m fer_lightning.data "
                f"prepare {name}`, found {', '.join(f.name for f in files)}."
            )
        table = load_table(files[0], self.cache_dir, self.on_bad_row)
        subjects = read_subjects(files[0], table)
        try:
            rows = fold_rows(subjects, self.folds, self.fold)
        except ValueError as err:
            raise DatasetError(f"{files[0]}: {err}") from None
        sets = {
            split: self._dataset(
                [SplitRef(table, split_rows)], self._augment if split == "train" else None
            )
            for split, split_rows in rows.items()
        }
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]
        self.fold_subjects = {
            split: sorted(set(subjects[split_rows].tolist())) for split, split_rows in rows.items()
        }
        log.info(
            "%s fold %d of %d: test subjects %s, validation subjects %s, %d training subjects",
            name,
            self.fold,
            self.folds,
            ", ".join(self.fold_subjects["test"]),
            ", ".join(self.fold_subjects["val"]),
            len(self.fold_subjects["train"]),
        )
        self._log_sizes()

    def _source_label(self, name: str) -> str:
        return str(self._synthetic_csv()) if name == "synthetic" else str(self._source_path(name))

    @staticmethod
    def _dataset(refs: list[SplitRef], transform: Any) -> FaceDataset:
        parts = [(ref.table.faces, ref.rows) for ref in refs]
        labels = np.concatenate([ref.labels for ref in refs])
        return FaceDataset(parts, labels, transform)

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
    def _loader(self, dataset: FaceDataset, batch_size: int, train: bool) -> DataLoader:
        sampler = None
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
        """FER2013 PublicTest (FER+: its majority labels; a fold: the next fold's subjects)."""
        return self._loader(self._require("val_set"), self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """FER2013 PrivateTest (FER+: its majority labels; a fold: the fold's subjects)."""
        return self._loader(self._require("test_set"), self.eval_batch_size, train=False)


def _check_classes(
    dataset: str,
    names: tuple[str, ...],
    num_classes: int | None,
    label_names: Sequence[str] | None,
) -> None:
    """The config's ``num_classes`` / ``label_names`` (which the model's head follows) must be
    the dataset's."""
    if num_classes is not None and int(num_classes) != len(names):
        raise ValueError(
            f"data.num_classes={num_classes}, but the {dataset} data have {len(names)} classes "
            f"({', '.join(names)}); use the data config's value."
        )
    if label_names is not None and tuple(label_names) != names:
        raise ValueError(
            f"data.label_names={list(label_names)} are not the {dataset} classes "
            f"{list(names)} (in this order)."
        )
