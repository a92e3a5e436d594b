"""The labeler's sections of the settings: the database and broker, jobs and workers, retrain, roll-out."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from engine.backend import MAX_NEW_TOKENS_LIMIT
from engine.settings import EngineConfig


class LabelerSettings(BaseModel):
    """Jobs, the queue and the workers (labeler/)."""

    batch_size: int = Field(default=32, ge=1, description="Items per Celery task: the batch the engine sees.")
    worker_concurrency: int = Field(
        default=2,
        ge=1,
        description="Batches in flight per worker (one process, one engine): while the engine generates one batch, the next "
        "is claimed and read and the last recorded; with a remote predictor, all go at once and it batches them together.",
    )
    queue: str = Field(default="labeler", description="Celery queue the batches go to.")
    visibility_timeout_s: float = Field(
        default=600.0, gt=0, description="A claimed batch not finished in this time is handed to another worker."
    )
    max_retries: int = Field(default=3, ge=0, description="Retries of a batch on transient engine errors.")
    retry_backoff_s: float = Field(default=2.0, ge=0, description="First retry delay; doubles per retry (max 60 s).")
    max_attempts: int = Field(default=6, ge=1, description="An item claimed this often without finishing fails.")
    max_reask_tokens: int = Field(
        default=1024,
        ge=0,
        le=MAX_NEW_TOKENS_LIMIT,
        description="A JSON answer cut off by max_new_tokens is asked again once with the schema's token bound (else twice "
        "the budget), at most this many tokens (0: never ask again).",
    )
    stale_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A pending item not sent for this long while the queue is empty is sent again (its message was lost); "
        "a job with items pending and no progress for this long shows as stalled.",
    )
    queue_window: int = Field(
        default=512,
        ge=2,
        description="Messages the queue holds ahead of the workers: submit sends the first ones, the sweeper tops the queue "
        "up from the database when half are taken (a million-item job neither waits on its enqueue nor floods the broker).",
    )
    heartbeat_s: float = Field(
        default=5.0, gt=0, description="How often a worker records that it is alive; 3 missed beats: it counts as gone."
    )
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="Worker Prometheus port (0: off).")
    metrics_host: str = Field(default="127.0.0.1", description="Worker metrics bind address (the pod IP in a cluster).")
    review_lease_s: float = Field(default=600.0, gt=0, description="How long a reviewer holds an item.")
    max_manifest_bytes: int = Field(default=1024**3, ge=1, description="Largest manifest fetched from a URL.")


class BenchmarkGate(BaseModel):
    """A paper benchmark the retrain runs on candidate and active model (`llava-labeler benchmark run`)."""

    name: str = Field(description="The benchmark (`llava-labeler benchmark list`): pope, gqa, mme, ...")
    data: Path = Field(description="Its folder in LLaVA's layout (playground/data/eval/<name>).")
    margin: float = Field(
        default=1.0, description="Largest drop allowed, in the benchmark's score (percent; MME: points); below 0: the gain required."
    )
    limit: int | None = Field(default=None, ge=1, description="Ask only the first N questions (a faster gate).")


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
    benchmarks: list[BenchmarkGate] = Field(
        default_factory=list,
        description="Paper benchmarks run on candidate and active model; a candidate that drops any by more than its "
        'margin is rejected. JSON: [{"name": "pope", "data": "/data/eval/pope", "margin": 1.0, "limit": 500}].',
    )


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


class ApiSettings(BaseModel):
    """The OpenAI Files and Batches API over jobs (`llava-labeler api`)."""

    host: str = Field(default="127.0.0.1", description="Bind address; 0.0.0.0 only inside a pod (then an API key is required).")
    port: int = Field(default=8090, ge=0, le=65535, description="HTTP port (0: any free port).")
    api_key: SecretStr | None = Field(
        default=None, description="Bearer token every request must carry; required to bind anything but loopback."
    )
    store: str = Field(
        default="",
        description="Where uploaded files, batch documents, results and data: URL images live: a directory or an fsspec "
        "URL (s3://bucket/prefix, enabled in fetch.object_stores) the workers can read too; empty: data_dir/api.",
    )
    max_request_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1024,
        description="Largest batch file (OpenAI's 200 MB): 400 naming the line; a body over it by more than the form's "
        "framing (64 KiB) is refused unread (413).",
    )
    max_requests: int = Field(default=50_000, ge=1, description="Most requests (lines) in one batch file (OpenAI's 50,000).")


class LabelerConfig(EngineConfig):
    """Everything the labeler reads: its own sections on top of the engine's."""

    data_dir: Path = Field(default=Path("build/data"), description="Exports, model versions and work files.")
    database_url: str = Field(default="sqlite:///build/data/labeler.db", description="SQLAlchemy URL (PostgreSQL in a cluster).")
    broker_url: str = Field(default="sqla+sqlite:///build/data/broker.db", description="Celery broker URL (Redis in a cluster).")
    labeler: LabelerSettings = LabelerSettings()
    retrain: RetrainSettings = RetrainSettings()
    rollout: RolloutSettings = RolloutSettings()
    api: ApiSettings = ApiSettings()
