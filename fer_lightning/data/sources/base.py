"""What every dataset source provides: its files, its splits and its checks.

A source is chosen by its YAML (``conf/data/<name>.yaml``: ``source: {_target_: <class>,
_partial_: true}``) and built by :class:`~fer_lightning.data.FERDataModule` with ``data.root``
and the YAML's own keys (``data.fer2013``, ``data.synthetic``, ``data.folds``...), which are the
source's constructor arguments. The DataModule then only loads and batches what
:meth:`DataSource.load` returns.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fer_lightning.data.cache import load_table
from fer_lightning.data.errors import DatasetError, DatasetNotFoundError
from fer_lightning.data.synthetic import has_synthetic_marker
from fer_lightning.labels import EMOTIONS

# The way to try everything without a download, for every missing-dataset message.
DEMO_HINT = (
    "To try the project without any download: `python -m fer_lightning.train "
    "experiment=demo` (ResNet-18 at 64 px on the project's generated synthetic faces, minutes "
    "on a CPU; data=synthetic alone keeps the configured model, by default the 224 px "
    "Residual Masking Network, hours on a CPU)."
)
_SOURCES: dict[str, type[DataSource]] = {}


@dataclass
class Split:
    """The faces and targets of one split.

    ``parts``: (faces (M, 48, 48) uint8, rows (K,) int64 or None for all) pairs; ``labels``:
    (N,) int64 over all parts; ``targets``: (N, C) float32 label distributions to train on
    instead of ``labels`` (FER+'s distribution modes), with ``draw`` True when a hard label is
    drawn from them each time a face is fetched."""

    parts: list[tuple[np.ndarray, np.ndarray | None]]
    labels: np.ndarray
    targets: np.ndarray | None = None
    draw: bool = False

    def __len__(self) -> int:
        return int(self.labels.size)


class DataSource(ABC):
    """One dataset: where its files are (and what to do when they are not there), how they
    make the ``train``, ``val`` and ``test`` splits, and the checks on them.

    Subclasses set ``name`` (the ``data.dataset`` value, and their module's name under
    ``fer_lightning/data/sources/``) and, when they differ from FER2013's, ``label_names``."""

    name: ClassVar[str]
    label_names: ClassVar[tuple[str, ...]] = EMOTIONS

    def __init__(self, root: str | Path = "data") -> None:
        self.root = Path(root).expanduser()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _SOURCES[cls.name] = cls

    def resolve(self, location: str | Path) -> Path:
        """A configured location: absolute, or relative to ``data.root``."""
        path = Path(str(location)).expanduser()
        return path if path.is_absolute() else self.root / path

    @abstractmethod
    def face_files(self) -> list[Path]:
        """The face CSVs this dataset reads (generated first where the source makes them).
        Raises :class:`DatasetNotFoundError` saying everything needed to get them."""

    @abstractmethod
    def load(self, cache_dir: Path | None, on_bad_row: str) -> dict[str, Split]:
        """The ``train``, ``val`` and ``test`` splits; :class:`DatasetError` for data that
        cannot make them."""

    def prepare(self, cache_dir: Path | None, on_bad_row: str) -> None:
        """Locate (or generate) the files and parse them into the cache, once, on one
        process; ``load`` in every process then memory-maps the cached arrays."""
        files = self.face_files()
        if cache_dir is not None:
            for file in files:
                load_table(file, cache_dir, on_bad_row)

    @property
    def synthetic(self) -> bool:
        """Whether the faces are this project's generated synthetic faces (the generators
        mark their CSVs), wherever the configuration points."""
        try:
            return any(has_synthetic_marker(file) for file in self.face_files())
        except DatasetError:
            return False

    def describe(self) -> str:
        """Extra words for the log line of the split sizes."""
        return ""


def not_found(
    what: str, path: Path, settings: str, expected: str, get: str
) -> DatasetNotFoundError:
    """The one message for a dataset that is not there: ``what`` was not found at ``path``
    (``settings``: the keys that chose it), what is ``expected`` there, how to ``get`` it, and
    the offline demo."""
    return DatasetNotFoundError(
        f"{what} not found at {path} ({settings}).\n"
        f"Expected: {expected}.\n{get}\n"
        f"Check a file with `python -m fer_lightning.data check PATH`. {DEMO_HINT}"
    )


def source_class(name: str) -> type[DataSource]:
    """The source of dataset ``name`` (``fer_lightning/data/sources/<name>.py``)."""
    if name not in _SOURCES:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(f"{__package__}.{name}")
    if name not in _SOURCES:
        known = ", ".join(sorted(_known_names()))
        raise ValueError(f"data.dataset must be one of {known}, not {name!r}.")
    return _SOURCES[name]


def _known_names() -> list[str]:
    folder = Path(__file__).parent
    return [p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "base")]


def make_source(
    source: DataSource | str | Callable[..., DataSource],
    root: str | Path,
    settings: Mapping[str, Any],
) -> DataSource:
    """The source a DataModule reads: given, or built from a dataset name, a class or a
    partial (Hydra's ``_partial_: true``) with ``root`` and the dataset's ``settings``."""
    if isinstance(source, DataSource):
        if settings:
            raise ValueError(
                f"{sorted(settings)}: settings of a source already built; give them to its "
                "constructor."
            )
        return source
    factory = source_class(source) if isinstance(source, str) else source
    plain = {key: _plain(value) for key, value in settings.items()}
    name = getattr(getattr(factory, "func", factory), "name", str(source))
    try:
        inspect.signature(factory).bind(root=root, **plain)
    except TypeError:
        accepted = [p for p in inspect.signature(factory).parameters if p not in ("root", "self")]
        unknown = sorted(set(plain) - set(accepted))
        raise ValueError(
            f"data.{', data.'.join(unknown)}: not a setting of data={name} (its settings: "
            f"{', '.join(accepted) or 'none'})."
        ) from None
    return factory(root=root, **plain)


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
