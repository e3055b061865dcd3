"""The one writer skeleton of every phantom data set (slices, chest X-rays, scans, volumes).

:func:`write_phantom_set` does what every kind shares: check the arguments, make the output
folders, build the site list, plan the patients (ids, classes, patient-level splits: see
:func:`plan_patients`), give each patient its own generator and :func:`~chestdx.phantom.anatomy.sample_patient`
draw, hand it to the kind's patient writer, and write ``manifest.csv`` last, atomically. A kind
(:class:`PhantomKind`) differs only in its id tag and salts, its folders and manifest columns, and
the patient writer that renders and writes the patient's files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import ConfigError
from chestdx.phantom.anatomy import ChestPhantom, sample_patient
from chestdx.phantom.constants import CLASS_NAMES_2, CLASS_NAMES_3
from chestdx.phantom.render import window_to_uint8
from chestdx.phantom.sites import SiteProfile, default_sites
from chestdx.utils import atomic_open

__all__ = [
    "MANIFEST_COLUMNS",
    "PatientWriter",
    "PhantomKind",
    "PlannedPatient",
    "check_phantom_args",
    "check_sites",
    "make_out_dirs",
    "plan_patients",
    "write_manifest",
    "write_phantom_set",
    "write_slice_pair",
]

MANIFEST_COLUMNS = ("path", "label", "class", "patient_id", "site", "mask", "split")


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



@dataclass(frozen=True)
class PhantomKind:
    """What sets one kind of phantom data set apart in :func:`write_phantom_set`.

    Attributes:
        tag: the letter after the site in patient ids (``<site>-<tag><code>``).
        salt: spawn-key salt of the id permutation (:func:`plan_patients`).
        split_salt: spawn-key salt of the split; None: ``salt + 1_000_000``.
        rng_key: extra spawn-key entries of each patient's generator (:meth:`PlannedPatient.rng`).
        subdirs: the folders made under ``out_dir``.
        columns: the manifest's columns.
    """

    tag: str
    salt: int
    split_salt: int | None = None
    rng_key: tuple[int, ...] = ()
    subdirs: tuple[str, ...] = ("images", "masks")
    columns: tuple[str, ...] = MANIFEST_COLUMNS


PatientWriter = Callable[[Path, PlannedPatient, ChestPhantom, np.random.Generator], list[dict[str, Any]]]
"""``(out_dir, patient, phantom, rng) -> manifest entries``: renders one patient with its generator
(already used once, by :func:`~chestdx.phantom.anatomy.sample_patient`), writes its files under
``out_dir`` and returns one dict per file with the kind's own columns (``path``, ``mask``, ...)."""


def write_phantom_set(
    out_dir: str | Path,
    kind: PhantomKind,
    write_patient: PatientWriter,
    *,
    n_patients_per_class: int,
    num_classes: int,
    sites: int | Sequence[SiteProfile],
    seed: int,
    counts: Sequence[tuple[str, Any, int]] = (),
    check: Callable[[], object] | None = None,
) -> Path:
    """Write one phantom data set: the skeleton shared by every kind.

    In order: :func:`check_phantom_args` (``num_classes``, ``n_patients_per_class >= 1`` and the
    kind's ``counts``), the kind's ``check``, :func:`check_sites`, the output folders, then for each
    patient of :func:`plan_patients` (site by site): its generator ``pt.rng(seed, *kind.rng_key)``,
    ``sample_patient(rng, pt.finding)`` and ``write_patient``, whose entries get the patient's
    ``label``, ``class``, ``patient_id``, ``site`` and ``split``; last the manifest.

    Args:
        out_dir: destination folder (created).
        kind: ids, salts, folders and columns of the kind.
        write_patient: renders and writes one patient (see :data:`PatientWriter`).
        n_patients_per_class: patients per class and site.
        num_classes: 2 or 3.
        sites: number of :func:`~chestdx.phantom.sites.default_sites` or explicit profiles.
        seed: master seed.
        counts: further ``(name, value, minimum)`` integer arguments to check.
        check: further checks of the kind's arguments (raise :class:`~chestdx.errors.ConfigError`).

    Returns:
        Path of ``out_dir/manifest.csv`` (written atomically, last).

    Raises:
        ConfigError: a bad number of classes, patients, sites or of the kind's counts, or what
            ``check`` raises.
    """
    check_phantom_args(num_classes, ("n_patients_per_class", n_patients_per_class, 1), *counts)
    if check is not None:
        check()
    site_list = check_sites(sites)
    out = make_out_dirs(out_dir, *kind.subdirs)
    rows: list[dict[str, Any]] = []
    for pt in plan_patients(site_list, n_patients_per_class, num_classes, seed, kind.salt, kind.tag,
                            kind.split_salt):
        prng = pt.rng(seed, *kind.rng_key)
        ph = sample_patient(prng, pt.finding)
        common = {"label": pt.label, "class": pt.class_name, "patient_id": pt.pid, "site": pt.site.name,
                  "split": pt.split}
        rows += [{**entry, **common} for entry in write_patient(out, pt, ph, prng)]
    return write_manifest(out / "manifest.csv", rows, kind.columns)
