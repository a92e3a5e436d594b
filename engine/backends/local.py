"""What the backends that run the model here share (transformers in-process, TensorRT-LLM on a GPU).

`LocalBackend` prepares every request the same way — the image loaded within the limits
and padded to a square with the processor's mean colour, the schema compiled to a
grammar matcher, the prompt rendered — fails a request it cannot prepare alone, runs
the rest in chunks of `max_batch_size` through the subclass's `_run` (halving a chunk
that runs out of memory, down to one row), and answers the serving questions of
`ServableBackend` (prompt length, token text) from its tokenizer.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr

from engine.backend import GenerationRequest, GenerationResult, TransientEngineError
from engine.images import ImageError, expand_to_square, load_image, pad_color
from engine.metrics import OOM_HALVINGS
from engine.prompts import IMAGE_TOKEN
from engine.results import result_from_tokens
from engine.settings import ImageLimits
from engine.structured import GrammarCache, SchemaError


@dataclass
class Row:
    """One prepared request of a batch: its position, the padded image and its grammar matcher."""

    index: int
    request: GenerationRequest
    image: Any
    matcher: xgr.GrammarMatcher | None


class LocalBackend(ABC):
    """The shared half of a backend that decodes itself; subclasses implement `_run` (and may group rows)."""

    model_id: str

    def __init__(
        self,
        tokenizer,
        image_processor,
        *,
        image_tokens: int,
        logits_size: int,
        max_batch_size: int = 16,
        image_limits: ImageLimits | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_tokens = image_tokens
        self.max_batch_size = max_batch_size
        self.image_limits = image_limits or ImageLimits()
        self.eos_id: int = tokenizer.eos_token_id
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.grammars = GrammarCache(tokenizer, logits_size)
        self.pad_color = pad_color(image_processor.image_mean)
        special = {tid for tid in tokenizer.all_special_ids if tid != self.eos_id} | {self.image_token_id}
        self.banned = sorted(special | set(range(len(tokenizer), logits_size)))
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order; bad items fail alone, the rest of the batch runs."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[Hashable, list[Row]] = defaultdict(list)
        for index, request in enumerate(requests):
            try:
                groups[self._group(request)].append(self._prepare(index, request))
            except (ImageError, SchemaError, ValueError) as exc:
                results[index] = GenerationResult.failure(str(exc))
        with self._lock:
            for rows in groups.values():
                for start in range(0, len(rows), self.max_batch_size):
                    chunk = rows[start : start + self.max_batch_size]
                    for row, result in zip(chunk, self._run_fitting(chunk), strict=True):
                        results[row.index] = result
        return results  # type: ignore[return-value]

    def check(self, request: GenerationRequest) -> None:
        """Raise `SchemaError` or `ValueError` when `request` cannot run (its image is checked elsewhere)."""
        _ = request.prompt
        if request.json_schema is not None:
            self.grammars.compile(request.json_schema)

    def prompt_tokens(self, prompt: str) -> int:
        """The prompt's length in LLM positions: text tokens, each image token counted as its features."""
        ids = self.tokenizer(prompt, add_special_tokens=True).input_ids
        images = ids.count(self.image_token_id)
        return len(ids) - images + images * self.image_tokens

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _group(self, request: GenerationRequest) -> Hashable:
        """Rows with equal keys may decode in one call (the transformers backend needs equal sampling)."""
        return ()

    def _prepare(self, index: int, request: GenerationRequest) -> Row:
        image = expand_to_square(load_image(request.image, self.image_limits), self.pad_color)
        matcher = self.grammars.matcher(request.json_schema) if request.json_schema is not None else None
        _ = request.prompt  # a request that cannot become a prompt fails here, alone
        return Row(index, request, image, matcher)

    def _run_fitting(self, rows: list[Row]) -> list[GenerationResult]:
        """`_run(rows)`, halving the rows while they run out of memory; a single row that still does fails with the reason.

        Memory depends on the prompts' and answers' lengths, not only on the batch size, so a
        chunk that fits most of the time may not: its halves run one after the other (each
        halving counted in `llava_oom_batch_halvings_total`) instead of failing the whole batch.
        """
        try:
            return self._run(rows)
        except (TransientEngineError, torch.OutOfMemoryError) as exc:
            if not _out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(rows) == 1:
                return [GenerationResult.failure(f"out of memory even with the batch halved down to this item: {exc}")]
            OOM_HALVINGS.inc()
            half = len(rows) // 2
            return self._run_fitting(rows[:half]) + self._run_fitting(rows[half:])

    @abstractmethod
    def _run(self, rows: list[Row]) -> list[GenerationResult]:
        """One result per row, in order: the engine's work for one chunk."""

    def _result(self, request: GenerationRequest, tokens: Sequence[int], logprobs: list[float], prompt_tokens: int) -> GenerationResult:
        """The finished result: the tokens up to where the step control stopped the row."""
        return result_from_tokens(
            request, list(tokens[: len(logprobs)]), logprobs, tokenizer=self.tokenizer, eos_id=self.eos_id, prompt_tokens=prompt_tokens
        )


def _out_of_memory(error: BaseException) -> bool:
    """Whether `error` is, or was raised while handling, torch's out-of-memory error (CPU or GPU)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, torch.OutOfMemoryError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
