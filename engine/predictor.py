"""The KServe predictor: LLaVA-1.5 behind KServe's v1 and v2 protocols and an OpenAI-compatible API.

`LlavaModel` is a `kserve.Model`: KServe's data plane hands it v1 bodies
(`{"instances": [...]}`, see `engine.wire`) and v2 `InferRequest`s; it checks every item
(image header within the pixel limit, schema self-contained and compiling, prompt
renders) before queueing, so bad input is a 400 that names the item, and the request's
images together within the pixel budget (413), all without decoding a pixel; then it
feeds the dynamic batcher, which gives the backend whole batches, and the backend
decodes each image once, one at a time, reduced as it is decoded. `serve` assembles
KServe's REST server ourselves rather than through `kserve.ModelServer`, because
ModelServer binds 0.0.0.0 unconditionally and the bind address must be configurable
(tests and laptops bind 127.0.0.1 only); on top of KServe's routes go the
OpenAI-compatible routes (`engine.openai_api`), a body-size guard on every route, request
metrics, a check of v2 binary bodies, and error mappings (overload 503, timeout 504):
client errors are answered with their reason and logged in one line, server errors
logged with their traceback and answered without internals.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from engine.backend import GenerationOptions, GenerationRequest, GenerationResult, ServableBackend, TransientEngineError
from engine.batcher import Batcher, Overloaded, RequestTimeout
from engine.fetch import is_loopback
from engine.images import ImageError, image_size
from engine.metrics import LATENCY, REQUESTS
from engine.openai_api import openai_router
from engine.settings import FetchPolicy, ImageLimits, ServingSettings
from engine.request_errors import ItemErrors, TooManyPixels
from engine.structured import SchemaError
from engine.wire import ImageData, WireError, parse_instances, parse_options

# kserve.model_server parses the process's command line when it is imported; the
# arguments of `llava-labeler serve` are not its own, so it sees none of them.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    import kserve.model_server as kserve_server
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InvalidInput, ModelNotFound
    from kserve.logging import logger
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer
finally:
    sys.argv = _argv


@dataclass
class Parsed:
    """A decoded request on its way through preprocess -> predict -> postprocess."""

    items: list[tuple[GenerationOptions, bytes | str]]
    v2_id: str | None = None
    is_v2: bool = False
    results: list[GenerationResult] = field(default_factory=list)


class LlavaModel(kserve.Model):
    """LLaVA-1.5 as a KServe model: validated items in, dynamically batched results out."""

    def __init__(
        self,
        name: str,
        backend: ServableBackend,
        *,
        settings: ServingSettings,
        image_limits: ImageLimits,
        fetch_policy: FetchPolicy | None = None,
    ) -> None:
        super().__init__(name)
        self.backend = backend
        self.settings = settings
        self.image_limits = image_limits
        self.fetch_policy = fetch_policy or FetchPolicy()
        self.batcher = Batcher(
            backend.generate,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
        )

    async def run(self, items: Sequence[tuple[GenerationOptions, bytes | str]], *, what: str = "instance") -> list[GenerationResult]:
        """Check every item, then generate them through the batcher; `ItemErrors` when any is unusable."""
        requests, problems = await asyncio.to_thread(self._requests, items)
        if problems:
            raise ItemErrors(problems, what)
        try:
            return await self.batcher.submit(requests, timeout_s=self.settings.request_timeout_s)
        except TransientEngineError as exc:
            raise Overloaded(f"the engine failed this batch, retry: {exc}") from None

    def _requests(self, items: Sequence[tuple[GenerationOptions, bytes | str]]) -> tuple[list[GenerationRequest], list[tuple[int, str]]]:
        """The engine requests and the unusable items' problems, from image headers only (nothing decoded here).

        Raises `TooManyPixels` when the images together are over the per-request budget.
        """
        requests, problems, pixels = [], [], 0
        for index, (options, image) in enumerate(items):
            try:
                data = image if isinstance(image, bytes) else _b64(image)
                width, height = image_size(data, self.image_limits)
                pixels += width * height
                request = GenerationRequest.of(options, data)
                self.backend.check(request)
                requests.append(request)
            except (WireError, ImageError, SchemaError, ValueError) as exc:
                problems.append((index, str(exc)))
        budget = self.image_limits.max_request_pixels
        if pixels > budget:
            raise TooManyPixels(
                f"the request's images hold {pixels:,} pixels together, over the {budget:,}-pixel limit per request "
                "(LLAVA_LABELER_IMAGES__MAX_REQUEST_PIXELS); send fewer or smaller images per request"
            )
        return requests, problems

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Parsed:
        try:
            if isinstance(payload, InferRequest):
                return self._from_v2(payload)
            instances = parse_instances(payload, max_items=self.settings.max_items_per_request)
        except WireError as exc:
            raise InvalidInput(str(exc)) from None
        return Parsed(items=[(instance, instance.image.b64) for instance in instances])

    def _from_v2(self, request: InferRequest) -> Parsed:
        images = request.get_input_by_name("image")
        if images is None or images.datatype != "BYTES":
            raise WireError('a v2 request needs a BYTES input named "image" (base64 of each image file)')
        data = _flat(images.data)
        if not data:
            raise WireError('the "image" input is empty')
        if len(data) > self.settings.max_items_per_request:
            raise WireError(f"{len(data)} images in one request; the limit is {self.settings.max_items_per_request}")
        options_input = request.get_input_by_name("request")
        if options_input is None:
            options = [GenerationOptions()] * len(data)
        else:
            raw = _flat(options_input.data)
            if len(raw) != len(data):
                raise WireError(f'"request" has {len(raw)} elements for {len(data)} images; give one per image')
            options = []
            for index, element in enumerate(raw):
                try:
                    options.append(parse_options(element))
                except WireError as exc:
                    raise WireError(f"request {index}: {exc}") from None
        images_b64 = [item.decode("ascii", "replace") if isinstance(item, bytes) else str(item) for item in data]
        return Parsed(items=list(zip(options, images_b64)), v2_id=request.id, is_v2=True)

    async def predict(self, payload: Parsed, headers: dict[str, str] | None = None) -> Parsed:
        payload.results = await self.run(payload.items)
        return payload

    async def postprocess(self, result: Parsed, headers: dict[str, str] | None = None, response_headers=None) -> Any:
        if not result.is_v2:
            return {"predictions": [r.to_dict(with_logprobs=True) for r in result.results]}
        count = len(result.results)
        outputs = [
            InferOutput(name="text", shape=[count], datatype="BYTES", data=[r.text for r in result.results]),
            InferOutput(
                name="result",
                shape=[count],
                datatype="BYTES",
                data=[json.dumps(r.to_dict(with_logprobs=True), ensure_ascii=False) for r in result.results],
            ),
        ]
        return InferResponse(response_id=result.v2_id or str(uuid.uuid4()), model_name=self.name, infer_outputs=outputs)

    def get_input_types(self) -> list[dict]:
        return [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "request", "datatype": "BYTES", "shape": [-1]},
        ]

    def get_output_types(self) -> list[dict]:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}, {"name": "result", "datatype": "BYTES", "shape": [-1]}]


def _b64(text: str) -> bytes:
    return ImageData(b64=text).decode()


def _flat(data: Any) -> list:
    if isinstance(data, (list, tuple)):
        return [leaf for item in data for leaf in _flat(item)]
    return [data]


class _FixedRepository(ModelRepositoryExtension):
    """The served model is fixed at start: the v2 repository load/unload routes refuse (no unauthenticated unload)."""

    async def load(self, model_name: str) -> None:
        raise NotImplementedError("loading models at run time is disabled; restart the predictor with --model")

    async def unload(self, model_name: str) -> None:
        raise NotImplementedError("unloading models at run time is disabled")


class _CheckedDataPlane(DataPlane):
    """KServe's data plane, with v2 binary bodies checked against their own header first.

    KServe slices the binary part by the declared sizes as they come: a header length or
    `binary_data_size` that does not match the body was a 500 (or a silently truncated
    tensor); here it is a 400 that says which.
    """

    def decode_inference_request(self, body: Any, headers: dict, model_name: str) -> InferRequest:
        if isinstance(body, bytes):
            _check_binary_layout(body, headers.get(INFERENCE_CONTENT_LENGTH_HEADER))
        try:
            return super().decode_inference_request(body, headers, model_name)
        except InvalidInput:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error) as exc:
            raise InvalidInput(f"the v2 request's tensors do not decode: {exc}") from None


def _check_binary_layout(body: bytes, declared: str | None) -> None:
    """Raise `InvalidInput` unless the JSON header length and the inputs' `binary_data_size`s add up to `body`."""
    if declared is None:
        return  # KServe answers the missing header itself
    if not declared.isdigit() or not 0 < int(declared) <= len(body):
        raise InvalidInput(
            f"{INFERENCE_CONTENT_LENGTH_HEADER} is {declared[:20]!r}: it must be the JSON header's length in bytes, "
            f"between 1 and the body's {len(body):,}"
        )
    length = int(declared)
    try:
        header = orjson.loads(body[:length])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the first {length:,} bytes ({INFERENCE_CONTENT_LENGTH_HEADER}) are not a JSON header: {exc}") from None
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(item, dict) for item in inputs):
        raise InvalidInput('the JSON header needs "inputs": a list of objects')
    sizes = [_binary_size(item) for item in inputs if item.get("data") is None]
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in sizes):
        raise InvalidInput("every input without \"data\" needs parameters.binary_data_size, a byte count >= 0")
    if sum(sizes) != len(body) - length:
        raise InvalidInput(
            f"the inputs' binary_data_size add up to {sum(sizes):,} bytes, but {len(body) - length:,} bytes "
            "follow the JSON header"
        )


