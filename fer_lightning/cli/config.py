"""Where ``conf/`` lives, the resolvers the configs use, and the Hydra entry-point wrapper.

``conf/`` sits at the top of a checkout (and so of an editable install) and inside the package
of a wheel (``fer_lightning/conf``). Hydra's ``@hydra.main(config_path=...)`` resolves a relative
path against the installed module, so the entry points hand it the folder found here instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fer_lightning.cli.run_folders import unique_dir

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def find_config_dir() -> Path:
    """The ``conf/`` folder: packaged in the wheel, else beside the package in a checkout."""
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"fer-lightning's configuration (conf/train.yaml) is neither in {PACKAGE_DIR} nor beside "
        "it: reinstall the package (pip install fer-lightning, or pip install -e . in a checkout)."
    )


CONFIG_DIR = find_config_dir()
# A checkout (conf/ beside the package) keeps its runs and data in the checkout; an installed
# wheel uses the folder the command is run from.
IN_CHECKOUT = PACKAGE_DIR.parent / "conf" == CONFIG_DIR


def project_root() -> str:
    """``${fer_project_root:}``: the checkout, or the working directory for a wheel."""
    return str(PACKAGE_DIR.parent if IN_CHECKOUT else Path.cwd())


# Commands whose -m (multirun) runs a sweep; the others run once.
SWEEPING_COMMANDS = ("train", "eval")
# Group files that other options of their group start from, not options of their own.
BASE_OPTIONS = ("common",)


@dataclass
class ComposedConfig:
    """What a command's config is made of, read from the defaults lists: the files merged at
    its top level (itself, and ``group@_here_`` options), and per group the option it picks
    (None for an optional group) with the files that option is made of."""

    top_files: list[Path] = field(default_factory=list)
    groups: dict[str, str | None] = field(default_factory=dict)
    group_files: dict[str, list[Path]] = field(default_factory=dict)


def _defaults_list(path: Path) -> list[Any]:
    data = OmegaConf.load(path)
    return list(data.get("defaults", [])) if isinstance(data, DictConfig) else []


def compose_plan(config_name: str) -> ComposedConfig:
    """The groups and files of ``conf/<config_name>.yaml`` (Hydra's own group list shows every
    group under conf/, also those this command does not take)."""
    plan = ComposedConfig()

    def follow(path: Path, group: str | None, files: list[Path]) -> None:
        files.append(path)
        for entry in _defaults_list(path):
            if isinstance(entry, str):
                if entry != "_self_":  # another file of the same group, merged here
                    name = entry.split("@")[0]
                    follow(CONFIG_DIR / (group or "") / f"{name}.yaml", group, files)
                continue
            for key, option in dict(entry).items():
                key = str(key)
                if key.startswith("override ") or key.split("@")[0].lstrip("/") == "hydra":
                    continue
                name, _, package = key.partition("@")
                name = name.lstrip("/")
                if package == "_here_":
                    follow(CONFIG_DIR / name / f"{option}.yaml", name, files)
                    continue
                plan.groups[name] = None if option is None else str(option)
                if option is not None:
                    plan.group_files[name] = []
                    follow(CONFIG_DIR / name / f"{option}.yaml", name, plan.group_files[name])

    follow(CONFIG_DIR / f"{config_name}.yaml", None, plan.top_files)
    return plan


def _indented(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return "\n".join(f"  {line}" if line else "" for line in text.splitlines())


def _relative(path: Path) -> str:
    return f"conf/{path.relative_to(CONFIG_DIR).as_posix()}"


def config_help(config_name: str) -> str:
    """``${fer_help:NAME}``: ``--help`` text from the files ``conf/NAME.yaml`` is composed of,
    so every key is shown with its default and the comment that explains it (one home for
    both); only the groups this command takes are listed."""
    plan = compose_plan(config_name)
    lines = plan.top_files[0].read_text(encoding="utf-8").splitlines()
    summary = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else ""
    sweep = (
        " -m runs a sweep over comma-separated\nvalues (e.g. seed=1,2,3);"
        if config_name in SWEEPING_COMMANDS
        else ""
    )
    parts = [
        f"{summary}\n\n"
        "Override any key with key=value, pick a group option with group=option, add a key with"
        f"\n+key=value;{sweep} --cfg job prints the composed configuration.\n"
    ]
    for path in plan.top_files:
        parts.append(
            f"== {_relative(path)} (keys, defaults and what they mean) ==\n\n{_indented(path)}\n"
        )
    for group, files in plan.group_files.items():
        for path in files:
            parts.append(f"== {_relative(path)} ({group}.* keys) ==\n\n{_indented(path)}\n")
    if plan.groups:
        parts.append("== Configuration groups (group=option) ==\n")
        for group, chosen in plan.groups.items():
            options = sorted(
                p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if p.stem not in BASE_OPTIONS
            )
            default = "none" if chosen is None else chosen
            parts.append(f"{group}: {', '.join(options)} (default: {default})")
    # Hydra fills the template with string.Template: a literal $ is written $$.
    return "\n".join(parts).replace("$", "$$") + "\n"


def register_resolvers() -> None:
    """Register the custom resolvers once (entry points and tests call this)."""
    if not OmegaConf.has_resolver("fer_project_root"):
        OmegaConf.register_new_resolver("fer_project_root", project_root)
    if not OmegaConf.has_resolver("fer_help"):
        OmegaConf.register_new_resolver("fer_help", config_help)
    if not OmegaConf.has_resolver("fer_unique_dir"):
        # Cached: every reading of hydra.run.dir in one run gives the folder created once.
        OmegaConf.register_new_resolver("fer_unique_dir", unique_dir, use_cache=True)


register_resolvers()


def hydra_entry(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A console-script ``main()`` that runs ``task`` as a Hydra app over ``conf/<name>.yaml``."""

    def main() -> Any:
        return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(
            task
        )()

    main.__doc__ = f"``fer-{config_name}``: Hydra app over conf/{config_name}.yaml."
    return main


def typed_override(key: str) -> str | None:
    """The text the user typed for ``key`` on the command line (Hydra reads ``007`` as 7 and
    ``1e3`` as 1000.0); None when the key was not overridden there."""
    if HydraConfig.initialized():
        for override in reversed(list(HydraConfig.get().overrides.task)):
            name, sep, text = override.partition("=")
            if sep and name.lstrip("+~") == key:
                if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                    text = text[1:-1]
                return text
    return None


def raw_override(key: str, value: Any) -> str:
    """The text the user typed for ``key``; ``str(value)`` when it was not overridden on the
    command line."""
    typed = typed_override(key)
    return str(value) if typed is None else typed


def fail(message: str, status: int = 2) -> None:
    """Print ``error: message`` and exit with ``status`` (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
