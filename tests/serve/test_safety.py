"""Hostile model files and hostile clients: nothing in a bundle or checkpoint is unpickled, every
malformed ``bundle.json`` is a BundleError naming its key, the live service bounds uploads while
they stream and closes slow or idle clients, and ``predict`` answers every good input."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from chestdx.errors import ChestdxError, RunError
from chestdx.predict.bundle import BundleError, load_bundle


class _Marker:
    """Unpickling this writes a marker file: proof that a load ran code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("pwned",))  # bound method of a Path: runs on unpickle


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"recipe": {}}, "payload": _Marker(str(marker))}, path)
    return path


def _tamper(bundle: Path, tmp_path: Path, edit) -> Path:
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    info = json.loads((b / "bundle.json").read_text())
    out = edit(info)
    raw = out if isinstance(out, bytes) else json.dumps(info if out is None else out).encode()
    (b / "bundle.json").write_bytes(raw)
    return b


@pytest.mark.parametrize("edit, key", [
    (lambda i: i.pop("recipe") and None, "recipe"),
    (lambda i: i.pop("class_names") and None, "class_names"),
    (lambda i: [1, 2, 3], "JSON object"),
    (lambda i: None if i.update(recipe=None) else None, "recipe"),
    (lambda i: b"null", "JSON object"),
    (lambda i: b"\xff\xfe{\x00", "UTF-8"),
    (lambda i: b"{not json", "JSON"),
    (lambda i: None if i.update(class_names="covid") else None, "class_names"),
    (lambda i: None if i.update(class_names=["only"]) else None, "class_names"),
    (lambda i: None if i["recipe"].update(model=7) else None, "recipe.model"),
    (lambda i: None if i["recipe"]["model"].pop("name") else None, "recipe.model.name"),
    (lambda i: None if i.update(in_chans="three") else None, "in_chans"),
    (lambda i: None if i.update(format=None) else None, "format"),
    (lambda i: None if i["recipe"]["model"].update(name="no_such_net") else None, "recipe"),
    (lambda i: None if i["recipe"].update(data="x") else None, "recipe"),
])
def test_malformed_bundle_json_is_a_bundle_error_naming_the_key(bundle, tmp_path, edit, key):
    b = _tamper(bundle, tmp_path, edit)
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    assert key in str(e.value)


def test_bundle_pointing_at_a_pickle_outside_itself_is_refused_unpickled(bundle, tmp_path):
    marker = tmp_path / "MARKER"
    evil = _evil_checkpoint(tmp_path / "evil" / "checkpoints" / "best.ckpt", marker)

    def point(info):
        info["recipe"]["model"]["name"] = "att2_bilstm"
        info["recipe"]["model"].setdefault("params", {})["encoder"] = str(evil.parent.parent)

    b = _tamper(bundle, tmp_path, point)
    with pytest.raises(BundleError, match="encoder"):
        load_bundle(b)
    assert not marker.exists()


def test_encoder_checkpoint_is_read_weights_only(tmp_path):
    from chestdx.models.sequence import encoder_description

    marker = tmp_path / "MARKER"
    evil = _evil_checkpoint(tmp_path / "enc.ckpt", marker)
    with pytest.raises(RunError, match="refused"):
        encoder_description(str(evil))
    assert not marker.exists()
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(RunError, match="not a chestdx checkpoint"):
        encoder_description(str(tmp_path / "list.ckpt"))
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    with pytest.raises(RunError, match="not a readable checkpoint"):
        encoder_description(str(tmp_path / "junk.ckpt"))


