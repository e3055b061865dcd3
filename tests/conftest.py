"""Shared fixtures: the real-data folder (skipped where absent) and small phantom data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# `auto` execution modes (chestdx.engine.precision) mean fp32 in the test suite: no measuring, the
# numbers every other test was written against; tests/engine/test_precision.py tests `auto` itself
os.environ.setdefault("CHESTDX_SPEED", "fp32")


def real_data_root() -> Path | None:
    """``$CHESTDX_DATA`` or ``../shared/data`` next to the repository, where it exists."""
    env = os.environ.get("CHESTDX_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    candidates = [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
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


@pytest.fixture(scope="session")
def phantom_slices(tmp_path_factory) -> Path:
    """A tiny 3-class, 2-site phantom (manifest path), made once per test session."""
    from chestdx.phantom import synthesize_slices

    out = tmp_path_factory.mktemp("phantom")
    return Path(synthesize_slices(out, n_patients_per_class=5, slices_per_patient=2, num_classes=3,
                                  sites=2, size=64, seed=0))


TINY = ["data.image_size=32", "trainer.epochs=1", "data.batch_size=8", "model.head_hidden=16"]
"""Overrides that make the demo recipe train in seconds."""


@pytest.fixture(scope="session")
def phantom_binary(tmp_path_factory) -> Path:
    """A tiny binary (noncovid / covid), 2-site phantom (manifest path)."""
    from chestdx.phantom import synthesize_slices

    out = tmp_path_factory.mktemp("phantom2")
    return Path(synthesize_slices(out, n_patients_per_class=6, slices_per_patient=2, num_classes=2,
                                  sites=2, size=64, seed=3))


CAM_TINY = {"data": {"image_size": 64, "batch_size": 8}, "trainer": {"epochs": 1},
            "model": {"backbone": "resnet18", "weights": "none", "head_hidden": 16},
            "optim": {"name": "adam", "lr": 1e-3}}
"""Overrides that shrink the cam-snapmix paper recipes (ResNet-50, 224 px, ImageNet) to seconds."""
