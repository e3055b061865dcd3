"""Synthetic chest phantom: labelled CT data (later also sequences, volumes, CXR) with no download.

What it models
--------------
:func:`sample_patient` draws one patient as a resolution-free description (a :class:`ChestPhantom`,
everything in millimetres); :func:`make_chest_volume` voxelises it into a 3D chest in Hounsfield
units (HU) with a 3D lesion mask. The patient frame is x: patient right -> left (image left ->
right), y: anterior -> posterior (image top -> bottom), z: thoracic inlet (0) -> upper abdomen (1)
over :data:`Z_EXTENT_MM`; the in-plane grid spans :data:`FOV_MM`. Any slab or resolution of the same
patient can be rendered (``z_range``), which is how slices are made quickly.

- body (super-ellipse) with subcutaneous fat, a muscle layer (thicker at the back), ribs that slope
  down anteriorly (arcs of bone in an axial cut), sternum and a vertebra (body, canal, arch, spinous
  and transverse processes);
- mediastinum: heart (an ellipsoid, random size / position / tilt), ascending / descending aorta
  and arch, SVC, trachea and main bronchi, mediastinal fat;
- two lungs: tapering apices, medial border at the mediastinum (narrow anterior junction), diaphragm
  domes (right higher) with deeper posterior / lateral recesses, liver / spleen / stomach (occasional
  gas bubble) below them; parenchyma about -885..-790 HU with a dependent (posterior) gradient and
  fine texture; lobes (RUL / RML / RLL / LUL / LLL) split by oblique and horizontal fissures, which
  are visible as faint lines in some patients;
- a pulmonary vessel tree that branches and tapers towards the pleura (recursive bisection of points
  filling each lung, radii by Murray's law, partial-volume splatting), with companion bronchi that
  are invisible in aerated lung and show as air bronchograms inside consolidation.

Findings, in 3D (the lesion mask covers classes 1 and 2 only):

- **pneumonia** (label 1): lobar consolidation -- one dense (about -125..+35 HU), contiguous region
  that fills part of one lobe, reaches the pleura and stops sharply at the fissure, with air
  bronchograms and a ground-glass halo; one-sided (a second, smaller lobar focus in the other lung
  in 15% of patients);
- **COVID-19** (label 2): bilateral, peripheral / subpleural, multifocal ground-glass opacities
  (+120..+370 HU over the lung: fainter than consolidation, vessels stay visible), 3-5 patches at the
  slices of interest (both lungs) and 1-5 more elsewhere, crazy-paving reticulation in some patches,
  a small consolidative core in some patients;
- every patient (normal ones included) may have dependent atelectasis (a dense posterior
  subpleural band), a dependent ground-glass band, visible fissures and small nodules.

Why it is not trivially separable
---------------------------------
- Anatomy (body, fat, lung and heart size, diaphragm height, vessel tree, lung density) and the
  slice position come from generators that never see the label: same distribution in every class.
- One **opacity budget** per patient, drawn the same way for every class, says how much of the lung
  at the slices of interest is dense (11-26 % of the lung area, at about -110..+20 HU) and how much
  is faint (13-32 %, +140..+320 HU). Each class spends it differently, sized on a coarse plane at the
  focus slice: a normal patient on dependent atelectasis and a dependent ground-glass band (both
  posterior, both lungs); pneumonia on its consolidation (dense) and its halo plus a dependent band
  (faint); COVID-19 on its patches (faint) and dependent atelectasis plus small cores (dense). So the
  expected histogram effect is the same in every class: consolidation is smaller but denser, ground
  glass larger but fainter, and normals carry the same amounts as confounders. Reading chosen where
  the brief was open: confounders are the same kinds of opacity as lesions, in other places; a normal
  patient therefore can look like one with marked dependent changes.
- Every image gets its own window level / width, gain, offset, zoom, shift, rotation and noise on top
  of its site's profile, so an intensity bin does not mean a fixed HU.

What differs between classes is the spatial pattern: one compact lobar blob reaching the pleura in
one lung, mostly non-dependent (pneumonia), several round-ish faint patches touching the pleura all
around both lungs (COVID-19), smooth symmetric bands only at the back (normal). A small CNN learns
this (about 0.93-0.97 test accuracy on 64 px, see ``tests/data/test_phantom.py``) while a logistic
regression on 32-bin global intensity histograms stays near 0.35-0.45 (chance is 0.33).

Sites (:class:`SiteProfile`, :func:`default_sites`) differ in noise level and texture, resolution,
slice thickness, intensity window and field of view, so site shift is real.

Rendering is kept apart from the volume: :func:`render_ct_slice` turns an axial cut into an image and
:func:`synthesize_slices` writes a slice data set; sequences, NIfTI volumes and chest X-rays (a
projection of the same volume) are meant to be built on :func:`make_chest_volume` /
:meth:`ChestPhantom.render` in the same way.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from chestdx.errors import ConfigError
from chestdx.utils import atomic_open

__all__ = [
    "CLASS_NAMES_2",
    "CLASS_NAMES_3",
    "FOV_MM",
    "Z_EXTENT_MM",
    "ChestPhantom",
    "SiteProfile",
    "default_sites",
    "make_chest_volume",
    "render_ct_slice",
    "sample_patient",
    "synthesize_slices",
    "window_to_uint8",
]

CLASS_NAMES_3 = ("normal", "pneumonia", "covid")
CLASS_NAMES_2 = ("noncovid", "covid")
MANIFEST_COLUMNS = ("path", "label", "class", "patient_id", "site", "mask", "split")

FOV_MM = 340.0
"""In-plane field of view of a volume (square), in mm."""
Z_EXTENT_MM = 300.0
"""Craniocaudal extent of the phantom (thoracic inlet at 0 to upper abdomen at 1), in mm."""

_AIR = -1000.0
_DENSE_FRAC = (0.11, 0.26)
_FAINT_FRAC = (0.13, 0.32)
_FAT = -100.0
_MUSCLE = 45.0
_BLOOD = 40.0


# --------------------------------------------------------------------------------------------------
# Sites
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Patient specification (continuous, resolution free)
# --------------------------------------------------------------------------------------------------


@dataclass
class Lesion:
    """One lesion in patient millimetres.

    ``kind`` is ``"consolidation"`` (replaces lung by ``density`` HU, within lobe ``lobe``) or ``"ggo"``
    (adds ``density`` HU to the lung). ``center`` is ``(x, y, z)`` mm, ``radii`` ``(rx, ry, rz)`` mm.
    """

    kind: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    density: float
    lobe: int = -1
    crazy_paving: float = 0.0
    dense_core: float = 0.0
    halo: float = 0.0
    bronchograms: bool = False


@dataclass
class ChestPhantom:
    """Resolution-free description of one patient: anatomy, confounders and lesions (all in mm).

    Build it with :func:`sample_patient`; turn it into voxels with :meth:`render`.

    Attributes:
        label: 0 normal, 1 pneumonia, 2 COVID-19.
        anatomy: scalar anatomy parameters (mm, HU, or fractions of ``Z_EXTENT_MM`` for ``*_z``).
        confounders: the opacity budget and what the dependent bands got of it (see module doc).
        lesions: the findings (empty for normals).
        vessels: ``(S, 7)`` tube segments ``x0, y0, z0, x1, y1, z1, radius`` in mm.
        nodules: ``(N, 4)`` small nodules ``x, y, z, radius`` in mm.
        focus_z: fraction of ``Z_EXTENT_MM`` of the slices of interest (lesions are sized there).
        texture_seed: seed of the noise textures used by :meth:`render`.
    """

    label: int
    anatomy: dict[str, float]
    confounders: dict[str, float]
    lesions: list[Lesion]
    vessels: np.ndarray  # (S, 7): x0, y0, z0, x1, y1, z1, radius (mm)
    nodules: np.ndarray  # (N, 4): x, y, z, radius (mm)
    focus_z: float  # fraction of Z_EXTENT_MM where the main lesion (or its stand-in) lies
    texture_seed: int

    # ---- analytic anatomy, usable on broadcast grids and on point arrays -------------------------

    def _layers(self) -> dict[str, tuple[float, float, float]]:
        """Nested super-ellipses ``(half width, anterior depth, posterior depth)`` in mm (z-invariant)."""
        a = self.anatomy
        bw, bd = a["body_a"], a["body_b"]
        f, m, r = a["fat"], a["muscle"], a["rib"]
        post_extra = a["paraspinal"]
        return {
            "body": (bw, bd, bd * 0.95),
            "muscle": (bw - f, bd - f, bd * 0.95 - f),
            "ribs": (bw - f - m, bd - f - m, bd * 0.95 - f - m - post_extra),
            "cavity": (bw - f - m - r, bd - f - m - r, bd * 0.95 - f - m - r - post_extra),
        }

    def _se(self, x: np.ndarray, y: np.ndarray, axes: tuple[float, float, float]) -> np.ndarray:
        """Super-ellipse radius (< 1 inside) of ``(x, y)`` for axes ``(a, b_anterior, b_posterior)``."""
        aa, ba, bp = axes
        p = self.anatomy["se_p"]
        yb = np.where(y > 0, bp, ba)
        return ((np.abs(x) / aa) ** p + (np.abs(y) / yb) ** p) ** (1.0 / p)

    def spine_center_y(self) -> float:
        """y (mm) of the vertebral body centre."""
        return float(self._layers()["cavity"][2] - 0.3 * self.anatomy["spine_r"])

    def _heart_q2(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """In-plane part of the heart ellipsoid's normalised squared radius."""
        a = self.anatomy
        c, s = math.cos(a["heart_rot"]), math.sin(a["heart_rot"])
        dx, dy = x - a["heart_x"], y - a["heart_y"]
        xr, yr = dx * c + dy * s, -dx * s + dy * c
        return (xr / a["heart_rx"]) ** 2 + (yr / a["heart_ry"]) ** 2

    def _heart_qz(self, z_mm: np.ndarray) -> np.ndarray:
        a = self.anatomy
        return ((z_mm - a["heart_z"]) / a["heart_rz"]) ** 2

    def _tubes(self, x: np.ndarray, y: np.ndarray, zn: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Great vessels and airways: name -> (in-plane normalised squared radius, present-at-z)."""
        a = self.anatomy
        ys = self.spine_center_y()
        r = a["spine_r"]
        za = a["arch_z"]
        hz = a["heart_z"] / Z_EXTENT_MM
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        out["desc_aorta"] = (((x - a["dao_x"]) ** 2 + (y - (ys - r - 2.0)) ** 2) / a["aorta_r"] ** 2, zn >= za)
        asc = ((x + 8.0) ** 2 + (y - a["asc_y"]) ** 2) / (a["aorta_r"] * 1.15) ** 2
        out["asc_aorta"] = (asc, (zn >= za) & (zn < hz - 0.05))
        # arch: a capsule from the ascending to the descending aorta around arch_z
        p0 = np.array([-8.0, a["asc_y"]])
        p1 = np.array([a["dao_x"], ys - r - 2.0])
        d = p1 - p0
        t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / float(d @ d), 0.0, 1.0)
        arch = ((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2) / a["aorta_r"] ** 2
        out["arch"] = (arch, np.abs(zn - za) < 0.035)
        svc = ((x + 28.0) ** 2 + (y - a["asc_y"] + 4.0) ** 2) / 9.0**2
        out["svc"] = (svc, (zn < hz - 0.08) & (zn > 0.1))
        ty = ys - r - 22.0
        zc = a["carina_z"]
        out["trachea"] = ((x**2 + (y - ty) ** 2) / a["trachea_r"] ** 2, zn < zc)
        return out

    def _main_bronchi_q(self, x: np.ndarray, y: np.ndarray, zn: np.ndarray) -> np.ndarray:
        """Normalised squared radius of the two main bronchi (``inf`` where absent); full broadcast."""
        a = self.anatomy
        zc = a["carina_z"]
        ty = self.spine_center_y() - a["spine_r"] - 22.0
        off = np.clip((zn - zc) / 0.08, 0.0, 1.0) * 32.0 + 8.0
        br = np.minimum((x - off) ** 2, (x + off) ** 2)
        return np.where((zn >= zc) & (zn < zc + 0.08), (br + (y - ty - 4.0) ** 2) / 7.0**2, np.inf)

    def _dome_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z fraction of the diaphragm surface at ``(x, y)``: lung above, abdomen below."""
        a = self.anatomy
        aa, ba, bp = self._layers()["cavity"]
        side_r = x < 0
        zd = np.where(side_r, a["dome_r"], a["dome_l"])
        dxs = np.where(side_r, -a["dome_x"], a["dome_x"])
        q = ((x - dxs) / (aa * 0.75)) ** 2 + ((y - a["dome_y"]) / ((ba + bp) * 0.55)) ** 2
        return zd + a["dome_h"] * q

    def lung_side(self, x: np.ndarray, y: np.ndarray, zn: np.ndarray) -> np.ndarray:
        """Lung membership: 0 outside, 1 right lung (x < 0), 2 left lung.

        Args:
            x, y: mm (broadcastable, e.g. ``(1, 1, W)`` and ``(1, H, 1)``, or point arrays ``(N,)``).
            zn: craniocaudal fraction (broadcastable, e.g. ``(D, 1, 1)`` or ``(N,)``).

        Returns:
            uint8 array of the broadcast shape.
        """
        a = self.anatomy
        aa, ba, bp = self._layers()["cavity"]
        # in-plane (z-invariant) part, computed once on the (H, W) plane
        inplane = self._se(x, y, (aa, ba, bp)) < 1.0
        tm = np.clip((y + 0.8 * ba) / (0.8 * ba), 0.0, 1.0)
        med = np.abs(x) - (a["med_w"] * (0.45 + 0.55 * tm * tm * (3.0 - 2.0 * tm)) + 8.0 * (y > 0))
        inplane &= med > 0
        ys = self.spine_center_y()
        inplane &= (x**2 + (y - ys) ** 2) > (a["spine_r"] + 7.0) ** 2
        inplane &= ~((np.abs(x) < a["spine_r"] + 14.0) & (y > ys))
        # z-dependent parts, combined by broadcasting comparisons
        inside = inplane & (zn < self._dome_z(x, y))
        s = np.clip(0.15 + 0.95 * np.sqrt(np.clip(zn / a["apex_z"], 0.0, None)), 0.0, 1.0)
        apex_q = ((np.abs(x) - aa * 0.5) / (aa * 0.62)) ** 2 + ((y - 0.25 * bp) / ((ba + bp) * 0.62)) ** 2
        inside &= (apex_q < s * s) | (s >= 1.0)
        inside &= (med > 6.0) | (zn >= 0.3)
        inside &= self._heart_q2(x, y) > 1.12 - self._heart_qz(zn * Z_EXTENT_MM)
        for name, (q2, zcond) in self._tubes(x, y, zn).items():
            if name != "trachea":
                inside &= (q2 > 1.6) | ~zcond
        return np.where(inside, np.where(x < 0, 1, 2), 0).astype(np.uint8)

    def lobe(self, x: np.ndarray, y: np.ndarray, zn: np.ndarray) -> np.ndarray:
        """Lobe index for lung points: 0 RUL, 1 RML, 2 RLL, 3 LUL, 4 LLL (inputs broadcast)."""
        a = self.anatomy
        lower = zn > self._fissure_z(x, y)
        right = x < 0
        middle = right & ~lower & (zn > a["hfiss_z"])
        lobe = np.where(right, np.where(lower, 2, np.where(middle, 1, 0)), np.where(lower, 4, 3))
        return lobe.astype(np.int8)

    def _fissure_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z fraction of the oblique fissure at ``(x, y)``: lower lobe lies below / behind it."""
        a = self.anatomy
        bc = self._layers()["cavity"]
        t = np.clip((bc[2] - y) / (bc[1] + bc[2]), 0.0, 1.0)  # 0 posterior .. 1 anterior
        return a["fiss_top"] + (a["fiss_bot"] - a["fiss_top"]) * t + a["fiss_tilt"] * np.abs(x) / bc[0]

    def posterior_depth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance (mm) in y from the posterior pleura (cavity wall), positive inside."""
        aa, _ba, bp = self._layers()["cavity"]
        p = self.anatomy["se_p"]
        yb = bp * np.clip(1.0 - (np.abs(x) / aa) ** p, 0.0, 1.0) ** (1.0 / p)
        return yb - y

    # ---- voxelisation -----------------------------------------------------------------------------

    def render(
        self,
        shape: Sequence[int] = (64, 128, 128),
        z_range: tuple[float, float] = (0.0, 1.0),
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Voxelise the patient.

        Args:
            shape: ``(D, H, W)`` of the output grid; ``H x W`` covers ``FOV_MM`` square, ``D`` covers
                ``z_range`` (fractions of ``Z_EXTENT_MM``, 0 = thoracic inlet, 1 = upper abdomen).
            z_range: the craniocaudal slab to render, e.g. a thin slab for a few slices.

        Returns:
            ``(volume, mask, meta)``: volume float32 HU ``(D, H, W)``, lesion mask uint8 ``(D, H, W)``
            in {0, 1}, and meta (label, spacing in mm, z of each slice, anatomy, lesions).

        Raises:
            ConfigError: for a bad shape or z range.
        """
        return _render(self, shape, z_range)


def _u(r: np.random.Generator, lo: float, hi: float) -> float:
    return float(r.uniform(lo, hi))


def _sample_anatomy(r: np.random.Generator) -> dict[str, float]:
    a: dict[str, float] = {}
    a["body_a"] = _u(r, 128.0, 160.0)
    a["body_b"] = a["body_a"] * _u(r, 0.62, 0.74)
    a["se_p"] = _u(r, 2.1, 2.6)
    a["fat"] = _u(r, 4.0, 20.0)
    a["muscle"] = _u(r, 5.0, 10.0)
    a["paraspinal"] = _u(r, 10.0, 20.0)
    a["rib"] = _u(r, 7.0, 10.0)
    a["spine_r"] = _u(r, 13.0, 17.0)
    a["med_w"] = _u(r, 14.0, 24.0)
    a["heart_x"] = _u(r, 12.0, 32.0)
    a["heart_y"] = -_u(r, 12.0, 32.0)
    a["heart_z"] = _u(r, 0.66, 0.76) * Z_EXTENT_MM
    a["heart_rx"] = _u(r, 48.0, 66.0)
    a["heart_ry"] = _u(r, 36.0, 50.0)
    a["heart_rz"] = _u(r, 42.0, 55.0)
    a["heart_rot"] = math.radians(_u(r, 15.0, 40.0))
    a["aorta_r"] = _u(r, 10.0, 14.0)
    a["dao_x"] = _u(r, 18.0, 28.0)
    a["asc_y"] = a["heart_y"] - a["heart_ry"] * _u(r, 0.2, 0.5)
    a["arch_z"] = _u(r, 0.24, 0.32)
    a["carina_z"] = _u(r, 0.38, 0.44)
    a["trachea_r"] = _u(r, 8.0, 11.0)
    a["apex_z"] = _u(r, 0.2, 0.28)
    a["dome_r"] = _u(r, 0.7, 0.8)
    a["dome_l"] = a["dome_r"] + _u(r, 0.01, 0.06)
    a["dome_h"] = _u(r, 0.1, 0.18)
    a["dome_x"] = _u(r, 20.0, 50.0)
    a["dome_y"] = -_u(r, 5.0, 30.0)
    a["fiss_top"] = _u(r, 0.25, 0.36)
    a["fiss_bot"] = _u(r, 0.82, 0.95)
    a["fiss_tilt"] = _u(r, -0.06, 0.06)
    a["hfiss_z"] = _u(r, 0.48, 0.56)
    a["lung_hu"] = _u(r, -885.0, -790.0)
    a["lung_grad"] = _u(r, 15.0, 80.0)
    a["liver_hu"] = _u(r, 50.0, 65.0)
    a["rib_n"] = _u(r, 9.0, 11.0)
    a["rib_slope"] = _u(r, 0.9, 1.4)
    a["rib_phase"] = _u(r, 0.0, 1.0)
    a["rib_duty"] = _u(r, 0.25, 0.36)
    a["stomach_gas"] = float(r.random() < 0.5)
    return a


def _lung_points_3d(ph: ChestPhantom, r: np.random.Generator, side: int, n: int) -> np.ndarray:
    """``n`` random points ``(n, 3)`` (mm) inside lung ``side`` (1 right, 2 left)."""
    lay = ph._layers()["cavity"]
    found = np.zeros((0, 3))
    for _ in range(6):
        m = 16 * n
        x = r.uniform(-lay[0], lay[0], m)
        y = r.uniform(-lay[1], lay[2], m)
        zn = r.uniform(0.0, 1.0, m)
        ok = np.flatnonzero(ph.lung_side(x, y, zn) == side)
        found = np.concatenate([found, np.stack([x[ok], y[ok], zn[ok] * Z_EXTENT_MM], axis=1)])
        if len(found) >= n:
            return found[:n]
    if len(found) == 0:
        return found
    return found[r.integers(0, len(found), n)]


def _sample_vessel_tree(ph: ChestPhantom, r: np.random.Generator) -> np.ndarray:
    """Branching, tapering pulmonary vessel tree in both lungs: ``(S, 7)`` segments (mm).

    Built by recursive bisection of 128 random target points that fill each lung (a cheap
    space-filling tree, vectorised level by level): from each node a segment runs part of the way to
    the centroid of its targets, the targets are split in two halves along their widest axis and each
    half grows its own branch. Radii follow Murray's law (``r ~ n_leaves ** (1/3)``), so vessels taper
    towards the pleura; every leaf sprouts two short terminal twigs.
    """
    a = ph.anatomy
    n_t = 128
    hz = a["carina_z"] * Z_EXTENT_MM + 22.0
    r0 = _u(r, 6.0, 7.5)
    parts = []
    for side_i, side in ((1, -1.0), (2, 1.0)):
        targets = _lung_points_3d(ph, r, side_i, n_t)
        if len(targets) < n_t:
            continue
        nodes = np.array([[side * (a["med_w"] + 10.0), a["heart_y"] + a["heart_ry"] * 0.6 + 8.0, hz]])
        groups = targets[None]  # (G, n, 3)
        while groups.shape[1] > 1:
            g, n = groups.shape[:2]
            cen = groups.mean(axis=1)
            p = nodes + (cen - nodes) * r.uniform(0.3, 0.55, size=(g, 1))
            parts.append(np.concatenate([nodes, p, np.full((g, 1), r0 * (n / n_t) ** (1 / 3))], axis=1))
            axis = np.argmax(np.ptp(groups, axis=1), axis=1)
            key = groups[np.arange(g), :, axis]
            order = np.argsort(key, axis=1, kind="stable")
            groups = np.take_along_axis(groups, order[:, :, None], axis=1).reshape(2 * g, n // 2, 3)
            nodes = np.repeat(p, 2, axis=0)
        leaf_r = r0 * (1 / n_t) ** (1 / 3)
        leaves = np.concatenate([nodes, groups[:, 0, :], np.full((len(nodes), 1), leaf_r)], axis=1)
        parts.append(leaves)
        # two short terminal twigs per leaf, bent 20-45 degrees off the leaf's direction
        lv = np.repeat(leaves, 2, axis=0)
        d = lv[:, 3:6] - lv[:, 0:3]
        d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
        jitter = r.normal(size=d.shape)
        jitter -= (jitter * d).sum(axis=1, keepdims=True) * d
        jitter /= np.linalg.norm(jitter, axis=1, keepdims=True) + 1e-9
        ang = r.uniform(0.35, 0.8, size=(len(lv), 1))
        nd = d * np.cos(ang) + jitter * np.sin(ang)
        tips = lv[:, 3:6] + nd * r.uniform(6.0, 14.0, size=(len(lv), 1))
        parts.append(np.concatenate([lv[:, 3:6], tips, lv[:, 6:7] * 0.55], axis=1))
    if not parts:
        return np.zeros((0, 7))
    return np.concatenate(parts, axis=0)


def _lung_points(ph: ChestPhantom, r: np.random.Generator, zn: float, n: int = 600) -> tuple[np.ndarray, ...]:
    """Random candidate points (x, y) in mm at fraction ``zn`` and their lung side (0 outside)."""
    lay = ph._layers()["cavity"]
    x = r.uniform(-lay[0], lay[0], n)
    y = r.uniform(-lay[1], lay[2], n)
    side = ph.lung_side(x, y, np.full(n, zn))
    return x, y, side


def _pick(r: np.random.Generator, weights: np.ndarray) -> int:
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return int(r.choice(len(w), p=w))


def sample_patient(rng: np.random.Generator, label: int) -> ChestPhantom:
    """Draw one patient: anatomy (independent of ``label``), confounders and lesions.

    Args:
        rng: the patient's generator (give each patient its own child seed).
        label: 0 normal, 1 pneumonia (lobar consolidation), 2 COVID-19 (multifocal peripheral GGO).

    Returns:
        A :class:`ChestPhantom`; render it with :meth:`ChestPhantom.render`.

    Raises:
        ConfigError: for an unknown label.
    """
    if label not in (0, 1, 2):
        raise ConfigError(f"phantom label must be 0 (normal), 1 (pneumonia) or 2 (covid), got {label!r}")
    # independent child generators: anatomy / vessels / budget never see the label
    seeds = rng.integers(0, 2**63 - 1, size=5)
    r_anat, r_tree, r_conf, r_les = (np.random.default_rng(int(s)) for s in seeds[:4])
    anatomy = _sample_anatomy(r_anat)
    ph = ChestPhantom(
        label=int(label), anatomy=anatomy, confounders={}, lesions=[], vessels=np.zeros((0, 7)),
        nodules=np.zeros((0, 4)), focus_z=0.0, texture_seed=int(seeds[4] % (2**32)),
    )
    ph.vessels = _sample_vessel_tree(ph, r_tree)
    # where the slices of interest lie: same distribution for every class
    hi = min(0.56, anatomy["dome_r"] - 0.08)
    ph.focus_z = _u(r_anat, 0.34, hi)

    # ---- opacity budget, drawn the same way for every class: how much of the lung (at the focus
    # slice) is dense (about soft tissue) and how much is faint (ground glass), and at what HU. Each
    # class spends it differently: normals on dependent atelectasis / a dependent ground-glass band,
    # pneumonia on one lobar consolidation (+ halo), COVID-19 on peripheral ground-glass patches.
    c: dict[str, float] = {}
    c["dense_frac"] = _u(r_conf, *_DENSE_FRAC)
    c["faint_frac"] = _u(r_conf, *_FAINT_FRAC)
    c["dense_hu"] = _u(r_conf, -110.0, 20.0)
    c["faint_dhu"] = _u(r_conf, 140.0, 320.0)
    c["fissure_hu"] = _u(r_conf, 80.0, 300.0) if r_conf.random() < 0.6 else 0.0
    share = _u(r_conf, 0.0, 1.0)  # pneumonia: faint share in the halo; covid: dense share in cores
    n_nod = int(r_conf.poisson(1.0))
    nods = []
    for _ in range(n_nod):
        zn = _u(r_conf, 0.25, 0.8)
        x, y, side = _lung_points(ph, r_conf, zn, 200)
        ok = np.flatnonzero(side > 0)
        if ok.size:
            i = ok[0]
            nods.append((x[i], y[i], zn * Z_EXTENT_MM, _u(r_conf, 2.0, 4.5)))
    ph.nodules = np.asarray(nods, dtype=np.float64).reshape(-1, 4)

    ph.confounders = c
    plane = _FocusPlane(ph)
    dense_px = c["dense_frac"] * plane.lung_px
    faint_px = c["faint_frac"] * plane.lung_px
    if label == 0:
        c["atel_mm"], c["band_mm"] = plane.dependent_bands(dense_px, faint_px)
    elif label == 1:
        ph.lesions = _sample_pneumonia(ph, r_les, plane, dense_px, (0.1 + 0.3 * share) * faint_px)
        halo_px = plane.lesion_faint_px(ph.lesions)
        c["atel_mm"], c["band_mm"] = plane.dependent_bands(0.0, max(faint_px - halo_px, 0.0))
    else:
        ph.lesions = _sample_covid(ph, r_les, plane, faint_px, 0.1 * share * dense_px)
        core_px = plane.lesion_dense_px(ph.lesions)
        c["atel_mm"], c["band_mm"] = plane.dependent_bands(max(dense_px - core_px, 0.0), 0.0)
    return ph


class _FocusPlane:
    """A coarse axial grid at the patient's focus slice, used to size lesions and confounders.

    All sizes are calibrated here, in pixels of this grid (``n x n`` over ``FOV_MM``), so that the
    expected dense / faint areas at the slices that get rendered are the same in every class.
    """

    def __init__(self, ph: ChestPhantom, n: int = 96):
        self.ph = ph
        xs = (np.arange(n) + 0.5) * FOV_MM / n - FOV_MM / 2
        self.X, self.Y = xs[None, :], xs[:, None]
        self.zn = float(ph.focus_z)
        self.z = self.zn * Z_EXTENT_MM
        self.side = ph.lung_side(self.X, self.Y, np.asarray(self.zn))
        self.lung = self.side > 0
        self.lung_px = float(self.lung.sum())
        self.lobe = ph.lobe(self.X, self.Y, np.asarray(self.zn))
        self.dpost = ph.posterior_depth(self.X, self.Y)

    def q(self, les: Lesion, scale: float = 1.0) -> np.ndarray:
        (cx, cy, cz), (rx, ry, rz) = les.center, les.radii
        return (((self.X - cx) / rx) ** 2 + ((self.Y - cy) / ry) ** 2 + ((self.z - cz) / rz) ** 2) / scale**2

    def region(self, les: Lesion) -> np.ndarray:
        if les.kind == "consolidation":
            return self.lung & (self.lobe == les.lobe)
        return self.lung

    def fit_scale(self, les: Lesion, target_px: float, thr: float, lo: float = 0.2, hi: float = 3.0) -> float:
        """Scale for ``les.radii`` such that ``{q < thr}`` within its region covers ``target_px``."""
        reg = self.region(les)
        for _ in range(14):
            mid = 0.5 * (lo + hi)
            if float((reg & (self.q(les, mid) < thr)).sum()) < target_px:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def dependent_bands(self, dense_px: float, faint_px: float) -> tuple[float, float]:
        """Thickness (mm) of the dependent atelectasis band and of the ground-glass band behind it."""

        def thickness(target: float) -> float:
            if target <= 0:
                return 0.0
            d = np.sort(self.dpost[self.lung])
            k = int(min(max(round(target), 1), len(d))) - 1
            return float(max(d[k], 0.0)) if len(d) else 0.0

        atel = thickness(dense_px) + 1.5 if dense_px > 0 else 0.0
        band = thickness(dense_px + faint_px) + 2.5 - atel if faint_px > 0 else 0.0
        return atel, max(band, 0.0)

    def lesion_faint_px(self, lesions: list[Lesion]) -> float:
        tot = 0.0
        for les in lesions:
            reg = self.region(les)
            if les.kind == "consolidation":
                tot += float((reg & (self.q(les) < 0.85 + les.halo) & ~(self.q(les) < 0.9)).sum())
            else:
                tot += float((reg & (self.q(les) < 0.8)).sum())
        return tot

    def lesion_dense_px(self, lesions: list[Lesion]) -> float:
        tot = 0.0
        for les in lesions:
            reg = self.region(les)
            if les.kind == "consolidation":
                tot += float((reg & (self.q(les) < 0.9)).sum())
            elif les.dense_core > 0:
                tot += float((reg & (self.q(les) < les.dense_core - 0.075)).sum())
        return tot


def _peripheral_pick(ph: ChestPhantom, r: np.random.Generator, x: np.ndarray, y: np.ndarray, ok: np.ndarray,
                     sharp: float = 0.06, posterior: float = 0.3) -> int:
    """Index (into x / y) of a candidate close to the chest wall (subpleural), slightly posterior."""
    cav = ph._layers()["cavity"]
    rse = ph._se(x[ok], y[ok], cav)
    w = np.exp((rse - 1.0) / sharp) * (1.0 + posterior * (y[ok] > 0.3 * cav[2]))
    return int(ok[_pick(r, w)])


def _bisect(set_value: Any, measure: Any, target: float, lo: float, hi: float, steps: int = 12) -> None:
    """Bisect a lesion parameter in [lo, hi] until ``measure()`` (a pixel count that grows with the
    parameter) reaches ``target``; ``set_value`` is left called with the final midpoint."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        set_value(mid)
        if measure() < target:
            lo = mid
        else:
            hi = mid
    set_value(0.5 * (lo + hi))


def _sample_pneumonia(ph: ChestPhantom, r: np.random.Generator, plane: _FocusPlane, dense_px: float,
                      halo_px: float) -> list[Lesion]:
    """One lobar consolidation at the focus slice (sized to ``dense_px``) + halo; rarely a 2nd focus."""
    out = []
    zf = ph.focus_z
    ys, xs = np.nonzero(plane.lung)
    lobes = plane.lobe[ys, xs]
    present = np.unique(lobes)
    # lobe: prefer lower lobes, and lobes with room for the consolidation
    room = np.array([float((lobes == lb).sum()) for lb in present])
    w = np.array([1.0, 1.0, 1.3, 1.0, 1.3])[present] * np.clip(room / max(dense_px, 1.0), 0.05, 1.0)
    lobe = int(present[_pick(r, w)])
    x, y = plane.X[0, xs[lobes == lobe]], plane.Y[ys[lobes == lobe], 0]
    x = x + r.uniform(-1.5, 1.5, x.shape)
    y = y + r.uniform(-1.5, 1.5, y.shape)
    i = _peripheral_pick(ph, r, x, y, np.arange(len(x)), sharp=0.12, posterior=-0.7)
    radii = (_u(r, 25.0, 45.0), _u(r, 25.0, 45.0), _u(r, 30.0, 55.0))
    les = Lesion("consolidation", (float(x[i]), float(y[i]), zf * Z_EXTENT_MM), radii,
                 ph.confounders["dense_hu"] + _u(r, -15.0, 15.0), lobe, halo=0.0,
                 bronchograms=bool(r.random() < 0.8))
    sc = plane.fit_scale(les, dense_px, 0.9, lo=0.1, hi=4.0)
    les.radii = tuple(v * sc for v in radii)  # type: ignore[assignment]
    # halo thickness (in q units) to reach halo_px of ground glass around it
    _bisect(lambda v: setattr(les, "halo", v), lambda: plane.lesion_faint_px([les]), halo_px, 0.0, 2.0)
    out.append(les)
    if r.random() < 0.15:  # a smaller second lobar focus in the other lung, elsewhere in z
        other = 2 if lobe < 3 else 1
        zn = _u(r, 0.3, 0.8)
        x2, y2, s2 = _lung_points(ph, r, zn)
        ok2 = np.flatnonzero(s2 == other)
        if ok2.size:
            j = ok2[0]
            lb = int(ph.lobe(np.asarray(x2[j]), np.asarray(y2[j]), np.asarray(zn)))
            rr = (_u(r, 15.0, 25.0), _u(r, 15.0, 25.0), _u(r, 15.0, 25.0))
            out.append(Lesion("consolidation", (float(x2[j]), float(y2[j]), zn * Z_EXTENT_MM), rr,
                              ph.confounders["dense_hu"] + _u(r, -15.0, 15.0), lb, halo=_u(r, 0.1, 0.4),
                              bronchograms=False))
    return out


def _sample_covid(ph: ChestPhantom, r: np.random.Generator, plane: _FocusPlane, faint_px: float,
                  core_px: float) -> list[Lesion]:
    """Bilateral peripheral GGO patches: 2-3 at the focus slice (sized to ``faint_px``), more elsewhere."""
    out: list[Lesion] = []
    n_focus = int(r.integers(3, 6))
    n_other = int(r.integers(1, 6))
    first_side = int(r.integers(1, 3))
    parts = r.dirichlet(np.full(n_focus, 3.0)) * faint_px
    dhu = ph.confounders["faint_dhu"]
    for k in range(n_focus + n_other):
        at_focus = k < n_focus
        zn = ph.focus_z if at_focus else _u(r, 0.3, 0.9)
        want = first_side if k % 2 == 0 else 3 - first_side
        if at_focus:
            ys, xs = np.nonzero(plane.side == want)
            if len(xs) < 4:
                continue
            x = plane.X[0, xs] + r.uniform(-1.5, 1.5, len(xs))
            y = plane.Y[ys, 0] + r.uniform(-1.5, 1.5, len(xs))
            ok = np.arange(len(xs))
        else:
            x, y, side = _lung_points(ph, r, zn)
            ok = np.flatnonzero(side == want)
            if ok.size == 0:
                continue
        i = _peripheral_pick(ph, r, x, y, ok, posterior=-0.6)
        radii = (_u(r, 16.0, 32.0), _u(r, 16.0, 32.0), _u(r, 14.0, 28.0))
        les = Lesion("ggo", (float(x[i]), float(y[i]), zn * Z_EXTENT_MM), radii, dhu * _u(r, 0.85, 1.15),
                     crazy_paving=_u(r, 60.0, 140.0) if r.random() < 0.4 else 0.0)
        if at_focus:
            sc = plane.fit_scale(les, float(parts[k]), 0.8, lo=0.1, hi=3.0)
            les.radii = tuple(v * sc for v in radii)  # type: ignore[assignment]
        out.append(les)
    # consolidative cores in the largest focus patch, sized to core_px
    focus = [les for les in out if abs(les.center[2] - ph.focus_z * Z_EXTENT_MM) < 1e-6]
    if focus and core_px > 0:
        big = max(focus, key=lambda les: float((plane.lung & (plane.q(les) < 0.8)).sum()))
        _bisect(lambda v: setattr(big, "dense_core", v), lambda: plane.lesion_dense_px([big]), core_px, 0.0, 0.8)
    return out


# --------------------------------------------------------------------------------------------------
# Voxelisation
# --------------------------------------------------------------------------------------------------


def _splat_tubes(segs: np.ndarray, grid: dict[str, Any], thick_mm: float = 2.0) -> np.ndarray:
    """Volume fraction (0..1, float32, ``(D, H, W)``) occupied by tubes along ``segs``.

    Points sampled along each segment deposit their volume ``pi r^2 ds`` trilinearly into the grid
    (partial volume: thin vessels look faint); tubes thicker than ``thick_mm`` are then spread by a
    Gaussian of about half their radius.
    """
    D, H, W = grid["shape"]
    dz, dy, dx = grid["spacing"]
    out = np.zeros((D, H, W), dtype=np.float32)
    if segs.size == 0:
        return out
    z0 = grid["z0_mm"]
    zlo, zhi = z0 - 10.0, z0 + D * dz + 10.0
    keep = (np.maximum(segs[:, 2], segs[:, 5]) >= zlo) & (np.minimum(segs[:, 2], segs[:, 5]) <= zhi)
    segs = segs[keep]
    if segs.size == 0:
        return out
    p0, p1, rad = segs[:, 0:3], segs[:, 3:6], segs[:, 6]
    length = np.linalg.norm(p1 - p0, axis=1)
    step = 0.6 * min(dx, dy, dz)
    nstep = np.maximum(1, np.ceil(length / step).astype(np.int64))
    seg_idx = np.repeat(np.arange(len(segs)), nstep)
    starts = np.cumsum(nstep) - nstep
    offs = (np.arange(int(nstep.sum())) - starts[seg_idx] + 0.5) / nstep[seg_idx]
    pts = p0[seg_idx] + (p1 - p0)[seg_idx] * offs[:, None]
    rr = rad[seg_idx]
    vol = math.pi * rr**2 * (length / nstep)[seg_idx] / (dx * dy * dz)
    pad = 3
    fz = (pts[:, 2] - z0) / dz - 0.5 + pad
    fy = (pts[:, 1] + FOV_MM / 2) / dy - 0.5
    fx = (pts[:, 0] + FOV_MM / 2) / dx - 0.5
    ok = (fz >= 0) & (fz < D + 2 * pad - 1) & (fy >= 0) & (fy < H - 1) & (fx >= 0) & (fx < W - 1)
    if not ok.any():
        return out
    fz, fy, fx, vol, rr = fz[ok], fy[ok], fx[ok], vol[ok], rr[ok]
    iz, iy, ix = fz.astype(np.int64), fy.astype(np.int64), fx.astype(np.int64)
    tz, ty, tx = fz - iz, fy - iy, fx - ix
    shape_p = (D + 2 * pad, H, W)
    thick = rr >= thick_mm
    total = int(np.prod(shape_p))
    for sel, blur in ((~thick, False), (thick, True)):
        if not sel.any():
            continue
        base = (iz[sel] * H + iy[sel]) * W + ix[sel]
        flats, wts = [], []
        for oz in (0, 1):
            wz = tz[sel] if oz else 1.0 - tz[sel]
            for oy in (0, 1):
                wy = ty[sel] if oy else 1.0 - ty[sel]
                for ox in (0, 1):
                    wx = tx[sel] if ox else 1.0 - tx[sel]
                    flats.append(base + (oz * H + oy) * W + ox)
                    wts.append(vol[sel] * wz * wy * wx)
        acc = np.bincount(np.concatenate(flats), weights=np.concatenate(wts), minlength=total)
        vol3 = acc.reshape(shape_p).astype(np.float32)
        if blur:
            rm = float(np.median(rr[sel]))
            vol3 = ndimage.gaussian_filter(vol3, sigma=(0.5 * rm / dz, 0.5 * rm / dy, 0.5 * rm / dx), truncate=2.5)
        out += vol3[pad : pad + D]
    return np.clip(out, 0.0, 1.0)


@functools.lru_cache(maxsize=32)
def _interp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights for linear interpolation from ``n_in`` to ``n_out`` samples (same extent)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1.0)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _upsample_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    i0, i1, t = _interp_index(n_out, a.shape[axis])
    shape = [1] * a.ndim
    shape[axis] = n_out
    t = t.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - t) + np.take(a, i1, axis=axis) * t


