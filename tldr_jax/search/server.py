"""``tldr-jax serve``: the search page and its JSON API over one index (Starlette; run by uvicorn).

Routes (all ``GET``; errors are ``{"error": "<one line>"}`` with 400 for bad input, 404 for an unknown
row, file or route, 503 while warming up or when too many requests wait):

* ``/``: the page (``static/index.html``, ``app.js``, ``style.css``: no build step, nothing from the
  network); ``/static/<file>``: its assets;
* ``/api/search?q=&k=&rerank=``: the hits of ``tldr-jax search --json`` (``rerank=0``: ITC only);
* ``/api/similar/<row>?k=``: "more like this" (the row's stored vector as the query, itself left out);
* ``/api/videos/<row>``, ``/api/info``, ``/api/health``;
* ``/api/thumbnails/<row>.jpg``: :func:`~tldr_jax.search.thumbnails.thumbnail`;
* ``/api/tokens/<row>.png``: the vid-TLDR view of the row's clip (kept / merged tokens and saliency,
  :func:`~tldr_jax.search.token_view.token_view_png`; runs the model once per clip, then cached);
* ``/media/<row>``: the video file, with HTTP range requests (206 + ``Content-Range``); only files of
  the indexed collection (:meth:`~tldr_jax.search.index.VideoIndex.video_path`).

Requests run in worker threads; at most ``max_concurrency`` at once, up to ``max_queue`` more wait
(queue, not crash), beyond that 503. The model is warmed up in a thread when the app starts.
"""

from __future__ import annotations

import asyncio
import functools
import mimetypes
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tldr_jax.search.service import NotFound, SearchService, WarmingUp
from tldr_jax.search.thumbnails import thumbnail
from tldr_jax.search.token_view import token_view_png

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["STATIC_DIR", "create_app", "serve_in_thread"]


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Gate:
    """At most ``limit`` requests at work, at most ``queue`` more waiting (created in the event loop)."""

    def __init__(self, limit: int, queue: int):
        self.limit, self.queue = limit, queue
        self.sem: asyncio.Semaphore | None = None
        self.waiting = 0

    async def run(self, fn: Callable[[], Any]) -> Any:
        if self.sem is None:
            self.sem = asyncio.Semaphore(self.limit)
        if self.sem.locked() and self.waiting >= self.queue:
            raise _Busy(f"{self.waiting} requests are waiting already; retry shortly.")
        self.waiting += 1
        try:
            await self.sem.acquire()
        finally:
            self.waiting -= 1
        try:
            return await run_in_threadpool(fn)
        finally:
            self.sem.release()


class _Busy(Exception):
    pass


def _endpoint(gate: _Gate, work: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint running ``work(request)`` in a thread through the gate; its result becomes JSON (a
    Response is passed through) and its exceptions the JSON errors."""

    async def endpoint(request: Request) -> Response:
        try:
            out = await gate.run(lambda: work(request))
        except (_Busy, WarmingUp) as err:
            return _error(503, str(err))
        except NotFound as err:
            return _error(404, str(err))
        except (ValueError, TypeError) as err:
            return _error(400, _line(err))
        except Exception as err:  # noqa: BLE001  (a bug: one line, the server keeps serving)
            return _error(500, f"internal error: {type(err).__name__}: {_line(err)}")
        return out if isinstance(out, Response) else JSONResponse(out)

    return endpoint


def _media(service: SearchService, request: Request) -> Response:
    path = service.media_path(request.path_params["row"])
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=kind)


def _row_image(service: SearchService, request: Request, render: Callable[[Any, int], bytes], what: str,
               media_type: str, cache_control: str) -> Response:
    """An image derived from a row's file (``render(index, row)``); 404 with one line when it cannot be."""
    row = request.path_params["row"]
    index = service.current()
    try:
        data = render(index, row)
    except IndexError as err:
        raise NotFound(str(err)) from None
    except (ValueError, OSError) as err:  # unreadable or vanished file, path outside the collection
        raise NotFound(f"no {what} for video {row}: {str(err).splitlines()[0]}") from None
    return Response(data, media_type=media_type, headers={"Cache-Control": cache_control})


def _thumbnail(service: SearchService, request: Request) -> Response:
    return _row_image(service, request, thumbnail, "thumbnail", "image/jpeg", "max-age=3600")


def _token_view(service: SearchService, request: Request) -> Response:
    # rows may renumber after a re-index: the browser asks again (the server keeps its own cache)
    return _row_image(service, request, token_view_png, "token view", "image/png", "no-cache")


async def _health(service: SearchService, request: Request) -> JSONResponse:
    if service.error is not None:
        return JSONResponse({"status": "failed", "error": service.error}, status_code=503)
    if not service.ready:
        return JSONResponse({"status": "warming up"}, status_code=503)
    return JSONResponse({"status": "ok"})


def create_app(service: SearchService, *, max_concurrency: int = 4, max_queue: int = 64,
               warm_up: bool = True, on_failure: Callable[[], None] | None = None) -> Starlette:
    """The ASGI app serving ``service``.

    Args:
      service: the :class:`~tldr_jax.search.service.SearchService` (its index and model).
      max_concurrency: requests worked on at once (each in a thread). max_queue: requests that may wait
        for one of those slots; more are answered 503.
      warm_up: start :meth:`SearchService.warm_up` in a thread when the app starts (requests get 503
        until it is done). False: the caller warms the service up.
      on_failure: called when the warm-up fails (e.g. to stop the server; the error stays in
        ``service.error`` and requests get 503 with it).
    """
    gate = _Gate(max_concurrency, max_queue)

    def api(work: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
        return _endpoint(gate, work)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm_up and not service.ready:
            warm = _quiet(service.warm_up, on_failure)
            threading.Thread(target=warm, name="tldr-jax-warm-up", daemon=True).start()
        yield

    async def page(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return _error(exc.status_code, str(exc.detail))
        return _error(500, "internal error")

    routes = [
        Route("/", page),
        Route("/api/health", functools.partial(_health, service)),
        Route("/api/info", api(lambda request: service.info())),
        Route("/api/search", api(lambda request: service.search(request.query_params))),
        Route("/api/similar/{row:int}",
              api(lambda request: service.similar(request.path_params["row"], request.query_params))),
        Route("/api/videos/{row:int}", api(lambda request: service.video(request.path_params["row"]))),
        Route("/api/thumbnails/{row:int}.jpg", api(lambda request: _thumbnail(service, request))),
        Route("/api/tokens/{row:int}.png", api(lambda request: _token_view(service, request))),
        Route("/media/{row:int}", api(lambda request: _media(service, request))),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})


def _quiet(fn: Callable[[], None], on_failure: Callable[[], None] | None) -> Callable[[], None]:
    """``fn`` with its exception swallowed (it is kept in ``service.error``; a thread must not print a
    traceback), then ``on_failure()``."""

    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001
            if on_failure is not None:
                on_failure()

    return run


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread for the ``with`` block (tests, notebooks).

    Args:
      app: an ASGI app (:func:`create_app`). host: the address to bind. port: the TCP port (0: a free
        one, chosen by the system). timeout: seconds to wait for the server to start (and to stop).

    Yields:
      the base URL, e.g. ``http://127.0.0.1:43117``.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tldr-jax-serve",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the server on {host}:{sock.getsockname()[1]} did not start in {timeout} s.")
        time.sleep(0.02)
    try:
        bound = sock.getsockname()[1]
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
        sock.close()
