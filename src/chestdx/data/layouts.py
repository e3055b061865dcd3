"""Data set layouts on disk -> one list of :class:`Sample` records.

Supported layouts (``load_source`` tries them in this order):

1. a manifest CSV (``path,label[,class,patient_id,site,mask,split,xmin,ymin,xmax,ymax]``), given
   directly or as ``manifest.csv`` / ``labels.csv`` inside a folder (:func:`from_manifest`);
2. the COVID-CT (UCSD-AI4H) split files ``split/{COVID,NonCOVID}/{train,val,test}CT_*.txt``
   (:func:`from_covid_ct_splits`);
3. COVIDx-CT label files ``{train,val,test}_COVIDx_CT-*.txt`` (``file class xmin ymin xmax ymax``),
   given directly or found inside a folder (:func:`from_covidx_labels`);
4. class folders ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``
   (:func:`from_class_folders`).

Before the manifest, a ``labels.csv`` / ``metadata.csv`` (or a CSV given directly) with the ieee8023
COVID-19 collection's columns (``patientid, finding, view``) is read by
:func:`chestdx.data.ieee8023.from_ieee8023` (frontal chest X-rays, labels from ``finding``).

Labels are integer indices into the recipe's ``class_names``; :func:`resolve_label` maps the many
spellings found in public data sets (``COVID-19``, ``CT_NonCOVID``, ``No Finding``, ...).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote

from chestdx.errors import DataError, DatasetError
from chestdx.io.formats import IMAGE_SUFFIXES, is_image_file
from chestdx.io.images import read_image, read_mask

log = logging.getLogger(__name__)

__all__ = [
    "Sample",
    "CANONICAL_CLASSES",
    "LABEL_ALIASES",
    "canonical_class",
    "resolve_label",
    "normalize_split",
    "parse_covidx_ids",
    "from_class_folders",
    "from_manifest",
    "from_covid_ct_splits",
    "from_covidx_labels",
    "load_source",
    "load_sources",
    "check_samples",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Sample:
    """One image and what is known about it.

    Attributes:
        path: absolute path of the image file.
        label: class index into the recipe's ``class_names``.
        patient_id: patient (or scan) identifier; splits never separate one patient's images.
        site: source / hospital name (the papers' "site A / site B").
        mask: absolute path of a lesion mask (nonzero = lesion), or None.
        box: crop box ``(xmin, ymin, xmax, ymax)`` in pixels (COVIDx-CT), or None.
        split: ``"train"``, ``"val"``, ``"test"`` or None (not assigned yet).
    """

    path: str
    label: int
    patient_id: str
    site: str
    mask: str | None = None
    box: tuple[int, int, int, int] | None = None
    split: str | None = None


# ------------------------------------------------------------------------------------- labels

#: The canonical class names chestdx knows.
CANONICAL_CLASSES: tuple[str, ...] = ("normal", "pneumonia", "covid", "noncovid")

_ALIAS_SPELLINGS: dict[str, tuple[str, ...]] = {
    "covid": ("covid", "covid-19", "covid19", "covid 19", "ct_covid", "ncp", "positive", "sars-cov-2"),
    "noncovid": ("noncovid", "non-covid", "non covid", "ct_noncovid", "negative", "non-covid-19"),
    "normal": ("normal", "healthy", "no finding", "nofinding", "no_finding"),
    "pneumonia": ("pneumonia", "cp", "other pneumonia", "other_pneumonia", "bacterial", "viral",
                  "common pneumonia", "non-covid pneumonia"),
}


def _norm(value: object) -> str:
    """Lower case with every non-alphanumeric character removed (``"CT_NonCOVID"`` -> ``"ctnoncovid"``)."""
    return re.sub(r"[^0-9a-z]+", "", str(value).strip().lower())


#: Normalised spelling -> canonical class name.
LABEL_ALIASES: dict[str, str] = {_norm(s): canon for canon, spellings in _ALIAS_SPELLINGS.items()
                                 for s in spellings}


def canonical_class(value: object) -> str | None:
    """The canonical class name (``covid``, ``noncovid``, ``normal``, ``pneumonia``) or None."""
    return LABEL_ALIASES.get(_norm(value))


def _valid_names(class_names: Sequence[str]) -> str:
    targets = {canonical_class(c) or _norm(c) for c in class_names}
    binary = "noncovid" in targets and not ({"normal", "pneumonia"} & targets)
    parts = []
    for i, c in enumerate(class_names):
        cc = canonical_class(c)
        spellings = list(_ALIAS_SPELLINGS.get(cc, ())) if cc else []
        if binary and cc == "noncovid":
            spellings += ["normal", "pneumonia (and their aliases)"]
        others = [s for s in spellings if _norm(s) != _norm(c)]
        parts.append(f"{i}={c}" + (f" (also: {', '.join(others)})" if others else ""))
    return "; ".join(parts) + f"; or an index 0..{len(class_names) - 1}"


def resolve_label(value: object, class_names: Sequence[str], *, source: str | Path | None = None) -> int:
    """Map a class name (any common spelling) or an index to an index into ``class_names``.

    Names are matched case-insensitively, ignoring spaces, ``-`` and ``_``, through the aliases
    (covid, covid-19, covid19, ct_covid, ncp, positive -> covid; noncovid, non-covid, ct_noncovid,
    negative -> noncovid; normal, healthy, no finding -> normal; pneumonia, cp, other pneumonia,
    bacterial, viral -> pneumonia). In a binary task (``class_names`` holds ``noncovid`` and
    neither ``normal`` nor ``pneumonia``) normal and pneumonia map to noncovid. Integers and
    integer strings (``"1"``) are indices.

    Args:
        value: the label as found in the data (name or index).
        class_names: the recipe's class names, e.g. ``("noncovid", "covid")``.
        source: the file the label came from, for the error message.

    Returns:
        The class index.

    Raises:
        DataError: the label is unknown or out of range; the message names ``source``, the value
            and the valid names.
    """
    where = str(source) if source is not None else "label"
    n = len(class_names)
    if isinstance(value, bool):
        value = int(value)
    text = str(value).strip()
    if isinstance(value, int) or re.fullmatch(r"[+-]?\d+(\.0*)?", text):
        idx = int(float(text))
        if 0 <= idx < n:
            return idx
        raise DataError(where, f"label index {text} is out of range for {n} classes; valid: {_valid_names(class_names)}")
    key = _norm(text)
    canon = LABEL_ALIASES.get(key, key)
    targets = [canonical_class(c) or _norm(c) for c in class_names]
    if canon in targets:
        return targets.index(canon)
    if canon in ("normal", "pneumonia") and "noncovid" in targets and not ({"normal", "pneumonia"} & set(targets)):
        return targets.index("noncovid")
    raise DataError(where, f"unknown label {text!r}; valid: {_valid_names(class_names)}")


def normalize_split(value: object, *, source: str | Path | None = None) -> str | None:
    """``"train"``, ``"val"``, ``"test"`` or None from the many spellings (``valid``, ``Testing``, ``""``).

    Raises:
        DataError: the value is none of these.
    """
    if value is None:
        return None
    key = _norm(value)
    if key in ("", "none", "nan", "null"):
        return None
    for split, spellings in {"train": ("train", "training", "trn"),
                             "val": ("val", "valid", "validation", "dev", "development"),
                             "test": ("test", "testing", "tst", "holdout")}.items():
        if key in spellings:
            return split
    raise DataError(str(source) if source is not None else "split",
                    f"unknown split {value!r}; expected train, val or test (or empty)")


def _abs(path: str | Path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def _warn_stem_patients(where: str | Path) -> None:
    warnings.warn(
        f"{where}: no patient ids; using each file name as its own patient, so slices of one patient "
        "may end up on both sides of a split (reported accuracy may be optimistic)",
        UserWarning, stacklevel=3)


# -------------------------------------------------------------------------------- class folders


def _image_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_image_file(name):
                out.append(Path(dirpath) / name)
    return out


def _is_mask_dir(name: str) -> bool:
    return _norm(name) in {"mask", "masks", "gt", "groundtruth", "labels", "lungmask", "lungmasks",
                           "infectionmask", "infectionmasks", "edge", "edges", "meta", "split", "splits"}


def from_class_folders(root: str | Path, class_names: Sequence[str], site: str | None = None) -> list[Sample]:
    """Read ``root/<class>/**/<image>`` or ``root/{train,val,test}/<class>/**/<image>``.

    Class folder names may be any alias :func:`resolve_label` knows (``COVID``, ``non-COVID``,
    ``CT_COVID``, ``0``...). Images directly in a class folder are their own patient (the file
    stem; a warning says so); images in a sub-folder ``<class>/<patient>/...`` take the sub-folder
    name as the patient id. Folders whose names are no class at all (``masks``, ``meta``) are
    skipped; a class name that the task cannot use (``noncovid`` in a 3-class task) is an error.

    Args:
        root: the data set folder.
        class_names: the recipe's class names.
        site: site name; default the folder name.

    Returns:
        One :class:`Sample` per image, sorted by path.

    Raises:
        DatasetError: no class folder, no image, or unusable class folder names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    site = site or root.resolve().name
    samples: list[Sample] = []
    problems: list[DataError] = []
    stem_patients = False

    def scan(folder: Path, split: str | None) -> None:
        nonlocal stem_patients
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if split is None and normalize_split_or_none(sub.name) is not None:
                continue  # handled by the split pass
            known = canonical_class(sub.name) is not None or re.fullmatch(r"\d+", sub.name)
            try:
                label = resolve_label(sub.name, class_names, source=sub)
            except DataError as e:
                if known or _norm(sub.name) in {_norm(c) for c in class_names}:
                    problems.append(e)
                continue
            for f in _image_files(sub):
                rel = f.relative_to(sub)
                if len(rel.parts) > 1:
                    if _is_mask_dir(rel.parts[0]):
                        continue
                    patient = rel.parts[0]
                else:
                    patient = f.stem
                    stem_patients = True
                samples.append(Sample(_abs(f), label, patient, site, None, None, split))

    scan(root, None)
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        split = normalize_split_or_none(sub.name)
        if split is not None:
            scan(sub, split)
    if problems:
        raise DatasetError(f"{root}: class folders that do not fit class_names {tuple(class_names)}", problems)
    if not samples:
        raise DatasetError(
            f"{root}: no images in class folders; expected root/<class>/*.png or "
            f"root/{{train,val,test}}/<class>/*.png with <class> one of {tuple(class_names)} "
            f"(or an alias) and images ending in {', '.join(IMAGE_SUFFIXES)}")
    if stem_patients:
        _warn_stem_patients(root)
    samples.sort(key=lambda s: s.path)
    return samples


def normalize_split_or_none(name: str) -> str | None:
    """Like :func:`normalize_split` but None (instead of an error) for a name that is no split."""
    try:
        return normalize_split(name) if _norm(name) else None
    except DataError:
        return None


# ------------------------------------------------------------------------------------ manifest

_PATH_COLS = ("path", "image", "file", "filename", "file_name", "image_path", "img")
_NAME_COLS = ("class", "class_name", "group", "diagnosis")
_PATIENT_COLS = ("patient_id", "patientid", "patient", "subject_id", "subject")
_MASK_COLS = ("mask", "lesion_mask", "infection_mask", "mask_path")
_BOX_COLS = ("xmin", "ymin", "xmax", "ymax")


def _col(header: dict[str, str], names: Iterable[str]) -> str | None:
    for n in names:
        if _norm(n) in header:
            return header[_norm(n)]
    return None


def _parse_box(values: Sequence[str], where: str) -> tuple[int, int, int, int] | None:
    vals = [v.strip() if v is not None else "" for v in values]
    if all(v == "" for v in vals):
        return None
    if any(v == "" for v in vals):
        raise DataError(where, f"incomplete box {vals}; give all of xmin, ymin, xmax, ymax or none")
    try:
        box = tuple(int(round(float(v))) for v in vals)
    except ValueError:
        raise DataError(where, f"box {vals} is not four numbers") from None
    xmin, ymin, xmax, ymax = box
    if xmin < 0 or ymin < 0 or xmax <= xmin or ymax <= ymin:
        raise DataError(where, f"box {box} is not (xmin, ymin, xmax, ymax) with 0 <= xmin < xmax, 0 <= ymin < ymax")
    return (xmin, ymin, xmax, ymax)


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+(\.0*)?", text.strip()) is not None


def read_csv_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """``(column names, rows)`` of a CSV file (BOM and bad bytes tolerated).

    Raises:
        DatasetError: the file cannot be read as CSV.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, csv.Error) as e:
        raise DatasetError(f"{csv_path}: cannot read CSV ({e})") from None


def from_manifest(csv_path: str | Path, class_names: Sequence[str], site: str | None = None) -> list[Sample]:
    """Read a CSV manifest ``path,label[,class,patient_id,site,mask,split,xmin,ymin,xmax,ymax]``.

    Paths (image and mask) are relative to the CSV's folder unless absolute. Column names are
    matched case-insensitively, with a few common alternatives (``image``/``file`` for ``path``,
    ``patientid`` for ``patient_id``, ``group`` for ``class``). The label is taken from, in order:
    ``label`` when it is a name; else a class-name column (``class``, ``group``), because an index
    in a third-party CSV counts in that data set's own class order, not the recipe's; else
    ``label`` as an index into ``class_names``. A missing ``patient_id`` becomes the file stem
    (with a warning); a per-row ``site`` overrides the ``site`` argument.

    Args:
        csv_path: the CSV file.
        class_names: the recipe's class names.
        site: site name for rows without one; default the CSV's folder name.

    Returns:
        One :class:`Sample` per row, in file order.

    Raises:
        DatasetError: unreadable CSV, no path or label column, no rows, or rows with bad values
            (all reported at once, each naming the CSV line).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: manifest not found")
    base = csv_path.resolve().parent
    site = site or base.name
    fields, rows = read_csv_rows(csv_path)
    header = {_norm(c): c for c in fields if c is not None}
    path_col = _col(header, _PATH_COLS)
    label_col = _col(header, ("label", "target", "y"))
    name_col = _col(header, _NAME_COLS)
    patient_col = _col(header, _PATIENT_COLS)
    site_col = _col(header, ("site", "source_site", "hospital"))
    mask_col = _col(header, _MASK_COLS)
    split_col = _col(header, ("split", "subset", "fold_split"))
    box_cols = [_col(header, (c,)) for c in _BOX_COLS]
    if path_col is None or (label_col is None and name_col is None):
        raise DatasetError(f"{csv_path}: a manifest needs a 'path' and a 'label' (or 'class') column; "
                           f"found columns {fields}")
    if any(box_cols) and not all(box_cols):
        raise DatasetError(f"{csv_path}: box columns need all of xmin, ymin, xmax, ymax; found {fields}")
    if not rows:
        raise DatasetError(f"{csv_path}: manifest has no rows")

    samples: list[Sample] = []
    problems: list[DataError] = []
    stem_patients = False
    for lineno, row in enumerate(rows, start=2):
        where = f"{csv_path} line {lineno}"
        try:
            rel = (row.get(path_col) or "").strip()
            if not rel:
                raise DataError(where, "empty path")
            path = _abs(base / rel)
            raw_label = (row.get(label_col) or "").strip() if label_col else ""
            raw_name = (row.get(name_col) or "").strip() if name_col else ""
            if raw_label and not _is_int(raw_label):
                label = resolve_label(raw_label, class_names, source=where)
            elif raw_name:
                label = resolve_label(raw_name, class_names, source=where)
            elif raw_label:
                label = resolve_label(raw_label, class_names, source=where)
            else:
                raise DataError(where, "empty label")
            patient = (row.get(patient_col) or "").strip() if patient_col else ""
            if not patient:
                patient = Path(rel).stem
                stem_patients = True
            row_site = ((row.get(site_col) or "").strip() if site_col else "") or site
            mask_rel = (row.get(mask_col) or "").strip() if mask_col else ""
            mask = _abs(base / mask_rel) if mask_rel else None
            split = normalize_split(row.get(split_col), source=where) if split_col else None
            box = _parse_box([row.get(c) or "" for c in box_cols], where) if all(box_cols) else None  # type: ignore[arg-type]
            samples.append(Sample(path, label, patient, row_site, mask, box, split))
        except DataError as e:
            problems.append(e)
    if problems:
        raise DatasetError(f"{csv_path}: {len(problems)} bad row(s) of {len(rows)}", problems)
    if stem_patients:
        _warn_stem_patients(csv_path)
    return samples


# ------------------------------------------------------------------------------------ COVID-CT


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return [line.strip() for line in f.read().splitlines() if line.strip()]


def _patient_table(csv_path: Path, name_cols: Sequence[str], patient_cols: Sequence[str]) -> dict[str, str]:
    """``file name -> patient id`` from a CSV with some file-name and patient-id columns."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.DictReader(f)
            header = {_norm(c): c for c in (reader.fieldnames or []) if c is not None}
            name_col, patient_col = _col(header, name_cols), _col(header, patient_cols)
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
            for lineno, name in enumerate(_read_lines(list_file), start=1):
                real = _match_name(name, files, lower)
                if real is None:
                    problems.append(DataError(f"{list_file} line {lineno}",
                                              f"{name!r} is not in {image_dir}"))
                    continue
                patient = patients.get(real) or patients.get(name)
                if not patient:
                    patient = Path(real).stem.split("%")[0]
                    stem_patients = True
                samples.append(Sample(_abs(image_dir / real), label, patient, site, None, None, split))
    if problems:
        raise DatasetError(f"{root}: COVID-CT split files do not match the images", problems)
    if not found_lists or not samples:
        raise DatasetError(f"{root}: no {{train,val,test}}CT_*.txt split files with images under {split_dir}")
    if stem_patients:
        _warn_stem_patients(root)
    return samples


# ----------------------------------------------------------------------------------- COVIDx-CT

_COVIDX_CLASSES = {0: "normal", 1: "pneumonia", 2: "covid"}
_COVIDX_PREFIX = re.compile(r"^(NCP|CP|Normal)_([^_]+)_([^_]+)_", re.IGNORECASE)


def parse_covidx_ids(file_name: str) -> tuple[str, str]:
    """``(patient_id, scan_id)`` from a COVIDx-CT file name.

    ``NCP_96_1328_0032.png`` -> ``("NCP_96", "NCP_96_1328")`` (likewise ``CP_..``, ``Normal_..``:
    class, patient, scan, slice). Other names (``radiopaedia_...``, ``coronacases_...``): the stem
    before the last ``_`` is both the patient and the scan id.
    """
    stem = Path(file_name).name
    for suffix in (".nii.gz",) + tuple(IMAGE_SUFFIXES):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    m = _COVIDX_PREFIX.match(stem)
    if m:
        patient = f"{m.group(1)}_{m.group(2)}"
        return patient, f"{patient}_{m.group(3)}"
    head = stem.rsplit("_", 1)[0] if "_" in stem else stem
    return head, head


def _split_from_name(name: str) -> str | None:
    m = re.search(r"(?:^|[^a-z])(train|val|valid|validation|test)(?:[^a-z]|$)", name.lower())
    return normalize_split(m.group(1)) if m else None


def from_covidx_labels(label_file: str | Path, image_root: str | Path, class_names: Sequence[str],
                       site: str | None = None) -> list[Sample]:
    """Read a COVIDx-CT label file: lines ``file class xmin ymin xmax ymax``.

    Classes are 0 normal, 1 pneumonia, 2 COVID-19 (mapped onto ``class_names`` by name, so a
    binary task gets noncovid / covid). The box is kept for cropping. The patient id comes from
    the file name (:func:`parse_covidx_ids`); the split from the label file's name
    (``train_COVIDx_CT-2A.txt`` -> train), None where it says none.

    Args:
        label_file: the ``.txt`` label file.
        image_root: folder holding the listed files.
        class_names: the recipe's class names.
        site: site name; default the label file's folder name.

    Returns:
        One :class:`Sample` per line.

    Raises:
        DatasetError: unreadable file, no lines, or bad lines (all reported at once).
    """
    label_file, image_root = Path(label_file), Path(image_root)
    if not label_file.is_file():
        raise DatasetError(f"{label_file}: COVIDx label file not found")
    site = site or label_file.resolve().parent.name
    split = _split_from_name(label_file.name)
    try:
        lines = _read_lines(label_file)
    except OSError as e:
        raise DatasetError(f"{label_file}: cannot read ({e})") from None
    if not lines:
        raise DatasetError(f"{label_file}: label file has no lines")
    samples: list[Sample] = []
    problems: list[DataError] = []
    for lineno, line in enumerate(lines, start=1):
        where = f"{label_file} line {lineno}"
        parts = line.split()
        try:
            if len(parts) not in (2, 6):
                raise DataError(where, f"expected 'file class xmin ymin xmax ymax', got {line!r}")
            name, cls = parts[0], parts[1]
            if _is_int(cls):
                idx = int(float(cls))
                if idx not in _COVIDX_CLASSES:
                    raise DataError(where, f"COVIDx class {cls!r} is not 0 (normal), 1 (pneumonia) or 2 (COVID-19)")
                label = resolve_label(_COVIDX_CLASSES[idx], class_names, source=where)
            else:
                label = resolve_label(cls, class_names, source=where)
            box = _parse_box(parts[2:6], where) if len(parts) == 6 else None
            patient, _scan = parse_covidx_ids(name)
            samples.append(Sample(_abs(image_root / name), label, patient, site, None, box, split))
        except DataError as e:
            problems.append(e)
    if problems:
        raise DatasetError(f"{label_file}: {len(problems)} bad line(s) of {len(lines)}", problems)
    return samples


def _looks_like_covidx(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline().split()
    except OSError:
        return False
    return len(first) in (2, 6) and is_image_file(first[0]) and all(_is_int(v) for v in first[1:])


def _covidx_image_root(label_file: Path) -> Path:
    folder = label_file.parent
    lines = _read_lines(label_file)
    first = lines[0].split()[0] if lines else ""
    candidates = [folder, folder / "images"] + sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name.lower().endswith("images"))
    for cand in candidates:
        if first and (cand / first).exists():
            return cand
    return next((c for c in candidates[1:] if c.is_dir()), folder)


# -------------------------------------------------------------------------------- auto-detect


def _found(where: Path, layout: str, samples: list[Sample]) -> list[Sample]:
    """Log the layout a source was read as (``chestdx train`` shows it) and pass the samples on."""
    log.info("data %s: read as %s, %d images", where, layout, len(samples))
    return samples


def load_source(path: str | Path, class_names: Sequence[str], site: str | None = None) -> list[Sample]:
    """Read one data source, detecting its layout.

    Tried in order: a CSV file (manifest); a COVIDx ``.txt`` label file; a folder holding
    ``manifest.csv`` or ``labels.csv``; a folder with ``split/`` (COVID-CT); a folder holding COVIDx
    label files (all of them are read); class folders (also under ``images/``).

    Args:
        path: file or folder.
        class_names: the recipe's class names.
        site: site name; default the folder's name (a file's parent folder).

    Returns:
        The samples of the source.

    Raises:
        DatasetError: the path does not exist, or no layout matched (the message names the folder
            and the layouts tried), or the matched layout has errors.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p}: data source not found")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".csv":
            from chestdx.data.ieee8023 import from_ieee8023, is_ieee8023_csv

            if is_ieee8023_csv(p):
                return _found(p, "ieee8023 metadata CSV", from_ieee8023(p, class_names, site))
            return _found(p, "CSV manifest", from_manifest(p, class_names, site))
        if suffix == ".txt":
            return _found(p, "COVIDx label file", from_covidx_labels(p, _covidx_image_root(p), class_names, site))
        raise DatasetError(f"{p}: unsupported data source file; give a manifest .csv, a COVIDx .txt "
                           "label file or a folder")
    site = site or p.resolve().name
    from chestdx.data.ieee8023 import from_ieee8023, is_ieee8023_csv

    for name in ("labels.csv", "metadata.csv"):  # the ieee8023 COVID-19 collection (chest X-rays)
        if (p / name).is_file() and is_ieee8023_csv(p / name):
            return _found(p / name, "ieee8023 metadata CSV", from_ieee8023(p / name, class_names, site))
    for name in ("manifest.csv", "labels.csv"):
        if (p / name).is_file():
            if (p / "split").is_dir():
                log.info("%s: holds both %s and split/ (COVID-CT split files); reading %s", p, name, name)
            return _found(p / name, "CSV manifest", from_manifest(p / name, class_names, site))
    if (p / "split").is_dir():
        return _found(p, "COVID-CT split files (split/)", from_covid_ct_splits(p, class_names, site))
    covidx = sorted(f for f in p.glob("*.txt") if _looks_like_covidx(f))
    if covidx:
        out: list[Sample] = []
        for f in covidx:
            out += from_covidx_labels(f, _covidx_image_root(f), class_names, site)
        return _found(p, f"COVIDx label files ({len(covidx)})", out)
    tried = ["manifest.csv / labels.csv", "split/ (COVID-CT)", "COVIDx *.txt label files",
             "class folders root/<class>/ or root/{train,val,test}/<class>/"]
    for root in (p, p / "images"):
        if not root.is_dir():
            continue
        try:
            return _found(root, "class folders", from_class_folders(root, class_names, site))
        except DatasetError as e:
            if e.problems:  # class folders exist but do not fit: that is the real answer
                raise
    raise DatasetError(f"{p}: no data set found; layouts tried: {'; '.join(tried)}")


