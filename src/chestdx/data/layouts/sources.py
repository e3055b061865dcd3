"""Reading a data source: its layout detected, then read into :class:`~chestdx.data.layouts.base.Sample` records.

Supported layouts (``load_source`` tries them in this order):

1. a manifest CSV (``path,label[,class,patient_id,site,mask,split,xmin,ymin,xmax,ymax]``), given
   directly or as ``manifest.csv`` / ``labels.csv`` inside a folder (:func:`~chestdx.data.layouts.manifest.from_manifest`);
2. the COVID-CT (UCSD-AI4H) split files ``split/{COVID,NonCOVID}/{train,val,test}CT_*.txt``
   (:func:`~chestdx.data.layouts.covid_ct.from_covid_ct_splits`);
3. COVIDx-CT label files ``{train,val,test}_COVIDx_CT-*.txt`` (``file class xmin ymin xmax ymax``),
   given directly or found inside a folder (:func:`~chestdx.data.layouts.covidx.from_covidx_labels`);
4. class folders ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``
   (:func:`~chestdx.data.layouts.folders.from_class_folders`).

Before the manifest, a ``labels.csv`` / ``metadata.csv`` (or a CSV given directly) with the ieee8023
COVID-19 collection's columns (``patientid, finding, view``) is read by
:func:`chestdx.data.layouts.ieee8023.from_ieee8023` (frontal chest X-rays, labels from ``finding``).

:func:`check_samples` then checks every file of the samples at once.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from chestdx.data.layouts.base import Sample
from chestdx.data.layouts.covid_ct import from_covid_ct_splits
from chestdx.data.layouts.covidx import covidx_image_root, from_covidx_labels, looks_like_covidx
from chestdx.data.layouts.folders import from_class_folders
from chestdx.data.layouts.ieee8023 import from_ieee8023, is_ieee8023_csv
from chestdx.data.layouts.manifest import from_manifest
from chestdx.errors import DataError, DatasetError
from chestdx.io.images import read_image, read_mask

log = logging.getLogger(__name__)

__all__ = ["check_samples", "drop_duplicate_files", "load_source", "load_sources"]


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
            if is_ieee8023_csv(p):
                return _found(p, "ieee8023 metadata CSV", from_ieee8023(p, class_names, site))
            return _found(p, "CSV manifest", from_manifest(p, class_names, site))
        if suffix == ".txt":
            return _found(p, "COVIDx label file", from_covidx_labels(p, covidx_image_root(p), class_names, site))
        raise DatasetError(f"{p}: unsupported data source file; give a manifest .csv, a COVIDx .txt "
                           "label file or a folder")
    site = site or p.resolve().name
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
    covidx = sorted(f for f in p.glob("*.txt") if looks_like_covidx(f))
    if covidx:
        out: list[Sample] = []
        for f in covidx:
            out += from_covidx_labels(f, covidx_image_root(f), class_names, site)
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


def drop_duplicate_files(samples: Sequence[Sample]) -> list[Sample]:
    """The samples with each image file once: a path listed again with the same label is dropped
    (the first row kept) and a warning names it and the patient ids it was listed under. Such rows
    are real: the ieee8023 metadata lists ``images/000001-24.jpg`` under patients 285 and 339, which
    counted the image twice in training and evaluation, and could have put one image on both sides of
    a patient-grouped split. Rows of one path with different labels are all kept, for
    :func:`check_samples` to refuse."""
    first: dict[str, Sample] = {}
    dropped: dict[str, list[Sample]] = {}
    kept: list[Sample] = []
    for s in samples:
        prev = first.get(s.path)
        if prev is not None and prev.label == s.label:
            dropped.setdefault(s.path, []).append(s)
            continue
        first.setdefault(s.path, s)
        kept.append(s)
    for path, again in dropped.items():
        pids = [first[path].patient_id, *(s.patient_id for s in again)]
        log.warning("%s: listed %d times with the same label (patients %s); used once", path, len(again) + 1,
                    ", ".join(dict.fromkeys(str(p) for p in pids)))
    return kept


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

