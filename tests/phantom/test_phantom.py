"""Tests of the synthetic chest phantom (``chestdx.phantom``): patient model, slices, sites."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from chestdx import phantom as P
from chestdx.errors import ConfigError


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _png(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / rel) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# the 3D volume
# --------------------------------------------------------------------------------------------------


def test_volume_shapes_ranges_and_anatomy() -> None:
    vol, mask, meta = P.make_chest_volume(np.random.default_rng(0), 0, shape=(24, 64, 64))
    assert vol.shape == (24, 64, 64) and vol.dtype == np.float32
    assert mask.shape == (24, 64, 64) and mask.dtype == np.uint8
    assert mask.sum() == 0  # normal: no lesion
    assert -1001.0 <= float(vol.min()) and float(vol.max()) < 1000.0
    assert np.isclose(vol[:, 0, 0], -1000.0, atol=40).all()  # air outside the body
    # mid chest: a good share of aerated lung around -850 HU; bone (> 300 HU) present (spine, ribs)
    mid = vol[6:12]
    lung = (mid > -950) & (mid < -700)
    assert 0.04 < lung.mean() < 0.5
    assert -900 < np.median(mid[lung]) < -760
    assert (vol > 300).any()
    # upper abdomen at the bottom: no aerated lung left in the last slice's centre
    assert not ((vol[-1, 24:40, 24:40] > -950) & (vol[-1, 24:40, 24:40] < -700)).any()
    assert meta["spacing_mm"][1] == pytest.approx(P.FOV_MM / 64)
    assert len(meta["z_mm"]) == 24


@pytest.mark.parametrize("label", [1, 2])
def test_lesion_mask_lies_in_the_lungs_and_is_denser(label: int) -> None:
    ph = P.sample_patient(np.random.default_rng(3), label)
    z = ph.focus_z
    vol, mask, _ = ph.render((5, 96, 96), (z - 0.02, z + 0.02))
    m = mask.astype(bool)
    assert m[2].sum() > 20
    # lesions raise the attenuation of the lung they sit in
    lung_hu = np.median(vol[(vol < -600) & ~m])
    assert np.median(vol[m]) > lung_hu + 100


def test_pneumonia_is_lobar_and_covid_bilateral_peripheral() -> None:
    for seed in range(4):
        pn = P.sample_patient(np.random.default_rng(seed), 1)
        main = pn.lesions[0]
        assert main.kind == "consolidation" and 0 <= main.lobe <= 4
        cv = P.sample_patient(np.random.default_rng(seed), 2)
        assert all(les.kind == "ggo" for les in cv.lesions)
        assert len(cv.lesions) >= 3
        xs = np.array([les.center[0] for les in cv.lesions])
        assert (xs < 0).any() and (xs > 0).any()  # both lungs
        # patch centres close to the chest wall (super-ellipse radius of the cavity near 1)
        cav = cv.layers()["cavity"]
        rse = cv.se_radius(xs, np.array([les.center[1] for les in cv.lesions]), cav)
        assert np.median(rse) > 0.7


def test_anatomy_does_not_depend_on_the_label() -> None:
    a = P.sample_patient(np.random.default_rng(11), 0)
    b = P.sample_patient(np.random.default_rng(11), 2)
    assert a.anatomy == b.anatomy
    assert np.array_equal(a.vessels, b.vessels)
    assert a.focus_z == b.focus_z


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_only_the_lesions_depend_on_the_label(seed: int) -> None:
    """Issue 16: the dependent bands once took what the lesions left of the opacity budget (pneumonia
    never had atelectasis, COVID-19 never a ground-glass band) and a CNN classified by them. Now the
    confounders are the same for every label, and a positive without its lesions is the normal."""
    pts = [P.sample_patient(np.random.default_rng(seed), k) for k in range(3)]
    assert pts[0].confounders == pts[1].confounders == pts[2].confounders
    assert pts[0].confounders["atel_mm"] > 0 and pts[0].confounders["band_mm"] > 0
    assert not pts[0].lesions and pts[1].lesions and pts[2].lesions
    z = (pts[0].focus_z - 0.01, pts[0].focus_z + 0.01)  # the slices of interest: lesions visible
    normal, _, _ = pts[0].render((3, 48, 48), z)
    for ph in pts[1:]:
        with_lesions, mask, _ = ph.render((3, 48, 48), z)
        assert mask.any() and not np.array_equal(with_lesions, normal)
        ph.lesions = []
        without, _, _ = ph.render((3, 48, 48), z)
        assert np.array_equal(without, normal)


def test_volume_determinism() -> None:
    v1, m1, _ = P.make_chest_volume(np.random.default_rng(5), 2, shape=(8, 48, 48), z_range=(0.4, 0.6))
    v2, m2, _ = P.make_chest_volume(np.random.default_rng(5), 2, shape=(8, 48, 48), z_range=(0.4, 0.6))
    v3, _, _ = P.make_chest_volume(np.random.default_rng(6), 2, shape=(8, 48, 48), z_range=(0.4, 0.6))
    assert np.array_equal(v1, v2) and np.array_equal(m1, m2)
    assert not np.array_equal(v1, v3)


def test_bad_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        P.sample_patient(np.random.default_rng(0), 3)
    ph = P.sample_patient(np.random.default_rng(0), 0)
    with pytest.raises(ConfigError):
        ph.render((4, 32), (0.0, 1.0))
    with pytest.raises(ConfigError):
        ph.render((4, 32, 32), (0.6, 0.5))
    with pytest.raises(ConfigError):
        P.default_sites(0)
    with pytest.raises(ConfigError):
        P.synthesize_slices("unused", num_classes=4)


def test_render_ct_slice() -> None:
    vol, mask, meta = P.make_chest_volume(np.random.default_rng(2), 2, shape=(5, 96, 96), z_range=(0.45, 0.5))
    site = P.default_sites(1)[0]
    img, m = P.render_ct_slice(vol, mask, 2, site, np.random.default_rng(0), 64, spacing_mm=meta["spacing_mm"])
    assert img.shape == (64, 64) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert m.shape == (64, 64) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    with pytest.raises(ConfigError):
        P.render_ct_slice(vol, mask, 9, site, np.random.default_rng(0), 64)


def test_default_sites_are_distinct_and_stable() -> None:
    sites = P.default_sites(6)
    assert len({s.name for s in sites}) == 6
    assert P.default_sites(6)[:3] == P.default_sites(3)
    assert len({(s.noise_sigma, s.window, s.fov_scale) for s in sites}) == 6


# --------------------------------------------------------------------------------------------------
# the slice data set writer
# --------------------------------------------------------------------------------------------------


def test_synthesize_is_deterministic(tmp_path: Path) -> None:
    kw = {"n_patients_per_class": 3, "slices_per_patient": 2, "size": 48}
    P.synthesize_slices(tmp_path / "a", seed=7, **kw)
    P.synthesize_slices(tmp_path / "b", seed=7, **kw)
    P.synthesize_slices(tmp_path / "c", seed=8, **kw)
    a, b, c = (_all_bytes(tmp_path / k) for k in "abc")
    assert a == b
    assert a.keys() == c.keys()  # same names ...
    assert any(a[k] != c[k] for k in a if k.startswith("images/"))  # ... other pixels


def test_patients_do_not_depend_on_generation_order(tmp_path: Path) -> None:
    small = P.synthesize_slices(tmp_path / "s", n_patients_per_class=2, size=32, seed=1)
    big = P.synthesize_slices(tmp_path / "b", n_patients_per_class=4, size=32, seed=1)
    # the first two patients of every class are the same in both data sets (same child seeds);
    # ids are shuffled per data set, so compare the sets of image bytes per class
    def per_class(manifest: Path) -> dict[str, set[bytes]]:
        out: dict[str, set[bytes]] = {}
        for r in _rows(manifest):
            out.setdefault(r["class"], set()).add((manifest.parent / r["path"]).read_bytes())
        return out

    s, b = per_class(small), per_class(big)
    for cls in P.CLASS_NAMES_3:
        assert s[cls] <= b[cls]


def test_manifest_content(tmp_path: Path) -> None:
    manifest = P.synthesize_slices(tmp_path, n_patients_per_class=10, slices_per_patient=2, size=48, seed=0)
    assert manifest == tmp_path / "manifest.csv"
    with open(manifest, encoding="utf-8") as f:
        assert f.readline().strip() == "path,label,class,patient_id,site,mask,split"
    rows = _rows(manifest)
    assert len(rows) == 3 * 10 * 2
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        assert P.CLASS_NAMES_3[int(r["label"])] == r["class"]
        img, msk = _png(tmp_path, r["path"]), _png(tmp_path, r["mask"])
        assert img.shape == msk.shape == (48, 48)
        assert set(np.unique(msk)) <= {0, 255}
        assert Path(r["path"]).name == Path(r["mask"]).name
        if r["class"] == "normal":
            assert msk.max() == 0
        else:
            assert msk.max() == 255  # lesion visible in every positive slice
        assert r["class"] not in r["patient_id"] and r["class"] not in r["path"]
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert len(by_patient) == 30
    assert all(len(splits) == 1 for splits in by_patient.values())  # grouped by patient
    # stratified ~60/20/20 per class: 6 / 2 / 2 patients of each class
    for cls in P.CLASS_NAMES_3:
        pats = {r["patient_id"]: r["split"] for r in rows if r["class"] == cls}
        counts = {s: list(pats.values()).count(s) for s in ("train", "val", "test")}
        assert counts == {"train": 6, "val": 2, "test": 2}


def test_binary_mode(tmp_path: Path) -> None:
    rows = _rows(P.synthesize_slices(tmp_path, n_patients_per_class=4, slices_per_patient=1, num_classes=2,
                                     size=32, seed=0))
    assert {(r["label"], r["class"]) for r in rows} == {("0", "noncovid"), ("1", "covid")}
    noncovid_masks = [_png(tmp_path, r["mask"]).max() for r in rows if r["label"] == "0"]
    assert len(noncovid_masks) == 4 and 0 in noncovid_masks and 255 in noncovid_masks  # normal + pneumonia
    assert all(_png(tmp_path, r["mask"]).max() == 255 for r in rows if r["label"] == "1")


def test_multiple_sites(tmp_path: Path) -> None:
    rows = _rows(P.synthesize_slices(tmp_path, n_patients_per_class=5, slices_per_patient=1, sites=3,
                                     size=32, seed=0))
    assert {r["site"] for r in rows} == {"siteA", "siteB", "siteC"}
    site_of: dict[str, set[str]] = {}
    for r in rows:
        site_of.setdefault(r["patient_id"], set()).add(r["site"])
    assert len(site_of) == 3 * 3 * 5  # unique across sites
    assert all(len(s) == 1 for s in site_of.values())
    for site in ("siteA", "siteB", "siteC"):
        assert {r["split"] for r in rows if r["site"] == site} == {"train", "val", "test"}


def test_site_shift_is_real(tmp_path: Path) -> None:
    rows = _rows(P.synthesize_slices(tmp_path, n_patients_per_class=6, slices_per_patient=1, sites=2,
                                     size=64, seed=0))
    stats: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        img = _png(tmp_path, r["path"]).astype(np.float32)
        noise = float(np.median(np.abs(img - ndimage.median_filter(img, 3))))
        smooth = ndimage.median_filter(img, 5)
        border = np.concatenate([smooth[:3].ravel(), smooth[-3:].ravel(), smooth[:, :3].ravel(), smooth[:, -3:].ravel()])
        body = ndimage.binary_fill_holes(smooth > np.median(border) + 12)
        stats.setdefault(r["site"], []).append((img.mean(), noise, body.mean()))
    a, b = np.array(stats["siteA"]), np.array(stats["siteB"])
    # siteB: noisier, narrower window shifted up (darker air, brighter tissue), wider field of view
    assert np.median(b[:, 1]) > 2.0 * np.median(a[:, 1])
    assert abs(a[:, 0].mean() - b[:, 0].mean()) > 2 * max(a[:, 0].std(), b[:, 0].std()) / np.sqrt(len(a))
    print("site A / B: mean", a.mean(0), "/", b.mean(0))
    assert a[:, 2].mean() > b[:, 2].mean() + 0.08  # body fills less of the image in siteB


# --------------------------------------------------------------------------------------------------
# not trivially separable, yet learnable (required by the issue)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_class_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 images per class (one slice per patient), 64 px: images uint8 (N, 64, 64), labels, splits."""
    root = tmp_path_factory.mktemp("phantom3")
    rows = _rows(P.synthesize_slices(root, n_patients_per_class=300, slices_per_patient=1, size=64, seed=0))
    images = np.stack([_png(root, r["path"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    splits = np.array([r["split"] for r in rows])
    return images, labels, splits


def _histogram_baseline(images: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = np.stack([np.histogram(im, bins=32, range=(0, 256))[0] / im.size for im in images])
    tr, te = splits == "train", splits == "test"
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(feats[tr], labels[tr])
    return float(clf.score(feats[te], labels[te]))


def test_global_histogram_does_not_give_the_class_away(three_class_set) -> None:
    acc = _histogram_baseline(*three_class_set)
    print(f"histogram logistic regression test accuracy: {acc:.3f}")
    assert acc < 0.65


def test_small_cnn_learns_the_spatial_pattern(three_class_set) -> None:
    import torch
    import torchvision
    from torch import nn

    images, labels, splits = three_class_set
    hist_acc = _histogram_baseline(images, labels, splits)
    torch.manual_seed(0)
    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)  # (N, 1, 64, 64)
    y = torch.from_numpy(labels)
    tr = torch.from_numpy(splits == "train")
    te = torch.from_numpy(splits == "test")
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    model = torchvision.models.resnet18(num_classes=3)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    epochs, batch = 12, 32
    steps = epochs * ((len(xtr) + batch - 1) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            xb = xtr[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # left-right flips and small shifts
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            dy, dx = torch.randint(-4, 5, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        cnn_acc = float((model(xte).argmax(1) == yte).float().mean())
    print(f"CNN test accuracy: {cnn_acc:.3f} (histogram baseline {hist_acc:.3f})")
    assert cnn_acc >= 0.80
    assert cnn_acc >= hist_acc + 0.15
