"""Shared test set-up: offline albumentations, paths to the reference data."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Importing albumentations otherwise checks online for a newer version.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest

REFERENCE_DIR = Path(__file__).parent / "reference"


@pytest.fixture(scope="session")
def manifest() -> dict:
    """State-dict manifest of every published variant (copied from shared/reference)."""
    return json.loads((REFERENCE_DIR / "state_dict_manifest.json").read_text())


@pytest.fixture(scope="session")
def golden_logits() -> dict:
    data = json.loads((REFERENCE_DIR / "golden_resmasking_dropout1.json").read_text())
    return data["logits"]["resmasking_dropout1"]


UNIT_DIR = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/unit/ holds fast tests only: a slow one there is a collection error, so that the
    folders keep saying what they hold (slow tests live in tests/integration/)."""
    misplaced = [
        item.nodeid
        for item in items
        if item.get_closest_marker("slow") and UNIT_DIR in Path(str(item.fspath)).parents
    ]
    if misplaced:
        raise pytest.UsageError(
            "slow tests in tests/unit/ (move them to tests/integration/): " + ", ".join(misplaced)
        )
