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
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
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
        default_factory=list,
        description="Directories local paths in manifests may point into (empty: the manifest's own directory).",
    )


class EngineSettings(BaseModel):
    """Which model runs and where."""

    model: str = Field(default="build/demo-model", description="Checkpoint dir or hub id (in-process backend).")
    url: str | None = Field(default=None, description="Predictor URL; when set, workers use the remote backend.")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field(default="auto", description="auto | float32 | bfloat16 | float16")
    max_batch_size: int = 16
    max_new_tokens: int = 128


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
    client_timeout_s: float = Field(default=600.0, gt=0, description="Remote client: read timeout per call.")
    client_retries: int = Field(default=4, ge=0, description="Remote client: retries on connection errors, 5xx, 429.")
    client_backoff_s: float = Field(default=0.5, ge=0, description="Remote client: base of the jittered backoff.")


class LabelerSettings(BaseModel):
    """Jobs, the queue and the workers (labeler/)."""

    batch_size: int = Field(default=32, ge=1, description="Items per Celery task: the batch the engine sees.")
    worker_concurrency: int = Field(default=1, ge=1, description="Worker processes per `worker`, each with its own engine.")
    queue: str = Field(default="labeler", description="Celery queue the batches go to.")
    visibility_timeout_s: float = Field(
        default=600.0, gt=0, description="A claimed batch not finished in this time is handed to another worker."
    )
    max_retries: int = Field(default=3, ge=0, description="Retries of a batch on transient engine errors.")
    retry_backoff_s: float = Field(default=2.0, ge=0, description="First retry delay; doubles per retry (max 60 s).")
    max_attempts: int = Field(default=6, ge=1, description="An item claimed this often without finishing fails.")
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="Worker Prometheus port (0: off).")
    review_lease_s: float = Field(default=600.0, gt=0, description="How long a reviewer holds an item.")
    max_manifest_bytes: int = Field(default=1024**3, ge=1, description="Largest manifest fetched from a URL.")


class UISettings(BaseModel):
    """The review console (`llava-labeler ui`): where it listens and who may use it."""

    host: str = Field(default="127.0.0.1", description="Bind address; anything but loopback needs auth.")
    port: int = Field(default=8501, ge=1, le=65535, description="HTTP port.")
    auth: Literal["none", "password", "oidc"] = Field(
        default="none", description="none (loopback only) | password (shared secret) | oidc (st.login, [auth] in secrets.toml)."
    )
    password: SecretStr | None = Field(default=None, description="The shared password when auth is `password`.")


class RetrainSettings(BaseModel):
    """The retrain step (`llava-labeler retrain`): when to train, on what, and when a candidate wins."""

    min_reviews: int = Field(default=50, ge=1, description="Fewer new accepted/edited reviews than this: nothing to do.")
    margin: float = Field(
        default=0.01, ge=-1.0, le=1.0, description="Promote only when candidate score - active score >= this."
    )
    holdout_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="Share of reviewed records held out to evaluate.")
    seed: int = Field(default=0, description="Same seed, same held-out slice and replay sample.")
    replay_file: Path | None = Field(default=None, description="Earlier training data (LLaVA JSON or JSONL) to mix in.")
    replay_images: Path | None = Field(default=None, description="Directory the replay records' image paths are relative to.")
    replay_count: int = Field(default=0, ge=0, description="Replay records mixed in (0: none).")
    lora: bool = Field(default=True, description="Finetune with LoRA (off, or `retrain --full`: all LLM weights).")
    max_steps: int = Field(default=-1, description="Optimizer steps (-1: one epoch decides).")
    epochs: float = Field(default=1.0, gt=0.0)
    learning_rate: float | None = Field(default=None, description="None: the paper's rate for LoRA or full finetuning.")
    batch_size: int | None = Field(default=None, ge=1, description="Global batch (None: the paper's 128).")
    extra_train_args: list[str] = Field(default_factory=list, description="More `llava-labeler train` options, as is.")
    eval_batch_size: int = Field(default=32, ge=1)
    lock_ttl_s: float = Field(default=600.0, gt=0, description="A lock not renewed this long is free (a crashed retrain).")


class RolloutSettings(BaseModel):
    """Where a promoted model goes: the KServe InferenceService in a cluster, nothing to patch embedded."""

    inference_service: str = Field(default="", description="InferenceService to patch (empty: embedded mode).")
    namespace: str = Field(default="default", description="Its namespace.")
    model_store_uri: str = Field(
        default="", description="Storage URI the predictor downloads versions from (e.g. pvc://models/llava)."
    )
    model_store_path: Path | None = Field(
        default=None,
        description="Local mount of model_store_uri; versions are written here. Unset with a store URI: versions are "
        "uploaded to it with fsspec (s3://, gs://, ...); unset without one: data_dir/models.",
    )
    canary_traffic_percent: int | None = Field(
        default=None, ge=0, le=100, description="Send this share to the new model first; promote once it is ready."
    )
    engine_build: bool = Field(
        default=False, description="Compile a promoted checkpoint (`engine build`) before the roll-out: a TensorRT-LLM predictor."
    )
    engine_build_args: list[str] = Field(default_factory=list, description="More `llava-labeler engine build` options, as is.")
    ready_timeout_s: float = Field(default=1800.0, gt=0, description="How long a new revision may take to become ready.")
    poll_s: float = Field(default=10.0, gt=0, description="How often the InferenceService's status is read.")


class Settings(BaseSettings):
    """All configuration, read once from the environment."""

    model_config = SettingsConfigDict(env_prefix="LLAVA_LABELER_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("build/data")
    database_url: str = "sqlite:///build/data/labeler.db"
    broker_url: str = "sqla+sqlite:///build/data/broker.db"
    engine: EngineSettings = EngineSettings()
    images: ImageLimits = ImageLimits()
    fetch: FetchPolicy = FetchPolicy()
    serving: ServingSettings = ServingSettings()
    labeler: LabelerSettings = LabelerSettings()
    ui: UISettings = UISettings()
    retrain: RetrainSettings = RetrainSettings()
    rollout: RolloutSettings = RolloutSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, read from the environment on first use and then cached."""
    return Settings()
