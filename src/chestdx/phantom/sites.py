"""Acquisition sites of the phantom: how one scanner / hospital turns a volume into images.

Sites (:class:`SiteProfile`, :func:`default_sites`) differ in noise level and texture, resolution,
slice thickness, intensity window and field of view, so site shift is real.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chestdx.errors import ConfigError

__all__ = ["SiteProfile", "default_sites"]


@dataclass(frozen=True)
class SiteProfile:
    """How one scanner / hospital turns a volume into images.

    Attributes:
        name: short identifier written to the manifest's ``site`` column.
        noise_sigma: standard deviation of the (spatially correlated) image noise, in HU.
        noise_corr_mm: correlation length of that noise (reconstruction kernel), in mm.
        blur_sigma_mm: Gaussian resolution loss, in mm (0 = as sharp as the phantom).
        window: ``(level, width)`` in HU used to map HU to ``[0, 1]`` (and 8-bit PNG).
        window_jitter: ``(level sd in HU, relative width sd)`` drawn per image.
        fov_scale: zoom; ``> 1`` shows a smaller field of view (body fills more of the image).
        fov_jitter: relative sd of the zoom, per image.
        gain_jitter: relative sd of a multiplicative gain on the windowed image, per image.
        offset_jitter: sd of an additive offset on the windowed image, per image.
        slice_thickness_mm: reconstructed slice thickness (slices are averaged over it).
    """

    name: str
    noise_sigma: float = 15.0
    noise_corr_mm: float = 1.5
    blur_sigma_mm: float = 0.5
    window: tuple[float, float] = (-600.0, 1500.0)
    window_jitter: tuple[float, float] = (40.0, 0.08)
    fov_scale: float = 1.0
    fov_jitter: float = 0.04
    gain_jitter: float = 0.05
    offset_jitter: float = 0.03
    slice_thickness_mm: float = 2.5


_SITE_TABLE = (
    SiteProfile("siteA", noise_sigma=10.0, noise_corr_mm=1.2, blur_sigma_mm=0.3, window=(-600.0, 1500.0),
                fov_scale=1.0, slice_thickness_mm=2.5),
    SiteProfile("siteB", noise_sigma=45.0, noise_corr_mm=2.5, blur_sigma_mm=2.5, window=(-450.0, 1200.0),
                fov_scale=0.82, slice_thickness_mm=5.0),
    SiteProfile("siteC", noise_sigma=25.0, noise_corr_mm=0.8, blur_sigma_mm=0.0, window=(-700.0, 1800.0),
                fov_scale=1.18, slice_thickness_mm=1.25, offset_jitter=0.05),
    SiteProfile("siteD", noise_sigma=65.0, noise_corr_mm=1.8, blur_sigma_mm=1.5, window=(-500.0, 1000.0),
                fov_scale=0.92, slice_thickness_mm=5.0, gain_jitter=0.08),
)


def default_sites(k: int = 1) -> list[SiteProfile]:
    """Return ``k`` clearly different acquisition sites.

    The first four are fixed (low noise / sharp / lung window; heavy noise / blurred / narrow window /
    wide field of view; sharp with fine noise / wide window / zoomed in; very noisy / narrow window);
    further sites are drawn from a fixed generator, so ``default_sites(k)[:j] == default_sites(j)``.

    Raises:
        ConfigError: if ``k < 1``.
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"number of sites must be an integer >= 1, got {k!r}")
    sites = list(_SITE_TABLE[:k])
    for i in range(len(_SITE_TABLE), k):
        r = np.random.default_rng(np.random.SeedSequence(7919, spawn_key=(i,)))
        sites.append(
            SiteProfile(
                f"site{i}",
                noise_sigma=float(r.uniform(8, 70)),
                noise_corr_mm=float(r.uniform(0.8, 2.5)),
                blur_sigma_mm=float(r.uniform(0.0, 2.5)),
                window=(float(r.uniform(-700, -450)), float(r.uniform(1000, 1800))),
                fov_scale=float(r.uniform(0.8, 1.2)),
                slice_thickness_mm=float(r.choice([1.25, 2.5, 5.0])),
            )
        )
    return sites


def site_noise(rng: np.random.Generator, size: int, corr_px: float) -> np.ndarray:
    """Unit-variance scanner noise ``(size, size)`` float32, Gaussian-correlated over ``corr_px``
    pixels (white below 0.3 px); scaled by the caller to the site's noise level."""
    from scipy import ndimage

    nz = rng.standard_normal((size, size)).astype(np.float32)
    if corr_px > 0.3:
        nz = ndimage.gaussian_filter(nz, sigma=corr_px)
        nz /= float(nz.std()) + 1e-8
    return nz
