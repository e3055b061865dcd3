"""Seeded fuzz of the web service and of ``chestdx predict``: corrupt, truncated, bit-flipped, bomb
and wrong-type uploads, generated at test time. Every upload gets a 200 or a 4xx with a message
(never a 500, never a hang); every good file given to ``predict`` among bad ones is answered."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from chestdx.predict.predictor import Predictor
from chestdx.serve.app import create_app
from tests.dicom_utils import write_dicom

SEED = 1234
CLEAN_4XX = {400, 408, 413, 415, 422}


def _png(rng: np.random.Generator, size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _dicom(tmp: Path, rng: np.random.Generator) -> bytes:
    p = write_dicom(tmp / "x.dcm", rng.integers(0, 1400, (32, 32)).astype(np.uint16), intercept=-1000.0)
    return p.read_bytes()


def _npy(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    np.save(buf, rng.random((32, 32)).astype(np.float32))
    return buf.getvalue()


def _nifti(rng: np.random.Generator, compress: bool) -> bytes:
    import nibabel as nib

    raw = nib.Nifti1Image(rng.random((24, 24, 6)).astype(np.float32), np.eye(4)).to_bytes()
    return gzip.compress(raw) if compress else raw


def _zip_series(tmp: Path, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            p = write_dicom(tmp / f"s{i}.dcm", rng.integers(0, 1400, (24, 24)).astype(np.uint16),
                            position=(0.0, 0.0, float(i)), instance=i + 1, series_uid="1.2.3")
            z.write(p, f"series/{i}.dcm")
    return buf.getvalue()


def _bombs() -> dict[str, bytes]:
    """Small files that decode to enormous arrays or archives."""
    out: dict[str, bytes] = {}
    img = Image.new("1", (60000, 60000))  # 3.6 Gpx, a few hundred KB as PNG
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    out["png_3.6gpx"] = buf.getvalue()
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (200000, 200000)})
    out["npy_header_40g"] = hdr.getvalue() + b"\x00" * 1024
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\x00" * (64 * 1024 * 1024))  # 64 MB of zeros, ~64 KB compressed
    out["zip_64mb_zeros"] = zbuf.getvalue()
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_STORED) as z:
        for i in range(3000):
            z.writestr(f"m{i}.dcm", b"")
    out["zip_3000_members"] = zbuf.getvalue()
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("../../etc/evil.dcm", b"x")
    out["zip_traversal"] = zbuf.getvalue()
    return out


def _mutants(rng: np.random.Generator, seeds: dict[str, bytes], per_seed: int) -> list[tuple[str, str, bytes]]:
    """``(category, name, bytes)``: truncations, bit flips, byte stomps and header splices."""
    out = []
    for kind, data in seeds.items():
        for j in range(per_seed):
            op = j % 4
            if op == 0:
                cut = int(rng.integers(1, max(2, len(data))))
                out.append(("truncated", f"{kind}_{j}", data[:cut]))
            elif op == 1:
                b = bytearray(data)
                for _ in range(int(rng.integers(1, 16))):
                    k = int(rng.integers(0, len(b)))
                    b[k] ^= 1 << int(rng.integers(0, 8))
                out.append(("bitflip", f"{kind}_{j}", bytes(b)))
            elif op == 2:
                b = bytearray(data)
                k = int(rng.integers(0, len(b)))
                n = int(rng.integers(1, 64))
                b[k:k + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
                out.append(("stomp", f"{kind}_{j}", bytes(b)))
            else:  # a valid header followed by another kind's body
                other = list(seeds.values())[int(rng.integers(0, len(seeds)))]
                out.append(("splice", f"{kind}_{j}", data[: min(len(data), 600)] + other[600:]))
    return out


def corpus(tmp: Path, per_seed: int = 40) -> list[tuple[str, str, bytes]]:
    rng = np.random.default_rng(SEED)
    seeds = {"png": _png(rng), "jpeg": _jpeg(rng), "dicom": _dicom(tmp, rng), "npy": _npy(rng),
             "nifti": _nifti(rng, False), "niftigz": _nifti(rng, True), "zip": _zip_series(tmp, rng)}
    items = [("valid", k, v) for k, v in seeds.items()]
    items += _mutants(rng, seeds, per_seed)
    items += [("bomb", k, v) for k, v in _bombs().items()]
    items += [("wrong_type", f"rand_{i}", rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes())
              for i in range(30)]
    items += [("wrong_type", "empty", b""), ("wrong_type", "text", b"hello, I am a chest X-ray" * 40),
              ("wrong_type", "gif", b"GIF89a" + b"\x00" * 100), ("wrong_type", "gzip_text", gzip.compress(b"x" * 999)),
              ("wrong_type", "npy_object", b"\x93NUMPY\x01\x00" + struct.pack("<H", 70)
               + b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(69) + b"\n" + b"\x80\x04N."),
              ("wrong_type", "dicom_no_pixels", _dicom(tmp, rng)[:400])]
    return items


@pytest.fixture(scope="module")
def predictor(bundle):
    return Predictor(bundle)


@pytest.mark.timeout(300)
def test_service_fuzz_no_500_no_hang(predictor, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    items = corpus(tmp_path)
    app = create_app(predictor, max_upload_mb=2.0, decode_timeout_s=20.0, max_pending_decodes=64)
    statuses: Counter[int] = Counter()
    per_cat: Counter[str] = Counter()
    with TestClient(app, raise_server_exceptions=False) as client:
        for cat, name, data in items:
            r = client.post("/predict?heatmap=false", files={"file": (f"{name}.bin", data, "application/octet-stream")})
            statuses[r.status_code] += 1
            per_cat[cat] += 1
            assert r.status_code == 200 or r.status_code in CLEAN_4XX, (cat, name, r.status_code, r.text[:300])
            if r.status_code != 200:
                detail = r.json().get("detail")
                assert isinstance(detail, str) and len(detail) > 10, (cat, name, detail)
            if cat == "valid":
                assert r.status_code == 200, (name, r.text[:300])
            if cat == "bomb":
                assert r.status_code in CLEAN_4XX, (name, r.status_code)
    assert list((tmp_path / "t").iterdir()) == [], "upload files left on disk"
    print(f"\nservice fuzz: {sum(per_cat.values())} uploads {dict(per_cat)}; statuses {dict(statuses)}")
    assert sum(per_cat.values()) >= 300


@pytest.mark.timeout(300)
def test_predict_cli_fuzz_answers_every_good_file(bundle, tmp_path, capsys):
    """Good and bad files interleaved in one ``chestdx predict`` call: every good one answered, every
    bad one reported once, exit status 1, nothing escapes as a traceback."""
    from chestdx import cli

    rng = np.random.default_rng(SEED + 1)
    items = corpus(tmp_path, per_seed=12)
    files = []
    suffix = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm", "npy": ".npy", "nifti": ".nii", "niftigz": ".nii.gz",
              "zip": ".zip"}
    d = tmp_path / "in"
    d.mkdir()
    for i, (cat, name, data) in enumerate(items):
        if cat == "bomb" and "zip" in name:
            continue  # covered by the service test; keep this one quick
        kind = name.split("_")[0]
        p = d / f"{i:04d}_{name}{suffix.get(kind, '.png')}"
        p.write_bytes(data)
        files.append(p)
    good = [d / f"good_{i}.png" for i in range(5)]
    for g in good:
        g.write_bytes(_png(rng))
    order = files + good
    rng.shuffle(order)
    rc = cli.main(["predict", str(bundle), *map(str, order), "--out", str(tmp_path / "a.jsonl")])
    answered = {Path(json.loads(x)["file"]).name for x in (tmp_path / "a.jsonl").read_text().splitlines()}
    err = capsys.readouterr().err
    errors = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert {g.name for g in good} <= answered
    assert len(answered) + len(errors) == len(order), (len(answered), len(errors), len(order))
    assert "Traceback" not in err
    assert rc == (1 if errors else 0)
    print(f"\npredict fuzz: {len(order)} files, {len(answered)} answered, {len(errors)} refused")
