"""Tests of chestdx.data.layouts on tiny fake trees (and, marked realdata, the real layouts)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chestdx.data.layouts import (
    Sample,
    check_samples,
    from_class_folders,
    from_covid_ct_splits,
    from_covidx_labels,
    from_manifest,
    load_source,
    load_sources,
    parse_covidx_ids,
    resolve_label,
)
from chestdx.data.splits import find_patient_leaks
from chestdx.errors import DataError, DatasetError

BINARY = ("noncovid", "covid")
THREE = ("normal", "pneumonia", "covid")


def _png(path: Path, size: tuple[int, int] = (16, 12), value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


# ------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("name", ["covid", "COVID-19", "covid19", "CT_COVID", "NCP", "Positive", "Covid_19"])
def test_covid_aliases(name):
    assert resolve_label(name, BINARY) == 1
    assert resolve_label(name, THREE) == 2


@pytest.mark.parametrize("name", ["noncovid", "NonCOVID", "non-COVID", "CT_NonCOVID", "negative"])
def test_noncovid_aliases(name):
    assert resolve_label(name, BINARY) == 0


@pytest.mark.parametrize(("name", "index"), [("normal", 0), ("Healthy", 0), ("No Finding", 0),
                                             ("pneumonia", 1), ("CP", 1), ("other pneumonia", 1),
                                             ("Bacterial", 1), ("viral", 1)])
def test_three_class_aliases(name, index):
    assert resolve_label(name, THREE) == index


@pytest.mark.parametrize("name", ["normal", "No Finding", "pneumonia", "CP", "other pneumonia"])
def test_binary_task_folds_normal_and_pneumonia_into_noncovid(name):
    assert resolve_label(name, BINARY) == 0
    assert resolve_label(name, ("covid", "noncovid")) == 1  # order of class_names respected


def test_index_labels():
    assert resolve_label("1", BINARY) == 1
    assert resolve_label(2, THREE) == 2
    assert resolve_label(" 0 ", THREE) == 0
    with pytest.raises(DataError, match="out of range"):
        resolve_label("3", THREE)


def test_unknown_label_names_file_value_and_valid_names():
    with pytest.raises(DataError) as info:
        resolve_label("tuberculosis", BINARY, source="data/x.csv line 4")
    msg = str(info.value)
    assert "data/x.csv line 4" in msg and "'tuberculosis'" in msg
    assert "0=noncovid" in msg and "1=covid" in msg
    with pytest.raises(DataError, match="unknown label 'NonCOVID'"):
        resolve_label("NonCOVID", THREE)  # noncovid cannot be normal or pneumonia


def test_custom_class_names_match_by_name():
    assert resolve_label("Lesion", ("background", "lesion")) == 1


# ------------------------------------------------------------------------------ class folders


def test_class_folders_flat(tmp_path):
    _png(tmp_path / "COVID" / "a.png")
    _png(tmp_path / "COVID" / "b.jpg")
    _png(tmp_path / "non-COVID" / "c.png")
    (tmp_path / "non-COVID" / "notes.txt").write_text("x")
    _png(tmp_path / "masks" / "a.png")  # not a class: skipped
    with pytest.warns(UserWarning, match="both sides"):
        samples = from_class_folders(tmp_path, BINARY, site="A")
    assert [(Path(s.path).name, s.label, s.patient_id, s.site, s.split) for s in samples] == [
        ("a.png", 1, "a", "A", None), ("b.jpg", 1, "b", "A", None), ("c.png", 0, "c", "A", None)]
    assert all(os.path.isabs(s.path) for s in samples)


def test_class_folders_with_splits_and_patient_subfolders(tmp_path):
    _png(tmp_path / "train" / "covid" / "p1" / "s1.png")
    _png(tmp_path / "train" / "covid" / "p1" / "s2.png")
    _png(tmp_path / "train" / "normal" / "p2" / "s1.png")
    _png(tmp_path / "valid" / "pneumonia" / "p3" / "s1.png")
    _png(tmp_path / "test" / "covid" / "p4" / "s1.png")
    samples = from_class_folders(tmp_path, THREE)
    got = sorted((s.split, s.label, s.patient_id) for s in samples)
    assert got == [("test", 2, "p4"), ("train", 0, "p2"), ("train", 2, "p1"), ("train", 2, "p1"),
                   ("val", 1, "p3")]
    assert {s.site for s in samples} == {tmp_path.name}


def test_class_folders_unusable_class(tmp_path):
    _png(tmp_path / "covid" / "a.png")
    _png(tmp_path / "noncovid" / "b.png")
    with pytest.raises(DatasetError, match="do not fit") as info:
        from_class_folders(tmp_path, THREE)
    assert "noncovid" in str(info.value)


def test_class_folders_empty(tmp_path):
    (tmp_path / "covid").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        from_class_folders(tmp_path, BINARY)


# ----------------------------------------------------------------------------------- manifest


def test_manifest(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png")
    _png(tmp_path / "img" / "c.png")
    _png(tmp_path / "m" / "a.png")
    (tmp_path / "data.csv").write_text(
        "path,label,patient_id,site,mask,split,xmin,ymin,xmax,ymax\n"
        "img/a.png,covid,P1,,m/a.png,Train,1,2,10,11\n"
        "img/b.png,0,P1,other,,validation,,,,\n"
        f"{tmp_path / 'img' / 'c.png'},Normal,P2,,,,,,,\n")
    s = from_manifest(tmp_path / "data.csv", BINARY, site="S")
    assert s[0] == Sample(str(tmp_path / "img" / "a.png"), 1, "P1", "S", str(tmp_path / "m" / "a.png"),
                          (1, 2, 10, 11), "train")
    assert (s[1].label, s[1].site, s[1].split, s[1].box, s[1].mask) == (0, "other", "val", None, None)
    assert (s[2].path, s[2].label, s[2].split) == (str(tmp_path / "img" / "c.png"), 0, None)


def test_manifest_class_name_wins_over_foreign_index(tmp_path):
    # a data set that counts 0=noncovid, 1=covid read into a three-class task ordered differently
    (tmp_path / "labels.csv").write_text("path,label,class,patient_id\na.png,1,COVID,1\nb.png,0,Normal,2\n")
    s = from_manifest(tmp_path / "labels.csv", THREE)
    assert [x.label for x in s] == [2, 0]


def test_manifest_alternative_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("Image,patientid,group\nx.png,7,COVID-19\ny.png,8,other pneumonia\n")
    s = from_manifest(tmp_path / "labels.csv", THREE)
    assert [(Path(x.path).name, x.patient_id, x.label) for x in s] == [("x.png", "7", 2), ("y.png", "8", 1)]


def test_manifest_missing_patient_warns(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nsub/scan1.png,1\n")
    with pytest.warns(UserWarning, match="may end up on both sides"):
        s = from_manifest(tmp_path / "m.csv", BINARY)
    assert s[0].patient_id == "scan1"
    assert s[0].site == tmp_path.name


def test_manifest_reports_all_bad_rows(tmp_path):
    (tmp_path / "m.csv").write_text(
        "path,label,patient_id,split,xmin,ymin,xmax,ymax\n"
        "a.png,flu,p,,,,,\n"
        "b.png,1,p,holdout-ish,,,,\n"
        "c.png,1,p,,5,5,2,9\n"
        ",1,p,,,,,\n"
        "e.png,7,p,,,,,\n"
        "f.png,1,p,train,1,2,3,4\n")
    with pytest.raises(DatasetError) as info:
        from_manifest(tmp_path / "m.csv", BINARY)
    err = info.value
    assert len(err.problems) == 5
    msg = str(err)
    for needle in ("line 2: unknown label 'flu'", "line 3: unknown split", "line 4: box",
                   "line 5: empty path", "line 6: label index 7 is out of range"):
        assert needle in msg


def test_manifest_bad_header_and_empty(tmp_path):
    (tmp_path / "m.csv").write_text("file_path_typo,diag\nx,1\n")
    with pytest.raises(DatasetError, match="needs a 'path' and a 'label'"):
        from_manifest(tmp_path / "m.csv", BINARY)
    (tmp_path / "e.csv").write_text("path,label\n")
    with pytest.raises(DatasetError, match="no rows"):
        from_manifest(tmp_path / "e.csv", BINARY)
    with pytest.raises(DatasetError, match="not found"):
        from_manifest(tmp_path / "none.csv", BINARY)


# ----------------------------------------------------------------------------------- COVID-CT


def _covid_ct_tree(root: Path, labels_csv: bool = True) -> None:
    covid = ["2020.01.24-p1-1.png", "fig%0.png", "fig%1.png", "x-p2-3.png"]
    non = ["1%0.jpg", "1%1.jpg", "7.png"]
    for n in covid:
        _png(root / "images" / "CT_COVID" / n)
    for n in non:
        _png(root / "images" / "CT_NonCOVID" / n)
    (root / "split" / "COVID").mkdir(parents=True)
    (root / "split" / "NonCOVID").mkdir(parents=True)
    (root / "split" / "COVID" / "trainCT_COVID.txt").write_text("2020.01.24-p1-1.png\r\nfig%0.png\n\n")
    (root / "split" / "COVID" / "valCT_COVID.txt").write_text("fig%1.png\n")
    (root / "split" / "COVID" / "testCT_COVID.txt").write_text("X-P2-3.PNG  \n")  # case differs
    (root / "split" / "NonCOVID" / "trainCT_NonCOVID.txt").write_text("1%250.jpg\n1%251.jpg\n")  # URL-quoted
    (root / "split" / "NonCOVID" / "testCT_NonCOVID.txt").write_text("7.png\n")
    if labels_csv:
        (root / "labels.csv").write_text(
            "path,label,class,split,patient_id\n"
            "images/CT_COVID/2020.01.24-p1-1.png,1,COVID,train,Patient 1\n"
            "images/CT_COVID/fig%0.png,1,COVID,train,Patient 2 \n"
            "images/CT_COVID/fig%1.png,1,COVID,val,Patient 2\n"
            "images/CT_COVID/x-p2-3.png,1,COVID,test,Patient 3\n"
            "images/CT_NonCOVID/1%0.jpg,0,NonCOVID,train,crawled_patient_1\n"
            "images/CT_NonCOVID/1%1.jpg,0,NonCOVID,train,crawled_patient_1\n"
            "images/CT_NonCOVID/7.png,0,NonCOVID,test,crawled_patient_7\n")


def test_covid_ct_splits(tmp_path):
    _covid_ct_tree(tmp_path)
    s = from_covid_ct_splits(tmp_path, BINARY, site="B")
    got = sorted((Path(x.path).name, x.label, x.split, x.patient_id) for x in s)
    assert got == [("1%0.jpg", 0, "train", "crawled_patient_1"), ("1%1.jpg", 0, "train", "crawled_patient_1"),
                   ("2020.01.24-p1-1.png", 1, "train", "Patient 1"), ("7.png", 0, "test", "crawled_patient_7"),
                   ("fig%0.png", 1, "train", "Patient 2"), ("fig%1.png", 1, "val", "Patient 2"),
                   ("x-p2-3.png", 1, "test", "Patient 3")]
    assert all(Path(x.path).is_file() for x in s)
    assert {x.site for x in s} == {"B"}


def test_covid_ct_patients_from_meta(tmp_path):
    _covid_ct_tree(tmp_path, labels_csv=False)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "COVID-CT-MetaInfo.csv").write_text(
        "File name,Patient ID,Age\n2020.01.24-p1-1.png,Patient 1,41\nfig%0.png,Patient 9,3\n"
        "fig%1.png,Patient 9,3\nx-p2-3.png,Patient 3,1\n")
    (tmp_path / "meta" / "NonCOVID-CT-MetaInfo.csv").write_text(
        ",image name,patient id\n0,1%0.jpg,crawled_patient_1\n1,1%1.jpg,crawled_patient_1\n2,7.png,cp7\n")
    s = from_covid_ct_splits(tmp_path, BINARY)
    assert {Path(x.path).name: x.patient_id for x in s}["fig%1.png"] == "Patient 9"
    assert {Path(x.path).name: x.patient_id for x in s}["7.png"] == "cp7"


def test_covid_ct_patients_fallback_to_figure(tmp_path):
    _covid_ct_tree(tmp_path, labels_csv=False)
    with pytest.warns(UserWarning, match="no patient ids"):
        s = from_covid_ct_splits(tmp_path, BINARY)
    ids = {Path(x.path).name: x.patient_id for x in s}
    assert ids["1%0.jpg"] == ids["1%1.jpg"] == "1"
    assert ids["fig%0.png"] == "fig"


def test_covid_ct_missing_files_all_reported(tmp_path):
    _covid_ct_tree(tmp_path)
    (tmp_path / "split" / "COVID" / "valCT_COVID.txt").write_text("fig%1.png\nghost1.png\nghost2.png\n")
    with pytest.raises(DatasetError) as info:
        from_covid_ct_splits(tmp_path, BINARY)
    assert len(info.value.problems) == 2
    assert "valCT_COVID.txt line 2" in str(info.value) and "'ghost2.png'" in str(info.value)


# ---------------------------------------------------------------------------------- COVIDx-CT


@pytest.mark.parametrize(("name", "patient", "scan"), [
    ("NCP_96_1328_0032.png", "NCP_96", "NCP_96_1328"),
    ("CP_1_3052_0000.png", "CP_1", "CP_1_3052"),
    ("Normal_2143_183_0091.png", "Normal_2143", "Normal_2143_183"),
    ("radiopaedia_10_85902_3-0012.png", "radiopaedia_10_85902", "radiopaedia_10_85902"),
    ("coronacases_001_0150.png", "coronacases_001", "coronacases_001"),
    ("single.png", "single", "single"),
])
def test_parse_covidx_ids(name, patient, scan):
    assert parse_covidx_ids(name) == (patient, scan)


def _covidx_tree(root: Path) -> Path:
    names = ["NCP_96_1328_0032.png", "NCP_96_1328_0033.png", "CP_1_3052_0000.png", "Normal_5_7_0001.png"]
    for n in names:
        _png(root / "2A_images" / n, size=(64, 64))
    label = root / "train_COVIDx_CT-2A.txt"
    label.write_text("NCP_96_1328_0032.png 2 10 12 50 60\nNCP_96_1328_0033.png 2 9 11 51 61\n"
                     "CP_1_3052_0000.png 1 0 0 64 64\nNormal_5_7_0001.png 0 3 4 40 41\n")
    return label


def test_covidx_labels(tmp_path):
    label = _covidx_tree(tmp_path)
    s = from_covidx_labels(label, tmp_path / "2A_images", THREE, site="X")
    assert [(x.label, x.patient_id, x.box, x.split, x.site) for x in s] == [
        (2, "NCP_96", (10, 12, 50, 60), "train", "X"), (2, "NCP_96", (9, 11, 51, 61), "train", "X"),
        (1, "CP_1", (0, 0, 64, 64), "train", "X"), (0, "Normal_5", (3, 4, 40, 41), "train", "X")]
    assert [x.label for x in from_covidx_labels(label, tmp_path / "2A_images", BINARY)] == [1, 1, 0, 0]
    assert s[0].path == str(tmp_path / "2A_images" / "NCP_96_1328_0032.png")


def test_covidx_split_from_name_and_bad_lines(tmp_path):
    (tmp_path / "val_COVIDx_CT-3.txt").write_text("a_1.png 2 0 0 5 5\n")
    assert from_covidx_labels(tmp_path / "val_COVIDx_CT-3.txt", tmp_path, THREE)[0].split == "val"
    (tmp_path / "labels_extra.txt").write_text("a_1.png 2 0 0 5 5\n")
    assert from_covidx_labels(tmp_path / "labels_extra.txt", tmp_path, THREE)[0].split is None
    (tmp_path / "test_bad.txt").write_text("a_1.png 5 0 0 5 5\nb_1.png 2 0 0\nc_1.png 1 9 9 3 3\n")
    with pytest.raises(DatasetError) as info:
        from_covidx_labels(tmp_path / "test_bad.txt", tmp_path, THREE)
    assert len(info.value.problems) == 3
    assert "line 1: COVIDx class '5'" in str(info.value)


# -------------------------------------------------------------------------------- auto-detect


def test_load_source_detects_each_layout(tmp_path):
    _covid_ct_tree(tmp_path / "ucsd", labels_csv=False)
    with pytest.warns(UserWarning):
        assert len(load_source(tmp_path / "ucsd", BINARY)) == 7  # split/
    _covid_ct_tree(tmp_path / "ucsd2")
    s = load_source(tmp_path / "ucsd2", BINARY)  # labels.csv wins
    assert len(s) == 7 and {x.site for x in s} == {"ucsd2"}
    assert {x.split for x in s} == {"train", "val", "test"}
    label = _covidx_tree(tmp_path / "covidx")
    assert len(load_source(tmp_path / "covidx", THREE)) == 4  # folder with COVIDx label files
    assert len(load_source(label, THREE)) == 4  # the label file itself; images in 2A_images/
    _png(tmp_path / "folders" / "covid" / "p" / "a.png")
    _png(tmp_path / "folders" / "normal" / "q" / "b.png")
    assert len(load_source(tmp_path / "folders", BINARY)) == 2
    _png(tmp_path / "nested" / "images" / "COVID" / "p" / "a.png")
    assert len(load_source(tmp_path / "nested", BINARY)) == 1
    (tmp_path / "m.csv").write_text("path,label,patient_id\nfolders/covid/p/a.png,covid,p\n")
    assert load_source(tmp_path / "m.csv", BINARY)[0].site == tmp_path.name


def test_load_source_nothing_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        load_source(tmp_path / "empty", BINARY)
    msg = str(info.value)
    assert str(tmp_path / "empty") in msg and "layouts tried" in msg and "class folders" in msg
    with pytest.raises(DatasetError, match="not found"):
        load_source(tmp_path / "absent", BINARY)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DatasetError, match="unsupported"):
        load_source(tmp_path / "x.json", BINARY)


def test_load_sources_joins_sites(tmp_path):
    for site in ("a", "b"):
        _png(tmp_path / site / "covid" / "p1" / "x.png")
        _png(tmp_path / site / "noncovid" / "p2" / "y.png")
    _png(tmp_path / "deep" / "a" / "covid" / "p1" / "x.png")
    s = load_sources([tmp_path / "a", tmp_path / "b", tmp_path / "deep" / "a"], BINARY)
    assert Counter(x.site for x in s) == {"a": 2, "b": 2, "a_2": 1}
    assert {x.patient_id for x in s if x.site == "a"} == {"a/p1", "a/p2"}
    assert {x.patient_id for x in s if x.site == "a_2"} == {"a_2/p1"}
    assert len({x.patient_id for x in s}) == 5  # unique across sites
    named = load_sources({"siteA": tmp_path / "a"}, BINARY)
    assert {x.site for x in named} == {"siteA"} and named[0].patient_id.startswith("siteA/")
    with pytest.raises(DatasetError):
        load_sources([], BINARY)


# ------------------------------------------------------------------------------------- checks


def test_sample_asdict():
    s = Sample("/x.png", 1, "p", "s", None, (1, 2, 3, 4), "train")
    assert asdict(s) == {"path": "/x.png", "label": 1, "patient_id": "p", "site": "s", "mask": None,
                         "box": (1, 2, 3, 4), "split": "train"}


def test_check_samples_ok(tmp_path):
    a = _png(tmp_path / "a.png", (16, 12))
    m = _png(tmp_path / "m.png", (16, 12), 255)
    check_samples([Sample(str(a), 0, "p", "s", str(m), (0, 0, 16, 12), None)])
    check_samples([Sample(str(a), 0, "p", "s")], read=False)


def test_check_samples_reports_everything_at_once(tmp_path):
    good = _png(tmp_path / "good.png", (16, 12))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"garbage" * 20)
    small_mask = _png(tmp_path / "small_mask.png", (8, 8))
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]]))
    samples = [
        Sample(str(good), 0, "p1", "s"),
        Sample(str(tmp_path / "missing.png"), 0, "p2", "s"),
        Sample(str(tmp_path / "empty.png"), 1, "p3", "s"),
        Sample(str(tmp_path / "junk.png"), 1, "p4", "s"),
        Sample(str(good), 0, "p1", "s", str(small_mask)),  # mask shape differs
        Sample(str(good), 0, "p1", "s", None, (0, 0, 40, 12)),  # box outside
        Sample(str(tmp_path / "nan.npy"), 1, "p5", "s"),
        Sample(str(good), 1, "p1", "s"),  # same file, other label
    ]
    with pytest.raises(DatasetError) as info:
        check_samples(samples)
    err = info.value
    assert len(err.problems) == 7
    msg = str(err)
    for needle in ("missing.png: file not found", "empty.png: file is empty", "junk.png: not a readable image",
                   "mask shape (8, 8) differs", "box (0, 0, 40, 12) lies outside", "nan.npy: image holds 1 NaN",
                   "listed twice"):
        assert needle in msg


def test_check_samples_without_reading(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"garbage")
    s = [Sample(str(tmp_path / "junk.png"), 0, "p", "s"), Sample(str(tmp_path / "no.png"), 0, "p", "s",
                                                               str(tmp_path / "nomask.png"))]
    with pytest.raises(DatasetError) as info:
        check_samples(s, read=False)
    assert len(info.value.problems) == 2  # junk is not decoded; the missing image and mask are found
    with pytest.raises(DatasetError, match="empty data set"):
        check_samples([])


# ---------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_covid_ct_split_files(real_data):
    s = from_covid_ct_splits(real_data / "covid_ct_ucsd", BINARY)
    counts = Counter((x.label, x.split) for x in s)
    assert counts == {(1, "train"): 191, (1, "val"): 60, (1, "test"): 98,
                      (0, "train"): 234, (0, "val"): 58, (0, "test"): 105}
    assert all(Path(x.path).is_file() for x in s)
    assert not find_patient_leaks(s)
    assert len({x.patient_id for x in s}) > 300


@pytest.mark.realdata
def test_real_load_source_covid_ct_same_as_split_files(real_data):
    a = load_source(real_data / "covid_ct_ucsd", BINARY)  # labels.csv
    b = from_covid_ct_splits(real_data / "covid_ct_ucsd", BINARY)
    key = lambda x: (x.path, x.label, x.split, x.patient_id)  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))


@pytest.mark.realdata
def test_real_sources_and_xray(real_data):
    with pytest.warns(UserWarning, match="no patient ids"):
        s = load_sources([real_data / "covid_ct_ucsd", real_data / "sars_cov2_ct_subset"], BINARY)
    assert Counter(x.site for x in s) == {"covid_ct_ucsd": 746, "sars_cov2_ct_subset": 200}
    check_samples(s, read=False)
    cxr = load_source(real_data / "cxr_covid_chestxray_subset", THREE)
    assert Counter(x.label for x in cxr) == {2: 132, 1: 47, 0: 19}
    assert len({x.patient_id for x in cxr}) == 133
    check_samples(cxr, read=False)


def test_a_file_listed_twice_is_used_once(tmp_path, caplog):
    """The ieee8023 metadata lists one image under two patient ids: it is used once (it counted twice
    in training and evaluation, and a patient split could put it on both sides), with a warning that
    names it; listed twice with two labels, it is refused."""
    import logging

    from chestdx.config import load_recipe
    from chestdx.tasks import load_samples

    for i in range(8):
        _png(tmp_path / "img" / f"{i}.png", value=20 * i)
    rows = "".join(f"img/{i}.png,{'covid' if i % 2 else 'noncovid'},P{i}\n" for i in range(8))
    (tmp_path / "ok.csv").write_text("path,label,patient_id\n" + rows + "img/3.png,covid,P9\n")
    recipe = load_recipe("demo", {"data": {"class_names": list(BINARY)}})
    with caplog.at_level(logging.WARNING):
        got = load_samples([tmp_path / "ok.csv"], recipe)
    assert len(got) == 8 and [Path(s.path).name for s in got].count("3.png") == 1
    assert "3.png: listed 2 times with the same label (patients " in caplog.text and "used once" in caplog.text
    assert "/P3, " in caplog.text and "/P9)" in caplog.text  # the patient ids, namespaced by site
    (tmp_path / "bad.csv").write_text("path,label,patient_id\n" + rows + "img/3.png,noncovid,P9\n")
    with pytest.raises(DatasetError) as err:
        load_samples([tmp_path / "bad.csv"], recipe)
    assert "3.png" in str(err.value.problems[0]) and "listed twice" in str(err.value.problems[0])
