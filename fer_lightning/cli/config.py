"""Where ``conf/`` lives, the resolvers the configs use, and the Hydra entry-point wrapper.

``conf/`` sits at the top of a checkout (and so of an editable install) and inside the package
of a wheel (``fer_lightning/conf``). Hydra's ``@hydra.main(config_path=...)`` resolves a relative
path against the installed module, so the entry points hand it the folder found here instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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


def config_help(config_name: str) -> str:
    """``${fer_help:NAME}``: ``--help`` text from ``conf/NAME.yaml`` itself, so every key is shown
    with its default and the comment that explains it (one home for both)."""
    # Hydra fills the template with string.Template: a literal $ is written $$.
    text = (CONFIG_DIR / f"{config_name}.yaml").read_text(encoding="utf-8").replace("$", "$$")
    lines = text.splitlines()
    summary = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else ""
    body = "\n".join(f"  {line}" if line else "" for line in lines)
    return (
        f"{summary}\n\n"
        f"Override any key with key=value, pick a group option with group=option, add a key with\n"
        f"+key=value; -m runs a sweep over comma-separated values; --cfg job prints the composed\n"
        f"configuration.\n\n"
        f"== conf/{config_name}.yaml (keys, defaults and what they mean) ==\n\n{body}\n\n"
        f"== Configuration groups ==\n$APP_CONFIG_GROUPS"
    )


def register_resolvers() -> None:
    """Register the custom resolvers once (entry points and tests call this)."""
    if not OmegaConf.has_resolver("fer_project_root"):
        OmegaConf.register_new_resolver("fer_project_root", project_root)
    if not OmegaConf.has_resolver("fer_help"):
        OmegaConf.register_new_resolver("fer_help", config_help)
    if not OmegaConf.has_resolver("fer_unique_dir"):
        from fer_lightning.cli.run_folders import unique_dir

        # Cached: every reading of hydra.run.dir in one run gives the folder created once.
        OmegaConf.register_new_resolver("fer_unique_dir", unique_dir, use_cache=True)


register_resolvers()


def hydra_entry(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A console-script ``main()`` that runs ``task`` as a Hydra app over ``conf/<name>.yaml``."""
    import hydra

    def main() -> Any:
        return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(
            task
        )()

    main.__doc__ = f"``fer-{config_name}``: Hydra app over conf/{config_name}.yaml."
    return main


def raw_override(key: str, value: Any) -> str:
    """The text the user typed for ``key`` (Hydra reads ``007`` as 7 and ``1e3`` as 1000.0);
    ``str(value)`` when the key was not overridden on the command line."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        for override in reversed(list(HydraConfig.get().overrides.task)):
            name, sep, text = override.partition("=")
            if sep and name.lstrip("+~") == key:
                if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                    text = text[1:-1]
                return text
    return str(value)


def fail(message: str, status: int = 2) -> None:
    """Print ``error: message`` and exit with ``status`` (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
