"""Engine benchmark: batching throughput and the cost of JSON-schema constraints.

Run with `make bench` (all sections) or `python -m bench.engine_bench`. Figures are
ratios measured in one run on tiny models built here, since the machine is shared.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from engine.backend import GenerationRequest
from engine.backends.hf import HFBackend
from engine.tiny_model import TinySpec, build_tiny_model

# A schema whose answer cannot finish inside the token budget, so constrained and
# unconstrained rows decode the same number of steps and per-token costs compare fairly.
LONG_JSON = {
    "type": "array",
    "minItems": 100,
    "items": {
        "type": "object",
        "properties": {
            "shape": {"enum": ["circle", "square", "triangle", "star"]},
            "color": {"enum": ["red", "green", "blue", "yellow", "purple", "orange"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 4},
            "note": {"type": "string", "maxLength": 16},
        },
        "required": ["shape", "color", "count", "note"],
    },
}


def sample_images(count: int) -> list[bytes]:
    images = []
    for i in range(count):
        image = Image.new("RGB", (96, 72), "white")
        ImageDraw.Draw(image).ellipse((8 + i % 30, 8, 48 + i % 30, 48), fill=((i * 40) % 256, 90, 200))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def timed(backend: HFBackend, requests: list[GenerationRequest], repeats: int) -> tuple[float, int]:
    """Median seconds for one `generate` over the batch, and the tokens it produced."""
    backend.generate(requests[:2])  # warm-up
    times, tokens = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        results = backend.generate(requests)
        times.append(time.perf_counter() - start)
        tokens = sum(r.tokens for r in results)
    return statistics.median(times), tokens


def throughput(backend: HFBackend, images: list[bytes], new_tokens: int) -> dict[int, float]:
    """Images per second at batch sizes 1, 8 and 32 (the same images, the same token budget)."""
    figures = {}
    for batch in (1, 8, 32):
        backend.max_batch_size = batch
        requests = [GenerationRequest(image=img, task="caption", max_new_tokens=new_tokens) for img in images]
        seconds, _ = timed(backend, requests, repeats=1 if batch == 1 else 2)
        figures[batch] = len(requests) / seconds
    return figures


def constraint_cost(backend: HFBackend, images: list[bytes], new_tokens: int, batch: int = 8) -> tuple[float, float]:
    """Seconds per generated token, unconstrained vs constrained, at one batch size."""
    backend.max_batch_size = batch
    plain = [GenerationRequest(image=img, task="caption", max_new_tokens=new_tokens) for img in images[:batch]]
    # Same prompt for both (the caption task): only the constraint differs, not the prompt length.
    constrained = [
        GenerationRequest(image=img, task="caption", schema=LONG_JSON, max_new_tokens=new_tokens) for img in images[:batch]
    ]
    seconds_plain, tokens_plain = timed(backend, plain, repeats=5)
    seconds_json, tokens_json = timed(backend, constrained, repeats=5)
    return seconds_plain / tokens_plain, seconds_json / tokens_json


def main() -> dict:
    console = Console()
    images = sample_images(32)
    with tempfile.TemporaryDirectory() as tmp:
        console.print("building tiny models (1k and 32k vocabularies)…")
        small = HFBackend.load(build_tiny_model(Path(tmp) / "tiny-1k", TinySpec()))
        large = HFBackend.load(build_tiny_model(Path(tmp) / "tiny-32k", TinySpec(vocab_size=32000)))
        rates = throughput(small, images, new_tokens=16)
        costs = {name: constraint_cost(backend, images, new_tokens=48) for name, backend in (("1k", small), ("32k", large))}

    table = Table(title="engine: tiny LLaVA-1.5 on this CPU (one run)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("ratio", justify="right")
    for batch, rate in rates.items():
        table.add_row(f"images/s, batch {batch} (16 new tokens)", f"{rate:.1f}", f"{rate / rates[1]:.1f}x batch 1")
    for name, (plain, constrained) in costs.items():
        table.add_row(f"ms/token unconstrained, batch 8, {name} vocab", f"{plain * 1e3:.3f}", "")
        table.add_row(
            f"ms/token JSON-constrained, batch 8, {name} vocab",
            f"{constrained * 1e3:.3f}",
            f"{(constrained / plain - 1) * 100:+.1f}% vs unconstrained",
        )
    console.print(table)
    return {"images_per_s": rates, "ms_per_token": {k: (p * 1e3, c * 1e3) for k, (p, c) in costs.items()}}


if __name__ == "__main__":
    main()
