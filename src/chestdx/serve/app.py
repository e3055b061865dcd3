"""``chestdx serve MODEL``: the web service.

Endpoints:

- ``GET /``          a page where a person drops a file and sees the answer and the heatmap overlay
- ``POST /predict``  multipart ``file`` (PNG/JPEG/TIFF/BMP, DICOM, NIfTI, ``.npy``, zip of a DICOM
                     series; the kind is sniffed from the content) -> JSON answer; ``?heatmap=false``
                     skips the heatmap, ``?aggregate=mean|majority|max`` for scans
- ``GET /health``    liveness and the model's name
- ``GET /model``     the model card
- ``GET /docs``      OpenAPI documentation (FastAPI)

Errors: 413 for uploads over the limit (enforced while the body streams: nothing past the limit is
read or spooled), 415 for content that is no supported kind, 400 for a file of a supported kind that
cannot be read (corrupt, wrong shape, NaN, too many pixels), 408 for a client that sends its body too
slowly or a file that takes longer than ``decode_timeout_s`` to decode, 422 for a missing field or an
input the model cannot answer, 503 when an upload waits too long for a place among those being decoded. No input ends
in a 500. Uploads live in memory and, while being read, in a private temporary folder removed before
the response.

Hostile clients: the body is read with a deadline per chunk (``body_timeout_s``); :func:`serve` runs
uvicorn with a protocol that closes connections that do not send a complete request head within
``header_timeout_s`` and keep-alive connections idle for ``keepalive_s``. Decoding runs in its own
thread pool (``decode_workers`` threads), off the event loop and apart from the model's worker, so a
slow upload never stalls other requests.

Concurrent requests: 2D images from several requests are gathered by :class:`Batcher` (up to
``max_batch`` within ``batch_wait_ms``) and answered in one forward pass; scans run as their own
batch. The model runs in one worker thread, so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse

from chestdx.errors import ChestdxError, ConfigError, DataError
from chestdx.predict.inputs import UnsupportedType, remove_orphan_uploads, study_from_bytes

if TYPE_CHECKING:
    from chestdx.predict.predictor import Predictor

log = logging.getLogger(__name__)

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
        predictor: a :class:`~chestdx.predict.predictor.Predictor`.
        max_batch: most images per forward pass.
        wait_ms: how long the worker waits for more jobs after the first arrives.
    """

    def __init__(self, predictor: Predictor, max_batch: int = 16, wait_ms: float = 5.0):
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
    from chestdx.evaluate.report import image_data_uri as uri
    from chestdx.explain.overlays import overlay_answer

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
            out["overlay"] = uri(overlay_answer(s))
        elif answer.heatmap is not None:
            out["overlay"] = uri(overlay_answer(answer))
    return out


class BodyTooLarge(HTTPException):
    """The request body passed the upload limit while it streamed (413)."""


class BodyTimeout(HTTPException):
    """The client stopped sending its body for longer than the timeout (408)."""


class LimitBody:
    """ASGI middleware that bounds every request body while it streams.

    A declared ``Content-Length`` over ``limit`` is answered 413 before anything is read; otherwise
    the bytes are counted as they arrive and reading stops with 413 as soon as they pass ``limit``,
    so neither memory nor the multipart parser's temporary files ever hold more. Each chunk must
    arrive within ``chunk_timeout_s`` (else 408), which closes clients that trickle their upload.

    Args:
        app: the wrapped ASGI app.
        limit: the most body bytes accepted.
        chunk_timeout_s: longest wait for the next body chunk.
    """

    def __init__(self, app: Any, limit: int, chunk_timeout_s: float = 30.0):
        self.app = app
        self.limit = limit
        self.body_limit = limit + 64 * 1024  # the file's bytes plus the multipart framing around them
        self.chunk_timeout_s = chunk_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"upload larger than the limit of {self.limit / (1024 * 1024):g} MB"
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.body_limit:
            await _plain_error(send, 413, too_large)
            return
        seen = 0
        body_done = False
        cut = False  # reading stopped early: the connection must close, not drain the rest

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, body_done, cut
            if body_done or cut:  # after the body: disconnect notifications, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.chunk_timeout_s)
            except asyncio.TimeoutError:
                cut = True
                raise BodyTimeout(408, f"the client sent nothing for {self.chunk_timeout_s:g} s while "
                                       "uploading; request closed") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.body_limit:
                    cut = True
                    raise BodyTooLarge(413, too_large)
                body_done = not message.get("more_body", False)
            return message

        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cut:  # otherwise the server would read (and discard) the rest of the body
                    headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as e:  # raised while a parser outside our handler read
            if not started:
                await _plain_error(send, e.status_code, str(e.detail))