def _smooth_noise(
    r: np.random.Generator, shape: tuple[int, int, int], sigma_vox: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Gaussian-filtered white noise ``shape`` with unit standard deviation, float32.

    Wide in-plane kernels are applied on a decimated grid and interpolated back (much faster).
    """
    D, H, W = shape
    sz, sy, sx = (float(v) for v in sigma_vox)
    f = max(1, int(min(sy, sx) / 1.2))
    h, w = (H, W) if f == 1 else (-(-H // f) + 1, -(-W // f) + 1)
    n = r.standard_normal((D, h, w), dtype=np.float32)
    n = ndimage.gaussian_filter(n, sigma=(sz, sy / f, sx / f), mode="reflect", truncate=3.0)
    if f > 1:
        n = _upsample_axis(_upsample_axis(n, W, 2), H, 1)
    n = np.ascontiguousarray(n, dtype=np.float32)
    n /= float(n.std()) + 1e-8
    return n


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) * (1.0 / (hi - lo)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bbox(center: float, radius: float, origin: float, step: float, n: int) -> slice:
    lo = int(math.floor((center - radius - origin) / step))
    hi = int(math.ceil((center + radius - origin) / step)) + 1
    return slice(min(max(lo, 0), n), min(max(hi, 0), n))


def _render(ph: ChestPhantom, shape: Sequence[int], z_range: tuple[float, float]) -> tuple[Any, ...]:
    if len(shape) != 3 or any(int(v) < 1 for v in shape):
        raise ConfigError(f"volume shape must be (D, H, W) with positive sizes, got {tuple(shape)!r}")
    z0f, z1f = float(z_range[0]), float(z_range[1])
    if not (0.0 <= z0f < z1f <= 1.0):
        raise ConfigError(f"z_range must satisfy 0 <= start < stop <= 1, got {z_range!r}")
    D, H, W = (int(v) for v in shape)
    a = ph.anatomy
    c = ph.confounders
    dz = (z1f - z0f) * Z_EXTENT_MM / D
    dy, dx = FOV_MM / H, FOV_MM / W
    z0mm, y0mm, x0mm = z0f * Z_EXTENT_MM, -FOV_MM / 2, -FOV_MM / 2
    grid = {"shape": (D, H, W), "spacing": (dz, dy, dx), "z0_mm": z0mm}
    zc = (z0mm + (np.arange(D, dtype=np.float32) + 0.5) * dz).reshape(D, 1, 1)
    zn = zc / Z_EXTENT_MM
    Y = (y0mm + (np.arange(H, dtype=np.float32) + 0.5) * dy).reshape(1, H, 1)
    X = (x0mm + (np.arange(W, dtype=np.float32) + 0.5) * dx).reshape(1, 1, W)

    rt = np.random.default_rng(ph.texture_seed)
    mm = np.array([dz, dy, dx], dtype=np.float64)
    n_coarse = _smooth_noise(rt, (D, H, W), 7.0 / mm)
    n_fine = _smooth_noise(rt, (D, H, W), 1.3 / mm)
    n_mid = _smooth_noise(rt, (D, H, W), 3.0 / mm)

    # ---- z-invariant tissue layers on the (H, W) plane, then broadcast
    lay = ph._layers()
    r_body = ph._se(X, Y, lay["body"])
    r_rib = ph._se(X, Y, lay["ribs"])
    r_cav = ph._se(X, Y, lay["cavity"])
    base = np.full((1, H, W), _AIR, dtype=np.float32)
    base[r_body < 1.0] = _FAT
    base[ph._se(X, Y, lay["muscle"]) < 1.0] = _MUSCLE
    cavity2 = r_cav < 1.0
    base[cavity2] = -90.0  # mediastinal fat where nothing else is
    hu = np.repeat(base, D, axis=0)
    hu += np.where(r_body < 1.0, 8.0, 0.0).astype(np.float32) * n_fine

    # ribs: arcs in the rib layer, sloping down anteriorly; sternum in front
    cav_b = np.where(Y > 0, lay["cavity"][2], lay["cavity"][1])
    phase = zn * a["rib_n"] + a["rib_slope"] * np.clip(Y / cav_b, -1.0, 1.0) + a["rib_phase"]  # (D, H, 1)
    rib_band = (r_rib < 1.0) & ~cavity2
    is_rib = rib_band & (np.mod(phase, 1.0) < a["rib_duty"]) & ~((np.abs(X) < 22.0) & (Y < 0))
    np.copyto(hu, 420.0 + 60.0 * n_fine, where=is_rib)
    sternum = rib_band & (np.abs(X) < 16.0) & (Y < 0) & (zn > 0.15) & (zn < 0.78)
    np.copyto(hu, 300.0 + 40.0 * n_fine, where=sternum)

    # below the diaphragm (inside the cavity): liver (right / centre), spleen / stomach (left)
    below = cavity2 & (zn >= ph._dome_z(X, Y))
    organ = np.where(X < 12.0, a["liver_hu"], 45.0).astype(np.float32) + 5.0 * n_fine
    np.copyto(hu, organ, where=below)
    if a["stomach_gas"] > 0.5:
        zg = (a["dome_l"] + 0.07) * Z_EXTENT_MM
        gas = ((X - 60.0) / 30.0) ** 2 + ((Y + 25.0) / 22.0) ** 2 + ((zc - zg) / 20.0) ** 2
        np.copyto(hu, _AIR + 20.0, where=below & (gas < 1.0))

    # heart, great vessels, trachea and main bronchi
    heart = ph._heart_q2(X, Y) < 1.0 - ph._heart_qz(zc)
    np.copyto(hu, _BLOOD + 5.0 * n_fine, where=heart)
    for name, (q2, zcond) in ph._tubes(X, Y, zn).items():
        if name == "trachea":
            np.copyto(hu, 20.0, where=(q2 < 1.5) & zcond)
            np.copyto(hu, _AIR + 30.0, where=(q2 < 1.0) & zcond)
        else:
            np.copyto(hu, _BLOOD + 5.0 * n_fine, where=(q2 < 1.0) & zcond)
    if np.any((zn >= a["carina_z"]) & (zn < a["carina_z"] + 0.08)):
        bq = ph._main_bronchi_q(X, Y, zn)
        np.copyto(hu, 20.0, where=bq < 1.5)
        np.copyto(hu, _AIR + 30.0, where=bq < 1.0)

    # ---- lungs: parenchyma with dependent gradient and fine texture
    lung = ph.lung_side(X, Y, zn) > 0
    lung_base = a["lung_hu"]
    lung_hu = (lung_base + a["lung_grad"] * np.clip(Y / cav_b, -1.0, 1.0)).astype(np.float32) + 14.0 * n_fine
    # vessels (soft tissue) and bronchial lumens / walls
    lung_hu += _splat_tubes(ph.vessels, grid) * (_BLOOD - lung_hu)
    lumen = None
    if any(les.bronchograms for les in ph.lesions):
        lumen = _splat_tubes(_bronchi_from_vessels(ph.vessels[ph.vessels[:, 6] > 1.4]), grid)
    # fissures (oblique on both sides, horizontal on the right)
    if c.get("fissure_hu", 0.0) > 0:
        fz = ph._fissure_z(X, Y) * Z_EXTENT_MM
        dist = np.abs(zc - fz) * 0.55
        hf = np.abs(zc - a["hfiss_z"] * Z_EXTENT_MM) + np.where((X < 0) & (zc < fz), 0.0, 1e3)
        lung_hu += c["fissure_hu"] * np.exp(-((np.minimum(dist, hf) / 1.2) ** 2))
    # small nodules
    for nx, ny, nz, nr in ph.nodules:
        sz_ = _bbox(nz, nr, z0mm, dz, D)
        sy_ = _bbox(ny, nr, y0mm, dy, H)
        sx_ = _bbox(nx, nr, x0mm, dx, W)
        sub = lung_hu[sz_, sy_, sx_]
        if sub.size == 0:
            continue
        q = ((X[:, :, sx_] - nx) ** 2 + (Y[:, sy_] - ny) ** 2 + (zc[sz_] - nz) ** 2) / nr**2
        sub += _smoothstep(1.0 - q, 0.0, 0.5) * (20.0 - sub)
    # dependent atelectasis (dense posterior subpleural band) and a dependent ground-glass band behind it
    # (basal predominant: full thickness from the focus slice down, tapering towards the apex)
    dpost = ph.posterior_depth(X, Y)  # (1, H, W)
    taper = np.sqrt(np.clip((zn - 0.1) / max(ph.focus_z - 0.1, 1e-3), 0.0, 1.0))  # (D, 1, 1)
    w_at = None
    if c["atel_mm"] > 0:
        w_at = _smoothstep(c["atel_mm"] * taper * (1.0 + 0.3 * n_coarse) - dpost, 0.0, 3.0)
        lung_hu += w_at * (c["dense_hu"] + 20.0 * n_fine - lung_hu)
    if c["band_mm"] > 0:
        w_b = _smoothstep((c["atel_mm"] + c["band_mm"] * (1.0 + 0.3 * n_coarse)) * taper - dpost, 0.0, 5.0)
        if w_at is not None:
            w_b *= 1.0 - w_at
        lung_hu += w_b * c["faint_dhu"] * (1.0 + 0.2 * n_fine)

    # ---- lesions (each applied inside its bounding box only)
    mask = np.zeros((D, H, W), dtype=bool)
    lobes = ph.lobe(X, Y, zn) if any(les.kind == "consolidation" for les in ph.lesions) else None
    for les in ph.lesions:
        cx, cy, cz = les.center
        rx, ry, rz = les.radii
        grow = 1.0 + 0.45 * 3.0 + les.halo + 0.2  # noise can push the boundary out this far
        g = math.sqrt(grow)
        box = (_bbox(cz, rz * g, z0mm, dz, D), _bbox(cy, ry * g, y0mm, dy, H), _bbox(cx, rx * g, x0mm, dx, W))
        sub = lung_hu[box]
        if sub.size == 0:
            continue
        lung_b = lung[box]
        nc, nf = n_coarse[box], n_fine[box]
        q = ((X[:, :, box[2]] - cx) / rx) ** 2 + ((Y[:, box[1]] - cy) / ry) ** 2 + ((zc[box[0]] - cz) / rz) ** 2
        if les.kind == "consolidation":
            assert lobes is not None
            in_lobe = (lobes[box] == les.lobe) & lung_b
            f = 1.0 + 0.4 * nc - q
            w = _smoothstep(f, 0.0, 0.2) * in_lobe
            if les.halo > 0:
                wh = _smoothstep(f + les.halo, 0.0, 0.3) * in_lobe
                sub += 170.0 * (1.0 + 0.3 * nf) * wh * (1.0 - w)
                mask[box] |= wh > 0.5
            sub += w * (les.density + 18.0 * nf - sub)
            if les.bronchograms and lumen is not None:
                sub += w * np.clip(1.5 * lumen[box], 0.0, 1.0) * (-930.0 - sub)
            mask[box] |= w > 0.5
        else:
            f = 1.0 + 0.45 * nc - q
            w = _smoothstep(f, 0.0, 0.45) * lung_b
            add = les.density * (1.0 + 0.25 * nf)
            if les.crazy_paving > 0:
                add += les.crazy_paving * np.exp(-((n_mid[box] / 0.22) ** 2))
            sub += w * add
            if les.dense_core > 0:
                wc = _smoothstep(f - 1.0 + les.dense_core, 0.0, 0.15) * lung_b
                sub += wc * (c["dense_hu"] + 20.0 * nf - sub)
            mask[box] |= w > 0.5
    mask &= lung
    np.copyto(hu, lung_hu, where=lung)

    # ---- spine (painted last: overrides everything)
    ys = ph.spine_center_y()
    rv = a["spine_r"]
    rr = np.sqrt(X**2 + (Y - ys) ** 2)
    np.copyto(hu, np.where(rr > rv - 2.5, 650.0, 230.0).astype(np.float32) + 30.0 * n_fine, where=rr < rv)
    canal_y = ys + rv + 8.0
    rc = np.sqrt(X**2 + (Y - canal_y) ** 2)
    arch = (rc >= 7.0) & (rc < 12.0) & (Y > ys + rv - 1.0)
    spinous = (np.abs(X) < 4.0) & (Y > canal_y + 9.0) & (Y < canal_y + 38.0) & (r_body < 0.96)
    transverse = (np.abs(Y - canal_y + 2.0) < 4.0) & (np.abs(X) > 8.0) & (np.abs(X) < 34.0)
    np.copyto(hu, 20.0, where=rc < 7.0)
    np.copyto(hu, 520.0 + 40.0 * n_fine, where=arch | spinous | transverse)

    meta = {
        "label": ph.label,
        "class": CLASS_NAMES_3[ph.label],
        "spacing_mm": (dz, dy, dx),
        "z_mm": zc.ravel().astype(float).tolist(),
        "z_range": (z0f, z1f),
        "focus_z": ph.focus_z,
        "anatomy": dict(a),
        "confounders": dict(c),
        "lesions": [asdict(les) for les in ph.lesions],
    }
    return hu, mask.astype(np.uint8), meta


def _bronchi_from_vessels(segs: np.ndarray) -> np.ndarray:
    """Companion bronchi: each vessel segment shifted sideways, lumen 0.7 x its radius."""
    if segs.size == 0:
        return segs
    out = segs.copy()
    d = segs[:, 3:6] - segs[:, 0:3]
    perp = np.cross(d, np.array([0.0, 0.0, 1.0]))
    bad = np.linalg.norm(perp, axis=1) < 1e-6
    perp[bad] = np.cross(d[bad], np.array([1.0, 0.0, 0.0]))
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    shift = perp * (segs[:, 6:7] * 1.8 + 1.0)
    out[:, 0:3] += shift
    out[:, 3:6] += shift
    out[:, 6] = segs[:, 6] * 0.7
    return out


def make_chest_volume(
    rng: np.random.Generator,
    label: int,
    shape: Sequence[int] = (64, 128, 128),
    z_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Make one 3D chest in Hounsfield units with its lesion mask.

    Args:
        rng: the patient's generator; the same generator state gives the same patient.
        label: 0 normal, 1 pneumonia, 2 COVID-19.
        shape: ``(D, H, W)``; ``H x W`` spans ``FOV_MM`` (380 mm), ``D`` spans ``z_range``.
        z_range: fractions of the 300 mm craniocaudal extent to render (0 thoracic inlet, 1 upper
            abdomen); a thin range gives a slab, which is much faster when only slices are needed.

    Returns:
        ``(volume, mask, meta)``: float32 HU ``(D, H, W)``, uint8 lesion mask ``(D, H, W)`` in {0, 1}
        (always empty for label 0), and a dict with label, spacing, slice z, anatomy and lesions.

    Raises:
        ConfigError: for an unknown label, a bad shape or z range.
    """
    return sample_patient(rng, label).render(shape, z_range)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


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
    img = ndimage.affine_transform(sl, matrix, offset, output_shape=(size, size), order=1, cval=_AIR)
    msk = ndimage.affine_transform(m2.astype(np.float32), matrix, offset, output_shape=(size, size), order=1,
                                   cval=0.0)
    out_px_mm = (dy * scale[0])
    if site.blur_sigma_mm > 0:
        img = ndimage.gaussian_filter(img, sigma=site.blur_sigma_mm / out_px_mm)
    # correlated noise with the site's HU standard deviation
    if site.noise_sigma > 0:
        nz = rng.standard_normal((size, size)).astype(np.float32)
        cs = site.noise_corr_mm / out_px_mm
        if cs > 0.3:
            nz = ndimage.gaussian_filter(nz, sigma=cs)
            nz /= float(nz.std()) + 1e-8
        img = img + site.noise_sigma * nz
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


# --------------------------------------------------------------------------------------------------
# Data set writer
# --------------------------------------------------------------------------------------------------

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


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _split_ids(ids: list[str], rng: np.random.Generator, fractions: tuple[float, float] = (0.6, 0.2)) -> dict[str, str]:
    order = list(rng.permutation(len(ids)))
    n = len(ids)
    n_train = max(1, int(round(fractions[0] * n))) if n else 0
    n_val = int(round(fractions[1] * n))
    n_val = min(n_val, n - n_train)
    out = {}
    for rank, i in enumerate(order):
        out[ids[i]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


@dataclass
class PlannedPatient:
    """One phantom patient to write: where, what, and under which id and split.

    Attributes:
        site_index: index of ``site`` in the site list (part of every random key).
        site: the site profile.
        finding: 0 normal, 1 other pneumonia, 2 COVID-19 (what :func:`sample_patient` draws).
        index: the patient's number within its finding and site.
        pid: ``<site>-<tag><code>``, codes a seeded permutation (ids say nothing about the class).
        split: ``train`` / ``val`` / ``test``, stratified by finding within the site.
        label: the class index (= finding for 3 classes, ``finding == 2`` for 2).
        class_name: the class's name.
    """

    site_index: int
    site: SiteProfile
    finding: int
    index: int
    pid: str
    split: str
    label: int
    class_name: str

    def rng(self, seed: int, *extra: int) -> np.random.Generator:
        """The patient's own generator: keyed by site, finding, index (and ``extra``)."""
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(self.site_index, self.finding,
                                                                             self.index, *extra)))


