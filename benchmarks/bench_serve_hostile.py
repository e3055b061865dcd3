"""The web service under mixed valid and hostile load on loopback, in one run (printed, never asserted).

A server process (the real ``uvicorn`` stack of ``chestdx serve``: body limit, decode pool, header
timeout) answers ``--clients`` concurrent clients sending ``--requests`` requests each, twice:

1. valid PNG uploads only;
2. the same valid uploads, every other request replaced by a hostile one (decompression-bomb PNG,
   zip of zeros, ``.npy`` header claiming 160 GB, oversize body, corrupt DICOM, random bytes,
   bit-flipped PNG, a client that stalls mid-body).

It prints p50 / p95 latency of the valid requests in both phases, their ratio, the status codes of
the hostile ones, and the server's peak RSS (``VmHWM``) after each phase. The model is the demo
recipe's network with random weights (speed does not depend on training).

Run: ``python benchmarks/bench_serve_hostile.py [--clients 20 --requests 20 --size 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np


def _serve(port: int, size: int, backbone: str) -> None:
    """The server process: a random-weight demo model behind the production uvicorn settings."""
    import uvicorn

    from chestdx.config import load_recipe
    from chestdx.models import build_model
    from chestdx.predict.predictor import Predictor
    from chestdx.serve.app import create_app, header_timeout_protocol

    recipe = load_recipe("demo", {"data": {"image_size": size}, "model": {"backbone": backbone, "weights": "none"}})
    pred = Predictor.from_model(recipe, build_model(recipe.model, num_classes=recipe.data.num_classes))
    app = create_app(pred, max_upload_mb=4.0, body_timeout_s=2.0, decode_timeout_s=20.0)
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                  http=header_timeout_protocol(5.0), timeout_keep_alive=5)).run()


def _png(rng: np.random.Generator, n: int = 256) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((rng.random((n, n)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _hostile(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    from PIL import Image

    out = []
    buf = io.BytesIO()
    Image.new("1", (60000, 60000)).save(buf, format="PNG")
    out.append(("bomb.png", buf.getvalue()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\x00" * (256 * 1024 * 1024))
    out.append(("zeros.zip", buf.getvalue()))
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (200000, 200000)})
    out.append(("huge.npy", hdr.getvalue() + b"\x00" * 64))
    out.append(("oversize.png", b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 5 * 1024 * 1024, dtype=np.uint8).tobytes()))
    out.append(("corrupt.dcm", b"\x00" * 128 + b"DICM" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()))
    out.append(("random.bin", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()))
    png = bytearray(_png(rng))
    for k in rng.integers(0, len(png), 20):
        png[int(k)] ^= 0xFF
    out.append(("flipped.png", bytes(png)))
    out.append(("stall", b""))  # a client that stops sending mid-body
    return out


async def _stall(port: int) -> int:
    """Open a request, send part of its body, then nothing; the status the server answers with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                 b"Content-Length: 100000\r\n\r\n--B\r\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    return int(line.split()[1]) if line else 0


async def _phase(port: int, clients: int, requests: int, hostile: list[tuple[str, bytes]] | None,
                 valid: list[bytes]) -> tuple[list[float], Counter]:
    import httpx

    latencies: list[float] = []
    codes: Counter = Counter()
    url = f"http://127.0.0.1:{port}/predict?heatmap=true"
    async with httpx.AsyncClient(timeout=120) as client:
        async def one_client(c: int) -> None:
            for r in range(requests):
                if hostile is not None and (r + c) % 2 == 1:
                    name, data = hostile[(r * clients + c) % len(hostile)]
                    if name == "stall":
                        codes[("stall", await _stall(port))] += 1
                        continue
                    try:
                        resp = await client.post(url, files={"file": (name, data)})
                        codes[(name, resp.status_code)] += 1
                    except httpx.TransportError:  # e.g. 413 sent and the connection closed mid-upload
                        codes[(name, "closed")] += 1
                    continue
                t0 = time.perf_counter()
                resp = await client.post(url, files={"file": ("chest.png", valid[(r + c) % len(valid)])})
                latencies.append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    raise RuntimeError(f"valid request answered {resp.status_code}: {resp.text[:200]}")

        await asyncio.gather(*(one_client(c) for c in range(clients)))
    return latencies, codes


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(values: list[float], q: float) -> float:
    return 1000 * float(np.percentile(values, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        _serve(args.serve, args.size, args.backbone)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--size", str(args.size),
                             "--backbone", args.backbone], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        rng = np.random.default_rng(0)
        valid = [_png(rng) for _ in range(8)]
        hostile = _hostile(rng)
        asyncio.run(_phase(port, 2, 2, None, valid))  # warm-up
        base = _peak_rss_mb(proc.pid)
        t0 = time.perf_counter()
        lat_a, _ = asyncio.run(_phase(port, args.clients, args.requests, None, valid))
        wall_a = time.perf_counter() - t0
        rss_a = _peak_rss_mb(proc.pid)
        t0 = time.perf_counter()
        lat_b, codes = asyncio.run(_phase(port, args.clients, args.requests, hostile, valid))
        wall_b = time.perf_counter() - t0
        rss_b = _peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"service: demo/{args.backbone} @ {args.size}px, {args.clients} clients x {args.requests} requests, "
          "256x256 PNG uploads with heatmaps")
    print("| phase | valid requests | p50 | p95 | wall | server peak RSS |\n|---|---|---|---|---|---|")
    print(f"| valid only | {len(lat_a)} | {_pct(lat_a, 50):.0f} ms | {_pct(lat_a, 95):.0f} ms | {wall_a:.1f} s "
          f"| {rss_a:.0f} MB (after warm-up {base:.0f} MB) |")
    print(f"| half hostile | {len(lat_b)} | {_pct(lat_b, 50):.0f} ms | {_pct(lat_b, 95):.0f} ms | {wall_b:.1f} s "
          f"| {rss_b:.0f} MB |")
    print(f"\nvalid p50 with / without hostile traffic: {statistics.median(lat_b) / statistics.median(lat_a):.2f}x; "
          f"p95: {np.percentile(lat_b, 95) / np.percentile(lat_a, 95):.2f}x")
    print("hostile requests (name, status): " + ", ".join(f"{k[0]} {k[1]} x{v}" for k, v in
                                                          sorted(codes.items(), key=str)))


if __name__ == "__main__":
    main()
