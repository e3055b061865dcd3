"""Volume data sources (one row / folder per scan): a manifest, or scans stored as folders of slices.

:func:`load_volume_source` reads a manifest (``.csv``, or a folder with ``manifest.csv`` /
``labels.csv``: :func:`~chestdx.data.layouts.manifest.from_manifest`, one row per scan) or scan
folders (:func:`from_scan_folders`: COV19-CT-DB, CC-CCII); :func:`load_volume_sources` joins
several sources (sites).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from chestdx.data.layouts.base import Sample, resolve_label
from chestdx.data.layouts.manifest import from_manifest
from chestdx.errors import DataError, DatasetError
from chestdx.io.volumes import is_volume_input, natural_key

__all__ = ["from_scan_folders", "load_volume_source", "load_volume_sources"]

_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
           "test": "test", "testing": "test"}


def _scan_dirs(folder: Path) -> list[Path]:
    """Folders below ``folder`` (itself included) that hold files directly: each is one scan."""
    out = []
    for d, dirs, files in os.walk(folder):
        dirs.sort(key=natural_key)
        if any(not f.startswith(".") for f in files):
            out.append(Path(d))
    return out


def from_scan_folders(root: str | Path, class_names: Sequence[str], site: str | None = None) -> list[Sample]:
    """Scans stored as folders of slices under class folders.

    Layouts: ``root/[train|val|test/]<class>/<scan>/`` (COV19-CT-DB: ``covid`` / ``non-covid``, slices
    ``0.jpg, 1.jpg, ...``) and ``root/<class>/<patient>/<scan>/`` (CC-CCII: ``NCP`` / ``CP`` /
    ``Normal``). Every folder that directly holds files is one scan (read by
    :func:`~chestdx.io.read_volume`: DICOM series or slice images); NIfTI / ``.npy`` files directly
    in a class folder are scans too. The patient is the first folder below the class folder.

    Raises:
        DatasetError: no class folder matches ``class_names``, or no scan found.
    """
    root = Path(root)
    site = site or root.resolve().name
    out: list[Sample] = []

    def classes_in(folder: Path, split: str | None) -> bool:
        found = False
        for c in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                label = resolve_label(c.name, class_names)
            except DataError:
                continue
            found = True
            for entry in sorted(c.iterdir(), key=lambda p: natural_key(p.name)):
                if entry.name.startswith("."):
                    continue
                scans = _scan_dirs(entry) if entry.is_dir() else ([entry] if is_volume_input(entry) else [])
                for sc in scans:
                    out.append(Sample(str(sc.resolve()), label, entry.name.split(".")[0], site, None, None, split))
        return found

    any_split = False
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        split = _SPLITS.get(d.name.lower())
        if split:
            any_split |= classes_in(d, split)
    if not any_split and not classes_in(root, None):
        raise DatasetError(f"{root}: no class folders matching {list(class_names)} "
                           "(expected root/[split/]<class>/<scan>/)")
    if not out:
        raise DatasetError(f"{root}: class folders found but no scans in them")
    return out


def load_volume_source(path: str | Path, class_names: Sequence[str], site: str | None = None) -> list[Sample]:
    """One volume data source: a manifest (``.csv`` or a folder with ``manifest.csv`` / ``labels.csv``,
    one row per scan) or scan folders (:func:`from_scan_folders`).

    Raises:
        DatasetError: the path does not exist or no layout matched.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p}: data source not found")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DatasetError(f"{p}: a volume data source is a manifest .csv or a folder")
        return from_manifest(p, class_names, site)
    for name in ("manifest.csv", "labels.csv"):
        if (p / name).is_file():
            return from_manifest(p / name, class_names, site or p.resolve().name)
    return from_scan_folders(p, class_names, site)


def load_volume_sources(paths: Sequence[str | Path], class_names: Sequence[str]) -> list[Sample]:
    """Read and join several volume sources (sites), as :func:`~chestdx.data.layouts.sources.load_sources`
    does for images: site = folder name (``_2``... when repeated), patient ids prefixed by the site.

    Raises:
        DatasetError: no sources, or a source fails.
    """
    if not paths:
        raise DatasetError("no data sources given")
    used: Counter[str] = Counter()
    out: list[Sample] = []
    for v in paths:
        vp = Path(v).expanduser()
        name = (vp.resolve().parent.name if vp.is_file() else vp.resolve().name) or "site"
        used[name] += 1
        site = name if used[name] == 1 else f"{name}_{used[name]}"
        for s in load_volume_source(vp, class_names, site):
            out.append(replace(s, patient_id=f"{s.site}/{s.patient_id}"))
    return out

