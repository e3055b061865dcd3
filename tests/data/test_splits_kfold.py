"""k-fold with a validation split carved from each fold's training patients (MAG-SD's 5 folds)."""

from __future__ import annotations

from collections import defaultdict

from chestdx.data.layouts import Sample
from chestdx.data.splits import find_patient_leaks, kfold_train_val_test


def test_folds_partition_patients_and_keep_a_val_split():
    samples = [Sample(f"/x/{p}_{i}.png", p % 3, f"p{p}", "s") for p in range(30) for i in range(2)]
    tested = defaultdict(int)
    for fold in range(5):
        out = kfold_train_val_test(samples, 5, fold, seed=0)
        assert [s.path for s in out] == [s.path for s in samples]
        assert {s.split for s in out} == {"train", "val", "test"}
        assert not find_patient_leaks(out)
        n = {k: sum(s.split == k for s in out) for k in ("train", "val", "test")}
        assert n["test"] == 12 and 4 <= n["val"] <= 12
        for s in out:
            if s.split == "test":
                tested[s.patient_id] += 1
    assert len(tested) == 30 and set(tested.values()) == {2}  # every patient tested exactly once