def check_phantom_args(num_classes: int, *ints: tuple[str, Any, int]) -> None:
    """Refuse a class count other than 2 or 3 and any ``(name, value, minimum)`` that is not an
    integer at least its minimum.

    Raises:
        ConfigError: naming the argument and the value.
    """
    if num_classes not in (2, 3):
        raise ConfigError(f"num_classes must be 2 or 3, got {num_classes!r}")
    for name, v, lo in ints:
        if not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


def make_out_dirs(out_dir: str | Path, *subdirs: str) -> Path:
    """Create ``out_dir`` and its ``subdirs`` (e.g. ``images``, ``masks``); returns ``out_dir`` as a Path."""
    out = Path(out_dir)
    for sub in subdirs:
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def check_sites(sites: int | Sequence[SiteProfile]) -> list[SiteProfile]:
    """The site list of a ``sites`` argument (a count or profiles).

    Raises:
        ConfigError: no site, or repeated names (they prefix patient ids).
    """
    site_list = default_sites(sites) if isinstance(sites, int) else list(sites)
    if not site_list:
        raise ConfigError("at least one site is needed")
    names_seen = [st.name for st in site_list]
    if len(set(names_seen)) != len(names_seen):
        raise ConfigError(f"site names must be unique (they prefix patient ids), got {names_seen}")
    return site_list


