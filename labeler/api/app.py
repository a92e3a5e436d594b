"""The API's application and server: the routes behind the predictor's guard, on uvicorn.

The guard (`engine.predictor.InferenceGuard`) is the predictor's own: with a key set, every
request must carry it (401), and a body over the limit is refused before a route reads it (413);
`check_exposure` refuses to bind anything but loopback without a key. Errors are answered in
OpenAI's format, so the stock `openai` client raises its usual exceptions with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from engine.openai_api import OpenAIError
from engine.predictor import InferenceGuard, bind, check_exposure
from labeler.api.batch_records import Batches
from labeler.api.batches import batches_router
from labeler.api.files import Files, files_router
from labeler.api.jobs import jobs_router
from labeler.file_store import store_for
from labeler.service import Labeler
from labeler.settings import LabelerConfig

FORM_FRAMING = 64 * 1024  # multipart boundaries and headers around an uploaded file


async def _openai_error(_request: Request, exc: OpenAIError) -> JSONResponse:
    return exc.response()


async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
    return OpenAIError(400, f"invalid request: {problems}").response()


def build_app(settings: LabelerConfig, labeler: Labeler | None = None) -> FastAPI:
    """The API for these settings (and this labeler: its database and queue)."""
    labeler = labeler or Labeler(settings)
    files = Files(store_for(settings))
    app = FastAPI(title="llava-labeler batch API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = files.store
    app.include_router(files_router(files, settings.api))
    app.include_router(batches_router(Batches(labeler, files)))
    app.include_router(jobs_router(labeler))
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    api_key = settings.api.api_key.get_secret_value() if settings.api.api_key else None
    app.add_middleware(InferenceGuard, max_body=settings.api.max_request_bytes + FORM_FRAMING, api_key=api_key, section="API")
    return app


def serve(settings: LabelerConfig, *, announce: Callable[[str], None] = print) -> None:
    """Serve until SIGINT/SIGTERM; announces `batch API on http://HOST:PORT/v1` once listening."""
    import uvicorn

    check_exposure(settings.api, section="API")
    app = build_app(settings)
    store = app.state.store
    sock = bind(settings.api.host, settings.api.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    announce(f"batch API on http://{shown}:{port}/v1 (store: {store.uri('')})")
    server.run(sockets=[sock])