def test_export_refuses_a_pickled_checkpoint(tiny_run, tmp_path):
    from chestdx.predict.bundle import export_bundle

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "MARKER"
    for name in ("best.ckpt", "last.ckpt"):
        _evil_checkpoint(run / "checkpoints" / name, marker)
    with pytest.raises(ChestdxError):
        export_bundle(run, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ the live service


@pytest.fixture(scope="module")
def live(bundle):
    """The service under real uvicorn on a free loopback port: 1 MB uploads, 1 s timeouts."""
    import uvicorn

    from chestdx.predict.predictor import Predictor
    from chestdx.serve.app import create_app, header_timeout_protocol

    app = create_app(Predictor(bundle), max_upload_mb=1.0, body_timeout_s=1.0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", http=header_timeout_protocol(1.0), timeout_keep_alive=1)
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    t.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``seconds``; also what it sent."""
    sock.settimeout(seconds)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True, got
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


def test_idle_and_trickling_clients_are_closed(live):
    idle = socket.create_connection(("127.0.0.1", live))
    closed, _ = _closed_within(idle, 5.0)
    assert closed, "an idle connection that never sent a request was kept open"

    trickle = socket.create_connection(("127.0.0.1", live))
    t0 = time.monotonic()
    closed = False
    for ch in b"GET /health HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.3 s, the head never ends
        try:
            trickle.sendall(bytes([ch]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.3)
        if time.monotonic() - t0 > 6:
            break
    if not closed:
        closed, _ = _closed_within(trickle, 3.0)
    assert closed, "a client trickling its request head was kept open"


def test_slow_body_gets_408(live):
    s = socket.create_connection(("127.0.0.1", live))
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
              b"Content-Length: 5000\r\n\r\n--B\r\n")
    closed, got = _closed_within(s, 6.0)
    assert b" 408 " in got.split(b"\r\n", 1)[0], got[:200]


def test_chunked_upload_is_cut_at_the_limit(live, tmp_path, monkeypatch):
    """150 MB sent chunked (no Content-Length): the server answers 413 after about the 1 MB limit."""
    s = socket.create_connection(("127.0.0.1", live))
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
    chunk = b"\x00" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    s.settimeout(5)
    try:
        while sent < 150 * 1024 * 1024:
            s.sendall(frame)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    closed, got = _closed_within(s, 5.0)
    assert b" 413 " in got.split(b"\r\n", 1)[0], got[:200]
    assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes of a body over its 1 MB limit"


def test_declared_oversize_is_refused_before_reading(live):
    s = socket.create_connection(("127.0.0.1", live))
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
              b"Content-Length: 157286400\r\n\r\n")
    closed, got = _closed_within(s, 5.0)
    assert b" 413 " in got.split(b"\r\n", 1)[0] and b"limit of 1 MB" in got


# --------------------------------------------------------------------------------- CLI predict


def test_predict_answers_every_good_input_around_bad_ones(bundle, phantom_png, tmp_path, capsys, monkeypatch):
    """A reader failing with an untyped exception costs only its own input; overlay names keep the
    whole stem and never collide."""
    from chestdx import cli
    from chestdx.predict import predictor as predictor_mod

    inputs = tmp_path / "in"
    (inputs / "a").mkdir(parents=True)
    (inputs / "b").mkdir()
    good = [inputs / "2020.03.12.first.png", inputs / "2020.03.12.second.png", inputs / "a" / "x.png",
            inputs / "b" / "x.png"]
    for g in good:
        shutil.copy(phantom_png, g)
    bad = inputs / "bad.png"
    shutil.copy(phantom_png, bad)

    real = predictor_mod.Predictor.preprocess

    def flaky(self, path):
        if Path(path).name == "bad.png":
            raise ValueError("simulated reader bug")
        return real(self, path)

    monkeypatch.setattr(predictor_mod.Predictor, "preprocess", flaky)
    order = [good[0], bad, good[1], good[2], good[3]]
    rc = cli.main(["predict", str(bundle), *map(str, order), "--overlays", str(tmp_path / "ov"),
                   "--out", str(tmp_path / "answers.jsonl")])
    assert rc == 1
    lines = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [Path(r["file"]).name for r in lines] == ["2020.03.12.first.png", "2020.03.12.second.png", "x.png", "x.png"]
    overlays = [Path(r["overlay"]).name for r in lines]
    assert overlays == ["2020.03.12.first_cam.png", "2020.03.12.second_cam.png", "x_cam.png", "x-2_cam.png"]
    assert all((tmp_path / "ov" / o).is_file() for o in overlays)
    err = capsys.readouterr().err
    assert "bad.png" in err and "simulated reader bug" in err


def test_upload_folders_of_a_killed_server_are_removed_at_start(predictor_for_app, tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from fastapi.testclient import TestClient

    from chestdx.serve.app import create_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"chestdx-upload-{int(dead.stdout)}-abc"
    (orphan / "x").mkdir(parents=True)
    (orphan / "x" / "upload.dcm").write_bytes(b"scan")
    alive = tmp_path / "chestdx-upload-1-keep"  # pid 1 runs: another live server's folder
    alive.mkdir()
    foreign = tmp_path / "chestdx-upload-notapid"
    foreign.mkdir()
    with TestClient(create_app(predictor_for_app)) as c:
        assert c.get("/health").status_code == 200
    assert not orphan.exists() and alive.exists() and foreign.exists()


@pytest.fixture(scope="module")
def predictor_for_app(bundle):
    from chestdx.predict.predictor import Predictor

    return Predictor(bundle)
