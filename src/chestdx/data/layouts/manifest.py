"""CSV manifests: ``path,label[,class,patient_id,site,mask,split,xmin,ymin,xmax,ymax]``, one row per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from chestdx.data.layouts.base import (
    Sample,
    abs_path,
    find_column,
    is_int,
    norm_key,
    normalize_split,
    parse_box,
    read_csv_rows,
    resolve_label,
    warn_stem_patients,
)
from chestdx.errors import DataError, DatasetError

__all__ = ["from_manifest"]

_PATH_COLS = ("path", "image", "file", "filename", "file_name", "image_path", "img")
_NAME_COLS = ("class", "class_name", "group", "diagnosis")
_PATIENT_COLS = ("patient_id", "patientid", "patient", "subject_id", "subject")
_MASK_COLS = ("mask", "lesion_mask", "infection_mask", "mask_path")
_BOX_COLS = ("xmin", "ymin", "xmax", "ymax")


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
    header = {norm_key(c): c for c in fields if c is not None}
    path_col = find_column(header, _PATH_COLS)
    label_col = find_column(header, ("label", "target", "y"))
    name_col = find_column(header, _NAME_COLS)
    patient_col = find_column(header, _PATIENT_COLS)
    site_col = find_column(header, ("site", "source_site", "hospital"))
    mask_col = find_column(header, _MASK_COLS)
    split_col = find_column(header, ("split", "subset", "fold_split"))
    box_cols = [find_column(header, (c,)) for c in _BOX_COLS]
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
            path = abs_path(base / rel)
            raw_label = (row.get(label_col) or "").strip() if label_col else ""
            raw_name = (row.get(name_col) or "").strip() if name_col else ""
            if raw_label and not is_int(raw_label):
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
            mask = abs_path(base / mask_rel) if mask_rel else None
            split = normalize_split(row.get(split_col), source=where) if split_col else None
            box = parse_box([row.get(c) or "" for c in box_cols], where) if all(box_cols) else None  # type: ignore[arg-type]
            samples.append(Sample(path, label, patient, row_site, mask, box, split))
        except DataError as e:
            problems.append(e)
    if problems:
        raise DatasetError(f"{csv_path}: {len(problems)} bad row(s) of {len(rows)}", problems)
    if stem_patients:
        warn_stem_patients(csv_path)
    return samples

