"""The predictor's Prometheus metrics, served on /metrics next to KServe's own.

They live in the default registry because KServe's /metrics route exports exactly that
registry; one module defines them so the server and the batcher cannot drift apart.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "llava_requests",
    "Inference requests answered, by route and HTTP status code.",
    ["route", "code"],
)
LATENCY = Histogram(
    "llava_request_latency_seconds",
    "Wall time from request received to response sent, by route.",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
BATCH_SIZE = Histogram(
    "llava_batch_size",
    "Items per engine call made by the dynamic batcher.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
QUEUE_DEPTH = Gauge("llava_queue_depth", "Items waiting for the engine.")
OOM_HALVINGS = Counter(
    "llava_oom_batch_halvings",
    "Engine batches split in half and run again after running out of memory.",
)