def load_sources(paths: Sequence[str | Path] | Mapping[str, str | Path], class_names: Sequence[str]) -> list[Sample]:
    """Read and join several sources (sites).

    Each source's site is its mapping key, or its folder name (made unique with ``_2``, ``_3``...
    where two folders share a name); a per-row ``site`` column in a manifest still wins. Patient
    ids are prefixed with the site (``site/patient``) so they stay unique across sites.

    Args:
        paths: list of sources, or ``{site: source}``.
        class_names: the recipe's class names.

    Returns:
        All samples, source by source.

    Raises:
        DatasetError: no sources, or any source fails (the first failure).
    """
    if isinstance(paths, Mapping):
        items = [(str(k), Path(v)) for k, v in paths.items()]
    else:
        items = []
        used: Counter[str] = Counter()
        for v in paths:
            vp = Path(v).expanduser()
            name = (vp.resolve().parent.name if vp.is_file() else vp.resolve().name) or "site"
            used[name] += 1
            items.append((name if used[name] == 1 else f"{name}_{used[name]}", vp))
    if not items:
        raise DatasetError("no data sources given")
    out: list[Sample] = []
    for site, src in items:
        for s in load_source(src, class_names, site):
            out.append(replace(s, patient_id=f"{s.site}/{s.patient_id}"))
    return out


