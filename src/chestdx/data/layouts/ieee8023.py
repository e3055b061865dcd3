"""The ieee8023 COVID-19 image data collection layout (Cohen et al.): ``metadata.csv`` -> samples.

The collection ships one ``metadata.csv`` (columns ``patientid, finding, view, modality, folder,
filename, ...``); curated copies (such as ``cxr_covid_chestxray_subset``) add a ``path`` column and
call the file ``labels.csv``. :func:`from_ieee8023` reads either:

- **views**: frontal chest X-rays only (``PA``, ``AP``, ``AP Supine``, ``AP semi erect``, ...):
  lateral (``L``) and CT views (``Axial``, ``Coronal``) are left out, as is any modality other than
  X-ray (the ``modality`` column, where present);
- **labels** from ``finding``, which names the disease (``COVID-19``, ``Streptococcus``, ``SARS``,
  ``No Finding``; later versions write a path such as ``Pneumonia/Viral/COVID-19``). Each finding
  gets a category (:func:`finding_category`): ``covid``, ``normal``, ``viral``, ``bacterial``,
  ``fungal`` or ``pneumonia`` (other / unspecified, e.g. lipoid, ARDS), or ``unknown`` (``todo``,
  ``Unknown``, empty: not labelled yet, always left out). The recipe's class names
  choose the task: with ``viral`` / ``bacterial`` classes (the paper's Dataset C: COVID-19 / viral /
  bacterial / healthy) categories map as they are; otherwise (COVID-19 / other pneumonia / healthy,
  or COVID vs non-COVID) every non-COVID pneumonia is ``pneumonia``. Findings that fit no class are
  left out (a warning counts them);
- **patients** from ``patientid`` (splits never separate a patient's images); ``site`` is the
  folder's name.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from chestdx.data.layouts.base import Sample, read_csv_rows, resolve_label
from chestdx.errors import DataError, DatasetError

log = logging.getLogger(__name__)

#: Frontal radiograph views, normalised (lower case, letters only).
FRONTAL_VIEWS = ("pa", "ap", "apsupine", "apsemierect", "aperect", "apportable", "frontal")

_VIRAL = ("sars", "mers", "varicella", "influenza", "herpes", "viral", "rsv", "h1n1", "adenovirus")
_BACTERIAL = ("streptococcus", "klebsiella", "mycoplasma", "legionella", "chlamydophila", "ecoli",
              "staphylococcus", "nocardia", "bacterial", "tuberculosis", "mrsa")
_FUNGAL = ("pneumocystis", "aspergillosis", "fungal", "candida")
_REQUIRED = ("patientid", "finding", "view")


def _key(text: str) -> str:
    return re.sub(r"[^a-z]+", "", text.lower())


#: Findings that say the diagnosis is not known (yet): such rows get no label (category ``unknown``).
UNKNOWN_FINDINGS = ("", "todo", "unknown", "pending", "tbd", "na", "none")


def finding_category(finding: str) -> str:
    """``covid``, ``normal``, ``viral``, ``bacterial``, ``fungal``, ``pneumonia`` or ``unknown`` for an
    ieee8023 finding.

    ``"COVID-19, ARDS"`` and ``"Pneumonia/Viral/COVID-19"`` are covid; ``"No Finding"`` normal;
    ``"Streptococcus"`` or ``"Pneumonia/Bacterial/Klebsiella"`` bacterial; ``"todo"``, ``"Unknown"``
    or an empty finding (the collection's not-yet-labelled rows: 28 frontal X-rays of the full
    metadata) unknown, left out of every task; anything else that is not recognised (``Lipoid``,
    ``ARDS``, ``Pneumonia``) pneumonia.
    """
    parts = [_key(p) for p in re.split(r"[/,;]", finding) if p.strip()]
    if all(p in UNKNOWN_FINDINGS for p in parts):
        return "unknown"
    if any(p.startswith("covid") or p == "sarscov" for p in parts):
        return "covid"
    if any(p in ("nofinding", "normal", "healthy") for p in parts):
        return "normal"
    for cat, names in (("viral", _VIRAL), ("bacterial", _BACTERIAL), ("fungal", _FUNGAL)):
        if any(any(p.startswith(n) for n in names) for p in parts):
            return cat
    return "pneumonia"


def is_ieee8023_csv(path: str | Path) -> bool:
    """Whether a CSV file has the ieee8023 metadata columns (``patientid``, ``finding``, ``view``)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = next(csv.reader(f), [])
    except OSError:
        return False
    cols = {_key(c) for c in header}
    return all(c in cols for c in _REQUIRED) and ("path" in cols or "filename" in cols)


