"""COVIDx-SeqCT builder (data/sequences.py): uniform indices by hand, grouping by scan, skip / repeat."""

from __future__ import annotations

import pytest

from chestdx.data.layouts import Sample
from chestdx.data.sequences import build_sequences, scan_id_of, uniform_indices
from chestdx.errors import ConfigError, DatasetError


def test_uniform_indices_40_slices():
    # i * 39 / 15 = i * 2.6, rounded half up: first and last slice always taken
    assert uniform_indices(40, 16) == [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31, 34, 36, 39]


def test_uniform_indices_10_slices_repeat_in_order():
    # i * 9 / 15 = i * 0.6, rounded half up
    assert uniform_indices(10, 16) == [0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6, 7, 7, 8, 8, 9]


def test_uniform_indices_edge_cases():
    assert uniform_indices(16, 16) == list(range(16))
    assert uniform_indices(7, 1) == [3]
    with pytest.raises(ConfigError):
        uniform_indices(0, 16)


def _scan(prefix: str, n: int, label: int, split: str = "train", patient: str = "site/p") -> list[Sample]:
    # deliberately out of order: the builder sorts by slice number
    return [Sample(f"/d/{prefix}_{k:04d}.png", label, patient, "site", None, None, split)
            for k in reversed(range(n))]


def test_covidx_names_group_by_scan_and_short_scans_are_skipped():
    samples = _scan("NCP_96_1328", 40, 2, patient="site/NCP_96") + _scan("NCP_96_1329", 10, 2, patient="site/NCP_96") \
        + _scan("Normal_3_7", 16, 0, patient="site/Normal_3")
    assert scan_id_of(samples[0]) == "site/NCP_96_1328"
    seqs, rep = build_sequences(samples, 16)
    assert (rep.scans, rep.kept, rep.skipped_short, rep.padded) == (3, 2, 1, 0)
    assert rep.skipped_ids == ["site/NCP_96_1329"]
    first = seqs[0]
    assert first.scan_id == "site/NCP_96_1328" and first.n_slices == 40 and first.label == 2
    assert [int(s.path[-8:-4]) for s in first.slices] == uniform_indices(40, 16)
    seqs, rep = build_sequences(samples, 16, short="repeat")
    assert (rep.kept, rep.skipped_short, rep.padded) == (3, 0, 1)
    assert [int(s.path[-8:-4]) for s in seqs[1].slices] == uniform_indices(10, 16)


def test_scan_mixing_labels_is_reported():
    samples = _scan("CP_1_2", 3, 1) + [Sample("/d/CP_1_2_0099.png", 2, "site/p", "site", None, None, "train")]
    with pytest.raises(DatasetError, match="CP_1_2"):
        build_sequences(samples, 2)
    with pytest.raises(ConfigError):
        build_sequences(samples[:3], 2, short="pad")
