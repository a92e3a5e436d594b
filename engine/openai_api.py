"""An OpenAI-compatible chat API on the predictor: `/openai/v1/chat/completions` and `/openai/v1/models`.

KServe's own OpenAI layer needs vLLM (a CUDA build), so these routes are the project's:
any OpenAI client (`base_url=http://host:port/openai/v1`) can label an image. LLaVA-1.5
is a single-turn, single-image model served with its training system prompt, so a
request is one user message with exactly one `image_url` part (a `data:` URL, or an
http(s) URL fetched under the same policy as the labeler's sources) and any text parts.
`response_format` `json_schema` (or `json_object`) becomes constrained decoding through
the same engine path as the labeler's JSON tasks; `max_tokens`, `temperature`, `top_p`,
`seed`, `logprobs` map onto the engine request; `temperature` defaults to 0 (greedy, as
LLaVA-1.5 is evaluated) rather than OpenAI's 1. Errors use OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.backend import GenerationOptions, GenerationResult, ServableBackend
from engine.batcher import Overloaded, RequestTimeout
from engine.prompts import IMAGE_TOKEN
from engine.request_errors import ItemErrors, TooManyPixels
from engine.settings import FetchPolicy
from engine.wire import error_text


class ChatModel(Protocol):
    """What the routes need of the served model (the predictor's `LlavaModel` is one)."""

    name: str
    backend: ServableBackend
    fetch_policy: FetchPolicy

    async def run(self, items: Sequence[tuple[GenerationOptions, bytes | str]], *, what: str = ...) -> list[GenerationResult]: ...


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str = Field(min_length=1)
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = "response"
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a "json_schema": {"name": ..., "schema": {...}}')
        return self


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat request that a single-image LLaVA-1.5 can honour; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = None
    tools: list[Any] | None = None


class OpenAIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _unsupported(chat: ChatCompletionRequest) -> None:
    if chat.n != 1:
        raise OpenAIError(400, "n must be 1: one completion per request", param="n")
    if chat.stream:
        raise OpenAIError(400, "streaming is not supported; send stream=false", param="stream")
    if chat.stop:
        raise OpenAIError(400, "stop sequences are not supported", param="stop")
    if chat.top_logprobs:
        raise OpenAIError(400, "top_logprobs is not supported; logprobs=true returns the chosen tokens'", param="top_logprobs")
    if chat.tools:
        raise OpenAIError(400, "tools are not supported by LLaVA-1.5", param="tools")


def _question_and_image(messages: list[Message]) -> tuple[str, str]:
    """The user's text and the one image URL of a single-turn conversation."""
    if any(m.role != "user" for m in messages) or len(messages) != 1:
        raise OpenAIError(
            400,
            "send exactly one user message (LLaVA-1.5 is single-turn and is served with its own system prompt)",
            param="messages",
        )
    content = messages[0].content
    parts = [TextPart(type="text", text=content)] if isinstance(content, str) else (content or [])
    images = [p.image_url.url for p in parts if isinstance(p, ImagePart)]
    if len(images) != 1:
        raise OpenAIError(400, f"the user message needs exactly one image_url part, got {len(images)}", param="messages")
    text = "\n".join(p.text for p in parts if isinstance(p, TextPart)).strip()
    if IMAGE_TOKEN in text:
        raise OpenAIError(400, f"the text may not contain {IMAGE_TOKEN!r}; send the image as an image_url part", param="messages")
    return text, images[0]


def read_chat(chat: ChatCompletionRequest) -> tuple[GenerationOptions, str]:
    """The engine options and the one image URL of a chat request; `OpenAIError` (400) says what is wrong.

    The one mapping from OpenAI's chat request to the engine's, shared by this route and the
    labeler's batch lines (`labeler.openai_batch`)."""
    _unsupported(chat)
    text, url = _question_and_image(chat.messages)
    return _options(chat, text), url


def data_url_bytes(url: str) -> bytes:
    """The bytes of a base64 `data:` URL; `OpenAIError` (400) when it is not one."""
    header, comma, data = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise OpenAIError(400, "image data: URLs must be base64 (data:image/png;base64,...)", param="messages")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(400, "the image data: URL is not valid base64", param="messages") from None


async def _image_bytes(url: str, model: ChatModel) -> bytes:
    if url.startswith("data:"):
        return data_url_bytes(url)
    if url.startswith(("http://", "https://")):
        return await asyncio.to_thread(_fetch, url, model)
    raise OpenAIError(400, "image_url must be a data: URL or an http(s) URL", param="messages")


def _fetch(url: str, model: ChatModel) -> bytes:
    from engine.fetch import FetchError, fetch_bytes

    try:
        return fetch_bytes(url, model.fetch_policy)
    except FetchError as exc:
        raise OpenAIError(400, f"could not fetch the image: {exc}", param="messages") from None


def _options(chat: ChatCompletionRequest, text: str) -> GenerationOptions:
    schema = None
    if chat.response_format is not None and chat.response_format.type == "json_schema":
        schema = chat.response_format.json_schema.json_schema
    elif chat.response_format is not None and chat.response_format.type == "json_object":
        schema = {"type": "object"}
    limit = chat.max_completion_tokens or chat.max_tokens
    try:
        return GenerationOptions(
            task="json" if schema is not None else "caption",
            instruction=text or None,
            schema=schema,
            temperature=chat.temperature if chat.temperature is not None else 0.0,
            top_p=chat.top_p if chat.top_p is not None else 1.0,
            seed=chat.seed,
            **({"max_new_tokens": limit} if limit else {}),
        )
    except ValidationError as exc:
        raise OpenAIError(400, error_text(exc)) from None


def _logprobs(result: GenerationResult, backend: ServableBackend) -> dict[str, list[dict[str, Any]]]:
    pairs = list(zip(result.token_ids, result.token_logprobs))
    if result.finish_reason == "stop":
        pairs = pairs[:-1]  # the end-of-sequence token is not part of the content
    content = []
    for token_id, logprob in pairs:
        token = backend.token_text(token_id)
        content.append({"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []})
    return {"content": content}


def _completion(model: ChatModel, chat: ChatCompletionRequest, options: GenerationOptions, result: GenerationResult) -> dict:
    if result.finish_reason == "error":  # the engine refused the input itself (e.g. an image corrupt past its header)
        raise OpenAIError(400, result.error or "the engine could not use this request")
    if result.error and result.finish_reason != "length":
        raise OpenAIError(422, f"the model's answer does not satisfy the request: {result.error}", code="generation_failed")
    used = model.backend.prompt_tokens(options.prompt)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model.name,
        "system_fingerprint": model.backend.model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": _logprobs(result, model.backend) if chat.logprobs else None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {"prompt_tokens": used, "completion_tokens": result.tokens, "total_tokens": used + result.tokens},
    }


def openai_router(model: ChatModel) -> APIRouter:
    """The routes, bound to the one served model."""
    router = APIRouter(prefix="/openai/v1", tags=["OpenAI"])

    @router.get("/models")
    async def list_models() -> dict:
        card = {"id": model.name, "object": "model", "created": 0, "owned_by": "llava-labeler", "root": model.backend.model_id}
        return {"object": "list", "data": [card]}

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse:
        try:
            try:
                chat = ChatCompletionRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                raise OpenAIError(400, f"invalid request: {error_text(exc)}") from None
            if chat.model != model.name:
                raise OpenAIError(404, f"the model {chat.model!r} does not exist; this server serves {model.name!r}", param="model", code="model_not_found")
            options, url = read_chat(chat)
            image = await _image_bytes(url, model)
            try:
                [result] = await model.run([(options, image)], what="message")
            except ItemErrors as exc:
                raise OpenAIError(400, exc.problems[0][1]) from None
            except TooManyPixels as exc:
                raise OpenAIError(413, str(exc), code="too_many_pixels") from None
            except Overloaded as exc:
                raise OpenAIError(503, str(exc), kind="server_error", code="overloaded") from None
            except RequestTimeout as exc:
                raise OpenAIError(504, str(exc), kind="server_error", code="timeout") from None
            return JSONResponse(_completion(model, chat, options, result))
        except OpenAIError as exc:
            return exc.response()

    return router
