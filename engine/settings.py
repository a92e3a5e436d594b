"""The engine's sections of the settings: the model and where it runs, image limits, fetches, serving.

Each package owns its sections (`labeler.settings`, `ui.settings` build on these); the
composition root (`entrypoints.settings`) assembles them into the one settings object,
read once from `LLAVA_LABELER_*` environment variables. Engine code is handed the
sections it needs and never reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class ImageLimits(BaseModel):
    """Limits applied to every image that enters the system."""

    max_pixels: int = Field(default=40_000_000, ge=1, description="Decompression-bomb guard (width x height).")
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1, description="Largest encoded image accepted.")
    max_request_pixels: int = Field(
        default=160_000_000, ge=1, description="Most pixels (width x height, summed) one predictor request may carry (413)."
    )
    reduce_above: int = Field(
        default=2048,
        ge=336,
        description="An image whose longer side is over this is reduced to it as it is decoded (the model sees 336 px).",
    )


class FetchPolicy(BaseModel):
    """What URL fetches may reach (sources, the predictor's image_url)."""

    allow_private: bool = Field(
        default=False, description="Allow loopback, link-local and private addresses (off: SSRF guard)."
    )
    max_bytes: int = 50 * 1024 * 1024
    timeout_s: float = 30.0
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Directories local paths in manifests may point into (empty: the manifest's own directory).",
    )
    object_stores: list[Literal["s3", "gs", "az", "memory"]] = Field(
        default_factory=list,
        description="Object-store schemes sources may name (s3, gs, az; memory: in-process, for tests); none by default.",
    )


class EngineSettings(BaseModel):
    """Which model runs and where."""

    model: str = Field(
        default="training/demo_model", description="Checkpoint dir or hub id (in-process backend); default: the shipped demo model."
    )
    url: str | None = Field(default=None, description="Predictor URL; when set, workers use the remote backend.")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field(default="auto", description="auto | float32 | bfloat16 | float16")
    max_batch_size: int = 16


class ServingSettings(BaseModel):
    """The predictor server (`llava-labeler serve`) and the workers' remote client that calls it."""

    host: str = Field(default="127.0.0.1", description="Bind address; 0.0.0.0 only inside a pod.")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: any free port).")
    model_name: str = Field(default="llava", description="The name in /v1/models/{name} and the OpenAI `model`.")
    max_batch_size: int = Field(default=16, ge=1, description="Most items one engine call takes (1: no batching).")
    max_wait_ms: float = Field(default=10.0, ge=0, description="How long a batch waits to fill after its first item.")
    max_queue: int = Field(default=1024, ge=1, description="Items waiting beyond this are refused with 503.")
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Largest request body (413).")
    max_items_per_request: int = Field(default=256, ge=1, description="Most instances in one v1/v2 request.")
    request_timeout_s: float = Field(default=300.0, gt=0, description="Per-request limit on the server (504).")
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer token every request but the health probes must carry (and the workers send); "
        "required to bind anything but loopback.",
    )
    client_timeout_s: float = Field(default=600.0, gt=0, description="Remote client: read timeout per call.")
    client_retries: int = Field(default=4, ge=0, description="Remote client: retries on connection errors, 5xx, 429.")
    client_backoff_s: float = Field(default=0.5, ge=0, description="Remote client: base of the jittered backoff.")


class EngineConfig(BaseModel):
    """The engine's sections of the settings: what every inference path needs (workers, predictor, eval)."""

    engine: EngineSettings = EngineSettings()
    images: ImageLimits = ImageLimits()
    fetch: FetchPolicy = FetchPolicy()
    serving: ServingSettings = ServingSettings()
