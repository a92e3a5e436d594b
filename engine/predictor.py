"""The KServe predictor: LLaVA-1.5 behind KServe's v1 and v2 protocols and an OpenAI-compatible API.

`LlavaModel` is a `kserve.Model`: KServe's data plane hands it v1 bodies
(`{"instances": [...]}`, see `engine.wire`) and v2 `InferRequest`s; it checks every item
(image decodes within the pixel limit, schema compiles, prompt renders) before queueing,
so bad input is a 400 that names the item, then feeds the dynamic batcher, which gives
the backend whole batches. `serve` assembles KServe's REST server ourselves rather than
through `kserve.ModelServer`, because ModelServer binds 0.0.0.0 unconditionally and the
bind address must be configurable (tests and laptops bind 127.0.0.1 only); on top of
KServe's routes go the OpenAI-compatible routes (`engine.openai_api`), a request-size
guard, request metrics, and error mappings (overload 503, timeout 504).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from engine.backend import Backend, GenerationRequest, GenerationResult, TransientEngineError
from engine.batcher import Batcher, Overloaded, RequestTimeout
from engine.images import ImageError, load_image
from engine.metrics import LATENCY, REQUESTS
from engine.settings import FetchPolicy, ImageLimits, ServingSettings
from engine.structured import GrammarCache, SchemaError
from engine.wire import ImageData, Options, WireError, parse_instances, parse_options

# kserve.model_server parses the process's command line when it is imported; the
# arguments of `llava-labeler serve` are not its own, so it sees none of them.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    import kserve.model_server as kserve_server
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.errors import InvalidInput
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer
finally:
    sys.argv = _argv


class ServableBackend(Backend, Protocol):
    """A backend the predictor can serve: it also exposes its tokenizer and grammar cache."""

    tokenizer: Any
    grammars: GrammarCache


class ItemErrors(InvalidInput):
    """Some items of a request are unusable (not an image, bad schema, ...): 400, one message per item."""

    def __init__(self, problems: Sequence[tuple[int, str]], what: str = "instance"):
        self.problems = list(problems)
        summary = "; ".join(f"{what} {index}: {message}" for index, message in self.problems[:3])
        more = len(self.problems) - 3
        super().__init__(summary + (f"; and {more} more" if more > 0 else ""))


@dataclass
class Parsed:
    """A decoded request on its way through preprocess -> predict -> postprocess."""

    items: list[tuple[Options, bytes | str]]
    v2_id: str | None = None
    is_v2: bool = False
    results: list[GenerationResult] = field(default_factory=list)


def image_tokens(backend: Any) -> int:
    """How many LLM positions one image takes (576 for LLaVA-1.5 at 336 px, patch 14)."""
    explicit = getattr(backend, "image_tokens", None)
    if explicit:
        return int(explicit)
    processor = backend.loaded.processor
    return (processor.image_processor.crop_size["height"] // processor.patch_size) ** 2


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
        self.image_tokens = image_tokens(backend)
        self.batcher = Batcher(
            backend.generate,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
        )

    async def run(self, items: Sequence[tuple[Options, bytes | str]], *, what: str = "instance") -> list[GenerationResult]:
        """Check every item, then generate them through the batcher; `ItemErrors` when any is unusable."""
        requests, problems = await asyncio.to_thread(self._requests, items)
        if problems:
            raise ItemErrors(problems, what)
        try:
            return await self.batcher.submit(requests, timeout_s=self.settings.request_timeout_s)
        except TransientEngineError as exc:
            raise Overloaded(f"the engine failed this batch, retry: {exc}") from None

    def _requests(self, items: Sequence[tuple[Options, bytes | str]]) -> tuple[list[GenerationRequest], list[tuple[int, str]]]:
        requests, problems = [], []
        for index, (options, image) in enumerate(items):
            try:
                data = image if isinstance(image, bytes) else _b64(image)
                load_image(data, self.image_limits)
                request = options.to_request(data)
                if request.schema is not None:
                    self.backend.grammars.compile(request.schema)
                requests.append(request)
            except (WireError, ImageError, SchemaError, ValueError) as exc:
                problems.append((index, str(exc)))
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
            options = [Options()] * len(data)
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


_ROUTES = (
    ("v1", re.compile(r"^/v1/models/[^/]+:predict$")),
    ("v2", re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")),
    ("openai", re.compile(r"^/openai/v1/chat/completions$")),
)


class _BodyTooLarge(Exception):
    pass


class InferenceGuard:
    """ASGI middleware on the inference routes: refuse oversized bodies (413) and record request metrics."""

    def __init__(self, app: Callable, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        route = next((name for name, pattern in _ROUTES if pattern.match(scope.get("path", ""))), None)
        if scope["type"] != "http" or route is None:
            await self.app(scope, receive, send)
            return
        start, state = time.perf_counter(), {"code": 500, "started": False}
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["code"], state["started"] = message["status"], True
            await send(message)

        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                raise _BodyTooLarge
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not state["started"]:
                message = f"request body over the {self.max_body:,}-byte limit (LLAVA_LABELER_SERVING__MAX_REQUEST_BYTES)"
                await JSONResponse({"error": message}, status_code=413)(scope, receive, tracking_send)
        finally:
            REQUESTS.labels(route, str(state["code"])).inc()
            LATENCY.labels(route).observe(time.perf_counter() - start)


async def _overloaded(_request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def _timeout(_request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=504)


async def _item_errors(_request, exc: ItemErrors) -> JSONResponse:
    errors = [{"index": index, "error": message} for index, message in exc.problems]
    return JSONResponse({"error": str(exc), "errors": errors}, status_code=400)


def build_server(model: LlavaModel, settings: ServingSettings) -> RESTServer:
    """KServe's REST server with our model, our routes, the guard and the error mappings."""
    from engine.openai_api import openai_router

    repository = ModelRepository()
    repository.update(model)
    server = RESTServer(
        FASTAPI_APP_IMPORT_STRING,
        DataPlane(model_registry=repository),
        _FixedRepository(model_registry=repository),
        http_port=settings.port,
        workers=1,
    )
    app: FastAPI = kserve_server.app
    app.include_router(openai_router(model))
    app.add_middleware(InferenceGuard, max_body=settings.max_request_bytes)
    app.add_exception_handler(ItemErrors, _item_errors)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(RequestTimeout, _timeout)
    return server


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def serve(
    backend: ServableBackend,
    *,
    settings: ServingSettings,
    image_limits: ImageLimits,
    fetch_policy: FetchPolicy,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve `backend` until SIGINT/SIGTERM; announces `serving NAME on http://HOST:PORT` once listening."""
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
