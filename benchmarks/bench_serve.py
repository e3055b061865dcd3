"""Cost of answering new scans, measured in one run (printed; never asserted in tests).

1. One slice through ``Predictor.predict`` (read from an array, preprocess, forward), without and
   with the CAM heatmap: median latency and the ratio.
2. A 64-slice volume (``(64, 256, 256)`` array): seconds per volume and slices/s, without heatmaps.
3. The web service on loopback: requests/s for PNG uploads (no heatmap) with 1 client at a time and
   with ``--clients`` concurrent clients (bounded load), and how many forward passes were shared.

The model is the recipe's network with random weights (speed does not depend on training).
Run: ``python benchmarks/bench_serve.py [--recipe baseline --backbone resnet50 --size 224]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import threading
import time

import numpy as np
import torch


def _predictor(recipe_name: str, backbone: str, size: int):  # noqa: ANN202
    from chestdx.config import load_recipe
    from chestdx.models import build_model
    from chestdx.predict.predictor import Predictor

    recipe = load_recipe(recipe_name, {"data": {"image_size": size},
                                       "model": {"backbone": backbone, "weights": "none"},
                                       "inference": {"name": "plain", "params": {}}})
    model = build_model(recipe.model, num_classes=recipe.data.num_classes)
    return Predictor.from_model(recipe, model)


def _median_ms(fn, n: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _png(seed: int) -> bytes:
    from PIL import Image

    arr = (np.random.default_rng(seed).random((512, 512)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


async def _load(url: str, n: int, clients: int) -> float:
    import httpx

    bodies = [_png(i) for i in range(8)]
    sem = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(i: int) -> None:
            async with sem:
                r = await client.post(url + "predict?heatmap=false", files={"file": (f"{i}.png", bodies[i % 8])})
                r.raise_for_status()

        await one(0)  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="baseline")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    pred = _predictor(args.recipe, args.backbone, args.size)
    slice_ = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    plain = _median_ms(lambda: pred.predict(slice_, heatmap=False), args.repeats)
    heat = _median_ms(lambda: pred.predict(slice_, heatmap=True), args.repeats)
    print(f"model {args.recipe} / {args.backbone} @ {args.size}px, {torch.get_num_threads()} threads")
    print("| measure | value |\n|---|---|")
    print(f"| one slice, no heatmap (median of {args.repeats}) | {plain:.0f} ms |")
    print(f"| one slice, with CAM heatmap | {heat:.0f} ms ({heat / plain:.2f}x) |")
    vol = np.random.default_rng(1).random((64, 256, 256)).astype(np.float32)
    t0 = time.perf_counter()
    pred.predict(vol, heatmap=False)
    dt = time.perf_counter() - t0
    print(f"| 64-slice volume (64x256x256), no heatmaps | {dt:.1f} s ({64 / dt:.1f} slices/s) |")

    import uvicorn

    from chestdx.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(pred, max_batch=16, batch_wait_ms=5.0)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/"
    b = app.state.batcher
    serial = asyncio.run(_load(url, args.requests // 2, 1))
    before = (b.batches_run, b.images_run)
    conc = asyncio.run(_load(url, args.requests, args.clients))
    passes, images = b.batches_run - before[0], b.images_run - before[1]
    print(f"| service, 1 client at a time (512x512 PNG) | {serial:.2f} requests/s |")
    print(f"| service, {args.clients} concurrent clients | {conc:.2f} requests/s ({conc / serial:.2f}x); "
          f"{images} images in {passes} forward passes |")
    srv.should_exit = True


if __name__ == "__main__":
    main()
