"""Synthetic chest X-rays: a projection of the same 3D chest phantom (:mod:`chestdx.phantom`).

:func:`render_cxr` voxelises a whole patient (thoracic inlet to upper abdomen) and projects it
along the antero-posterior axis, as a frontal radiograph is formed:

- Hounsfield units become linear attenuation ``mu = 0.02 / mm * max(1 + HU / 1000, 0)`` (water
  0.02 / mm, air 0, bone about 1.7 x water), integrated along y (anterior -> posterior): the
  log-transformed detector signal ``L(z, x) = sum_y mu * dy``. High attenuation is bright (bone,
  mediastinum, consolidation), aerated lung dark, as on a processed radiograph;
- the image rows run cranio-caudal (inlet at the top) and the columns from the patient's right to
  left (patient right on the image left, the radiological convention); the 300 mm craniocaudal
  extent is centred vertically in the 340 mm square field;
- lesions are made as conspicuous as on clinical radiographs: inside the 3D lesion mask the
  attenuation above the patient's normal lung (``mu - mu(lung_hu)``) is counted ``lesion_gain``
  times (default 3). Without it the phantom, whose lesions are sized to one CT-slice opacity budget
  shared by every class, projects to radiographs no model learned (measured: 30.6% / 33.3% test
  accuracy for 3 classes at 64 / 128 px); the non-lesion confounders (dependent atelectasis and
  ground-glass band, fissures, vessels) keep their plain attenuation, so normals still carry them;
- the lesion mask is projected too: a pixel is lesion where any voxel on its ray is (an
  "en-face" footprint of the 3D lesions, what a reader outlines on a radiograph);
- each site (:class:`~chestdx.phantom.sites.SiteProfile`) and image adds its own zoom, shift and
  rotation, blur, a window from the image's own percentiles with jitter (exposure), gamma, gain /
  offset and noise (``noise_sigma / 1500`` of the display range), so no global intensity gives a
  class away; what differs between classes is the projected spatial pattern (one lobar opacity,
  multifocal peripheral faint patches on both sides, or posterior dependent changes only).

:func:`synthesize_cxr` writes a data set in the same layout as
:func:`~chestdx.phantom.slices.synthesize_slices` (``images/``, ``masks/``, ``manifest.csv``), through
the shared skeleton :func:`~chestdx.phantom.writer.write_phantom_set`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from chestdx.errors import ConfigError
from chestdx.phantom.anatomy import ChestPhantom
from chestdx.phantom.constants import FOV_MM, Z_EXTENT_MM
from chestdx.phantom.sites import SiteProfile, site_noise
from chestdx.phantom.writer import PhantomKind, PlannedPatient, write_phantom_set, write_slice_pair

__all__ = ["CXR", "MU_WATER_PER_MM", "project_volume", "render_cxr", "synthesize_cxr"]

MU_WATER_PER_MM = 0.02

CXR = PhantomKind(tag="x", salt=1_000_003)
"""X-ray sets: ids ``<site>-x<code>``, the slice sets' salts (same patients, same splits)."""


def _mu(hu: np.ndarray | float) -> np.ndarray:
    """Linear attenuation per mm of Hounsfield units (air 0, water ``MU_WATER_PER_MM``)."""
    return MU_WATER_PER_MM * np.clip(1.0 + np.asarray(hu, dtype=np.float32) / 1000.0, 0.0, None)


def project_volume(volume_hu: np.ndarray, mask: np.ndarray, dy_mm: float, *, lesion_gain: float = 1.0,
                   background_hu: float = -850.0) -> tuple[np.ndarray, np.ndarray]:
    """Antero-posterior projection of a volume ``(D, H, W)`` (y = axis 1) and of its lesion mask.

    ``L(z, x) = dy * sum_y [mu + (lesion_gain - 1) * mask * max(mu - mu(background_hu), 0)]``: with
    ``lesion_gain = 1`` the plain line integral; above 1 the lesions' excess attenuation over normal
    lung counts more (see the module docstring).

    Returns:
        line integrals of attenuation ``(D, W)`` float32 and the projected mask ``(D, W)`` uint8.

    Raises:
        ConfigError: shapes differ or are not 3D, or ``lesion_gain < 1``.
    """
    if volume_hu.ndim != 3 or mask.shape != volume_hu.shape:
        raise ConfigError(f"volume and mask must both be (D, H, W); got {volume_hu.shape} and {mask.shape}")
    if not lesion_gain >= 1.0:
        raise ConfigError(f"lesion_gain must be >= 1, got {lesion_gain}")
    mu = _mu(volume_hu)
    if lesion_gain != 1.0:
        mu = mu + (lesion_gain - 1.0) * (mask > 0) * np.clip(mu - _mu(background_hu), 0.0, None)
    proj = np.asarray(mu.sum(axis=1) * dy_mm, dtype=np.float32)
    return proj, np.asarray(mask.any(axis=1), dtype=np.uint8)


