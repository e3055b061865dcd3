"""Class folders: ``root/<class>/**/<image>`` or ``root/{train,val,test}/<class>/**/<image>``."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from chestdx.data.layouts.base import (
    Sample,
    abs_path,
    canonical_class,
    norm_key,
    normalize_split_or_none,
    resolve_label,
    warn_stem_patients,
)
from chestdx.errors import DataError, DatasetError
from chestdx.io.formats import IMAGE_SUFFIXES, is_image_file

__all__ = ["from_class_folders"]


def _image_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_image_file(name):
                out.append(Path(dirpath) / name)
    return out


def _is_mask_dir(name: str) -> bool:
    return norm_key(name) in {"mask", "masks", "gt", "groundtruth", "labels", "lungmask", "lungmasks",
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
                if known or norm_key(sub.name) in {norm_key(c) for c in class_names}:
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
                samples.append(Sample(abs_path(f), label, patient, site, None, None, split))

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
        warn_stem_patients(root)
    samples.sort(key=lambda s: s.path)
    return samples