def _binary_size(item: dict) -> Any:
    parameters = item.get("parameters")
    return parameters.get("binary_data_size") if isinstance(parameters, dict) else None


_ROUTES = (
    ("v1", re.compile(r"^/v1/models/[^/]+:predict$")),
    ("v2", re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")),
    ("openai", re.compile(r"^/openai/v1/chat/completions$")),
)


# What probes and Prometheus read, open even with an API key (they carry no data of anyone's).
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


class _BodyTooLarge(Exception):
    pass


class InferenceGuard:
    """ASGI middleware: with an API key, every request but the health probes and metrics must carry it
    (401); every HTTP request's body is capped (413) before any route sees it; the inference routes'
    requests are counted and timed."""

    def __init__(self, app: Callable, max_body: int, api_key: str | None = None, section: str = "SERVING") -> None:
        self.app = app
        self.max_body = max_body
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.section = section  # the settings section the messages name (SERVING: the predictor, API: the batch API)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = next((name for name, pattern in _ROUTES if pattern.match(scope.get("path", ""))), None)
        start, state = time.perf_counter(), {"code": 500}

        async def tracking_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["code"] = message["status"]
            await send(message)

        try:
            if not self._authorized(scope):
                unauthorized = JSONResponse(
                    {"error": f"missing or wrong API key: send `Authorization: Bearer <LLAVA_LABELER_{self.section}__API_KEY>`"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await unauthorized(scope, receive, tracking_send)
                return
            replay = await self._read_body(scope, receive)
        except _BodyTooLarge:
            message = f"request body over the {self.max_body:,}-byte limit (LLAVA_LABELER_{self.section}__MAX_REQUEST_BYTES)"
            await JSONResponse({"error": message}, status_code=413)(scope, receive, tracking_send)
        else:
            await self.app(scope, replay, tracking_send)
        finally:
            if route is not None:
                REQUESTS.labels(route, str(state["code"])).inc()
                LATENCY.labels(route).observe(time.perf_counter() - start)

    def _authorized(self, scope: dict) -> bool:
        if self.expected is None or scope.get("path", "") in OPEN_PATHS:
            return True
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        return hmac.compare_digest(given, self.expected)

    async def _read_body(self, scope: dict, receive: Callable) -> Callable:
        """Read the whole body, refusing it past the limit (declared or counted); a `receive` that replays it.

        Reading it here, not as the route reads, is what makes the limit hold on every route:
        a route that catches exceptions while reading could otherwise answer something else.
        """
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _BodyTooLarge
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                raise _BodyTooLarge
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        return replay


def _client_error(status: int) -> Callable:
    """An exception handler answering `status` with the exception's message, logged in one line without a traceback."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        _log_client_error(request, status, exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    return handler


def _log_client_error(request: Request, status: int, exc: Exception) -> None:
    level = logging.WARNING if status >= 500 else logging.INFO
    logger.log(level, "%s %s -> %d %s: %r", request.method, request.url.path, status, type(exc).__name__, str(exc)[:500])


async def _item_errors(request: Request, exc: ItemErrors) -> JSONResponse:
    _log_client_error(request, 400, exc)
    errors = [{"index": index, "error": message} for index, message in exc.problems]
    return JSONResponse({"error": str(exc), "errors": errors}, status_code=400)


async def _overloaded(_request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def _timeout(_request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=504)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A real server error: logged with its traceback; the answer names no internals (paths, types, values)."""
    logger.error("%s %s -> 500", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal server error; the predictor's log has the details"}, status_code=500)


_HANDLERS: dict[type[Exception], Callable] = {
    InvalidInput: _client_error(400),
    TooManyPixels: _client_error(413),
    ModelNotFound: _client_error(404),
    NotImplementedError: _client_error(501),  # a route or verb this predictor does not offer: the client's mistake
    ItemErrors: _item_errors,
    Overloaded: _overloaded,
    RequestTimeout: _timeout,
    Exception: _internal_error,
}


class _Server(RESTServer):
    """KServe's REST server with our error handlers over its own (which log every 4xx as an ERROR with a traceback)."""

    def create_application(self) -> None:
        super().create_application()
        for exception, handler in _HANDLERS.items():
            kserve_server.app.add_exception_handler(exception, handler)


def build_server(model: LlavaModel, settings: ServingSettings) -> RESTServer:
    """KServe's REST server with our model, our routes, the guard and the error mappings."""
    repository = ModelRepository()
    repository.update(model)
    server = _Server(
        FASTAPI_APP_IMPORT_STRING,
        _CheckedDataPlane(model_registry=repository),
        _FixedRepository(model_registry=repository),
        http_port=settings.port,
        workers=1,
    )
    app: FastAPI = kserve_server.app
    app.include_router(openai_router(model))
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(InferenceGuard, max_body=settings.max_request_bytes, api_key=api_key)
    return server


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


class ExposureError(ValueError):
    """The predictor would be reachable by others without an API key; the message says what to set."""


class Exposed(Protocol):
    """A server's bind address and key (the predictor's `ServingSettings`, the batch API's `ApiSettings`)."""

    host: str
    api_key: SecretStr | None


def check_exposure(settings: Exposed, section: str = "SERVING") -> None:
    """Refuse to bind anything but loopback without an API key (every server in a cluster has a key or a login)."""
    if not is_loopback(settings.host) and not (settings.api_key and settings.api_key.get_secret_value()):
        hint = " (the workers send the same)" if section == "SERVING" else ""
        raise ExposureError(
            f"refusing to serve on {settings.host} without an API key: set LLAVA_LABELER_{section}__API_KEY"
            f"{hint}, or bind 127.0.0.1"
        )


def serve(
    backend: ServableBackend,
    *,
    settings: ServingSettings,
    image_limits: ImageLimits,
    fetch_policy: FetchPolicy,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve `backend` until SIGINT/SIGTERM; announces `serving NAME on http://HOST:PORT` once listening."""
    check_exposure(settings)
    model = LlavaModel(
        settings.model_name, backend, settings=settings, image_limits=image_limits, fetch_policy=fetch_policy
    )
    model.load()
    server = build_server(model, settings)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    announce(f"serving {settings.model_name} ({backend.model_id}) on http://{shown}:{port}")
    server.run(sockets=[sock])
