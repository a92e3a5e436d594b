"""The in-process backend: batched LLaVA-1.5 generation with transformers.

One `generate` call takes a whole batch: images are loaded and padded to squares,
prompts rendered by `engine.prompts`, and rows that share sampling settings decode
together with left padding. A per-row controller (`_RowControl`) plugs into
transformers' `generate` as a logits processor and a stopping criterion: it masks
logits with each row's xgrammar matcher, records the chosen tokens' log-probabilities
under the model's own distribution (the confidence), and stops each row at its own
`max_new_tokens`.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xgrammar as xgr
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from engine.backend import GenerationRequest, GenerationResult, TransientEngineError
from engine.images import ImageError, expand_to_square, load_image, pad_color
from engine.model import LoadedModel, load_model
from engine.results import result_from_tokens
from engine.settings import ImageLimits
from engine.structured import GrammarCache, SchemaError, apply_bitmask

log = logging.getLogger(__name__)



@dataclass
class _Prepared:
    index: int
    request: GenerationRequest
    prompt: str
    image: Any
    matcher: xgr.GrammarMatcher | None


class _RowControl:
    """Per-row state of one decoding call: grammar masks, log-probs, per-row length limits."""

    def __init__(self, rows: list[_Prepared], vocab_size: int, eos_id: int, banned: list[int]):
        self.eos_id = eos_id
        self.matchers = [row.matcher for row in rows]
        self.max_new = [row.request.max_new_tokens for row in rows]
        self.banned = torch.tensor(banned, dtype=torch.long)
        self.logprobs: list[list[float]] = [[] for _ in rows]
        self.finished = torch.zeros(len(rows), dtype=torch.bool)
        self.constrained = [i for i, m in enumerate(self.matchers) if m is not None]
        self.bitmask = xgr.allocate_token_bitmask(len(rows), vocab_size) if self.constrained else None
        self._last_logprobs: torch.Tensor | None = None

    def process(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._last_logprobs = torch.log_softmax(scores.float(), dim=-1)
        scores[:, self.banned.to(scores.device)] = float("-inf")
        live = [i for i in self.constrained if not self.finished[i] and not self.matchers[i].is_terminated()]
        if live:
            for i in live:
                self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
            apply_bitmask(scores, self.bitmask, live)
        return scores

    def record(self, input_ids: torch.LongTensor) -> torch.BoolTensor:
        chosen = input_ids[:, -1].tolist()
        for i, token in enumerate(chosen):
            if self.finished[i]:
                continue
            self.logprobs[i].append(float(self._last_logprobs[i, token]))
            matcher = self.matchers[i]
            if matcher is not None and not matcher.is_terminated() and not matcher.accept_token(token):
                log.warning("grammar rejected token %d on row %d; stopping the row", token, i)
                self.finished[i] = True
            if token == self.eos_id or len(self.logprobs[i]) >= self.max_new[i]:
                self.finished[i] = True
        return self.finished.clone()


class _MaskLogits(LogitsProcessor):
    def __init__(self, control: _RowControl):
        self.control = control

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.control.process(input_ids, scores)


class _StopRows(StoppingCriteria):
    def __init__(self, control: _RowControl):
        self.control = control

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return self.control.record(input_ids).to(input_ids.device)


class HFBackend:
    """LLaVA-1.5 on transformers, in this process (CPU fp32 or CUDA bf16)."""

    def __init__(self, loaded: LoadedModel, *, max_batch_size: int = 16, image_limits: ImageLimits | None = None):
        self.loaded = loaded
        self.model_id = Path(loaded.source).name or loaded.source
        self.max_batch_size = max_batch_size
        self.image_limits = image_limits or ImageLimits()
        tokenizer = loaded.tokenizer
        self.tokenizer = tokenizer
        self.vocab_size = loaded.model.get_output_embeddings().weight.shape[0]
        self.eos_id = tokenizer.eos_token_id
        self.grammars = GrammarCache(tokenizer, self.vocab_size)
        self.pad_color = pad_color(loaded.processor.image_processor.image_mean)
        special = {tid for tid in tokenizer.all_special_ids if tid != self.eos_id}
        special.add(loaded.model.config.image_token_index)
        self.banned = sorted(special | set(range(len(tokenizer), self.vocab_size)))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, source: str | Path, *, device: str = "auto", dtype: str = "auto", **kwargs: Any) -> "HFBackend":
        return cls(load_model(source, device=device, dtype=dtype), **kwargs)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order; bad items fail alone, the rest of the batch runs."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple, list[_Prepared]] = defaultdict(list)
        for index, request in enumerate(requests):
            try:
                groups[(*request.sampling_key, request.seed)].append(self._prepare(index, request))
            except (ImageError, SchemaError, ValueError) as exc:
                results[index] = GenerationResult.failure(str(exc))
        with self._lock:
            for rows in groups.values():
                for start in range(0, len(rows), self.max_batch_size):
                    chunk = rows[start : start + self.max_batch_size]
                    for row, result in zip(chunk, self._run(chunk)):
                        results[row.index] = result
        return results  # type: ignore[return-value]

    def _prepare(self, index: int, request: GenerationRequest) -> _Prepared:
        image = expand_to_square(load_image(request.image, self.image_limits), self.pad_color)
        matcher = self.grammars.matcher(request.schema) if request.schema is not None else None
        return _Prepared(index=index, request=request, prompt=request.prompt, image=image, matcher=matcher)

    def _run(self, rows: list[_Prepared]) -> list[GenerationResult]:
        model, processor = self.loaded.model, self.loaded.processor
        inputs = processor(text=[r.prompt for r in rows], images=[r.image for r in rows], padding=True, return_tensors="pt")
        inputs = inputs.to(self.loaded.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        first = rows[0].request
        sample = first.temperature > 0
        control = _RowControl(rows, self.vocab_size, self.eos_id, self.banned)
        config = GenerationConfig(
            max_new_tokens=max(r.request.max_new_tokens for r in rows),
            do_sample=sample,
            temperature=first.temperature if sample else None,
            top_p=first.top_p if sample else None,
            top_k=0 if sample else None,
            eos_token_id=self.eos_id,
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,
        )
        if first.seed is not None:
            torch.manual_seed(first.seed)
        try:
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([_MaskLogits(control)]),
                    stopping_criteria=StoppingCriteriaList([_StopRows(control)]),
                )
        except torch.OutOfMemoryError as exc:
            raise TransientEngineError(f"out of memory generating a batch of {len(rows)}: {exc}") from None
        sequences = output.sequences[:, prompt_len:].tolist()
        return [self._result(row, sequences[i], control.logprobs[i]) for i, row in enumerate(rows)]

    def _result(self, row: _Prepared, sequence: list[int], logprobs: list[float]) -> GenerationResult:
        tokens = sequence[: len(logprobs)]
        return result_from_tokens(row.request, tokens, logprobs, tokenizer=self.tokenizer, eos_id=self.eos_id)