def _label_for(category: str, class_names: Sequence[str], where: str) -> int | None:
    if category == "unknown":
        return None
    targets = [_key(c) for c in class_names]
    fine = "viral" in targets or "bacterial" in targets
    if fine and category in targets:
        return targets.index(category)
    name = category if category in ("covid", "normal") else "pneumonia"
    if fine and name == "pneumonia" and "pneumonia" not in targets:
        return None
    try:
        return resolve_label(name, class_names, source=where)
    except DataError:
        return None


def from_ieee8023(csv_path: str | Path, class_names: Sequence[str], site: str | None = None,
                  views: Sequence[str] = FRONTAL_VIEWS) -> list[Sample]:
    """Read an ieee8023 ``metadata.csv`` / ``labels.csv``: frontal X-rays, labels from ``finding``.

    Args:
        csv_path: the metadata file; image paths are relative to its folder (``path``, or
            ``folder/filename``).
        class_names: the recipe's class names (see the module docstring for the mapping).
        site: site name; default the folder's name.
        views: accepted views (normalised: lower case, letters only).

    Returns:
        One :class:`~chestdx.data.layouts.base.Sample` per kept row, in file order.

    Raises:
        DatasetError: unreadable file, missing columns, no row left, or rows without an image path
            or patient id (all reported at once).
    """
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    site = site or base.name
    fields, rows = read_csv_rows(csv_path)
    col = {_key(c): c for c in fields if c}
    missing = [c for c in _REQUIRED if c not in col]
    if missing or not ("path" in col or "filename" in col):
        raise DatasetError(f"{csv_path}: an ieee8023 metadata file needs columns patientid, finding, view and "
                           f"path (or folder + filename); found {fields}")
    accepted = {_key(v) for v in views}
    samples: list[Sample] = []
    problems: list[DataError] = []
    skipped: Counter[str] = Counter()
    for lineno, row in enumerate(rows, start=2):
        where = f"{csv_path} line {lineno}"
        modality = (row.get(col.get("modality", ""), "") or "").strip()
        if modality and _key(modality) not in ("xray", "cr", "dx"):
            skipped[f"modality {modality}"] += 1
            continue
        view = (row.get(col["view"]) or "").strip()
        if _key(view) not in accepted:
            skipped[f"view {view or '(empty)'}"] += 1
            continue
        finding = (row.get(col["finding"]) or "").strip()
        label = _label_for(finding_category(finding), class_names, where)
        if label is None:
            skipped[f"finding {finding}"] += 1
            continue
        rel = (row.get(col["path"]) or "").strip() if "path" in col else ""
        if not rel and "filename" in col:
            folder = (row.get(col.get("folder", ""), "") or "").strip() or "images"
            name = (row.get(col["filename"]) or "").strip()
            rel = f"{folder}/{name}" if name else ""
        patient = (row.get(col["patientid"]) or "").strip()
        if not rel:
            problems.append(DataError(where, "no image path (path, or folder + filename)"))
            continue
        if not patient:
            problems.append(DataError(where, "empty patientid"))
            continue
        samples.append(Sample(str((base / rel).resolve()), label, patient, site))
    if problems:
        raise DatasetError(f"{csv_path}: {len(problems)} bad row(s) of {len(rows)}", problems)
    if skipped:
        log.warning("%s: left out %d row(s): %s", csv_path, sum(skipped.values()),
                    ", ".join(f"{k} x{v}" for k, v in skipped.most_common(8)))
    if not samples:
        raise DatasetError(f"{csv_path}: no frontal X-ray fits the classes {list(class_names)} "
                           f"(left out: {dict(skipped)})")
    return samples


__all__ = ["FRONTAL_VIEWS", "finding_category", "from_ieee8023", "is_ieee8023_csv"]
