"""``chestdx serve MODEL``: the web service.

Endpoints:

- ``GET /``          a page where a person drops a file and sees the answer and the heatmap overlay
- ``POST /predict``  multipart ``file`` (PNG/JPEG/TIFF/BMP, DICOM, NIfTI, ``.npy``, zip of a DICOM
                     series; the kind is sniffed from the content) -> JSON answer; ``?heatmap=false``
                     skips the heatmap, ``?aggregate=mean|majority|max`` for scans
- ``GET /health``    liveness and the model's name
- ``GET /model``     the model card
- ``GET /docs``      OpenAPI documentation (FastAPI)

Errors: 413 for uploads over the limit, 415 for content that is no supported kind, 400 for a file of
a supported kind that cannot be read (corrupt, wrong shape, NaN), 422 for a missing field. Uploads
live in memory and, while being read, in a private temporary folder removed before the response.

Concurrent requests: 2D images from several requests are gathered by :class:`Batcher` (up to
``max_batch`` within ``batch_wait_ms``) and answered in one forward pass; scans run as their own
batch. The model runs in one worker thread, so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse

from chestdx.errors import ConfigError, DataError
from chestdx.serve.inputs import UnsupportedType, study_from_bytes

__all__ = ["Batcher", "create_app"]


@dataclass
class _Job:
    images: torch.Tensor  # (n, 1, S, S)
    sources: list[str]
    heatmap: bool
    future: Future = field(default_factory=Future)


class Batcher:
    """Gathers preprocessed images from concurrent requests into shared forward passes.

    Args:
        predictor: a :class:`~chestdx.serve.predictor.Predictor`.
        max_batch: most images per forward pass.
        wait_ms: how long the worker waits for more jobs after the first arrives.
    """

    def __init__(self, predictor: Any, max_batch: int = 16, wait_ms: float = 5.0):
        self.predictor = predictor
        self.max_batch = max_batch
        self.wait = wait_ms / 1000.0
        self.batches_run = 0
        self.images_run = 0
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="chestdx-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: torch.Tensor, sources: list[str], heatmap: bool) -> Future:
        """Queue ``images (n, 1, S, S)``; the future gives their list of predictions."""
        job = _Job(images, sources, heatmap)
        self._q.put(job)
        return job.future

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            jobs = [job]
            n = len(job.sources)
            deadline = time.monotonic() + self.wait
            while n < self.max_batch:  # gather more jobs of the same kind for a moment
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                jobs.append(nxt)
                n += len(nxt.sources)
            for group in (True, False):
                todo = [j for j in jobs if j.heatmap is group]
                if todo:
                    self._run(todo, group)

    def _run(self, jobs: list[_Job], heatmap: bool) -> None:
        try:
            x = torch.cat([j.images for j in jobs])
            preds = []
            for s in range(0, x.shape[0], self.max_batch):
                srcs = [src for j in jobs for src in j.sources][s:s + self.max_batch]
                preds += self.predictor.predict_tensor(x[s:s + self.max_batch], srcs, heatmap=heatmap)
                self.batches_run += 1
            self.images_run += x.shape[0]
            i = 0
            for j in jobs:
                j.future.set_result(preds[i:i + len(j.sources)])
                i += len(j.sources)
        except Exception as e:  # noqa: BLE001 - hand the failure to every waiting request
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)


def _answer_json(answer: Any, heatmap: bool) -> dict[str, Any]:
    from chestdx.evaluate.plots import overlay_heatmap
    from chestdx.evaluate.report import image_data_uri as uri

    out = answer.to_json()
    out.pop("meta", None)
    if heatmap:
        if getattr(answer, "slices", None) is not None:
            k = list(answer.probs).index(answer.label)
            def score(j: int) -> tuple[float, float]:  # most confident slice; ties (3D models): most heat
                sl = answer.slices[j]
                return list(sl.probs.values())[k], float(sl.heatmap.sum()) if sl.heatmap is not None else 0.0

            best = max(range(len(answer.slices)), key=score)
            s = answer.slices[best]
            out["overlay_slice"] = answer.slice_indices[best]
            out["overlay"] = uri(overlay_heatmap(s.image, s.heatmap))
        elif answer.heatmap is not None:
            out["overlay"] = uri(overlay_heatmap(answer.image, answer.heatmap))
    return out


def create_app(predictor: Any, max_upload_mb: float = 64.0, max_batch: int = 16, batch_wait_ms: float = 5.0,
               max_slices: int | None = 64) -> Any:
    """The FastAPI app serving ``predictor`` (see the module docstring for the endpoints)."""
    from chestdx import __version__

    limit = int(max_upload_mb * 1024 * 1024)
    batcher = Batcher(predictor, max_batch=max_batch, wait_ms=batch_wait_ms)

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title="chestdx", version=__version__, lifespan=lifespan,
                  description="Chest imaging classifier with heatmaps. Research software, not a medical device.")
    app.state.batcher = batcher
    app.state.predictor = predictor

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.card.get("name"), "chestdx_version": __version__}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return predictor.card

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        from chestdx.serve.page import page_html

        return page_html(predictor.card, max_upload_mb)

    async def read_limited(request: Request, upload: UploadFile) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise HTTPException(413, f"upload larger than the limit of {max_upload_mb:g} MB")
        chunks, size = [], 0
        while True:
            chunk = await upload.read(1024 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"upload larger than the limit of {max_upload_mb:g} MB")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/predict")
    async def predict(request: Request, file: UploadFile = File(...),  # noqa: B008 - FastAPI's idiom
                      heatmap: bool = Query(True, description="include the heatmap overlay (PNG data URI)"),
                      aggregate: str = Query("mean", pattern="^(mean|majority|max)$")) -> dict[str, Any]:
        data = await read_limited(request, file)
        name = file.filename or "upload"
        loop = asyncio.get_running_loop()
        try:
            study = await loop.run_in_executor(None, study_from_bytes, data, name, predictor.hu_window)
            per_slice = predictor.recipe.task in ("slice", "cxr", "lesion")  # 2D models: shared passes
            if per_slice and study.kind == "image":
                x = await loop.run_in_executor(None, predictor.preprocess_array, study.array, name)
                preds = await asyncio.wrap_future(batcher.submit(x[None], [name], heatmap))
                answer = preds[0]
            elif per_slice:
                x, idx = await loop.run_in_executor(None, predictor.slice_batch, study, max_slices)
                slices = await asyncio.wrap_future(batcher.submit(x, [f"{name}[{i}]" for i in idx], heatmap))
                answer = predictor.scan_answer(study, slices, idx, aggregate)
            else:  # scan models (3D, sequence) answer a whole scan in one call
                answer = await loop.run_in_executor(None, predictor.predict_study, study, heatmap, aggregate,
                                                    max_slices)
        except ConfigError as e:
            raise HTTPException(422, str(e)) from None
        except UnsupportedType as e:
            raise HTTPException(415, str(e)) from None
        except DataError as e:
            raise HTTPException(400, str(e)) from None
        return await loop.run_in_executor(None, _answer_json, answer, heatmap)

    return app


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Load the model and run the service with uvicorn until interrupted."""
    import uvicorn

    from chestdx.serve.predictor import Predictor

    app = create_app(Predictor(model_path), **kwargs)
    uvicorn.run(app, host=host, port=port, log_level="info")
