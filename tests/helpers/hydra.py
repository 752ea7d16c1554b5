"""Composing the real configs and running the real commands, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from fer_lightning.cli.config import CONFIG_DIR

# Small synthetic splits so that a CPU epoch takes seconds.
SMALL_DATA = [
    "data=synthetic",
    "data.input_size=64",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.synthetic.train_per_class=30",
    "data.synthetic.val_per_class=10",
    "data.synthetic.test_per_class=10",
]
# The short real run's data: enough faces for a ResNet-18 to learn in a few epochs.
TRAINED_RUN_DATA = [
    "data.batch_size=32",
    "data.synthetic.train_per_class=100",
    "data.synthetic.val_per_class=30",
    "data.synthetic.test_per_class=30",
]
FAST = [*SMALL_DATA, "trainer=cpu", "logger=csv", "callbacks.progress_bar.refresh_rate=0"]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONWARNINGS": "ignore"}


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, as Hydra composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def compose_train(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """The real conf/train.yaml with ``overrides``, writing under ``tmp_path``."""
    cfg = compose_config(
        "train",
        [
            *overrides,
            f"paths.log_dir={tmp_path / 'outputs'}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
    )
    # compose() has no hydra.runtime.output_dir: give the run a folder of its own.
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.work_dir = str(tmp_path)
    return cfg


def run_cli(
    module: str, args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_app(main: Callable[[], object], args: list[str]) -> int:
    """Run a Hydra command's ``main()`` in this process with ``args``; its exit status."""
    saved = sys.argv
    sys.argv = ["fer-app", *args]
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return 0
