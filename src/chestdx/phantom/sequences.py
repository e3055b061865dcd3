"""Synthetic CT scans as slice sequences, from the same 3D chest phantom (:mod:`chestdx.phantom`).

Each patient gets one scan: ``N`` axial slices spaced evenly over a craniocaudal span centred on
the patient's slices of interest (``focus_z``), rendered by the patient's site exactly as
:func:`~chestdx.phantom.slices.synthesize_slices` renders single slices (slice thickness, zoom,
blur, noise, window; jitter drawn per slice). Lesions are 3D, so in positive scans they show on
some slices and not on others: which slices matter is for the sequence model to find.

Layout (the slice layout plus scan columns; readable by every slice loader)::

    out_dir/images/<scan>_<k:03d>.png    8-bit slices, k = 0..N-1 from cranial to caudal
    out_dir/masks/<scan>_<k:03d>.png     0/255 lesion masks (empty for normals)
    out_dir/manifest.csv                 path,label,class,patient_id,site,mask,split,scan_id,slice

``<scan>`` is ``<patient>_s1``, so :func:`chestdx.data.sequences.scan_id_of` groups the files by
scan from their names alone. With ``min_slices < slices_per_scan`` the number of slices is drawn
per scan in ``[min_slices, slices_per_scan]``, so some scans can be shorter than 16 (the
COVIDx-SeqCT builder skips them unless asked to pad).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import ConfigError
from chestdx.phantom.anatomy import ChestPhantom
from chestdx.phantom.render import render_ct_slice
from chestdx.phantom.sites import SiteProfile
from chestdx.phantom.slices import slab_volume_hw
from chestdx.phantom.writer import (
    MANIFEST_COLUMNS,
    PhantomKind,
    PlannedPatient,
    write_phantom_set,
    write_slice_pair,
)

__all__ = ["SEQUENCE_MANIFEST_COLUMNS", "SEQUENCES", "scan_slices", "synthesize_sequences"]

SEQUENCE_MANIFEST_COLUMNS = (*MANIFEST_COLUMNS, "scan_id", "slice")

SEQUENCES = PhantomKind(tag="p", salt=3_000_017, split_salt=4_000_037, rng_key=(5,),
                        columns=SEQUENCE_MANIFEST_COLUMNS)
"""Scan sets: ids ``<site>-p<code>`` drawn with their own salts, patient generators keyed ``(..., 5)``."""


def scan_slices(ph: ChestPhantom, site: SiteProfile, rng: np.random.Generator, n_slices: int, size: int,
                vol_hw: int, span: float = 0.36) -> list[tuple[np.ndarray, np.ndarray]]:
    """Render ``n_slices`` evenly spaced axial slices of one patient over ``span`` (fraction of z).

    The span is centred on ``ph.focus_z`` and shifted to stay inside ``[0.03, 0.9]``. The slab is
    voxelised with one extra plane between slices (for the slice-thickness average).

    Returns:
        ``n_slices`` pairs ``(image float32 (size, size) in [0, 1], mask uint8 (size, size))``.
    """
    lo_lim, hi_lim = 0.03, 0.9
    span = min(span, hi_lim - lo_lim)
    lo = min(max(ph.focus_z - span / 2, lo_lim), hi_lim - span)
    step = 2
    depth = step * (n_slices - 1) + 3
    pad = span / max(n_slices - 1, 1) / step  # one plane beyond the first and the last slice
    vol, mask, meta = ph.render((depth, vol_hw, vol_hw), (lo - pad, lo + span + pad))
    spacing = meta["spacing_mm"]
    return [render_ct_slice(vol, mask, 1 + step * i, site, rng, size, spacing_mm=spacing) for i in range(n_slices)]


def synthesize_sequences(
    out_dir: str | Path,
    *,
    n_patients_per_class: int = 10,
    slices_per_scan: int = 20,
    min_slices: int | None = None,
    num_classes: int = 3,
    sites: int | Sequence[SiteProfile] = 1,
    size: int = 64,
    seed: int = 0,
    span: float = 0.36,
) -> Path:
    """Write a labelled data set of phantom CT scans (one scan of N slices per patient).

    Patients, sites, classes and splits are drawn as in :func:`~chestdx.phantom.slices.synthesize_slices`
    (per-patient child seeds, patient-level splits about 60 / 20 / 20 stratified by finding, drawn
    per site), so the same seed gives the same files whatever the generation order.

    Args:
        out_dir: destination folder (created).
        n_patients_per_class: patients (= scans) per class and site.
        slices_per_scan: N, slices per scan (the maximum when ``min_slices`` is given).
        min_slices: draw N per scan uniformly in ``[min_slices, slices_per_scan]``; default: fixed N.
        num_classes: 3 (normal / pneumonia / covid) or 2 (noncovid / covid).
        sites: number of :func:`~chestdx.phantom.sites.default_sites` or explicit profiles.
        size: slice side in pixels.
        seed: master seed.
        span: craniocaudal extent of a scan, as a fraction of the 300 mm phantom (0.36 = 108 mm).

    Returns:
        Path of the manifest (written atomically, last).

    Raises:
        ConfigError: bad counts, sizes or span.
    """
    lo_n = slices_per_scan if min_slices is None else min_slices

    def check() -> None:
        if lo_n > slices_per_scan:
            raise ConfigError(f"min_slices ({lo_n}) must not exceed slices_per_scan ({slices_per_scan})")
        if not 0.0 < span <= 0.87:
            raise ConfigError(f"span must lie in (0, 0.87], got {span}")

    write = functools.partial(_write_patient, min_slices=lo_n, slices_per_scan=slices_per_scan, size=size, span=span)
    return write_phantom_set(out_dir, SEQUENCES, write, n_patients_per_class=n_patients_per_class,
                             num_classes=num_classes, sites=sites, seed=seed, check=check,
                             counts=(("slices_per_scan", slices_per_scan, 1), ("min_slices", lo_n, 1),
                                     ("size", size, 16)))


def _write_patient(out: Path, pt: PlannedPatient, ph: ChestPhantom, rng: np.random.Generator, *, min_slices: int,
                   slices_per_scan: int, size: int, span: float) -> list[dict[str, Any]]:
    """The patient's scan ``<patient>_s1``: its length drawn from ``rng``, then ``images/<scan>_<k:03d>.png``
    and its mask for each slice."""
    n = int(rng.integers(min_slices, slices_per_scan + 1))
    scan = f"{pt.pid}_s1"
    slices = scan_slices(ph, pt.site, rng, n, size, slab_volume_hw(size), span)
    return [{**write_slice_pair(out, f"{scan}_{k:03d}.png", img, msk), "scan_id": scan, "slice": k}
            for k, (img, msk) in enumerate(slices)]
