"""Is this input like the images the model was trained on? A cheap check on the model's own input.

A model answers whatever it is given: a DICOM series of pure noise got "97% noncovid". Before
answering, chestdx compares a few statistics of each preprocessed input image (the exact tensor
the network sees) with the same statistics over the training images, stored in the bundle at
export (``bundle.json`` ``input_profile``). An input whose statistic falls far outside the
training range is answered as usual, with an out-of-distribution warning in the JSON line, the
report and the service's page.

The statistics (of one ``(S, S)`` model input ``x``, after the recipe's normalisation; each is
invariant to the normalisation's shift and scale, so ``zscore``, ``unit`` and ``imagenet``
inputs compare alike):

- ``roughness``: mean absolute Laplacian over the standard deviation: noise is rough, anatomy
  is smooth;
- ``foreground``: share of pixels above the image's Otsu threshold (body / lung-field size);
- ``dark_share``: share of pixels within 5% of the intensity range above the minimum (air
  around a CT body; hardly any in a photograph);
- ``symmetry``: correlation of the image with its left-right mirror (chests are roughly
  symmetric);
- ``skewness`` of the pixel values.

Rule: with ``lo``, ``hi`` the 1st and 99th percentiles over the training images and
``w = hi - lo``, a statistic outside ``[lo - tolerance * w, hi + tolerance * w]`` (``tolerance``
0.5 by default) is out of distribution. A scan is flagged when more than half of its answered
slices are. The check is stated, simple and cheap (no second model); it catches inputs that are
not chest images of the training kind, not subtle shifts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FEATURES", "input_features", "build_profile", "check_input", "PROFILE_VERSION"]

FEATURES = ("roughness", "foreground", "dark_share", "symmetry", "skewness")
PROFILE_VERSION = 1


def input_features(x: np.ndarray) -> dict[str, float]:
    """The statistics of one model input ``x (S, S)`` (any normalisation), as a dict of floats."""
    from skimage.filters import threshold_otsu

    x = np.asarray(x, dtype=np.float64)
    std = float(x.std())
    if not np.isfinite(std) or std < 1e-8:  # a constant image: nothing like a scan
        return {"roughness": 0.0, "foreground": 0.0, "dark_share": 1.0, "symmetry": 1.0, "skewness": 0.0}
    z = (x - x.mean()) / std
    lap = np.abs(4 * z[1:-1, 1:-1] - z[:-2, 1:-1] - z[2:, 1:-1] - z[1:-1, :-2] - z[1:-1, 2:])
    lo, hi = float(z.min()), float(z.max())
    try:
        t = float(threshold_otsu(z))
    except ValueError:
        t = 0.0
    mirror = z[:, ::-1]
    sym = float((z * mirror).mean())  # z has mean 0, std 1: this is the correlation
    return {
        "roughness": float(lap.mean()),
        "foreground": float((z > t).mean()),
        "dark_share": float((z <= lo + 0.05 * (hi - lo)).mean()),
        "symmetry": sym,
        "skewness": float((z ** 3).mean()),
    }


def build_profile(images: Sequence[np.ndarray]) -> dict[str, Any]:
    """The training range of each statistic over ``images`` (each ``(S, S)`` model input): 1st and
    99th percentile and median, with the count. Stored in ``bundle.json`` as ``input_profile``."""
    feats = [input_features(im) for im in images]
    out: dict[str, Any] = {"version": PROFILE_VERSION, "n_images": len(feats), "features": {}}
    for name in FEATURES:
        v = np.array([f[name] for f in feats], dtype=np.float64)
        out["features"][name] = {"p01": float(np.percentile(v, 1)), "p99": float(np.percentile(v, 99)),
                                 "median": float(np.median(v))}
    return out


def check_input(x: np.ndarray, profile: dict[str, Any] | None, tolerance: float = 0.5) -> dict[str, Any] | None:
    """Compare one model input ``x (S, S)`` with a training ``profile``.

    Returns:
        None without a usable profile; else ``{"out_of_distribution": bool, "outside": {name:
        {"value", "training_range"}}, "features": {...}}``.
    """
    if not profile or profile.get("version") != PROFILE_VERSION or not profile.get("features"):
        return None
    feats = input_features(x)
    outside: dict[str, Any] = {}
    for name, rng in profile["features"].items():
        if name not in feats:
            continue
        lo, hi = float(rng["p01"]), float(rng["p99"])
        w = max(hi - lo, 1e-6)
        v = feats[name]
        if v < lo - tolerance * w or v > hi + tolerance * w:
            outside[name] = {"value": round(v, 4), "training_range": [round(lo, 4), round(hi, 4)]}
    return {"out_of_distribution": bool(outside), "outside": outside,
            "features": {k: round(v, 4) for k, v in feats.items()}}


def warning_text(result: dict[str, Any] | None, n_slices: int | None = None, n_flagged: int | None = None) -> str | None:
    """A one-line warning for an out-of-distribution result (None when the input looks familiar)."""
    if not result or not result.get("out_of_distribution"):
        return None
    parts = ", ".join(f"{k} {v['value']} (training {v['training_range'][0]} to {v['training_range'][1]})"
                      for k, v in result["outside"].items())
    where = f"{n_flagged} of {n_slices} slices: " if n_slices else ""
    return (f"out of distribution: this input does not look like the images the model was trained on ({where}"
            f"{parts}); the answer is not to be trusted")
