"""Engine benchmark at LLaVA-1.5-7B's published widths: throughput, prefill vs decode, JSON cost, peak memory.

The tiny model's rows (`bench.engine_bench`) compare configurations; these give the costs a
user's images meet: CLIP ViT-L/14 at 336 px (1024 wide, 576 image tokens), a Llama 4096 wide
with 32 heads and an 11008 MLP, the real LLaMA tokenizer and 32064 embedding rows. The model has
one text and one vision layer, since a 32-layer 7B does not fit a CPU bench run; the per-layer
costs scale with depth. Run with `make bench` or `python -m bench.real_geometry_bench`: one run,
in this process, on the CPU. Peak memory is the process's high-water mark (Linux `VmHWM`).
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console
from rich.table import Table

from bench.engine_bench import LONG_JSON, sample_images, timed
from engine.backend import GenerationRequest
from engine.backends.hf import HFBackend
from engine.llama_tokenizer import fetch_llama_tokenizer
from engine.tiny_model import TinySpec, build_tiny_model, real_geometry
from training.world import shapes_schema

TOKENIZER_CACHE = Path(__file__).resolve().parents[1] / "build" / "llama-tokenizer"
BATCHES = (1, 8, 32)
REPEATS = {1: 3, 8: 1, 32: 1}  # timed runs (median); a batch of 8 or 32 prefills for minutes here, so one run
# Both tasks decode this many tokens at most, so their rates compare. A shapes JSON answer takes
# about 55 LLaMA tokens and is cut off: a short budget keeps the run within minutes.
NEW_TOKENS = 32
CONSTRAINT_BATCH = 8  # where LONG_JSON (which cannot finish) runs against the same caption prompt
# Photo sizes, most not square, so the padding to a square runs as it does on users' images.
PHOTO_SIZES = ((500, 375), (336, 336), (375, 500), (640, 427), (448, 336))
TASKS = {"caption": ("caption", None), "json": ("json", shapes_schema())}


def photos(count: int) -> list[bytes]:
    """`sample_images` scaled to photo sizes, with sensor-like noise, as JPEG."""
    out = []
    for i, data in enumerate(sample_images(count)):
        size = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        image = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        image = Image.blend(image, Image.effect_noise(size, 32).convert("RGB"), 0.15)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (`VmRSS`, `VmHWM`), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark reads Linux's process memory figures")


def reset_peak() -> None:
    """Reset the process's high-water mark (`VmHWM`) to its current resident size (Linux `clear_refs` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def ask(images: list[bytes], task: str, schema: dict | None, new_tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest(image=img, task=task, schema=schema, max_new_tokens=new_tokens) for img in images]


@dataclass
class Call:
    """One generate call as the hooks saw it: when the vision tower started, then each forward's start and end."""

    began: float
    forwards: list[tuple[float, float]] = field(default_factory=list)

    @property
    def prefill_s(self) -> float:
        """From the vision tower's start to the end of the first forward: the image and the whole prompt."""
        return self.forwards[0][1] - self.began

    @property
    def outside_ms_per_step(self) -> float:
        """Time between the decode forwards, per step: logits processing (the JSON masks), sampling, stopping."""
        decode = self.forwards[-1][1] - self.forwards[0][1]
        inside = sum(end - start for start, end in self.forwards[1:])
        return (decode - inside) / (len(self.forwards) - 1) * 1e3


class StepClock:
    """Hooks on the model that record every generate call (`Call`), so one run splits into its parts.

    No second, prefill-only run is needed (a batch of 32 prefills for minutes on this CPU).
    The vision tower starts every call whether transformers runs it inside the first forward
    (4.x) or just before it (5.x).
    """

    def __init__(self, model: Any) -> None:
        self.calls: list[Call] = []
        self._forward_began = 0.0
        model.base_model.vision_tower.register_forward_pre_hook(self._start_call)
        model.register_forward_pre_hook(self._start_forward)
        model.register_forward_hook(self._end_forward)

    def _start_call(self, module: Any, args: tuple) -> None:
        self.calls.append(Call(time.perf_counter()))

    def _start_forward(self, module: Any, args: tuple) -> None:
        self._forward_began = time.perf_counter()

    def _end_forward(self, module: Any, args: tuple, output: Any) -> None:
        self.calls[-1].forwards.append((self._forward_began, time.perf_counter()))


def measure(backend: HFBackend, clock: StepClock, requests: list[GenerationRequest], repeats: int) -> dict[str, float]:
    """Images/s of one batch, its prefill, its decode per token after each row's first, its work outside the model."""
    clock.calls.clear()
    total, tokens = timed(backend, requests, repeats)
    calls = clock.calls[1:]  # the first is timed's warm-up
    prefill = statistics.median(call.prefill_s for call in calls)
    rows = len(requests)
    return {
        "images_per_s": rows / total,
        "prefill_s": prefill,
        "prefill_share": prefill / total,
        "decode_ms_per_token": (total - prefill) / (tokens - rows) * 1e3,
        "outside_ms_per_step": statistics.median(call.outside_ms_per_step for call in calls),
        "tokens_per_image": tokens / rows,
    }


