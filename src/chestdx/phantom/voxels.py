"""Voxelisation of a phantom patient: a :class:`~chestdx.phantom.anatomy.ChestPhantom` on a grid.

:func:`voxelise` (what :meth:`ChestPhantom.render` calls) fills a ``(D, H, W)`` grid over ``FOV_MM``
in-plane and a slab of ``Z_EXTENT_MM`` with Hounsfield units (body layers, ribs, spine, mediastinum,
lungs with vessels, fissures, nodules, confounders and lesions) and the lesion mask.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from chestdx.errors import ConfigError
from chestdx.phantom.constants import AIR_HU, BLOOD_HU, CLASS_NAMES_3, FAT_HU, FOV_MM, MUSCLE_HU, Z_EXTENT_MM

if TYPE_CHECKING:
    from chestdx.phantom.anatomy import ChestPhantom

__all__ = ["voxelise"]


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


def voxelise(ph: ChestPhantom, shape: Sequence[int], z_range: tuple[float, float]
             ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Voxelise patient ``ph`` (see :meth:`ChestPhantom.render`).

    Returns:
        ``(volume, mask, meta)``: float32 HU ``(D, H, W)``, uint8 lesion mask ``(D, H, W)`` in {0, 1}
        and meta (label, class, spacing in mm, z of each slice, z range, focus, anatomy, lesions).

    Raises:
        ConfigError: a shape that is not three positive sizes, or a z range outside ``0 <= start <
            stop <= 1``.
    """
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
    lay = ph.layers()
    r_body = ph.se_radius(X, Y, lay["body"])
    r_rib = ph.se_radius(X, Y, lay["ribs"])
    r_cav = ph.se_radius(X, Y, lay["cavity"])
    base = np.full((1, H, W), AIR_HU, dtype=np.float32)
    base[r_body < 1.0] = FAT_HU
    base[ph.se_radius(X, Y, lay["muscle"]) < 1.0] = MUSCLE_HU
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
    below = cavity2 & (zn >= ph.dome_z(X, Y))
    organ = np.where(X < 12.0, a["liver_hu"], 45.0).astype(np.float32) + 5.0 * n_fine
    np.copyto(hu, organ, where=below)
    if a["stomach_gas"] > 0.5:
        zg = (a["dome_l"] + 0.07) * Z_EXTENT_MM
        gas = ((X - 60.0) / 30.0) ** 2 + ((Y + 25.0) / 22.0) ** 2 + ((zc - zg) / 20.0) ** 2
        np.copyto(hu, AIR_HU + 20.0, where=below & (gas < 1.0))

    # heart, great vessels, trachea and main bronchi
    heart = ph.heart_q2(X, Y) < 1.0 - ph.heart_qz(zc)
    np.copyto(hu, BLOOD_HU + 5.0 * n_fine, where=heart)
    for name, (q2, zcond) in ph.tubes(X, Y, zn).items():
        if name == "trachea":
            np.copyto(hu, 20.0, where=(q2 < 1.5) & zcond)
            np.copyto(hu, AIR_HU + 30.0, where=(q2 < 1.0) & zcond)
        else:
            np.copyto(hu, BLOOD_HU + 5.0 * n_fine, where=(q2 < 1.0) & zcond)
    if np.any((zn >= a["carina_z"]) & (zn < a["carina_z"] + 0.08)):
        bq = ph.main_bronchi_q(X, Y, zn)
        np.copyto(hu, 20.0, where=bq < 1.5)
        np.copyto(hu, AIR_HU + 30.0, where=bq < 1.0)

    # ---- lungs: parenchyma with dependent gradient and fine texture
    lung = ph.lung_side(X, Y, zn) > 0
    lung_base = a["lung_hu"]
    lung_hu = (lung_base + a["lung_grad"] * np.clip(Y / cav_b, -1.0, 1.0)).astype(np.float32) + 14.0 * n_fine
    # vessels (soft tissue) and bronchial lumens / walls
    lung_hu += _splat_tubes(ph.vessels, grid) * (BLOOD_HU - lung_hu)
    lumen = None
    if any(les.bronchograms for les in ph.lesions):
        lumen = _splat_tubes(_bronchi_from_vessels(ph.vessels[ph.vessels[:, 6] > 1.4]), grid)
    # fissures (oblique on both sides, horizontal on the right)
    if c.get("fissure_hu", 0.0) > 0:
        fz = ph.fissure_z(X, Y) * Z_EXTENT_MM
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
