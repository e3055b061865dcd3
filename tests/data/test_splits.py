"""Tests of chestdx.data.splits: patient-disjoint, stratified, deterministic splits."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from chestdx.data.layouts import Sample, from_covid_ct_splits, load_source
from chestdx.data.splits import find_patient_leaks, kfold_split, patient_split, split_counts
from chestdx.errors import ConfigError, DatasetError


def _fake(n_patients: int = 60, seed: int = 0, site: str = "s") -> list[Sample]:
    """Patients with 1-6 slices each; about one third covid (label 1)."""
    rng = random.Random(seed)
    out = []
    for p in range(n_patients):
        label = 1 if p % 3 == 0 else 0
        for k in range(rng.randint(1, 6)):
            out.append(Sample(f"/d/{site}/p{p}_{k}.png", label, f"p{p}", site))
    return out


def _patient_splits(samples: list[Sample]) -> dict[tuple[str, str], set[str | None]]:
    d: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    for s in samples:
        d[(s.site, s.patient_id)].add(s.split)
    return d


def test_patients_never_straddle_and_fractions_hold():
    samples = _fake(120)
    out = patient_split(samples, (0.7, 0.15, 0.15), seed=3)
    assert all(len(v) == 1 for v in _patient_splits(out).values())
    assert not find_patient_leaks(out)
    n = len(out)
    counts = Counter(s.split for s in out)
    assert set(counts) == {"train", "val", "test"}
    assert abs(counts["train"] / n - 0.7) < 0.05
    assert abs(counts["val"] / n - 0.15) < 0.05
    assert abs(counts["test"] / n - 0.15) < 0.05


def test_stratified_class_balance():
    out = patient_split(_fake(120), seed=1)
    total = Counter(s.label for s in out)
    for split in ("train", "val", "test"):
        part = [s for s in out if s.split == split]
        frac = sum(s.label for s in part) / len(part)
        assert abs(frac - total[1] / len(out)) < 0.08, split


def test_deterministic_order_free_and_seed_dependent():
    samples = _fake(80)
    a = patient_split(samples, seed=5)
    shuffled = samples[::-1]
    b = patient_split(shuffled, seed=5)
    assert {s.path: s.split for s in a} == {s.path: s.split for s in b}
    c = patient_split(samples, seed=6)
    assert {s.path: s.split for s in a} != {s.path: s.split for s in c}


def test_copies_returned_input_untouched():
    samples = _fake(10)
    out = patient_split(samples)
    assert all(s.split is None for s in samples)
    assert [s.path for s in out] == [s.path for s in samples]
    assert all(o is not s for o, s in zip(out, samples, strict=True))


def test_existing_splits_kept_and_patients_completed():
    samples = _fake(40)
    samples[0].split = "test"  # patient p0 partly assigned
    fixed_patient = samples[0].patient_id
    others_before = [s for s in samples if s.patient_id == "p1"]
    for s in others_before:
        s.split = "val"
    out = patient_split(samples, seed=0)
    assert {s.split for s in out if s.patient_id == fixed_patient} == {"test"}
    assert {s.split for s in out if s.patient_id == "p1"} == {"val"}
    again = patient_split(samples, seed=0, overwrite=True)
    assert not find_patient_leaks(again)


def test_two_fractions_and_zero_fraction():
    out = patient_split(_fake(30), (0.8, 0.2))
    assert set(s.split for s in out) == {"train", "test"}
    out = patient_split(_fake(30), (0.8, 0.0, 0.2))
    assert "val" not in {s.split for s in out}


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (1.2, -0.2, 0.0), (1.0,), (0.25,) * 4])
def test_bad_fractions(fractions):
    with pytest.raises(ConfigError, match="fractions"):
        patient_split(_fake(5), fractions)


def test_same_patient_id_in_two_sites_are_two_patients():
    a = _fake(10, site="a")
    b = _fake(10, site="b")
    out = patient_split(a + b, seed=0)
    assert len({(s.site, s.patient_id) for s in out}) == 20
    assert not find_patient_leaks(out)


def test_split_by_image_count_hand_example():
    # one stratum, 4 patients of sizes 1, 1, 1, 7 (10 images), fractions (0.5, 0.5):
    # whatever the order, the 7-slice patient's middle decides its split; each one-slice patient
    # is alone in its band, so both splits are used.
    samples = [Sample(f"/x/{p}_{k}.png", 0, p, "s") for p, n in (("a", 1), ("b", 1), ("c", 1), ("d", 7))
               for k in range(n)]
    out = patient_split(samples, (0.5, 0.5), seed=0)
    assert {s.split for s in out} == {"train", "test"}
    assert len({s.split for s in out if s.patient_id == "d"}) == 1


# ---------------------------------------------------------------------------------- k-fold


def test_kfold_partitions_patients():
    samples = _fake(50)
    k = 5
    test_sets = []
    for fold in range(k):
        out = kfold_split(samples, k, fold, seed=2)
        assert {s.split for s in out} == {"train", "test"}
        assert not find_patient_leaks(out)
        test_sets.append({s.patient_id for s in out if s.split == "test"})
    assert set().union(*test_sets) == {s.patient_id for s in samples}
    assert sum(len(t) for t in test_sets) == 50  # disjoint
    sizes = [sum(1 for s in samples if s.patient_id in t) for t in test_sets]
    assert max(sizes) - min(sizes) <= 6
    for t in test_sets:  # stratified: every test fold has both classes
        assert {s.label for s in samples if s.patient_id in t} == {0, 1}


def test_kfold_deterministic_and_errors():
    samples = _fake(12)
    assert [s.split for s in kfold_split(samples, 3, 1, seed=4)] == [s.split for s in kfold_split(samples, 3, 1, seed=4)]
    with pytest.raises(ConfigError):
        kfold_split(samples, 1, 0)
    with pytest.raises(ConfigError):
        kfold_split(samples, 3, 3)
    with pytest.raises(DatasetError, match="only 2 patient"):
        kfold_split(_fake(2), 5, 0)


# ----------------------------------------------------------------------------------- counts


def test_split_counts_by_hand():
    samples = [
        Sample("/a", 0, "p1", "A", split="train"),
        Sample("/b", 0, "p1", "A", split="train"),
        Sample("/c", 1, "p2", "B", split="train"),
        Sample("/d", 1, "p3", "B", split="test"),
        Sample("/e", 1, "p4", "B"),
    ]
    c = split_counts(samples, ("noncovid", "covid"))
    assert c == {
        "samples": 5, "patients": 4, "classes": {"noncovid": 2, "covid": 3}, "sites": {"A": 2, "B": 3},
        "splits": {
            "train": {"samples": 3, "patients": 2, "classes": {"noncovid": 2, "covid": 1}, "sites": {"A": 2, "B": 1}},
            "test": {"samples": 1, "patients": 1, "classes": {"covid": 1}, "sites": {"B": 1}},
            "none": {"samples": 1, "patients": 1, "classes": {"covid": 1}, "sites": {"B": 1}},
        },
        "leaking_patients": 0,
    }
    assert list(c["splits"]) == ["train", "test", "none"]
    assert split_counts(samples)["classes"] == {0: 2, 1: 3}


def test_find_patient_leaks():
    s = [Sample("/a", 0, "p", "A", split="train"), Sample("/b", 0, "p", "A", split="test"),
         Sample("/c", 0, "p", "B", split="test")]
    assert find_patient_leaks(s) == {("A", "p"): ["test", "train"]}


# -------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_official_split_untouched(real_data):
    s = from_covid_ct_splits(real_data / "covid_ct_ucsd", ("noncovid", "covid"))
    out = patient_split(s, seed=0)
    assert [x.split for x in out] == [x.split for x in s]  # nothing to fill


@pytest.mark.realdata
def test_real_xray_patient_split(real_data):
    cxr = load_source(real_data / "cxr_covid_chestxray_subset", ("normal", "pneumonia", "covid"))
    out = patient_split(cxr, seed=0)
    assert not find_patient_leaks(out)
    counts = split_counts(out, ("normal", "pneumonia", "covid"))
    for split in ("train", "val", "test"):
        assert set(counts["splits"][split]["classes"]) == {"normal", "pneumonia", "covid"}
    for fold in range(5):
        assert not find_patient_leaks(kfold_split(cxr, 5, fold, seed=0))


# ------------------------------------------------------------------ leakage guard


def test_check_patient_leaks_refuses_a_patient_in_two_splits():
    from dataclasses import replace

    from chestdx.data.splits import check_patient_leaks
    from chestdx.errors import PatientLeakError

    out = patient_split(_fake(40), (0.7, 0.15, 0.15), seed=1)
    rep = check_patient_leaks(out)
    assert rep["ok"] and rep["checked"] and rep["leaks_between_splits"] == 0 and rep["patients"] == 40
    i = next(i for i, s in enumerate(out) if s.split == "train")
    leaked = list(out)
    leaked[i] = replace(out[i], split="test")
    if len({s.split for s in leaked if s.patient_id == out[i].patient_id}) == 1:  # a one-slice patient
        leaked.append(replace(out[i], path=out[i].path + ".b", split="train"))
    with pytest.raises(PatientLeakError, match=f"s/{out[i].patient_id} \\(test, train\\)") as e:
        check_patient_leaks(leaked)
    assert "data.allow_patient_leaks=true" in str(e.value) and isinstance(e.value, DatasetError)
    rep = check_patient_leaks(leaked, allow=True)
    assert not rep["ok"] and rep["allowed"] and rep["leaks_between_splits"] == 1


def test_test_patients_the_encoder_trained_on_are_refused():
    from chestdx.data.splits import check_patient_leaks, find_encoder_leaks
    from chestdx.errors import PatientLeakError

    samples = _fake(30)
    encoder = patient_split(samples, (0.7, 0.15, 0.15), seed=0)
    same = patient_split(samples, (0.7, 0.15, 0.15), seed=0)
    other = patient_split(samples, (0.7, 0.15, 0.15), seed=5)  # the issue: another seed, another split
    assert find_encoder_leaks(same, encoder) == {}
    leaks = find_encoder_leaks(other, encoder)
    test_pts = {(s.site, s.patient_id) for s in other if s.split == "test"}
    enc_train = {(s.site, s.patient_id) for s in encoder if s.split == "train"}
    enc_seen = enc_train | {(s.site, s.patient_id) for s in encoder if s.split == "val"}
    expected = {(s.site, s.patient_id) for s in other
                if (s.split == "test" and (s.site, s.patient_id) in enc_seen)
                or (s.split == "val" and (s.site, s.patient_id) in enc_train)}
    assert set(leaks) == expected and expected & test_pts
    with pytest.raises(PatientLeakError, match="seen by the encoder"):
        check_patient_leaks(other, encoder_samples=encoder, encoder="/runs/att2")
    assert check_patient_leaks(same, encoder_samples=encoder)["encoder_checked"]
