"""Phantom CT volumes (``chestdx synth --kind volume``): NIfTI scans with 3D lesion masks.

Each patient of the 3D phantom (:func:`~chestdx.data.phantom.sample_patient`) is voxelised whole
(thoracic inlet to upper abdomen) at ``shape`` ``(D, H, W)`` by :meth:`ChestPhantom.render`, then
acquired by its site (:class:`~chestdx.data.phantom.SiteProfile`): Gaussian resolution loss
(``blur_sigma_mm``), spatially correlated noise (``noise_sigma`` HU, ``noise_corr_mm``), and a small
per-scan HU gain / offset (``gain_jitter``, ``offset_jitter`` read as fractions of the site window
width). The in-plane field of view and slice thickness of the slice profiles are not applied (every
volume spans the phantom's 340 mm and is resized by the training pipeline anyway).

Layout: ``out_dir/volumes/<patient>.nii.gz`` (int16 HU, RAS affine with the voxel spacing),
``out_dir/masks/<patient>.nii.gz`` (uint8 lesion mask, empty for normals) and
``out_dir/manifest.csv`` (``path,label,class,patient_id,site,mask,split``, one row per scan). Read
back with :func:`~chestdx.data.read_volume`, a volume is ``(D, H, W)`` inferior -> superior.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from chestdx.data.phantom import (
    CLASS_NAMES_2,
    CLASS_NAMES_3,
    MANIFEST_COLUMNS,
    SiteProfile,
    _split_ids,
    default_sites,
    sample_patient,
)
from chestdx.errors import ConfigError
from chestdx.utils import atomic_open

__all__ = ["acquire_volume", "save_nifti_volume", "synthesize_volumes"]


def save_nifti_volume(path: str | Path, vol: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
    """Write ``(D, H, W)`` (inferior -> superior, display convention) as a NIfTI file that
    :func:`~chestdx.data.read_volume` reads back unchanged. ``spacing`` is ``(dz, dy, dx)`` in mm.

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
    per site) are drawn as in :func:`~chestdx.data.phantom.synthesize_slices`, with per-patient child
    seeds, so the same seed gives the same files whatever the order.

    Args:
        out_dir: destination folder (created).
        n_patients_per_class: scans per class and site (for 2 classes the noncovid class is half
            normal, half pneumonia).
        num_classes: 2 (noncovid / covid, as CMC-COV19D) or 3 (normal / pneumonia / covid).
        sites: number of :func:`~chestdx.data.phantom.default_sites` or explicit profiles.
        shape: ``(D, H, W)`` of every volume.
        seed: master seed.

    Returns:
        Path of the manifest (written atomically, last).

    Raises:
        ConfigError: bad counts, classes, sites or shape.
    """
    if num_classes not in (2, 3):
        raise ConfigError(f"num_classes must be 2 or 3, got {num_classes!r}")
    if not isinstance(n_patients_per_class, int) or n_patients_per_class < 1:
        raise ConfigError(f"n_patients_per_class must be an integer >= 1, got {n_patients_per_class!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ConfigError(f"shape must be (D, H, W) with every side >= 4, got {shape}")
    site_list = default_sites(sites) if isinstance(sites, int) else list(sites)
    if not site_list or len({s.name for s in site_list}) != len(site_list):
        raise ConfigError("give at least one site, with unique names")
    out = Path(out_dir)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    names = CLASS_NAMES_3 if num_classes == 3 else CLASS_NAMES_2
    rows: list[dict[str, Any]] = []
    for s_idx, site in enumerate(site_list):
        plan: list[tuple[int, int]] = []
        if num_classes == 3:
            for finding in range(3):
                plan += [(finding, i) for i in range(n_patients_per_class)]
        else:
            n_norm = n_patients_per_class // 2
            plan += [(0, i) for i in range(n_norm)] + [(1, i) for i in range(n_patients_per_class - n_norm)]
            plan += [(2, i) for i in range(n_patients_per_class)]
        site_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(s_idx, 6_000_011)))
        codes = site_rng.permutation(len(plan))
        pids = [f"{site.name}-v{int(codes[k]):05d}" for k in range(len(plan))]
        by_finding: dict[int, list[str]] = {}
        for (finding, _i), pid in zip(plan, pids, strict=True):
            by_finding.setdefault(finding, []).append(pid)
        split_of: dict[str, str] = {}
        for finding in sorted(by_finding):
            r_split = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(s_idx, 7_000_003, finding)))
            split_of.update(_split_ids(by_finding[finding], r_split))
        for (finding, i), pid in zip(plan, pids, strict=True):
            prng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(s_idx, finding, i, 9)))
            ph = sample_patient(prng, finding)
            vol, mask, meta = ph.render(shape, (0.0, 1.0))
            spacing = meta["spacing_mm"]
            scan = acquire_volume(vol, spacing, site, prng)
            # the phantom runs thoracic inlet -> abdomen (superior -> inferior); files are stored so
            # that read_volume gives inferior -> superior
            save_nifti_volume(out / "volumes" / f"{pid}.nii.gz", np.rint(scan[::-1]).astype(np.int16), spacing)
            save_nifti_volume(out / "masks" / f"{pid}.nii.gz", (mask[::-1] > 0).astype(np.uint8), spacing)
            label = finding if num_classes == 3 else int(finding == 2)
            rows.append({"path": f"volumes/{pid}.nii.gz", "label": label, "class": names[label],
                         "patient_id": pid, "site": site.name, "mask": f"masks/{pid}.nii.gz",
                         "split": split_of[pid]})
    rows.sort(key=lambda rw: (rw["site"], rw["path"]))
    manifest = out / "manifest.csv"
    with atomic_open(manifest, "w", encoding="utf-8", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        wr.writeheader()
        wr.writerows(rows)
    return manifest
