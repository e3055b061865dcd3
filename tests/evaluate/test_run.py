"""evaluate/run.py: what predictions.csv holds (CAM voting's per-copy probabilities for Figure 2)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from chestdx.data.layouts import Sample
from chestdx.evaluate.run import write_predictions


def test_predictions_csv_holds_the_vote_probabilities(tmp_path):
    samples = [Sample(f"/d/{i}.png", i % 2, f"p{i}", "A") for i in range(3)]
    votes = np.array([[0.52, 0.61, 0.9], [0.2, 0.1, 0.05], [0.7, 0.4, 0.3]])
    preds = {"probs": np.array([[0.53, 0.47], [0.8, 0.2], [0.3, 0.7]]), "index": np.array([0, 1, 2]),
             "flipped": np.array([1.0, 0.0, 0.0]), "vote_probs": votes, "vote_original": np.array([0.47, 0.2, 0.7])}
    write_predictions(tmp_path / "p.csv", samples, preds, ["noncovid", "covid"])
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert list(rows[0]) == ["path", "site", "patient_id", "label", "pred", "p_noncovid", "p_covid", "flipped",
                             "vote_p_0", "vote_p_1", "vote_p_2", "vote_p_3"]
    # Figure 2: the whole image at 0.47, then the masked copies rising above 0.5: the label flipped
    assert [float(rows[0][f"vote_p_{j}"]) for j in range(4)] == pytest.approx([0.47, 0.52, 0.61, 0.9])
    assert rows[0]["flipped"] == "1" and rows[0]["pred"] == "noncovid"
    # without voting: no vote columns
    write_predictions(tmp_path / "q.csv", samples, {"probs": preds["probs"], "index": preds["index"]},
                       ["noncovid", "covid"])
    assert list(next(csv.DictReader(open(tmp_path / "q.csv")))) == ["path", "site", "patient_id", "label", "pred",
                                                                   "p_noncovid", "p_covid"]
