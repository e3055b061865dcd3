"""COVIDx-CT label files ``{train,val,test}_COVIDx_CT-*.txt``: lines ``file class xmin ymin xmax ymax``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from chestdx.data.layouts.base import (
    Sample,
    abs_path,
    is_int,
    normalize_split,
    parse_box,
    read_lines,
    resolve_label,
)
from chestdx.errors import DataError, DatasetError
from chestdx.io.formats import IMAGE_SUFFIXES, is_image_file

__all__ = ["covidx_image_root", "from_covidx_labels", "looks_like_covidx", "parse_covidx_ids"]

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
        lines = read_lines(label_file)
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
            if is_int(cls):
                idx = int(float(cls))
                if idx not in _COVIDX_CLASSES:
                    raise DataError(where, f"COVIDx class {cls!r} is not 0 (normal), 1 (pneumonia) or 2 (COVID-19)")
                label = resolve_label(_COVIDX_CLASSES[idx], class_names, source=where)
            else:
                label = resolve_label(cls, class_names, source=where)
            box = parse_box(parts[2:6], where) if len(parts) == 6 else None
            patient, _scan = parse_covidx_ids(name)
            samples.append(Sample(abs_path(image_root / name), label, patient, site, None, box, split))
        except DataError as e:
            problems.append(e)
    if problems:
        raise DatasetError(f"{label_file}: {len(problems)} bad line(s) of {len(lines)}", problems)
    return samples


def looks_like_covidx(path: Path) -> bool:
    """Whether the first line of ``path`` reads as a COVIDx label line (``file class [box]``)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline().split()
    except OSError:
        return False
    return len(first) in (2, 6) and is_image_file(first[0]) and all(is_int(v) for v in first[1:])


def covidx_image_root(label_file: Path) -> Path:
    """The folder holding the files a COVIDx label file lists: its own folder, ``images/`` or a
    ``*images`` folder next to it (the first holding the first listed file)."""
    folder = label_file.parent
    lines = read_lines(label_file)
    first = lines[0].split()[0] if lines else ""
    candidates = [folder, folder / "images"] + sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name.lower().endswith("images"))
    for cand in candidates:
        if first and (cand / first).exists():
            return cand
    return next((c for c in candidates[1:] if c.is_dir()), folder)

