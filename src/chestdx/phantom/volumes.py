"""Phantom CT volumes (``chestdx synth --kind volume``): NIfTI scans with 3D lesion masks.

Each patient of the 3D phantom (:func:`~chestdx.phantom.anatomy.sample_patient`) is voxelised whole
(thoracic inlet to upper abdomen) at ``shape`` ``(D, H, W)`` by :meth:`ChestPhantom.render`, then
acquired by its site (:class:`~chestdx.phantom.sites.SiteProfile`): Gaussian resolution loss
(``blur_sigma_mm``), spatially correlated noise (``noise_sigma`` HU, ``noise_corr_mm``), and a small
per-scan HU gain / offset (``gain_jitter``, ``offset_jitter`` read as fractions of the site window
width). The in-plane field of view and slice thickness of the slice profiles are not applied (every
volume spans the phantom's 340 mm and is resized by the training pipeline anyway).

Layout: ``out_dir/volumes/<patient>.nii.gz`` (int16 HU, RAS affine with the voxel spacing),
``out_dir/masks/<patient>.nii.gz`` (uint8 lesion mask, empty for normals) and
``out_dir/manifest.csv`` (``path,label,class,patient_id,site,mask,split``, one row per scan). Read
back with :func:`~chestdx.io.read_volume`, a volume is ``(D, H, W)`` inferior -> superior.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from chestdx.errors import ConfigError
from chestdx.phantom.anatomy import ChestPhantom
from chestdx.phantom.sites import SiteProfile
from chestdx.phantom.writer import PhantomKind, PlannedPatient, write_phantom_set

__all__ = ["VOLUMES", "acquire_volume", "save_nifti_volume", "synthesize_volumes"]

VOLUMES = PhantomKind(tag="v", salt=6_000_011, split_salt=7_000_003, rng_key=(9,), subdirs=("volumes", "masks"))
"""Volume sets: ids ``<site>-v<code>`` with their own salts, patient generators keyed ``(..., 9)``."""


def save_nifti_volume(path: str | Path, vol: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
    """Write ``(D, H, W)`` (inferior -> superior, display convention) as a NIfTI file that
    :func:`~chestdx.io.read_volume` reads back unchanged. ``spacing`` is ``(dz, dy, dx)`` in mm.

    The file is written to a temporary name and renamed (atomic).
    """
    import nibabel as nib

    data = np.transpose(np.asarray(vol)[:, ::-1, ::-1], (2, 1, 0))  # -> (X, Y, Z) RAS
    affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz" if path.name.endswith(".gz") else f".{path.name}.tmp.nii")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(tmp))
    tmp.replace(path)


def acquire_volume(vol_hu: np.ndarray, spacing: Sequence[float], site: SiteProfile,
                   rng: np.random.Generator) -> np.ndarray:
    """A site's scan of a phantom volume: blur, correlated noise, gain / offset. ``(D, H, W)`` HU -> HU."""
    dz, dy, dx = (float(s) for s in spacing)
    out = vol_hu.astype(np.float32)
    if site.blur_sigma_mm > 0:
        out = ndimage.gaussian_filter(out, (site.blur_sigma_mm / dz, site.blur_sigma_mm / dy,
                                            site.blur_sigma_mm / dx))
    if site.noise_sigma > 0:
        noise = rng.standard_normal(out.shape).astype(np.float32)
        c = site.noise_corr_mm
        if c > 0:
            noise = ndimage.gaussian_filter(noise, (c / dz, c / dy, c / dx))
            noise /= max(float(noise.std()), 1e-6)
        out = out + site.noise_sigma * noise
    width = site.window[1]
    gain = 1.0 + rng.normal(0.0, site.gain_jitter)
    offset = rng.normal(0.0, site.offset_jitter) * width
    out = (out + 1000.0) * gain - 1000.0 + offset
    return np.clip(out, -1024, 3071)


def synthesize_volumes(
    out_dir: str | Path,
    *,
    n_patients_per_class: int = 10,
    num_classes: int = 2,
    sites: int | Sequence[SiteProfile] = 1,
    shape: Sequence[int] = (32, 64, 64),
    seed: int = 0,
) -> Path:
    """Write a labelled data set of phantom CT volumes (one scan per patient) with lesion masks.

    Patients, classes, sites and patient-level splits (about 60 / 20 / 20, stratified by finding,
    per site) are drawn as in :func:`~chestdx.phantom.slices.synthesize_slices`, with per-patient child
    seeds, so the same seed gives the same files whatever the order.

    Args:
        out_dir: destination folder (created).
        n_patients_per_class: scans per class and site (for 2 classes the noncovid class is half
            normal, half pneumonia).
        num_classes: 2 (noncovid / covid, as CMC-COV19D) or 3 (normal / pneumonia / covid).
        sites: number of :func:`~chestdx.phantom.sites.default_sites` or explicit profiles.
        shape: ``(D, H, W)`` of every volume.
        seed: master seed.

    Returns:
        Path of the manifest (written atomically, last).

    Raises:
        ConfigError: bad counts, classes, sites or shape.
    """
    return write_phantom_set(out_dir, VOLUMES, functools.partial(_write_patient, shape=shape),
                             n_patients_per_class=n_patients_per_class, num_classes=num_classes, sites=sites,
                             seed=seed, check=lambda: _volume_shape(shape))


def _volume_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple of ints.

    Raises:
        ConfigError: not three sides, or a side below 4.
    """
    dims = tuple(int(s) for s in shape)
    if len(dims) != 3 or min(dims) < 4:
        raise ConfigError(f"shape must be (D, H, W) with every side >= 4, got {dims}")
    return dims


def _write_patient(out: Path, pt: PlannedPatient, ph: ChestPhantom, rng: np.random.Generator, *,
                   shape: Sequence[int]) -> list[dict[str, Any]]:
    """``volumes/<patient>.nii.gz`` (the site's scan of the whole patient, int16 HU) and its mask."""
    vol, mask, meta = ph.render(_volume_shape(shape), (0.0, 1.0))
    spacing = meta["spacing_mm"]
    scan = acquire_volume(vol, spacing, pt.site, rng)
    # the phantom runs thoracic inlet -> abdomen (superior -> inferior); files are stored so
    # that read_volume gives inferior -> superior
    save_nifti_volume(out / "volumes" / f"{pt.pid}.nii.gz", np.rint(scan[::-1]).astype(np.int16), spacing)
    save_nifti_volume(out / "masks" / f"{pt.pid}.nii.gz", (mask[::-1] > 0).astype(np.uint8), spacing)
    return [{"path": f"volumes/{pt.pid}.nii.gz", "mask": f"masks/{pt.pid}.nii.gz"}]
