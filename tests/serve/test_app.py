"""The web service through FastAPI's test client: good, corrupt, wrong-type, oversize and
concurrent uploads; nothing left on disk."""

from __future__ import annotations

import io
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from chestdx.predict.inputs import sniff_bytes
from chestdx.predict.predictor import Predictor
from chestdx.serve.app import create_app


@pytest.fixture(scope="module")
def predictor(bundle):
    return Predictor(bundle)


@pytest.fixture()
def client(predictor, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # uploads' temporary folders go here
    app = create_app(predictor, max_upload_mb=1.0, batch_wait_ms=150.0)
    with TestClient(app) as c:
        c.app_state = app.state
        yield c
    assert list(tmp_path.iterdir()) == [], "files left on disk after the requests"


def _png_bytes(seed: int = 0) -> bytes:
    arr = (np.random.default_rng(seed).random((48, 48)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_health_model_page_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    card = client.get("/model").json()
    assert card["class_names"] == ["normal", "pneumonia", "covid"] and "Not a medical device" in card["warning"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and "not a medical device" in page.text
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_png(client, phantom_png):
    r = client.post("/predict", files={"file": ("chest.png", phantom_png.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in body["probs"] and abs(sum(body["probs"].values()) - 1) < 1e-5
    assert body["overlay"].startswith("data:image/png;base64,") and body["file"] == "chest.png"
    r = client.post("/predict?heatmap=false", files={"file": ("x.png", _png_bytes(), "image/png")})
    assert r.status_code == 200 and "overlay" not in r.json()


def test_type_sniffed_by_content_not_name(client):
    # a PNG named .dcm is answered as the PNG it is
    r = client.post("/predict", files={"file": ("scan.dcm", _png_bytes(), "application/dicom")})
    assert r.status_code == 200, r.text
    assert sniff_bytes(_png_bytes()) == "png"


def test_bad_uploads(client):
    r = client.post("/predict", files={"file": ("notes.png", b"hello, this is text" * 10, "image/png")})
    assert r.status_code == 415 and "unsupported file type" in r.json()["detail"]
    r = client.post("/predict", files={"file": ("broken.png", _png_bytes()[:60], "image/png")})
    assert r.status_code == 400 and "broken.png" in r.json()["detail"]
    r = client.post("/predict", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    r = client.post("/predict", files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * 1_200_000, "image/png")})
    assert r.status_code == 413
    assert client.post("/predict").status_code == 422


def test_zip_of_a_series(client, series_dir):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in series_dir.iterdir():
            zf.write(f, f"s/{f.name}")
    r = client.post("/predict", files={"file": ("study.zip", buf.getvalue(), "application/zip")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "volume" and body["n_slices"] == 6 and body["overlay_slice"] in range(6)


def test_concurrent_requests_are_batched(client):
    def post(i: int) -> int:
        r = client.post("/predict?heatmap=false", files={"file": (f"{i}.png", _png_bytes(i), "image/png")})
        return r.status_code

    before_batches = client.app_state.batcher.batches_run
    before_images = client.app_state.batcher.images_run
    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(post, range(8)))
    assert codes == [200] * 8
    assert client.app_state.batcher.images_run - before_images == 8
    assert client.app_state.batcher.batches_run - before_batches < 8  # some requests shared a pass


def test_a_3d_model_answers_an_uploaded_series(series_dir):
    """Scan models (here the inflated 3D CMC-COV19D network) answer a zip of a series in one call."""
    from chestdx.config import load_recipe
    from chestdx.models import build_model

    r = load_recipe("cmc_model1", {"data": {"image_size": 32, "volume_depth": 8},
                                   "model": {"backbone": "resnet18", "weights": "none"},
                                   "inference": {"name": "plain", "params": {}}})
    p = Predictor.from_model(r, build_model(r.model, num_classes=r.data.num_classes).eval())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in series_dir.iterdir():
            zf.write(f, f.name)
    with TestClient(create_app(p)) as c:
        r1 = c.post("/predict", files={"file": ("ct.zip", buf.getvalue(), "application/zip")})
        assert r1.status_code == 200, r1.text
        body = r1.json()
        assert body["kind"] == "volume" and body["aggregation"] == "volume" and body["n_slices"] == 8
        assert body["overlay"].startswith("data:image/png")
        r2 = c.post("/predict", files={"file": ("one.png", _png_bytes(), "image/png")})
        assert r2.status_code == 422 and "answers scans" in r2.json()["detail"]
