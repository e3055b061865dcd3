"""Tests of chestdx.evaluate.compare: paired patient-bootstrap differences with a known answer."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from chestdx.errors import ChestdxError
from chestdx.evaluate.compare import (
    ComparisonError,
    compare_predictions,
    compare_runs,
    paired_difference,
    read_predictions,
)

NAMES = ["noncovid", "covid"]


def _write(path, files, labels, p1, patients=None, sites=None):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "site", "patient_id", "label", "pred", "p_noncovid", "p_covid"])
        for i, (fn, y, p) in enumerate(zip(files, labels, p1, strict=True)):
            w.writerow([fn, sites[i] if sites else "A", patients[i] if patients else f"pt{i}", NAMES[y],
                        NAMES[int(p > 0.5)], f"{1 - p:.6f}", f"{p:.6f}"])
    return path


def _pair(slices: int = 1):
    """100 patients: both runs right on 77, only A on 3, only B on 15, both wrong on 5.

    Accuracy A = 0.80, B = 0.92: B - A = 0.12 exactly. Per patient the difference of a resample is
    (X01 - X10) / 100 with (X01, X10) multinomial(100; 0.15, 0.03): sd = sqrt((0.18 - 0.12^2) / 100)
    = 0.0407, so the 95% interval is about 0.12 +- 0.08 and p about 2 * Phi(-0.12 / 0.0407) = 0.003.
    """
    y = np.array([i % 2 for i in range(100)])
    right_a = np.r_[np.ones(77), np.ones(3), np.zeros(15), np.zeros(5)].astype(bool)
    right_b = np.r_[np.ones(77), np.zeros(3), np.ones(15), np.zeros(5)].astype(bool)

    def p1(right):
        return np.where(right == (y == 1), 0.8, 0.2)

    files = [f"img{i:03d}_{j}.png" for i in range(100) for j in range(slices)]
    patients = [f"pt{i}" for i in range(100) for _ in range(slices)]
    rep = np.repeat
    return files, rep(y, slices), rep(p1(right_a), slices), rep(p1(right_b), slices), patients


def test_paired_difference_has_the_known_answer(tmp_path):
    files, y, pa, pb, patients = _pair()
    a = read_predictions(_write(tmp_path / "a.csv", files, y, pa, patients))
    b = read_predictions(_write(tmp_path / "b.csv", files[::-1], y[::-1], pb[::-1], patients[::-1]))  # any row order
    res = compare_predictions(a, b, ["accuracy"], n_boot=4000, seed=0)
    acc = res["figures"]["accuracy"]
    assert (acc["a"], acc["b"]) == (pytest.approx(0.80), pytest.approx(0.92))
    assert acc["difference"] == pytest.approx(0.12)
    sd = math.sqrt((0.18 - 0.12**2) / 100)
    assert acc["low"] == pytest.approx(0.12 - 1.96 * sd, abs=0.015)
    assert acc["high"] == pytest.approx(0.12 + 1.96 * sd, abs=0.015)
    assert acc["p_value"] < 0.02
    # the other way round: the negated difference, the mirrored interval
    back = compare_predictions(b, a, ["accuracy"], n_boot=4000, seed=0)["figures"]["accuracy"]
    assert back["difference"] == pytest.approx(-0.12)
    assert back["low"] == pytest.approx(-acc["high"]) and back["high"] == pytest.approx(-acc["low"])


def test_paired_interval_is_narrower_than_the_unpaired_one():
    files, y, pa, pb, patients = _pair()
    res = paired_difference([(y, np.c_[1 - pa, pa], np.c_[1 - pb, pb], patients)], NAMES, ["accuracy"],
                            n_boot=2000, seed=1)["accuracy"]
    # unpaired: independent resamples of A and B -> sd sqrt(.8*.2/100 + .92*.08/100) = 0.048
    assert res["high"] - res["low"] < 2 * 1.96 * 0.048 * 0.9


def test_identical_runs_differ_by_nothing(tmp_path):
    files, y, pa, _, patients = _pair()
    a = read_predictions(_write(tmp_path / "a.csv", files, y, pa, patients))
    res = compare_predictions(a, a, n_boot=200)
    for fig in res["figures"].values():
        assert fig["difference"] == 0.0
        assert fig["low"] == fig["high"] == 0.0
        assert fig["p_value"] == 1.0


def test_slices_of_a_patient_are_drawn_together(tmp_path):
    one = _pair(1)
    five = _pair(5)
    r1 = paired_difference([(one[1], np.c_[1 - one[2], one[2]], np.c_[1 - one[3], one[3]], one[4])], NAMES,
                           ["accuracy"], n_boot=1000, seed=2)["accuracy"]
    r5 = paired_difference([(five[1], np.c_[1 - five[2], five[2]], np.c_[1 - five[3], five[3]], five[4])], NAMES,
                           ["accuracy"], n_boot=1000, seed=2)["accuracy"]
    assert (r5["low"], r5["high"], r5["p_value"]) == pytest.approx((r1["low"], r1["high"], r1["p_value"]))
    per_slice = paired_difference([(five[1], np.c_[1 - five[2], five[2]], np.c_[1 - five[3], five[3]],
                                    five[0])], NAMES, ["accuracy"], n_boot=1000, seed=2)["accuracy"]
    assert per_slice["high"] - per_slice["low"] < 0.6 * (r5["high"] - r5["low"])  # about 1/sqrt(5)


def test_seeds_average_the_differences():
    files, y, pa, pb, patients = _pair()
    a2, b2 = np.c_[1 - pa, pa], np.c_[1 - pb, pb]
    res = paired_difference([(y, a2, b2, patients), (y, a2, a2, patients)], NAMES, ["accuracy"], n_boot=300)
    assert res["accuracy"]["difference"] == pytest.approx(0.06)  # mean of 0.12 and 0


def test_compare_refuses_other_cases_and_labels(tmp_path):
    files, y, pa, pb, patients = _pair()
    a = _write(tmp_path / "a.csv", files, y, pa, patients)
    b = _write(tmp_path / "b.csv", files[:-1], y[:-1], pb[:-1], patients[:-1])
    with pytest.raises(ComparisonError, match="not on the same test cases: 1 only in the first") as e:
        compare_runs(a, b)
    assert isinstance(e.value, ChestdxError)
    y2 = y.copy()
    y2[4] = 1 - y2[4]
    c = _write(tmp_path / "c.csv", files, y2, pb, patients)
    with pytest.raises(ComparisonError, match="label 1 case"):
        compare_runs(a, c)
    with pytest.raises(ComparisonError, match="no predictions.csv"):
        compare_runs(tmp_path / "nothing", a)


def test_compare_runs_writes_json_and_markdown_per_site(tmp_path):
    files, y, pa, pb, patients = _pair()
    sites = ["A" if i < 50 else "B" for i in range(100)]
    run_a, run_b = tmp_path / "ra" / "eval-test", tmp_path / "rb" / "eval-test"
    run_a.mkdir(parents=True)
    run_b.mkdir(parents=True)
    _write(run_a / "predictions.csv", files, y, pa, patients, sites)
    _write(run_b / "predictions.csv", files, y, pb, patients, sites)
    res = compare_runs(tmp_path / "ra", tmp_path / "rb", out=tmp_path / "cmp", n_boot=300)
    assert set(res["sites"]) == {"A", "B"} and res["ci_unit"] == "case"
    assert "positive.f1" in res["figures"]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| accuracy | 80.00 | 92.00 | 12.00 |" in md
    assert (tmp_path / "cmp" / "compare.json").is_file()


def test_cli_compare(tmp_path, capsys):
    from chestdx.cli import main

    files, y, pa, pb, patients = _pair()
    a = _write(tmp_path / "a.csv", files, y, pa, patients)
    b = _write(tmp_path / "b.csv", files, y, pb, patients)
    assert main(["compare", str(a), str(b), "--n-boot", "300", "--metrics", "accuracy", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| accuracy | 80.00 | 92.00 | 12.00 |" in out and "| yes |" in out
    c = _write(tmp_path / "c.csv", files[1:], y[1:], pb[1:], patients[1:])
    assert main(["compare", str(a), str(c)]) == 2
    assert "not on the same test cases" in capsys.readouterr().err
