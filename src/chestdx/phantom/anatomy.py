"""Synthetic chest phantom: the patient model (a resolution-free 3D chest with findings).

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
  is faint (13-32 %, +140..+320 HU), sized on a coarse plane at the focus slice. Every class spends
  a share of each (5-25 %, drawn the same way for every class) on dependent atelectasis and a
  dependent ground-glass band (both posterior, both lungs), so the bands say nothing of the class;
  pneumonia spends the rest on its consolidation (dense) and halo (faint), COVID-19 on its patches
  (faint) and small cores (dense); a normal patient leaves it unspent. Until issue 16 the bands took
  what the lesions left over, so pneumonia never had atelectasis and COVID-19 never a ground-glass
  band: a CNN read the class off the bands (with every lesion removed from the image, 98% of
  pneumonia and 83% of COVID-19 test slices kept their class) and no heatmap pointed at a lesion.
  Confounders are the same kinds of opacity as lesions, in other places.
- Every image gets its own window level / width, gain, offset, zoom, shift, rotation and noise on top
  of its site's profile, so an intensity bin does not mean a fixed HU.

What differs between classes is the spatial pattern: one compact lobar blob reaching the pleura in
one lung, mostly non-dependent (pneumonia), several round-ish faint patches touching the pleura all
around both lungs (COVID-19), nothing but the bands (normal). A small CNN learns this (0.83 test
accuracy on 64 px, 300 patients per class, ``tests/phantom/test_phantom.py``; with the lesions removed
from the test slices of positives, 83% of them are called normal) while a logistic regression on
32-bin global intensity histograms stays near 0.5 (chance is 0.33): positives carry more opacity.

Sites (:class:`~chestdx.phantom.sites.SiteProfile`) differ in noise level and texture,
resolution, slice thickness, intensity window and field of view, so site shift is real.

The patient is kept apart from its images: :meth:`ChestPhantom.render` voxelises it
(:mod:`chestdx.phantom.voxels`), :func:`~chestdx.phantom.render.render_ct_slice` turns an axial cut
into an image, and the data set writers (:mod:`chestdx.phantom.slices`, ``cxr``, ``sequences``,
``volumes``, one skeleton in :mod:`chestdx.phantom.writer`) write slices, chest X-rays (a projection
of the same volume), scans and NIfTI volumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chestdx.errors import ConfigError
from chestdx.phantom.constants import FOV_MM, Z_EXTENT_MM
from chestdx.phantom.voxels import voxelise

__all__ = ["ChestPhantom", "Lesion", "make_chest_volume", "sample_patient"]

_DENSE_FRAC = (0.11, 0.26)
_FAINT_FRAC = (0.13, 0.32)
#: Share of each opacity budget spent on the dependent bands, the same draw for every class (issue 16).
_BAND_SHARE = (0.05, 0.25)


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

    def layers(self) -> dict[str, tuple[float, float, float]]:
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

    def se_radius(self, x: np.ndarray, y: np.ndarray, axes: tuple[float, float, float]) -> np.ndarray:
        """Super-ellipse radius (< 1 inside) of ``(x, y)`` for axes ``(a, b_anterior, b_posterior)``."""
        aa, ba, bp = axes
        p = self.anatomy["se_p"]
        yb = np.where(y > 0, bp, ba)
        return ((np.abs(x) / aa) ** p + (np.abs(y) / yb) ** p) ** (1.0 / p)

    def spine_center_y(self) -> float:
        """y (mm) of the vertebral body centre."""
        return float(self.layers()["cavity"][2] - 0.3 * self.anatomy["spine_r"])

    def heart_q2(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """In-plane part of the heart ellipsoid's normalised squared radius."""
        a = self.anatomy
        c, s = math.cos(a["heart_rot"]), math.sin(a["heart_rot"])
        dx, dy = x - a["heart_x"], y - a["heart_y"]
        xr, yr = dx * c + dy * s, -dx * s + dy * c
        return (xr / a["heart_rx"]) ** 2 + (yr / a["heart_ry"]) ** 2

    def heart_qz(self, z_mm: np.ndarray) -> np.ndarray:
        a = self.anatomy
        return ((z_mm - a["heart_z"]) / a["heart_rz"]) ** 2

    def tubes(self, x: np.ndarray, y: np.ndarray, zn: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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

    def main_bronchi_q(self, x: np.ndarray, y: np.ndarray, zn: np.ndarray) -> np.ndarray:
        """Normalised squared radius of the two main bronchi (``inf`` where absent); full broadcast."""
        a = self.anatomy
        zc = a["carina_z"]
        ty = self.spine_center_y() - a["spine_r"] - 22.0
        off = np.clip((zn - zc) / 0.08, 0.0, 1.0) * 32.0 + 8.0
        br = np.minimum((x - off) ** 2, (x + off) ** 2)
        return np.where((zn >= zc) & (zn < zc + 0.08), (br + (y - ty - 4.0) ** 2) / 7.0**2, np.inf)

    def dome_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z fraction of the diaphragm surface at ``(x, y)``: lung above, abdomen below."""
        a = self.anatomy
        aa, ba, bp = self.layers()["cavity"]
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
        aa, ba, bp = self.layers()["cavity"]
        # in-plane (z-invariant) part, computed once on the (H, W) plane
        inplane = self.se_radius(x, y, (aa, ba, bp)) < 1.0
        tm = np.clip((y + 0.8 * ba) / (0.8 * ba), 0.0, 1.0)
        med = np.abs(x) - (a["med_w"] * (0.45 + 0.55 * tm * tm * (3.0 - 2.0 * tm)) + 8.0 * (y > 0))
        inplane &= med > 0
        ys = self.spine_center_y()
        inplane &= (x**2 + (y - ys) ** 2) > (a["spine_r"] + 7.0) ** 2
        inplane &= ~((np.abs(x) < a["spine_r"] + 14.0) & (y > ys))
        # z-dependent parts, combined by broadcasting comparisons
        inside = inplane & (zn < self.dome_z(x, y))
        s = np.clip(0.15 + 0.95 * np.sqrt(np.clip(zn / a["apex_z"], 0.0, None)), 0.0, 1.0)
        apex_q = ((np.abs(x) - aa * 0.5) / (aa * 0.62)) ** 2 + ((y - 0.25 * bp) / ((ba + bp) * 0.62)) ** 2
        inside &= (apex_q < s * s) | (s >= 1.0)
        inside &= (med > 6.0) | (zn >= 0.3)
        inside &= self.heart_q2(x, y) > 1.12 - self.heart_qz(zn * Z_EXTENT_MM)
        for name, (q2, zcond) in self.tubes(x, y, zn).items():
            if name != "trachea":
                inside &= (q2 > 1.6) | ~zcond
        return np.where(inside, np.where(x < 0, 1, 2), 0).astype(np.uint8)

    def lobe(self, x: np.ndarray, y: np.ndarray, zn: np.ndarray) -> np.ndarray:
        """Lobe index for lung points: 0 RUL, 1 RML, 2 RLL, 3 LUL, 4 LLL (inputs broadcast)."""
        a = self.anatomy
        lower = zn > self.fissure_z(x, y)
        right = x < 0
        middle = right & ~lower & (zn > a["hfiss_z"])
        lobe = np.where(right, np.where(lower, 2, np.where(middle, 1, 0)), np.where(lower, 4, 3))
        return lobe.astype(np.int8)

    def fissure_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z fraction of the oblique fissure at ``(x, y)``: lower lobe lies below / behind it."""
        a = self.anatomy
        bc = self.layers()["cavity"]
        t = np.clip((bc[2] - y) / (bc[1] + bc[2]), 0.0, 1.0)  # 0 posterior .. 1 anterior
        return a["fiss_top"] + (a["fiss_bot"] - a["fiss_top"]) * t + a["fiss_tilt"] * np.abs(x) / bc[0]

    def posterior_depth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance (mm) in y from the posterior pleura (cavity wall), positive inside."""
        aa, _ba, bp = self.layers()["cavity"]
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
        return voxelise(self, shape, z_range)


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
    lay = ph.layers()["cavity"]
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
    lay = ph.layers()["cavity"]
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
    # slice) is dense (about soft tissue) and how much is faint (ground glass), and at what HU. A
    # share goes to the dependent bands (every class alike); positives spend the rest on lesions:
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
    # the dependent bands take a share of each budget drawn the same way for every class, so they
    # carry nothing of the label (before issue 16 they took what the lesions left over: pneumonia
    # never had atelectasis and COVID-19 never a ground-glass band, and a CNN classified by the
    # bands alone); the lesions of positives take the rest, normals leave it unspent
    c["band_dense_share"] = _u(r_conf, *_BAND_SHARE)
    c["band_faint_share"] = _u(r_conf, *_BAND_SHARE)
    c["atel_mm"], c["band_mm"] = plane.dependent_bands(c["band_dense_share"] * dense_px,
                                                       c["band_faint_share"] * faint_px)
    les_dense, les_faint = (1.0 - c["band_dense_share"]) * dense_px, (1.0 - c["band_faint_share"]) * faint_px
    if label == 1:
        ph.lesions = _sample_pneumonia(ph, r_les, plane, les_dense, (0.1 + 0.3 * share) * les_faint)
    elif label == 2:
        ph.lesions = _sample_covid(ph, r_les, plane, les_faint, 0.1 * share * les_dense)
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
    cav = ph.layers()["cavity"]
    rse = ph.se_radius(x[ok], y[ok], cav)
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
