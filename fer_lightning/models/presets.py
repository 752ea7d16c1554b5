"""Every architecture's facts in one table, in the manner of timm's ``default_cfgs``: the input
size it is trained and published at, the classes its published head predicts, and its
published weights (file name, where they are served, and SHA-256 and size where known). The
loaders, the download cache, the commands and the docs read them from here.

A test keeps :data:`ARCHITECTURES` and the registered builders (:mod:`.registry`) the same set.
"""

from __future__ import annotations

from dataclasses import dataclass

from fer_lightning.labels import EMOTIONS

# Total stride of the trunk (conv1 2x, maxpool 2x, layer2-4 2x each). The masks of the Residual
# Masking Network pool inside each stage, so every model of the zoo asks for sides divisible by it.
INPUT_MULTIPLE = 32

#: The authors' Hugging Face repository and GitHub release, where their files are published.
HF_REPO_ID = "phamquiluan/ResidualMaskingNetwork"
RELEASE_URL = "https://github.com/phamquiluan/ResidualMaskingNetwork/releases/download/v0.0.1"


@dataclass(frozen=True)
class PublishedFile:
    """A file published for download: its ``filename`` (the same in every source), the
    ``arch`` of the network it holds (``None`` for files that are not checkpoints, such as the
    face detector), its ``sha256`` and ``size`` in bytes where they are published (``None``:
    not pinned; then ``max_size`` bounds a download), and the ``sources`` to try, in order:
    ``"huggingface"`` (the authors' repository, at ``$HF_ENDPOINT`` or huggingface.co) or base
    URLs that the file name is appended to."""

    filename: str
    arch: str | None = None
    sha256: str | None = None
    size: int | None = None
    max_size: int | None = None
    sources: tuple[str, ...] = ("huggingface", RELEASE_URL)

    @property
    def is_checkpoint(self) -> bool:
        return self.arch is not None

    @property
    def is_pinned(self) -> bool:
        """Whether a download is checked against a published SHA-256."""
        return self.sha256 is not None

    @property
    def size_limit(self) -> int | None:
        """The most bytes a download of this file may have."""
        return self.size if self.size is not None else self.max_size


@dataclass(frozen=True)
class ModelPreset:
    """What a network expects: ``input_size`` (the square side it was published at),
    ``labels`` (the classes of its published head, in output order) and its ``published``
    checkpoint (``None``: none published). ``preferred_twin``: when several architectures
    have identical state-dict keys, a checkpoint that does not name its own loads as this one.
    """

    input_size: int = 224
    labels: tuple[str, ...] = EMOTIONS
    published: PublishedFile | None = None
    preferred_twin: bool = False


#: The Residual Masking Network of the paper, as its authors published it (FER2013, 7 classes).
#: Not pinned: no SHA-256 of it is published; the real file is about 570 MB.
RESMASKING_DROPOUT1_FILE = PublishedFile(
    "Z_resmasking_dropout1_rot30_2019Nov30_13.32",
    arch="resmasking_dropout1",
    max_size=800_000_000,
)

#: Name -> facts, one entry per registered architecture.
ARCHITECTURES: dict[str, ModelPreset] = {
    "resnet18": ModelPreset(),
    "resnet34": ModelPreset(),
    "resnet50": ModelPreset(),
    "resmasking": ModelPreset(),
    "resmasking_dropout1": ModelPreset(published=RESMASKING_DROPOUT1_FILE, preferred_twin=True),
    "resmasking_dropout2": ModelPreset(),
    "resmasking_naive_dropout1": ModelPreset(),
    "resmasking50_dropout1": ModelPreset(),
}

DEFAULT_PRESET = ModelPreset()


def get_preset(arch: str | None) -> ModelPreset:
    """The facts of ``arch`` (the defaults for unknown or unnamed architectures)."""
    return ARCHITECTURES.get(arch or "", DEFAULT_PRESET)


def default_input_size(arch: str | None = None) -> int:
    """The input side ``arch`` was published at: what checkpoints that do not record it use."""
    return get_preset(arch).input_size


def published_checkpoints() -> dict[str, PublishedFile]:
    """Architecture name -> its published checkpoint, for those that have one."""
    return {name: p.published for name, p in ARCHITECTURES.items() if p.published is not None}


def preferred_twins() -> tuple[str, ...]:
    """Architectures preferred among key-identical ones (``ModelPreset.preferred_twin``)."""
    return tuple(name for name, preset in ARCHITECTURES.items() if preset.preferred_twin)


def check_input_size(size: int, name: str = "input_size") -> int:
    """``size`` if the zoo can take it (a positive multiple of 32); a ``ValueError`` that says
    what to use otherwise."""
    valid = isinstance(size, int) and not isinstance(size, bool)
    if not valid or size < INPUT_MULTIPLE or size % INPUT_MULTIPLE:
        raise ValueError(
            f"{name} must be a multiple of {INPUT_MULTIPLE} (at least {INPUT_MULTIPLE}), not "
            f"{size!r}: use {default_input_size()} (the paper's size) or another multiple, "
            "such as 64."
        )
    return size
