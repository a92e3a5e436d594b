"""The predictor's batch wire format, shared by the server and the workers' remote client.

A v1 request is `{"instances": [Instance, ...]}` and its answer `{"predictions": [result,
...]}`, one result per instance, in order; a v2 (Open Inference Protocol) request carries
the same instances as two BYTES tensors, `image` (base64) and `request` (one JSON
`Instance` without its image per item). Both sides build and read instances through the
one pydantic model below, so the client can never send what the server would refuse for
its shape, and a field added here reaches both.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.backend import GenerationOptions, GenerationRequest, GenerationResult

class WireError(ValueError):
    """A request that does not have the wire format's shape; the message names the field."""


class ImageData(BaseModel):
    """An image inline, KServe v1 style: `{"b64": "<base64 of the encoded file>"}`."""

    model_config = ConfigDict(extra="forbid")

    b64: str = Field(min_length=1)

    def decode(self) -> bytes:
        try:
            return base64.b64decode(self.b64, validate=True)
        except (binascii.Error, ValueError):
            raise WireError("image.b64 is not valid base64") from None


class Instance(GenerationOptions):
    """One v1 instance: the image plus its options (the engine's `GenerationOptions`, field for field)."""

    image: ImageData

    @field_validator("image", mode="before")
    @classmethod
    def _image_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError('image must be an object {"b64": "<base64>"}, not a bare string')
        return value


def error_text(exc: ValidationError) -> str:
    """Pydantic's errors as one line a person can act on: `field: problem; field: problem`."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "(body)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def encode_image(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def encode_instance(request: GenerationRequest, image: bytes) -> dict[str, Any]:
    """The v1 instance for `request` whose image file holds `image`."""
    body = request.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude={"image"})
    return {"image": encode_image(image), **body}


def parse_instances(payload: Any, *, max_items: int) -> list[Instance]:
    """The instances of a v1 body; `WireError` naming the first problem when it is not one."""
    if not isinstance(payload, dict):
        hint = " (send it with Content-Type: application/json)" if isinstance(payload, (bytes, str)) else ""
        raise WireError(f'the body must be a JSON object {{"instances": [...]}}, got {type(payload).__name__}{hint}')
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise WireError('the body needs "instances": a non-empty list of objects')
    if len(instances) > max_items:
        raise WireError(f"{len(instances)} instances in one request; the limit is {max_items}")
    parsed = []
    for index, raw in enumerate(instances):
        try:
            parsed.append(Instance.model_validate(raw))
        except ValidationError as exc:
            raise WireError(f"instance {index}: {error_text(exc)}") from None
    return parsed


def parse_options(raw: str | bytes) -> GenerationOptions:
    """One v2 `request` element (JSON text of a `GenerationOptions`)."""
    try:
        return GenerationOptions.model_validate_json(raw)
    except ValidationError as exc:
        raise WireError(error_text(exc)) from None


def result_from_wire(data: dict[str, Any]) -> GenerationResult:
    """A prediction as the server sent it, back into the engine's result type."""
    fields = {name: data[name] for name in GenerationResult.__dataclass_fields__ if name in data}
    return GenerationResult(**fields)
