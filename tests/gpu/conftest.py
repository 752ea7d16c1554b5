"""The gpu tier: every test here is marked ``gpu``, collected everywhere and skipped, with one
reason, where there is no CUDA GPU, unless ``FER_GPU_TIER_DEVICE=cpu`` asks for the dry run on
the CPU (tier.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.gpu.tier import NO_CUDA_REASON, ON_CUDA, SMALL_DATA, make_datamodule

GPU_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tier = [item for item in items if GPU_DIR in Path(str(item.fspath)).parents]
    unmarked = [item.nodeid for item in tier if item.get_closest_marker("gpu") is None]
    if unmarked:
        raise pytest.UsageError(
            "tests in tests/gpu/ must be marked gpu (pytestmark = pytest.mark.gpu): "
            + ", ".join(unmarked)
        )
    if ON_CUDA and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason=NO_CUDA_REASON)
        for item in tier:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder whose small synthetic set is generated and parsed once for the tier."""
    root = tmp_path_factory.mktemp("gpu_tier_data")
    make_datamodule(root, SMALL_DATA, num_workers=0).prepare_data()
    return root