def measure_batch(backend: HFBackend, clock: StepClock, images: list[bytes], batch: int) -> dict[str, Any]:
    """Every task's figures at one batch size, and the process's peak memory over them."""
    backend.max_batch_size = batch
    tasks = TASKS
    if batch == CONSTRAINT_BATCH:  # LONG_JSON right after the plain captions, so the pair runs under the same load
        tasks = {"caption": TASKS["caption"], "long_json": ("caption", LONG_JSON), "json": TASKS["json"]}
    reset_peak()
    figures: dict[str, Any] = {
        name: measure(backend, clock, ask(images[:batch], task, schema, NEW_TOKENS), REPEATS[batch])
        for name, (task, schema) in tasks.items()
    }
    figures["peak_mb"] = status_mb("VmHWM")
    return figures


def render(spec: TinySpec, results: dict[str, Any]) -> Table:
    """The figures as one table, the two tasks side by side (the model's real widths in the title)."""
    table = Table(
        title=f"engine at the llava-1.5-7b geometry ({spec.text_hidden}-wide Llama, {spec.vision_hidden}-wide CLIP, "
        f"{spec.image_tokens} image tokens, real tokenizer) with {spec.text_layers} text + {spec.vision_layers} vision "
        "layer, on this CPU (one run)"
    )
    for column in ("measure", "captions", "JSON (shapes schema)", "note"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    lengths, batches = results["prompt_tokens"], results["batches"]
    table.add_row("prompt, tokens", str(lengths["caption"]), str(lengths["json"]), f"{NEW_TOKENS} new tokens at most")
    first = batches[BATCHES[0]]
    for batch, row in batches.items():
        cap, js = row["caption"]["images_per_s"], row["json"]["images_per_s"]
        speedup = f"{cap / first['caption']['images_per_s']:.1f}x / {js / first['json']['images_per_s']:.1f}x batch 1"
        table.add_row(f"images/s, batch {batch}", f"{cap:.3f}", f"{js:.3f}", speedup)
    for batch, row in batches.items():
        cap, js = row["caption"], row["json"]
        share = f"{cap['prefill_share']:.0%} / {js['prefill_share']:.0%} of the time"
        table.add_row(f"prefill s, batch {batch}", f"{cap['prefill_s']:.2f}", f"{js['prefill_s']:.2f}", share)
    for batch, row in batches.items():
        cap, js = row["caption"], row["json"]
        step = f"{cap['decode_ms_per_token'] * batch:.0f} / {js['decode_ms_per_token'] * batch:.0f} ms a step"
        table.add_row(f"decode ms/token, batch {batch}", f"{cap['decode_ms_per_token']:.1f}", f"{js['decode_ms_per_token']:.1f}", step)
    model_mb = results["model_rss_mb"]
    for batch, row in batches.items():
        peak = row["peak_mb"]
        table.add_row(f"peak memory, batch {batch}", f"{peak:,.0f} MB", "", f"+{peak - model_mb:,.0f} MB over the loaded model")
    plain, constrained = (batches[CONSTRAINT_BATCH][name] for name in ("caption", "long_json"))
    extra = constrained["outside_ms_per_step"] - plain["outside_ms_per_step"]
    step = plain["decode_ms_per_token"] * CONSTRAINT_BATCH
    table.add_row(
        f"JSON constraint, batch {CONSTRAINT_BATCH}: ms a step outside the model",
        f"{plain['outside_ms_per_step']:.1f}", f"{constrained['outside_ms_per_step']:.1f}",
        f"+{extra:.1f} ms = {extra / step * 100:+.1f}% of a {step:.0f} ms step (target <= +5%)",
    )  # fmt: skip
    table.add_row(
        f"JSON constraint, batch {CONSTRAINT_BATCH}: decode ms/token (whole step)",
        f"{plain['decode_ms_per_token']:.1f}", f"{constrained['decode_ms_per_token']:.1f}",
        f"{(constrained['decode_ms_per_token'] / plain['decode_ms_per_token'] - 1) * 100:+.1f}% (load noise included)",
    )  # fmt: skip
    return table


def main(spec: TinySpec | None = None) -> dict[str, Any]:
    """Build the model (default: llava-1.5-7b's widths, one layer each), measure, print the table, return the figures."""
    spec = spec or real_geometry("llava-1.5-7b", text_layers=1, vision_layers=1)
    console = Console()
    images = photos(max(BATCHES))
    with tempfile.TemporaryDirectory() as tmp:
        console.print(f"building a random LLaVA-1.5 at the llava-1.5-7b geometry ({spec.text_hidden} wide)…")
        path = build_tiny_model(Path(tmp) / "real-geometry", spec, tokenizer_dir=fetch_llama_tokenizer(TOKENIZER_CACHE))
        backend = HFBackend.load(path)
    backend.generate(ask(images[:1], "caption", None, 1))  # touches every weight: the loaded model's resident size
    clock = StepClock(backend.loaded.model)
    results: dict[str, Any] = {
        "model_rss_mb": status_mb("VmRSS"),
        "prompt_tokens": {name: backend.prompt_tokens(ask(images[:1], *task, 1)[0].prompt) for name, task in TASKS.items()},
        "batches": {batch: measure_batch(backend, clock, images, batch) for batch in BATCHES},
    }
    console.print(render(spec, results))
    return results


if __name__ == "__main__":
    main()
