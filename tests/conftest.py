"""Shared fixtures: the real-data folder (skipped where absent), small phantom data sets, and a tiny
trained run with its bundle (predict and serve tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


# A tiny trained run and its bundle, made once for the predict and serve tests
@pytest.fixture(scope="session")
def tiny_run(phantom_slices, tmp_path_factory) -> Path:
    from chestdx.config import load_recipe
    from chestdx.engine.train import train

    out = tmp_path_factory.mktemp("serve") / "run"
    train(load_recipe("demo", TINY), [phantom_slices], out, progress=False)
    return out


@pytest.fixture(scope="session")
def bundle(tiny_run, tmp_path_factory) -> Path:
    from chestdx.predict.bundle import export_bundle

    return export_bundle(tiny_run, tmp_path_factory.mktemp("bundle") / "model")


@pytest.fixture(scope="session")
def phantom_png(phantom_slices) -> Path:
    import csv

    with open(phantom_slices, newline="") as f:
        row = next(csv.DictReader(f))
    p = Path(row["path"])
    return p if p.is_absolute() else Path(phantom_slices).parent / p


@pytest.fixture(scope="session")
def series_dir(tmp_path_factory) -> Path:
    """A 6-slice DICOM series (HU -1000..400 pattern) with shuffled file names."""
    from tests.dicom_utils import write_series

    rng = np.random.default_rng(0)
    vol = (rng.integers(0, 1400, size=(6, 40, 40))).astype(np.uint16)
    out = tmp_path_factory.mktemp("series") / "series"
    write_series(out, vol, intercept=-1000.0)
    return out
