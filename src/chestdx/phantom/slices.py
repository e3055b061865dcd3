"""Phantom CT slices (``chestdx synth``, the default kind): 2D axial slices of the 3D phantom.

Each patient (:func:`~chestdx.phantom.anatomy.sample_patient`) is voxelised in a thin slab around
its slices of interest and ``slices_per_patient`` axial slices 5 mm apart are rendered by its site
(:func:`~chestdx.phantom.render.render_ct_slice`), the lesion visible on each for positives. The
data set is written by :func:`~chestdx.phantom.writer.write_phantom_set`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.phantom.anatomy import ChestPhantom
from chestdx.phantom.constants import Z_EXTENT_MM
from chestdx.phantom.render import render_ct_slice
from chestdx.phantom.sites import SiteProfile
from chestdx.phantom.writer import PhantomKind, PlannedPatient, write_phantom_set, write_slice_pair

__all__ = ["SLICES", "slab_volume_hw", "synthesize_slices"]

SLICES = PhantomKind(tag="p", salt=1_000_003)
"""Slice sets: ids ``<site>-p<code>``, the default id and split salts, the patient's own generator."""

_SLAB_SPACING_MM = 2.5


def _patient_slices(
    ph: ChestPhantom, site: SiteProfile, rng: np.random.Generator, n_slices: int, size: int, vol_hw: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Render ``n_slices`` axial slices of one patient around its focus, lesion visible for positives."""
    step = 2  # slices 5 mm apart, one neighbour on each side for the slice thickness
    D = step * (n_slices - 1) + 3
    half = D * _SLAB_SPACING_MM / 2.0 / Z_EXTENT_MM
    fz = min(max(ph.focus_z, half), 1.0 - half)
    vol, mask, meta = ph.render((D, vol_hw, vol_hw), (fz - half, fz + half))
    wanted = [1 + step * i for i in range(n_slices)]
    if ph.label > 0:
        area = mask.reshape(D, -1).sum(axis=1)
        has = [i for i in range(D) if area[i] >= 3]
        if not has:
            has = [int(np.argmax(area))]
        wanted = [min(has, key=lambda j, w=w: (abs(j - w), j)) for w in wanted]  # type: ignore[misc]
    spacing = meta["spacing_mm"]
    return [render_ct_slice(vol, mask, z, site, rng, size, spacing_mm=spacing) for z in wanted]


def synthesize_slices(
    out_dir: str | Path,
    *,
    n_patients_per_class: int = 50,
    slices_per_patient: int = 2,
    num_classes: int = 3,
    sites: int | Sequence[SiteProfile] = 1,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a labelled 2D CT-slice data set made from the phantom.

    Layout: ``out_dir/images/<patient>_<k>.png`` (8-bit grayscale ``(size, size)``),
    ``out_dir/masks/<same name>`` (0/255 lesion mask, empty for normals) and ``out_dir/manifest.csv``
    with columns ``path,label,class,patient_id,site,mask,split`` (paths relative to ``out_dir``).

    Each site gets ``n_patients_per_class`` patients per class (for ``num_classes=2`` the noncovid
    class is half normal, half pneumonia). Patient ids are unique across sites and carry no class
    hint. Splits (train / val / test, about 60 / 20 / 20) are by patient, stratified by finding and
    drawn per site. Every patient has its own child seed ``SeedSequence(seed, spawn_key=(site,
    finding, index))``, so the same seed gives byte-identical files whatever the generation order.

    Args:
        out_dir: destination folder (created).
        n_patients_per_class: patients per class and site.
        slices_per_patient: axial slices per patient (5 mm apart, lesion visible for positives).
        num_classes: 3 (normal / pneumonia / covid) or 2 (noncovid / covid).
        sites: number of :func:`~chestdx.phantom.sites.default_sites` or explicit profiles.
        size: image side in pixels.
        seed: master seed.

    Returns:
        Path of the manifest (written atomically, last).

    Raises:
        ConfigError: for a bad number of classes, patients, slices, sites or size.
    """
    return write_phantom_set(
        out_dir, SLICES, functools.partial(_write_patient, slices_per_patient=slices_per_patient, size=size),
        n_patients_per_class=n_patients_per_class, num_classes=num_classes, sites=sites, seed=seed,
        counts=(("slices_per_patient", slices_per_patient, 1), ("size", size, 16)))


def slab_volume_hw(size: int) -> int:
    """In-plane voxels of the slab rendered for slices of ``size`` pixels (sequences use it too)."""
    return max(96, min(2 * size, 256)) if size < 128 else size


def _write_patient(out: Path, pt: PlannedPatient, ph: ChestPhantom, rng: np.random.Generator, *,
                   slices_per_patient: int, size: int) -> list[dict[str, Any]]:
    """``images/<patient>_<k:02d>.png`` and its mask for each of the patient's slices."""
    slices = _patient_slices(ph, pt.site, rng, slices_per_patient, size, slab_volume_hw(size))
    return [write_slice_pair(out, f"{pt.pid}_{k:02d}.png", img, msk) for k, (img, msk) in enumerate(slices)]
