"""The one phantom writer skeleton (``chestdx.phantom.writer``): every kind still writes what it wrote.

The digests below were recorded with the four writers as they were before they shared one skeleton
(``chestdx.data.phantom*``, commit bcc6887), for the tiny sets of ``KINDS``, and recorded again
when issue 16 made the dependent bands independent of the label (``phantom/anatomy.py``: every
patient's pixels changed, ids and splits did not). They hash the decoded
content (PNG pixels and mode, NIfTI voxels, dtype and affine, the manifest bytes) and every file
name, not the compressed bytes, so a zlib build that packs the same pixels differently does not
fail them; a change of any id, split, random draw or pixel does.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chestdx.errors import ConfigError
from chestdx.phantom import synthesize_cxr, synthesize_sequences, synthesize_slices, synthesize_volumes
from chestdx.phantom.writer import MANIFEST_COLUMNS, PhantomKind, write_phantom_set

KINDS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "slices": (lambda d: synthesize_slices(d, n_patients_per_class=1, slices_per_patient=2, num_classes=3, sites=2,
                                           size=16, seed=3),
               "4025cbc63a29929380bb657a1c5cb5543988a5d8a895444b1b8781c04a3ca6fb"),
    "cxr": (lambda d: synthesize_cxr(d, n_patients_per_class=1, images_per_patient=2, num_classes=2, size=16, seed=5),
            "84efd231eae0f3e5deb316c643d900821a168275c964c736fef6ffa7782d4f8e"),
    "sequences": (lambda d: synthesize_sequences(d, n_patients_per_class=1, slices_per_scan=3, min_slices=2,
                                                 num_classes=3, sites=2, size=16, seed=2),
                  "d866efef9112df306c6ad5915357dd2ce9e06db21a13188652de986242ffd323"),
    "volumes": (lambda d: synthesize_volumes(d, n_patients_per_class=1, num_classes=3, sites=2, shape=(6, 12, 10),
                                             seed=4),
                "8e8c9cfd5f3e3cd5a4478d7ed1617b5a1bd467f262a8fd9cb1d261ba8d22d92f"),
}


def content_digest(root: Path) -> str:
    """sha256 over ``(relative name, sha256 of the decoded content)`` of every file under ``root``."""
    import nibabel as nib
    from PIL import Image

    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix()
        if rel.endswith(".png"):
            with Image.open(p) as im:
                arr = np.asarray(im)
                data = im.mode.encode() + repr(arr.shape).encode() + arr.tobytes()
        elif rel.endswith(".nii.gz"):
            img: Any = nib.load(str(p))
            arr = np.asarray(img.dataobj)
            data = (str(arr.dtype).encode() + repr(arr.shape).encode() + arr.tobytes()
                    + np.asarray(img.affine, np.float64).tobytes())
        else:
            data = p.read_bytes()
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_writes_what_it_wrote_before_the_shared_skeleton(tmp_path: Path, kind: str) -> None:
    make, expected = KINDS[kind]
    manifest = make(tmp_path / kind)
    assert manifest == tmp_path / kind / "manifest.csv"
    assert content_digest(tmp_path / kind) == expected


def _toy_writer(calls: list[tuple[str, float]]) -> Callable[..., list[dict[str, Any]]]:
    def write(out: Path, pt: Any, ph: Any, rng: np.random.Generator) -> list[dict[str, Any]]:
        calls.append((pt.pid, float(rng.random())))
        (out / "images" / f"{pt.pid}.txt").write_text(str(ph.label))
        return [{"path": f"images/{pt.pid}.txt", "mask": ""}]
    return write


def test_the_skeleton_adds_the_patient_columns_and_sorts_the_manifest(tmp_path: Path) -> None:
    calls: list[tuple[str, float]] = []
    kind = PhantomKind(tag="t", salt=11)
    manifest = write_phantom_set(tmp_path, kind, _toy_writer(calls), n_patients_per_class=2, num_classes=2,
                                 sites=2, seed=0)
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    assert manifest.read_text(encoding="utf-8").splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    assert len(rows) == len(calls) == 2 * 2 * 2  # sites x classes x patients
    assert [(r["site"], r["path"]) for r in rows] == sorted((r["site"], r["path"]) for r in rows)
    for r in rows:
        assert r["patient_id"].startswith(f"{r['site']}-t") and r["path"] == f"images/{r['patient_id']}.txt"
        assert r["class"] == ("noncovid", "covid")[int(r["label"])] and r["split"] in {"train", "val", "test"}
        finding = int((tmp_path / r["path"]).read_text())  # what sample_patient drew for this patient
        assert int(r["label"]) == int(finding == 2)
    # the patient's generator is keyed by the kind's rng_key: another key, other draws, same ids
    calls2: list[tuple[str, float]] = []
    write_phantom_set(tmp_path / "k", PhantomKind(tag="t", salt=11, rng_key=(9,)), _toy_writer(calls2),
                      n_patients_per_class=2, num_classes=2, sites=2, seed=0)
    assert [c[0] for c in calls2] == [c[0] for c in calls] and [c[1] for c in calls2] != [c[1] for c in calls]


def test_the_skeleton_checks_its_arguments_before_writing(tmp_path: Path) -> None:
    def refuse() -> None:
        raise ConfigError("kind check")

    cases: list[tuple[dict[str, Any], str]] = [
        ({"num_classes": 4}, "num_classes must be 2 or 3"),
        ({"n_patients_per_class": 0}, "n_patients_per_class must be an integer >= 1"),
        ({"counts": (("size", 8, 16),)}, "size must be an integer >= 16, got 8"),
        ({"num_classes": 4, "check": refuse}, "num_classes"),  # the common checks come first
        ({"check": refuse}, "kind check"),
        ({"sites": []}, "at least one site"),
    ]
    for extra, message in cases:
        kw: dict[str, Any] = {"n_patients_per_class": 1, "num_classes": 3, "sites": 1, "seed": 0, **extra}
        with pytest.raises(ConfigError, match=message):
            write_phantom_set(tmp_path / "out", PhantomKind(tag="t", salt=1), _toy_writer([]), **kw)
        assert not (tmp_path / "out").exists()