async def _plain_error(send: Any, status: int, detail: str) -> None:
    """Send a JSON ``{"detail": ...}`` error response and close the connection."""
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(predictor: Predictor, max_upload_mb: float = 64.0, max_batch: int = 16, batch_wait_ms: float = 5.0,
               max_slices: int | None = 64, max_pixels: int | None = None, max_voxels: int | None = None,
               max_unzipped_mb: float | None = None, decode_workers: int = 2, max_pending_decodes: int = 16,
               decode_timeout_s: float = 60.0, body_timeout_s: float = 30.0) -> Any:
    """The FastAPI app serving ``predictor`` (see the module docstring for the endpoints).

    Args:
        predictor: a :class:`~chestdx.predict.predictor.Predictor`.
        max_upload_mb: largest upload; enforced while the body streams.
        max_batch / batch_wait_ms: the :class:`Batcher`'s shared forward passes.
        max_slices: most slices of a scan answered (evenly spaced).
        max_pixels / max_voxels: most decoded pixels of one image / voxels of one scan (checked from
            the file's header before decoding; default the readers' limits).
        max_unzipped_mb: most bytes a zip upload may unpack to.
        decode_workers: threads that decode uploads (apart from the model's worker thread).
        max_pending_decodes: uploads decoding at once (queued for ``decode_workers`` threads); more
            wait for a place, and one that waits over ``decode_timeout_s`` is answered 503.
        decode_timeout_s: an upload that takes longer to decode is answered 408.
        body_timeout_s: longest wait for the next chunk of a body (408 after it).
    """
    from chestdx.version import __version__

    limit = int(max_upload_mb * 1024 * 1024)
    batcher = Batcher(predictor, max_batch=max_batch, wait_ms=batch_wait_ms)
    decoder = ThreadPoolExecutor(max_workers=max(1, decode_workers), thread_name_prefix="chestdx-decode")
    pending = asyncio.Semaphore(max(1, max_pending_decodes))  # uploads decoding or queued for a thread
    read_limits: dict[str, Any] = {}
    if max_pixels is not None:
        read_limits["max_pixels"] = int(max_pixels)
    if max_voxels is not None:
        read_limits["max_voxels"] = int(max_voxels)
    if max_unzipped_mb is not None:
        read_limits["max_unzipped_bytes"] = int(max_unzipped_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        for d in remove_orphan_uploads():
            log.info("removed %s, left by a server that was killed mid-request", d)
        yield
        batcher.close()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="chestdx", version=__version__, lifespan=lifespan,
                  description="Chest imaging classifier with heatmaps. Research software, not a medical device.")
    app.add_middleware(LimitBody, limit=limit, chunk_timeout_s=body_timeout_s)
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

    async def read_limited(upload: UploadFile) -> bytes:
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

    def decode(data: bytes, name: str) -> Any:
        return study_from_bytes(data, name, predictor.hu_window, **read_limits)

    async def decode_upload(data: bytes, name: str) -> Any:
        try:  # wait for a place among the uploads being decoded; a long queue is answered 503
            await asyncio.wait_for(pending.acquire(), decode_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"more than {max_pending_decodes} uploads are being read; none finished "
                                     f"within {decode_timeout_s:g} s; try again in a moment") from None
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(decoder, decode, data, name)
        except RuntimeError:  # the pool is shutting down
            pending.release()
            raise HTTPException(503, "the service is shutting down") from None
        fut.add_done_callback(lambda _f: pending.release())  # when the decode really ends, timed out or not
        try:
            return await asyncio.wait_for(asyncio.shield(fut), decode_timeout_s)
        except asyncio.TimeoutError:  # the thread finishes on its own, bounded by the pixel caps
            raise HTTPException(408, f"{name}: took longer than {decode_timeout_s:g} s to read; refused") from None

    @app.post("/predict")
    async def predict(file: UploadFile = File(..., description="the image or scan: PNG/JPEG/TIFF/BMP, DICOM, "  # noqa: B008
                                                   "NIfTI (.nii/.nii.gz), .npy, or a zip of a DICOM series"),
                      heatmap: bool = Query(True, description="include the heatmap overlay (PNG data URI)"),
                      aggregate: str = Query("mean", pattern="^(mean|majority|max)$",
                                             description="how slice answers make a scan's answer")) -> dict[str, Any]:
        data = await read_limited(file)
        name = _safe_name(file.filename)
        loop = asyncio.get_running_loop()
        try:
            study = await decode_upload(data, name)
        except HTTPException:
            raise
        except UnsupportedType as e:
            raise HTTPException(415, str(e)) from None
        except ChestdxError as e:
            raise HTTPException(400, str(e)) from None
        except Exception as e:  # noqa: BLE001 - a reader bug must still be the upload's 4xx, never a 500
            log.exception("reading upload %s failed", name)
            raise HTTPException(400, f"{name}: cannot read ({type(e).__name__}: {str(e)[:200]})") from None
        try:
            per_slice = predictor.task.per_slice  # 2D models: shared passes
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
            return await loop.run_in_executor(None, _answer_json, answer, heatmap)
        except ConfigError as e:
            raise HTTPException(422, str(e)) from None
        except DataError as e:
            raise HTTPException(400, str(e)) from None
        except ChestdxError as e:
            raise HTTPException(422, str(e)) from None
        except Exception as e:  # noqa: BLE001 - answered, logged, never a 500
            log.exception("answering upload %s failed", name)
            raise HTTPException(422, f"{name}: the model could not answer this input "
                                     f"({type(e).__name__}: {str(e)[:200]})") from None

    return app