def render_cxr(ph: ChestPhantom, site: SiteProfile, rng: np.random.Generator, size: int = 128,
               vol_hw: int = 96, lesion_gain: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Render one frontal chest X-ray of a phantom patient.

    Args:
        ph: the patient (:func:`~chestdx.phantom.anatomy.sample_patient`).
        site: the acquisition profile.
        rng: generator for the per-image jitter and noise.
        size: output side in pixels.
        vol_hw: in-plane voxels of the rendered volume (the craniocaudal count follows at the same
            spacing).
        lesion_gain: how many times the lesions' excess attenuation over the patient's normal lung
            counts (1 = plain projection; see the module docstring).

    Returns:
        ``(image, mask)``: float32 ``(size, size)`` in [0, 1] and uint8 ``(size, size)`` in {0, 1}.
    """
    d = max(8, int(round(vol_hw * Z_EXTENT_MM / FOV_MM)))
    vol, mask, _meta = ph.render((d, vol_hw, vol_hw), (0.0, 1.0))
    proj, les = project_volume(vol, mask, FOV_MM / vol_hw, lesion_gain=lesion_gain,
                               background_hu=float(ph.anatomy["lung_hu"]))
    top = (vol_hw - d) // 2
    full = np.zeros((vol_hw, vol_hw), np.float32)
    full_m = np.zeros((vol_hw, vol_hw), np.float32)
    full[top:top + d] = proj
    full_m[top:top + d] = les

    zoom = site.fov_scale * math.exp(rng.normal(0.0, site.fov_jitter))
    ang = math.radians(rng.normal(0.0, 2.0))
    shift = rng.normal(0.0, 0.02, size=2) * vol_hw
    scale = (vol_hw / size) / zoom
    ca, sa = math.cos(ang), math.sin(ang)
    matrix = np.array([[ca, -sa], [sa, ca]]) * scale
    out_c = np.array([(size - 1) / 2.0] * 2)
    in_c = np.array([(vol_hw - 1) / 2.0] * 2) + shift
    offset = in_c - matrix @ out_c
    if scale > 1.01:
        full = ndimage.gaussian_filter(full, sigma=0.45 * (scale - 1.0) + 0.2)
    img = ndimage.affine_transform(full, matrix, offset, output_shape=(size, size), order=1, cval=0.0)
    msk = ndimage.affine_transform(full_m, matrix, offset, output_shape=(size, size), order=1, cval=0.0)
    px_mm = FOV_MM / vol_hw * scale
    if site.blur_sigma_mm > 0:
        img = ndimage.gaussian_filter(img, sigma=site.blur_sigma_mm / px_mm)
    # exposure / processing: window from the image's own percentiles, jittered, then gamma
    lo = float(np.percentile(img, 1.0)) * math.exp(rng.normal(0.0, 0.1))
    hi = float(np.percentile(img, 99.5)) * math.exp(rng.normal(0.0, site.window_jitter[1]))
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    img = img ** math.exp(rng.normal(0.0, 0.15))
    if site.noise_sigma > 0:
        img = img + (site.noise_sigma / 1500.0) * site_noise(rng, size, site.noise_corr_mm / px_mm)
    img = img * math.exp(rng.normal(0.0, site.gain_jitter)) + rng.normal(0.0, site.offset_jitter)
    return np.clip(img, 0.0, 1.0).astype(np.float32), (msk > 0.5).astype(np.uint8)


def synthesize_cxr(
    out_dir: str | Path,
    *,
    n_patients_per_class: int = 50,
    images_per_patient: int = 1,
    num_classes: int = 3,
    sites: int | Sequence[SiteProfile] = 1,
    size: int = 128,
    seed: int = 0,
    lesion_gain: float = 3.0,
) -> Path:
    """Write a labelled chest X-ray data set made from the phantom.

    Layout: ``out_dir/images/<patient>_<k>.png`` (8-bit grayscale), ``out_dir/masks/<same name>``
    (0/255 projected lesion mask, empty for normals) and ``out_dir/manifest.csv`` with columns
    ``path,label,class,patient_id,site,mask,split``. Classes, patient ids, per-patient seeds and the
    patient-grouped, finding-stratified 60 / 20 / 20 split work as in
    :func:`~chestdx.phantom.slices.synthesize_slices` (same seed, same patients); further images of a
    patient (``images_per_patient``) are new exposures with their own jitter and noise.

    Args:
        out_dir: destination folder (created).
        n_patients_per_class: patients per class and site.
        images_per_patient: radiographs per patient.
        num_classes: 3 (normal / pneumonia / covid) or 2 (noncovid / covid).
        sites: number of :func:`~chestdx.phantom.sites.default_sites` or explicit profiles.
        size: image side in pixels.
        seed: master seed.
        lesion_gain: lesion conspicuity (:func:`render_cxr`).

    Returns:
        Path of the manifest (written atomically, last).

    Raises:
        ConfigError: bad number of classes, patients, images, sites or size.
    """
    write = functools.partial(_write_patient, images_per_patient=images_per_patient, size=size,
                              lesion_gain=lesion_gain)
    return write_phantom_set(out_dir, CXR, write, n_patients_per_class=n_patients_per_class, num_classes=num_classes,
                             sites=sites, seed=seed, counts=(("images_per_patient", images_per_patient, 1),
                                                             ("size", size, 16)))


def _write_patient(out: Path, pt: PlannedPatient, ph: ChestPhantom, rng: np.random.Generator, *,
                   images_per_patient: int, size: int, lesion_gain: float) -> list[dict[str, Any]]:
    """``images/<patient>_<k:02d>.png`` and its projected mask for each exposure of the patient."""
    vol_hw = 96 if size <= 128 else 128
    rows = []
    for k in range(images_per_patient):
        img, msk = render_cxr(ph, pt.site, rng, size, vol_hw, lesion_gain)
        rows.append(write_slice_pair(out, f"{pt.pid}_{k:02d}.png", img, msk))
    return rows
