"""CT-slice rendering of a phantom volume as a site acquires it (thickness, zoom, blur, noise, window)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from chestdx.errors import ConfigError
from chestdx.phantom.constants import AIR_HU, FOV_MM
from chestdx.phantom.sites import SiteProfile, site_noise

__all__ = ["render_ct_slice", "window_to_uint8"]


def window_to_uint8(image01: np.ndarray) -> np.ndarray:
    """Turn a float image in ``[0, 1]`` ``(H, W)`` into uint8 ``(H, W)`` (round to nearest)."""
    return np.clip(np.rint(np.asarray(image01, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def render_ct_slice(
    volume_hu: np.ndarray,
    mask: np.ndarray,
    z: int,
    site: SiteProfile,
    rng: np.random.Generator,
    size: int = 128,
    *,
    spacing_mm: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render axial slice ``z`` of a volume as a site would: thickness, zoom, blur, noise, window.

    Args:
        volume_hu: float HU volume ``(D, H, W)`` spanning ``FOV_MM`` in-plane.
        mask: lesion mask ``(D, H, W)`` (any integer / bool type).
        z: index of the slice along ``D``.
        site: the acquisition profile.
        rng: generator for the per-image jitter and noise.
        size: output side in pixels.
        spacing_mm: ``(dz, dy, dx)`` of the volume; default: 2.5 mm slices and ``FOV_MM / H`` in-plane.

    Returns:
        ``(image, mask)``: float32 ``(size, size)`` in ``[0, 1]`` and uint8 ``(size, size)`` in {0, 1}.

    Raises:
        ConfigError: for mismatched shapes or an out-of-range ``z``.
    """
    if volume_hu.ndim != 3 or mask.shape != volume_hu.shape:
        raise ConfigError(f"volume and mask must both be (D, H, W); got {volume_hu.shape} and {mask.shape}")
    D, H, W = volume_hu.shape
    if not 0 <= z < D:
        raise ConfigError(f"slice index {z} outside the volume's {D} slices")
    if spacing_mm is None:
        spacing_mm = (2.5, FOV_MM / H, FOV_MM / W)
    dz, dy, dx = spacing_mm
    # slice thickness: triangular-ish average of neighbouring slices
    half = max(0.0, site.slice_thickness_mm / dz - 1.0) / 2.0
    k = int(math.ceil(half))
    if k > 0:
        idx = np.arange(z - k, z + k + 1)
        wts = np.clip(1.0 + half - np.abs(idx - z), 0.0, 1.0)
        idx = np.clip(idx, 0, D - 1)
        sl = np.tensordot(wts / wts.sum(), volume_hu[idx].astype(np.float32), axes=(0, 0))
    else:
        sl = volume_hu[z].astype(np.float32)
    m2 = mask[z]

    # field of view: zoom about the centre with per-image jitter, small shift and rotation
    zoom = site.fov_scale * math.exp(rng.normal(0.0, site.fov_jitter))
    ang = math.radians(rng.normal(0.0, 2.5))
    shift = rng.normal(0.0, 0.02, size=2) * np.array([H, W])
    scale = np.array([H / size, W / size]) / zoom
    ca, sa = math.cos(ang), math.sin(ang)
    rot = np.array([[ca, -sa], [sa, ca]])
    matrix = rot * scale[:, None]
    out_c = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    in_c = np.array([(H - 1) / 2.0, (W - 1) / 2.0]) + shift
    offset = in_c - matrix @ out_c
    # anti-alias before shrinking
    shrink = max(scale.max(), 1.0)
    if shrink > 1.01:
        sl = ndimage.gaussian_filter(sl, sigma=0.45 * (shrink - 1.0) + 0.2)
    img = ndimage.affine_transform(sl, matrix, offset, output_shape=(size, size), order=1, cval=AIR_HU)
    msk = ndimage.affine_transform(m2.astype(np.float32), matrix, offset, output_shape=(size, size), order=1,
                                   cval=0.0)
    out_px_mm = (dy * scale[0])
    if site.blur_sigma_mm > 0:
        img = ndimage.gaussian_filter(img, sigma=site.blur_sigma_mm / out_px_mm)
    # correlated noise with the site's HU standard deviation
    if site.noise_sigma > 0:
        img = img + site.noise_sigma * site_noise(rng, size, site.noise_corr_mm / out_px_mm)
    level, width = site.window
    level = level + rng.normal(0.0, site.window_jitter[0])
    width = width * math.exp(rng.normal(0.0, site.window_jitter[1]))
    img = (img - (level - width / 2.0)) / width
    gain = math.exp(rng.normal(0.0, site.gain_jitter))
    img = img * gain + rng.normal(0.0, site.offset_jitter)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    keep = msk > 0.5
    if not keep.any() and msk.max() > 0.05:  # a lesion that would vanish: keep its most covered pixels
        keep = msk >= msk.max() * 0.999
    return img, keep.astype(np.uint8)
