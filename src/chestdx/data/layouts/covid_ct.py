"""The COVID-CT (UCSD-AI4H) split files: ``split/{COVID,NonCOVID}/{train,val,test}CT_*.txt``."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote

from chestdx.data.layouts.base import (
    Sample,
    abs_path,
    find_column,
    norm_key,
    normalize_split,
    read_lines,
    resolve_label,
    warn_stem_patients,
)
from chestdx.errors import DataError, DatasetError

__all__ = ["from_covid_ct_splits"]


def _patient_table(csv_path: Path, name_cols: Sequence[str], patient_cols: Sequence[str]) -> dict[str, str]:
    """``file name -> patient id`` from a CSV with some file-name and patient-id columns."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.DictReader(f)
            header = {norm_key(c): c for c in (reader.fieldnames or []) if c is not None}
            name_col, patient_col = find_column(header, name_cols), find_column(header, patient_cols)
            if name_col is None or patient_col is None:
                return {}
            out = {}
            for row in reader:
                name = (row.get(name_col) or "").strip()
                patient = (row.get(patient_col) or "").strip()
                if name and patient:
                    out[Path(name).name] = " ".join(patient.split())
            return out
    except (OSError, csv.Error):
        return {}


def _covid_ct_patients(root: Path) -> dict[str, str]:
    table: dict[str, str] = {}
    meta = root / "meta"
    if meta.is_dir():
        for f in sorted(meta.glob("*.csv")):
            table.update(_patient_table(f, ("file name", "image name", "filename", "image", "path"),
                                        ("patient id", "patient_id", "patientid")))
    labels = root / "labels.csv"
    if labels.is_file():
        table.update(_patient_table(labels, ("path", "file name", "filename", "image"),
                                    ("patient_id", "patient id", "patientid")))
    return table


def _match_name(name: str, files: dict[str, str], lower: dict[str, str]) -> str | None:
    """Find a listed file name in a folder listing despite case, URL-quoting and folder prefixes."""
    for cand in (name, Path(name.replace("\\", "/")).name, unquote(name), unquote(Path(name).name)):
        if cand in files:
            return files[cand]
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


def from_covid_ct_splits(root: str | Path, class_names: Sequence[str], site: str | None = None) -> list[Sample]:
    """Read the COVID-CT (UCSD-AI4H) layout.

    ``root/split/{COVID,NonCOVID}/{train,val,test}CT_{COVID,NonCOVID}.txt`` list file names (one
    per line) under ``root/images/CT_COVID`` and ``root/images/CT_NonCOVID`` (the upstream
    ``Images-processed/CT_COVID`` and bare ``CT_COVID`` folders are found too). Names are matched
    exactly first, then ignoring case, folder prefixes and URL-quoting (names hold ``%`` as in
    ``1%0.jpg``: several slices cut from one figure). Patient ids come from ``labels.csv`` or
    ``meta/*.csv`` where present; otherwise the name before ``%`` (the source figure), with a
    warning.

    Args:
        root: the COVID-CT folder.
        class_names: the recipe's class names (COVID -> covid, NonCOVID -> noncovid).
        site: site name; default the folder name.

    Returns:
        One :class:`Sample` per listed image with ``split`` set.

    Raises:
        DatasetError: no split files, or listed files that are not in the image folder (all
            reported at once).
    """
    root = Path(root)
    split_dir = root / "split"
    if not split_dir.is_dir():
        raise DatasetError(f"{root}: no 'split' folder (COVID-CT layout: split/{{COVID,NonCOVID}}/*CT_*.txt)")
    site = site or root.resolve().name
    patients = _covid_ct_patients(root)
    samples: list[Sample] = []
    problems: list[DataError] = []
    stem_patients = False
    found_lists = 0
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        cls = class_dir.name  # COVID / NonCOVID
        try:
            label = resolve_label(cls, class_names, source=class_dir)
        except DataError as e:
            problems.append(e)
            continue
        image_dir = None
        for cand in (root / "images" / f"CT_{cls}", root / "Images-processed" / f"CT_{cls}",
                     root / f"CT_{cls}", root / "images" / cls):
            if cand.is_dir():
                image_dir = cand
                break
        if image_dir is None:
            problems.append(DataError(root / "images" / f"CT_{cls}", f"image folder for {cls} not found"))
            continue
        files = {p.name: p.name for p in image_dir.iterdir() if p.is_file()}
        lower = {k.lower(): v for k, v in files.items()}
        for list_file in sorted(class_dir.glob("*.txt")):
            m = re.match(r"(train|val|valid|test)", list_file.name, re.IGNORECASE)
            if m is None:
                continue
            found_lists += 1
            split = normalize_split(m.group(1))
            for lineno, name in enumerate(read_lines(list_file), start=1):
                real = _match_name(name, files, lower)
                if real is None:
                    problems.append(DataError(f"{list_file} line {lineno}",
                                              f"{name!r} is not in {image_dir}"))
                    continue
                patient = patients.get(real) or patients.get(name)
                if not patient:
                    patient = Path(real).stem.split("%")[0]
                    stem_patients = True
                samples.append(Sample(abs_path(image_dir / real), label, patient, site, None, None, split))
    if problems:
        raise DatasetError(f"{root}: COVID-CT split files do not match the images", problems)
    if not found_lists or not samples:
        raise DatasetError(f"{root}: no {{train,val,test}}CT_*.txt split files with images under {split_dir}")
    if stem_patients:
        warn_stem_patients(root)
    return samples

