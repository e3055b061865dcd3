"""Shared fixtures: the real-data folder (skipped where absent) and small phantom data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """``$CHESTDX_DATA`` or ``../shared/data`` next to the repository, where it exists."""
    env = os.environ.get("CHESTDX_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture
def real_data() -> Path:
    """Root of the real data sets; the test is skipped with a reason where it is absent."""
    root = real_data_root()
    if root is None:
        pytest.skip("real data absent: set CHESTDX_DATA or place shared/data next to the repository")
    return root