def plan_patients(site_list: Sequence[SiteProfile], n_patients_per_class: int, num_classes: int, seed: int,
                  salt: int = 1_000_003, tag: str = "p", split_salt: int | None = None) -> list[PlannedPatient]:
    """Every patient of a phantom data set, site by site.

    Per site: ``n_patients_per_class`` per class (for 2 classes the non-COVID class is half normal,
    half other pneumonia); ids from a permutation seeded by ``(site, salt)``; a patient-level split
    stratified by finding, seeded by ``(site, split_salt, finding)`` (default ``salt + 1_000_000``).
    Each writer has its own salts and ``tag`` so that its ids and splits do not repeat another kind's.

    Raises:
        ConfigError: ``num_classes`` not 2 or 3.
    """
    if num_classes not in (2, 3):
        raise ConfigError(f"num_classes must be 2 or 3, got {num_classes!r}")
    names = CLASS_NAMES_3 if num_classes == 3 else CLASS_NAMES_2
    out: list[PlannedPatient] = []
    for s_idx, site in enumerate(site_list):
        plan: list[tuple[int, int]] = []
        if num_classes == 3:
            for finding in range(3):
                plan += [(finding, i) for i in range(n_patients_per_class)]
        else:
            n_norm = n_patients_per_class // 2
            plan += [(0, i) for i in range(n_norm)] + [(1, i) for i in range(n_patients_per_class - n_norm)]
            plan += [(2, i) for i in range(n_patients_per_class)]
        site_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(s_idx, salt)))
        codes = site_rng.permutation(len(plan))
        pids = [f"{site.name}-{tag}{int(codes[k]):05d}" for k in range(len(plan))]
        by_finding: dict[int, list[str]] = {}
        for (finding, _i), pid in zip(plan, pids, strict=True):
            by_finding.setdefault(finding, []).append(pid)
        split_of: dict[str, str] = {}
        for finding in sorted(by_finding):
            r_split = np.random.default_rng(np.random.SeedSequence(
                seed, spawn_key=(s_idx, salt + 1_000_000 if split_salt is None else split_salt, finding)))
            split_of.update(_split_ids(by_finding[finding], r_split))
        for (finding, i), pid in zip(plan, pids, strict=True):
            label = finding if num_classes == 3 else int(finding == 2)
            out.append(PlannedPatient(s_idx, site, finding, i, pid, split_of[pid], label, names[label]))
    return out


