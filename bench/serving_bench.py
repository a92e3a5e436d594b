"""Serving benchmark: the predictor under load, dynamic batching on vs off.

1,000 v1 requests (one image each, 16 new tokens) from 16 concurrent clients against
`llava-labeler serve` on 127.0.0.1 with a tiny model built here: throughput, p50/p99
latency and errors, once with dynamic batching (max batch 16) and once without (max
batch 1). Run with `make bench` or `python -m bench.serving_bench`; one run on a shared
machine, so the ratio is the figure to read.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.engine_bench import sample_images
from engine.predictor_process import PredictorProcess
from engine.tiny_model import build_tiny_model

REQUESTS = 1000
CLIENTS = 16
NEW_TOKENS = 16
MODES = {"on (max batch 16, wait 10 ms)": ("16", "10"), "off (max batch 1)": ("1", "0")}


async def load(url: str, images: list[str], total: int = REQUESTS, clients: int = CLIENTS) -> dict[str, float]:
    """Send `total` requests from `clients` concurrent clients; throughput, latency percentiles, errors."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            body = {"instances": [{"image": {"b64": images[i % len(images)]}, "max_new_tokens": NEW_TOKENS}]}
            start = time.perf_counter()
            try:
                response = await http.post("/v1/models/llava:predict", json=body)
                ok = response.status_code == 200 and response.json()["predictions"][0]["tokens"] == NEW_TOKENS
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100)
    return {"rps": total / elapsed, "p50": cuts[49], "p99": cuts[98], "errors": errors, "seconds": elapsed}


def batch_counts(url: str) -> tuple[float, float]:
    """(engine calls, items) so far, from the predictor's batch-size histogram."""
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        for sample in family.samples
    }
    return samples.get("llava_batch_size_count", 0.0), samples.get("llava_batch_size_sum", 0.0)


def main() -> dict:
    console = Console()
    images = [base64.b64encode(data).decode() for data in sample_images(32)]
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        console.print("building a tiny model and starting predictors on 127.0.0.1…")
        model = build_tiny_model(Path(tmp) / "tiny")
        for mode, (batch, wait) in MODES.items():
            with PredictorProcess(model, args=["--max-batch-size", batch, "--max-wait-ms", wait]) as server:
                asyncio.run(load(server.url, images, total=4 * CLIENTS))  # warm-up: first batches are slow
                calls, items = batch_counts(server.url)
                figures[mode] = asyncio.run(load(server.url, images))
                calls_after, items_after = batch_counts(server.url)
                figures[mode]["mean_batch"] = (items_after - items) / max(calls_after - calls, 1)
    on, off = figures.values()
    table = Table(title=f"serving: {REQUESTS} requests, {CLIENTS} clients, tiny LLaVA-1.5 on this CPU (one run)")
    for column in ("dynamic batching", "requests/s", "p50 ms", "p99 ms", "errors", "mean batch"):
        table.add_column(column, justify="right" if column != "dynamic batching" else "left")
    for mode, f in figures.items():
        table.add_row(mode, f"{f['rps']:.1f}", f"{f['p50'] * 1e3:.0f}", f"{f['p99'] * 1e3:.0f}", str(f["errors"]),
                      f"{f['mean_batch']:.1f}")
    table.add_row("on / off", f"{on['rps'] / off['rps']:.1f}x", "", "", "", "")
    console.print(table)
    return {"figures": figures, "speedup": on["rps"] / off["rps"]}


if __name__ == "__main__":
    main()
