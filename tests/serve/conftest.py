"""A tiny trained run and its bundle, made once for the serve tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY


@pytest.fixture(scope="session")
def tiny_run(phantom_slices, tmp_path_factory) -> Path:
    from chestdx.config import load_recipe
    from chestdx.engine.train import train

    out = tmp_path_factory.mktemp("serve") / "run"
    train(load_recipe("demo", TINY), [phantom_slices], out, progress=False)
    return out


@pytest.fixture(scope="session")
def bundle(tiny_run, tmp_path_factory) -> Path:
    from chestdx.serve.bundle import export_bundle

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