def _safe_name(filename: str | None) -> str:
    """The upload's name for messages and answers: its last path part, printable, at most 200 chars."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch if ch.isprintable() else "_" for ch in name)[:200]
    return name or "upload"


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, header_timeout_s: float = 10.0,
          keepalive_s: float = 5.0, speed: str | None = None, device: Any = "cpu", heatmap_kind: str = "auto",
          **kwargs: Any) -> None:
    """Load the model and run the service with uvicorn until interrupted.

    Connections that send no complete request head within ``header_timeout_s`` (idle, or trickling
    their headers) are closed, and so are keep-alive connections idle for ``keepalive_s``.
    ``speed``: execution mode setting (default the recipe's ``inference.speed``; see
    :mod:`chestdx.engine.precision`), resolved before the service starts (``auto`` measures once per
    machine), for single images and for batches of ``max_batch``. ``device``: where the model runs
    (a :class:`torch.device` or an accelerator, :func:`chestdx.engine.device.resolve_device`).
    ``heatmap_kind``: the map drawn with each answer (:class:`~chestdx.predict.predictor.Predictor`).
    """
    import uvicorn

    from chestdx.predict.predictor import Predictor

    predictor = Predictor(model_path, speed=speed, device=device, heatmap_kind=heatmap_kind)
    log.info("device %s, execution modes: %s", predictor.device,
             predictor.resolve_speed((1, int(kwargs.get("max_batch", 16)))))
    app = create_app(predictor, **kwargs)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", http=header_timeout_protocol(header_timeout_s),
                            timeout_keep_alive=int(max(1, keepalive_s)), h11_max_incomplete_event_size=64 * 1024)
    uvicorn.Server(config).run()


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete ``timeout_s``
    seconds after the connection opened or the previous response ended (uvicorn itself waits forever
    for a first request that never comes)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):  # type: ignore[misc]
        _head_timer: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            cycle = getattr(self, "cycle", None)
            if cycle is None or getattr(cycle, "response_complete", False):  # no request under way
                if not self.transport.is_closing():
                    self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Any) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request head must come in time too

        def handle_events(self) -> None:
            before = getattr(self, "cycle", None)
            super().handle_events()
            if getattr(self, "cycle", None) is not before:  # a request head arrived
                self._disarm()

    return HeaderTimeoutProtocol
