"""Hydra/OmegaConf glue: where conf/ lives, and the resolvers the configs use."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# The project folder: the one that holds conf/ beside this package (an editable install or a
# checkout). Runs write to its outputs/ and read its data/ from any working directory.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"


def project_root() -> str:
    """``${fer_project_root:}``: the project folder, or the working directory without conf/."""
    return str(PROJECT_ROOT if CONFIG_DIR.is_dir() else Path.cwd())


def register_resolvers() -> None:
    """Register the custom resolvers once (Hydra entry points and tests call this)."""
    if not OmegaConf.has_resolver("fer_project_root"):
        OmegaConf.register_new_resolver("fer_project_root", project_root)


register_resolvers()
