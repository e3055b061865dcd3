"""The ieee8023 COVID-19 collection layout: frontal views, finding -> class, patients; the real subset."""

from __future__ import annotations

from collections import Counter

import pytest

from chestdx.data.layouts import load_source
from chestdx.data.layouts.ieee8023 import finding_category, from_ieee8023, is_ieee8023_csv
from chestdx.errors import DatasetError

META = """patientid,offset,finding,view,modality,folder,filename
1,0,COVID-19,PA,X-ray,images,a.png
1,3,COVID-19,L,X-ray,images,a_lat.png
2,,Streptococcus,AP Supine,X-ray,images,b.jpg
3,,No Finding,PA,X-ray,images,c.png
4,,SARS,AP,X-ray,images,d.png
5,,COVID-19,Axial,CT,volumes,e.nii.gz
6,,Pneumonia/Viral/COVID-19,AP semi erect,X-ray,images,f.png
7,,Lipoid,PA,X-ray,images,g.png
"""


@pytest.mark.parametrize("finding,category", [
    ("COVID-19", "covid"), ("COVID-19, ARDS", "covid"), ("Pneumonia/Viral/COVID-19", "covid"),
    ("No Finding", "normal"), ("Streptococcus", "bacterial"), ("Mycoplasma Bacterial Pneumonia", "bacterial"),
    ("Pneumonia/Bacterial/Klebsiella", "bacterial"), ("SARS", "viral"), ("Varicella", "viral"),
    ("Pneumocystis", "fungal"), ("Lipoid", "pneumonia"), ("ARDS", "pneumonia"), ("Pneumonia", "pneumonia"),
    ("todo", "unknown"), ("Unknown", "unknown"), ("", "unknown"),
])
def test_finding_category(finding, category):
    assert finding_category(finding) == category


def test_three_classes_frontal_only(tmp_path):
    (tmp_path / "metadata.csv").write_text(META)
    assert is_ieee8023_csv(tmp_path / "metadata.csv")
    samples = load_source(tmp_path, ("normal", "pneumonia", "covid"))
    assert [(s.patient_id, s.label) for s in samples] == [("1", 2), ("2", 1), ("3", 0), ("4", 1), ("6", 2), ("7", 1)]
    assert samples[1].path.endswith("images/b.jpg") and samples[0].site == tmp_path.name


def test_viral_bacterial_split_leaves_out_unknown_kinds(tmp_path):
    (tmp_path / "metadata.csv").write_text(META)
    names = ("normal", "viral", "bacterial", "covid")
    samples = from_ieee8023(tmp_path / "metadata.csv", names)
    assert [(s.patient_id, names[s.label]) for s in samples] == [
        ("1", "covid"), ("2", "bacterial"), ("3", "normal"), ("4", "viral"), ("6", "covid")]


def test_binary_and_errors(tmp_path):
    (tmp_path / "metadata.csv").write_text(META)
    samples = from_ieee8023(tmp_path / "metadata.csv", ("noncovid", "covid"))
    assert Counter(s.label for s in samples) == {1: 2, 0: 4}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_text("patientid,finding,view,path\n,COVID-19,PA,x.png\n9,COVID-19,PA,\n")
    with pytest.raises(DatasetError) as e:
        from_ieee8023(bad / "labels.csv", ("normal", "pneumonia", "covid"))
    assert len(e.value.problems) == 2


@pytest.mark.realdata
def test_real_cxr_subset(real_data):
    root = real_data / "cxr_covid_chestxray_subset"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    samples = load_source(root, ("normal", "pneumonia", "covid"))
    # the README: 132 COVID-19 / 47 other pneumonia / 19 no finding, frontal, from 133 patients
    assert Counter(s.label for s in samples) == {2: 132, 1: 47, 0: 19}
    assert len({s.patient_id for s in samples}) == 133
    from chestdx.config import DataConfig
    from chestdx.data.transforms import LoadPreprocess

    pre = LoadPreprocess(DataConfig(image_size=64, clahe=True, clahe_clip=0.01, clahe_tile=8))
    for s in samples[:: len(samples) // 6]:  # a few RGB / grey / JPG / PNG files through CLAHE + z-score
        img = pre({"path": s.path, "box": None, "mask": None})["image"]
        assert img.shape == (1, 64, 64)
        assert abs(float(img.mean())) < 1e-4 and abs(float(img.std()) - 1) < 1e-2  # z-score of the whole image


def test_unlabelled_findings_are_left_out(tmp_path):
    (tmp_path / "metadata.csv").write_text(META + "8,,todo,PA,X-ray,images,h.png\n9,,Unknown,AP,X-ray,images,i.png\n")
    for names in (("normal", "pneumonia", "covid"), ("noncovid", "covid"), ("normal", "viral", "bacterial", "covid")):
        assert {s.patient_id for s in from_ieee8023(tmp_path / "metadata.csv", names)}.isdisjoint({"8", "9"})


@pytest.mark.realdata
def test_full_metadata_todo_rows_are_not_pneumonia(real_data):
    """The full metadata of the collection holds 28 frontal X-rays whose finding is ``todo``."""
    import csv

    meta = real_data / "cxr_covid_chestxray_subset" / "metadata_full.csv"
    if not meta.is_file():
        pytest.skip(f"{meta} absent")
    names = ("normal", "pneumonia", "covid")
    samples = from_ieee8023(meta, names)
    rows = list(csv.DictReader(open(meta, encoding="utf-8-sig")))
    todo = {f"{r['folder']}/{r['filename']}" for r in rows if r["finding"].strip().lower() == "todo"}
    frontal_todo = [r for r in rows if r["finding"].strip().lower() == "todo"
                    and r["view"].replace(" ", "").lower() in ("pa", "ap", "apsupine", "apsemierect", "aperect")
                    and r["modality"].strip().lower() in ("x-ray", "")]
    assert len(frontal_todo) == 28
    assert not [s for s in samples if any(s.path.endswith(t) for t in todo)]
    counts = Counter(names[s.label] for s in samples)
    # 117 "pneumonia" images before, 28 of them todo rows; COVID-19 and normal unchanged
    assert counts == {"covid": 434, "pneumonia": 89, "normal": 19}