# -------------------------------------------------------------------------------------- checks


def _check_one(s: Sample, read: bool) -> list[DataError]:
    problems: list[DataError] = []
    shape = None
    try:
        if read:
            shape = read_image(s.path).shape
        elif not os.path.isfile(s.path):
            raise DataError(s.path, "file not found")
        elif os.path.getsize(s.path) == 0:
            raise DataError(s.path, "file is empty (0 bytes)")
    except DataError as e:
        problems.append(e)
    if s.mask:
        try:
            if read:
                mshape = read_mask(s.mask).shape
                if shape is not None and mshape != shape:
                    problems.append(DataError(s.mask, f"mask shape {mshape} differs from image shape {shape} of {s.path}"))
            elif not os.path.isfile(s.mask):
                raise DataError(s.mask, "mask file not found")
        except DataError as e:
            problems.append(e)
    if s.box is not None and shape is not None:
        xmin, ymin, xmax, ymax = s.box
        h, w = shape
        if not (0 <= xmin < xmax <= w and 0 <= ymin < ymax <= h):
            problems.append(DataError(s.path, f"box {s.box} lies outside the {w}x{h} image"))
    return problems


def check_samples(samples: Sequence[Sample], *, read: bool = True, workers: int | None = None) -> None:
    """Check that every sample's files exist and (with ``read``) open; report ALL problems at once.

    Checks: image and mask exist and are not empty; with ``read`` each image opens with
    :func:`read_image`, each mask with :func:`read_mask` and has the image's shape, each box lies
    inside its image; one path listed twice with different labels or splits. Files are read by a
    thread pool.

    Args:
        samples: the records to check.
        read: also decode every file (slower, finds corrupt files).
        workers: threads; default ``min(8, cpu count + 2)``.

    Raises:
        DatasetError: one or more problems; ``.problems`` lists every :class:`DataError`.
    """
    samples = list(samples)
    problems: list[DataError] = []
    if not samples:
        raise DatasetError("no samples to check (empty data set)")
    seen: dict[str, Sample] = {}
    for s in samples:
        prev = seen.get(s.path)
        if prev is not None and (prev.label != s.label or prev.split != s.split):
            problems.append(DataError(s.path, f"listed twice: label {prev.label} / split {prev.split} and "
                                              f"label {s.label} / split {s.split}"))
        seen.setdefault(s.path, s)
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for found in pool.map(lambda s: _check_one(s, read), samples):
            problems.extend(found)
    if problems:
        n_files = len({p.path for p in problems})
        raise DatasetError(f"{len(problems)} problem(s) in {n_files} file(s) of {len(samples)} samples; "
                           "fix or remove them before training", problems)
