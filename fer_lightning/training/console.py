"""What a run shows: the composed configuration as a tree, and no promotional lines.

The tree is plain text (box-drawing characters and YAML), the same on a terminal, in a log file
and in ``config_tree.txt``, without a rich-text dependency.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

# Lightning's rank-zero messages go through these loggers (whichever package sent them).
LIGHTNING_INFO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
# Lightning advertises its cloud services with "💡 Tip: ..." lines on every Trainer.
PROMOTION_PREFIX = "💡 Tip:"


class PromotionFilter(logging.Filter):
    """Drops Lightning's "💡 Tip: ..." advertisement lines; lets everything else through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith(PROMOTION_PREFIX)


def silence_lightning_tips() -> None:
    """Install :class:`PromotionFilter` on Lightning's rank-zero loggers (once)."""
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, PromotionFilter) for f in logger.filters):
            logger.addFilter(PromotionFilter())


def config_tree(config: Mapping[str, Any], title: str = "config") -> str:
    """``config`` (a resolved, plain mapping) as a tree: plain keys first, then one branch per
    group (data, model, trainer, ...) with its YAML below it."""
    scalars = [(k, v) for k, v in config.items() if not isinstance(v, Mapping)]
    groups = [(k, v) for k, v in config.items() if isinstance(v, Mapping)]
    lines = [title]
    entries = [(key, value, False) for key, value in scalars]
    entries += [(key, value, True) for key, value in groups]
    for i, (key, value, is_group) in enumerate(entries):
        last = i == len(entries) - 1
        branch = "└── " if last else "├── "
        lines.append(f"{branch}{key}" if is_group else f"{branch}{key}: {_scalar(value)}")
        if is_group:
            body = OmegaConf.to_yaml(OmegaConf.create(dict(value)))
            indent = "    " if last else "│   "
            lines += [f"{indent}{line}" for line in body.rstrip().splitlines()]
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    return "null" if value is None else str(value)
