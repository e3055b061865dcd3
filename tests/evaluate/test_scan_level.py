"""Scan-level answers from slice answers (evaluate/scan_level.py), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from chestdx.errors import ConfigError
from chestdx.evaluate.scan_level import scan_id_from_path, scan_level_answers, write_scan_answers

PROBS = np.array([
    [0.6, 0.3, 0.1],  # scan A
    [0.2, 0.2, 0.6],  # scan A
    [0.5, 0.1, 0.4],  # scan A
    [0.1, 0.8, 0.1],  # scan B
])
SCANS = ["A", "A", "A", "B"]


def test_mean_majority_max_by_hand(tmp_path):
    mean = scan_level_answers(PROBS, SCANS, "mean", labels=[2, 2, 2, 1])
    assert mean.scan_ids == ["A", "B"] and mean.n_slices.tolist() == [3, 1]
    assert np.allclose(mean.probs[0], [1.3 / 3, 0.6 / 3, 1.1 / 3]) and mean.pred.tolist() == [0, 1]
    assert mean.labels.tolist() == [2, 1]
    # majority: votes 0, 2, 0 -> (2/3, 0, 1/3)
    maj = scan_level_answers(PROBS, SCANS, "majority")
    assert np.allclose(maj.probs[0], [2 / 3, 0, 1 / 3]) and maj.labels is None
    # max: class 0 takes its minimum 0.2, others their maximum 0.3, 0.6 -> (0.2, 0.3, 0.6) / 1.1
    mx = scan_level_answers(PROBS, SCANS, "max")
    assert np.allclose(mx.probs[0], np.array([0.2, 0.3, 0.6]) / 1.1) and mx.pred.tolist() == [2, 1]
    path = write_scan_answers(tmp_path / "scans.csv", mean, ["normal", "pneumonia", "covid"])
    lines = path.read_text().splitlines()
    assert lines[0].startswith("scan_id,n_slices,label,pred") and lines[1].startswith("A,3,covid,normal")
    with pytest.raises(ConfigError):
        scan_level_answers(PROBS, SCANS, "median")


def test_scan_id_from_path():
    assert scan_id_from_path("/x/NCP_96_1328_0032.png") == "NCP_96_1328"
    assert scan_id_from_path("/x/siteA-p00003_s1_007.png") == "siteA-p00003_s1"
    assert scan_id_from_path("/data/scan42/0007.png") == "scan42"
