"""What every data set layout shares: the :class:`Sample` record, class and split names, CSV helpers.

Labels are integer indices into the recipe's ``class_names``; :func:`resolve_label` maps the many
spellings found in public data sets (``COVID-19``, ``CT_NonCOVID``, ``No Finding``, ...). The layout
readers (:mod:`~chestdx.data.layouts.folders`, ``manifest``, ``covid_ct``, ``covidx``, ``ieee8023``,
``volumes``) import this module, never each other's detection (:mod:`~chestdx.data.layouts.sources`).
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from chestdx.errors import DataError, DatasetError

__all__ = [
    "CANONICAL_CLASSES",
    "LABEL_ALIASES",
    "SPLITS",
    "Sample",
    "abs_path",
    "canonical_class",
    "find_column",
    "is_int",
    "norm_key",
    "normalize_split",
    "normalize_split_or_none",
    "parse_box",
    "read_csv_rows",
    "read_lines",
    "resolve_label",
    "warn_stem_patients",
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


def norm_key(value: object) -> str:
    """Lower case with every non-alphanumeric character removed (``"CT_NonCOVID"`` -> ``"ctnoncovid"``)."""
    return re.sub(r"[^0-9a-z]+", "", str(value).strip().lower())


#: Normalised spelling -> canonical class name.
LABEL_ALIASES: dict[str, str] = {norm_key(s): canon for canon, spellings in _ALIAS_SPELLINGS.items()
                                 for s in spellings}


def canonical_class(value: object) -> str | None:
    """The canonical class name (``covid``, ``noncovid``, ``normal``, ``pneumonia``) or None."""
    return LABEL_ALIASES.get(norm_key(value))


def _valid_names(class_names: Sequence[str]) -> str:
    targets = {canonical_class(c) or norm_key(c) for c in class_names}
    binary = "noncovid" in targets and not ({"normal", "pneumonia"} & targets)
    parts = []
    for i, c in enumerate(class_names):
        cc = canonical_class(c)
        spellings = list(_ALIAS_SPELLINGS.get(cc, ())) if cc else []
        if binary and cc == "noncovid":
            spellings += ["normal", "pneumonia (and their aliases)"]
        others = [s for s in spellings if norm_key(s) != norm_key(c)]
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
    key = norm_key(text)
    canon = LABEL_ALIASES.get(key, key)
    targets = [canonical_class(c) or norm_key(c) for c in class_names]
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
    key = norm_key(value)
    if key in ("", "none", "nan", "null"):
        return None
    for split, spellings in {"train": ("train", "training", "trn"),
                             "val": ("val", "valid", "validation", "dev", "development"),
                             "test": ("test", "testing", "tst", "holdout")}.items():
        if key in spellings:
            return split
    raise DataError(str(source) if source is not None else "split",
                    f"unknown split {value!r}; expected train, val or test (or empty)")


def normalize_split_or_none(name: str) -> str | None:
    """Like :func:`normalize_split` but None (instead of an error) for a name that is no split."""
    try:
        return normalize_split(name) if norm_key(name) else None
    except DataError:
        return None


# --------------------------------------------------------------------------- paths and CSV files


def abs_path(path: str | Path) -> str:
    """``path`` with ``~`` expanded, made absolute (not resolved: symlinks are kept)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def warn_stem_patients(where: str | Path) -> None:
    """Warn that the files of ``where`` had no patient ids, so each file is its own patient."""
    warnings.warn(
        f"{where}: no patient ids; using each file name as its own patient, so slices of one patient "
        "may end up on both sides of a split (reported accuracy may be optimistic)",
        UserWarning, stacklevel=3)


def find_column(header: dict[str, str], names: Iterable[str]) -> str | None:
    """The first of ``names`` among a CSV's columns (``header``: normalised name -> real name), or None."""
    for n in names:
        if norm_key(n) in header:
            return header[norm_key(n)]
    return None


def is_int(text: str) -> bool:
    """Whether ``text`` is an integer (``"3"``, ``"-1"``, ``"2.0"``)."""
    return re.fullmatch(r"[+-]?\d+(\.0*)?", text.strip()) is not None


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a text file, stripped (BOM and bad bytes tolerated)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return [line.strip() for line in f.read().splitlines() if line.strip()]


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


def parse_box(values: Sequence[str], where: str) -> tuple[int, int, int, int] | None:
    """A crop box ``(xmin, ymin, xmax, ymax)`` from four strings; None where all are empty.

    Raises:
        DataError: naming ``where``: some but not all empty, not numbers, or not a box.
    """
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

