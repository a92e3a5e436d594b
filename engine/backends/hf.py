"""The in-process backend: batched LLaVA-1.5 generation with transformers.

One `generate` call takes a whole batch (prepared by `LocalBackend`: images padded to
squares, prompts rendered by `engine.prompts`); rows that share sampling settings decode
together with left padding. The shared `StepControl` plugs into transformers' `generate`
as a logits processor and a stopping criterion: it masks logits with each row's xgrammar
matcher, records the chosen tokens' log-probabilities under the model's own distribution
(the confidence), and stops each row at its own `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from engine.backend import GenerationRequest, GenerationResult, TransientEngineError
from engine.backends.decoding import StepControl
from engine.backends.local import LocalBackend, Row
from engine.model import LoadedModel, load_model
from engine.settings import ImageLimits


class _MaskLogits(LogitsProcessor):
    def __init__(self, control: StepControl):
        self.control = control

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.control.mask(scores)


class _StopRows(StoppingCriteria):
    def __init__(self, control: StepControl):
        self.control = control

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return self.control.accept(input_ids[:, -1].tolist()).to(input_ids.device)


class HFBackend(LocalBackend):
    """LLaVA-1.5 on transformers, in this process (CPU fp32 or CUDA bf16)."""

    def __init__(self, loaded: LoadedModel, *, max_batch_size: int = 16, image_limits: ImageLimits | None = None):
        processor = loaded.processor
        super().__init__(
            loaded.tokenizer,
            processor.image_processor,
            image_tokens=(processor.image_processor.crop_size["height"] // processor.patch_size) ** 2,
            logits_size=loaded.model.get_output_embeddings().weight.shape[0],
            max_batch_size=max_batch_size,
            image_limits=image_limits,
        )
        self.loaded = loaded
        self.model_id = Path(loaded.source).name or loaded.source

    @classmethod
    def load(cls, source: str | Path, *, device: str = "auto", dtype: str = "auto", **kwargs: Any) -> "HFBackend":
        return cls(load_model(source, device=device, dtype=dtype), **kwargs)

    def _group(self, request: GenerationRequest) -> Hashable:
        return (*request.sampling_key, request.seed)

    def _run(self, rows: list[Row]) -> list[GenerationResult]:
        model, processor = self.loaded.model, self.loaded.processor
        prompts = [row.request.prompt for row in rows]
        inputs = processor(text=prompts, images=[row.image for row in rows], padding=True, return_tensors="pt")
        inputs = inputs.to(self.loaded.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        first = rows[0].request
        sample = first.temperature > 0
        control = StepControl([row.matcher for row in rows], [row.request.max_new_tokens for row in rows], self.banned, self.eos_id)
        config = GenerationConfig(
            max_new_tokens=max(row.request.max_new_tokens for row in rows),
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
        lengths = inputs["attention_mask"].sum(dim=1).tolist()  # each row's own prompt, without the padding
        return [self._result(row.request, sequences[i], control.logprobs[i], int(lengths[i])) for i, row in enumerate(rows)]
