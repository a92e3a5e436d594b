"""The product's one settings object.

Every part of llava-labeler (engine, labeler, training, ui) reads its configuration
from `get_settings()`: environment variables prefixed `LLAVA_LABELER_`, nested
sections joined with `__` (e.g. `LLAVA_LABELER_FETCH__ALLOW_PRIVATE=true`). It lives
in `engine` because every package depends on engine and engine on nothing of
ours; engine code itself only reads the sections that concern inference.
The defaults are the embedded laptop mode; a cluster only changes URLs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ImageLimits(BaseModel):
    """Limits applied to every image that enters the system."""

    max_pixels: int = Field(default=64_000_000, description="Decompression-bomb guard (width x height).")
    max_bytes: int = Field(default=50 * 1024 * 1024, description="Largest encoded image accepted.")


class FetchPolicy(BaseModel):
    """What URL fetches may reach (sources, the predictor's image_url)."""

    allow_private: bool = Field(
        default=False, description="Allow loopback, link-local and private addresses (off: SSRF guard)."
    )
    max_bytes: int = 50 * 1024 * 1024
    timeout_s: float = 30.0
    allowed_roots: list[Path] = Field(
        default_factory=list, description="Directories local paths in manifests may point into (empty: cwd)."
    )


class EngineSettings(BaseModel):
    """Which model runs and where."""

    model: str = Field(default="build/demo-model", description="Checkpoint dir or hub id (in-process backend).")
    url: str | None = Field(default=None, description="Predictor URL; when set, workers use the remote backend.")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field(default="auto", description="auto | float32 | bfloat16 | float16")
    max_batch_size: int = 16
    max_new_tokens: int = 128


class Settings(BaseSettings):
    """All configuration, read once from the environment."""

    model_config = SettingsConfigDict(env_prefix="LLAVA_LABELER_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("build/data")
    database_url: str = "sqlite:///build/data/labeler.db"
    broker_url: str = "sqla+sqlite:///build/data/broker.db"
    engine: EngineSettings = EngineSettings()
    images: ImageLimits = ImageLimits()
    fetch: FetchPolicy = FetchPolicy()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, read from the environment on first use and then cached."""
    return Settings()