def write_slice_pair(out: Path, fname: str, image_hu: np.ndarray, mask: np.ndarray) -> dict[str, str]:
    """Write ``images/<fname>`` (lung-windowed 8-bit PNG) and ``masks/<fname>`` (0/255); returns the
    manifest's ``path`` and ``mask`` entries."""
    (out / "images" / fname).write_bytes(_png_bytes(window_to_uint8(image_hu)))
    (out / "masks" / fname).write_bytes(_png_bytes((mask > 0).astype(np.uint8) * 255))
    return {"path": f"images/{fname}", "mask": f"masks/{fname}"}


def write_manifest(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write phantom manifest rows (sorted by site, then path) as CSV, atomically; returns ``path``."""
    rows = sorted(rows, key=lambda rw: (rw["site"], rw["path"]))
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        wr.writeheader()
        wr.writerows(rows)
    return path


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
        sites: number of :func:`default_sites` or explicit profiles.
        size: image side in pixels.
        seed: master seed.

    Returns:
        Path of the manifest (written atomically, last).

    Raises:
        ConfigError: for a bad number of classes, patients, slices, sites or size.
    """
    check_phantom_args(num_classes, ("n_patients_per_class", n_patients_per_class, 1),
                       ("slices_per_patient", slices_per_patient, 1), ("size", size, 16))
    site_list = check_sites(sites)
    out = make_out_dirs(out_dir, "images", "masks")
    vol_hw = max(96, min(2 * size, 256)) if size < 128 else size
    rows: list[dict[str, Any]] = []
    for pt in plan_patients(site_list, n_patients_per_class, num_classes, seed, 1_000_003, "p"):
        prng = pt.rng(seed)
        ph = sample_patient(prng, pt.finding)
        for k, (img, msk) in enumerate(_patient_slices(ph, pt.site, prng, slices_per_patient, size, vol_hw)):
            rows.append({**write_slice_pair(out, f"{pt.pid}_{k:02d}.png", img, msk), "label": pt.label,
                         "class": pt.class_name, "patient_id": pt.pid, "site": pt.site.name, "split": pt.split})
    return write_manifest(out / "manifest.csv", rows, MANIFEST_COLUMNS)
