"""The TensorRT-LLM backend (GPU only): a thin adapter over TensorRT-LLM 1.2's TensorRT engine path.

Everything that decides *what* the model sees and *what counts as an answer* is the
project's own and shared with the transformers backend: prompts (`GenerationRequest.prompt`,
engine.prompts), image loading and `pad` preprocessing (engine.images + the checkpoint's
image processor), JSON-schema constraints (engine.structured's xgrammar cache) and the
finished result (engine.results). TensorRT-LLM only runs the two engines built by
`llava-labeler engine build`, through an `EngineRunner`:

- `encode_images`: the visual engine (CLIP tower + projector) turns pixels into 576
  feature rows per image;
- `decode`: the LLM engine runs one request per row on the C++ executor, the image
  features entering as the row's prompt table (the prompt's `<image>` token is replaced by
  fake ids `vocab_size .. vocab_size+575` pointing into it, as MultimodalModelRunner does
  in its C++ session), and every decoding step calls the row's `RowHook` as a logits
  post-processor: it records the model's own log-probabilities (the confidence), bans
  special tokens, and masks the logits with the row's xgrammar matcher.

`TensorRTRunner` is the real runner; it imports tensorrt_llm only when built, so this
module loads (and its non-TensorRT parts are tested) on machines without it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import xgrammar as xgr

from engine.backend import EngineError, GenerationResult, TransientEngineError
from engine.backends.decoding import StepControl
from engine.backends.local import LocalBackend, Row
from engine.prompts import IMAGE_TOKEN
from engine.settings import ImageLimits

POST_PROCESSOR = "llava_labeler_row_hook"


class RowHook:
    """One row's decoding control for TensorRT-LLM, called once per step with that step's logits (in place).

    The engine calls it per row and per step with the sequence so far, so it first accepts
    the token chosen since its last call, then masks this step: the shared `StepControl`
    of one row, so the answer means what it means on the transformers backend.
    """

    def __init__(self, matcher: xgr.GrammarMatcher | None, banned: Sequence[int], prompt_len: int, *, eos_id: int, max_new_tokens: int) -> None:
        self.control = StepControl([matcher], [max_new_tokens], banned, eos_id)
        self.prompt_len = prompt_len

    @property
    def logprobs(self) -> list[float]:
        return self.control.logprobs[0]

    def __call__(self, logits: torch.Tensor, sequence: Sequence[int]) -> None:
        """`logits`: this step's 1-D scores (modified in place); `sequence`: prompt plus tokens so far."""
        self._catch_up(sequence[self.prompt_len :])
        self.control.mask(logits.view(1, -1))

    def finish(self, generated: Sequence[int]) -> list[float]:
        """The log-probability of every accepted token (the last one's step has no later call)."""
        self._catch_up(generated)
        return self.logprobs

    def _catch_up(self, generated: Sequence[int]) -> None:
        for token in generated[len(self.logprobs) :]:
            if self.control.finished[0]:
                return
            self.control.accept([int(token)])


@dataclass
class EngineRow:
    """One request as the LLM engine takes it."""

    input_ids: list[int]
    image_features: torch.Tensor
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    hook: RowHook


class EngineRunner(Protocol):
    """What the adapter needs from TensorRT-LLM; `TensorRTRunner` is the real one."""

    vocab_size: int  # the LLM's vocabulary: prompt-table (image) ids start here
    logits_size: int  # width of the logits (the vocabulary padded for the engine)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[batch, 3, H, W] pixels -> [batch, image_tokens, hidden] projected features."""
        ...

    def decode(self, rows: list[EngineRow]) -> list[list[int]]:
        """Each row's generated tokens (end-of-sequence included when reached), calling `row.hook` every step."""
        ...


class TRTLLMBackend(LocalBackend):
    """LLaVA-1.5 on TensorRT-LLM engines, with the transformers backend's prompts, pixels and constraints."""

    def __init__(
        self,
        runner: EngineRunner,
        processor,
        *,
        model_id: str,
        image_tokens: int,
        max_batch_size: int = 16,
        image_limits: ImageLimits | None = None,
    ) -> None:
        super().__init__(
            processor.tokenizer,
            processor.image_processor,
            image_tokens=image_tokens,
            logits_size=runner.logits_size,
            max_batch_size=max_batch_size,
            image_limits=image_limits,
        )
        self.runner = runner
        self.model_id = model_id

    @classmethod
    def load(cls, engine_dir: str | Path, **kwargs: Any) -> "TRTLLMBackend":
        """The engines and processor written by `llava-labeler engine build` (`llm/`, `vision/`, `hf/`)."""
        from transformers import AutoProcessor

        from engine.trtllm_build import BuildError, llava_image_tokens

        root = Path(engine_dir)
        missing = [name for name in ("llm", "vision", "hf") if not (root / name).is_dir()]
        if missing:
            raise EngineError(f"{root} is not an `engine build` output: missing {', '.join(missing)}/")
        try:
            image_tokens = llava_image_tokens(root / "hf")
        except BuildError as exc:
            raise EngineError(str(exc)) from None
        processor = AutoProcessor.from_pretrained(root / "hf")
        return cls(TensorRTRunner(root), processor, model_id=root.name, image_tokens=image_tokens, **kwargs)

    def _run(self, rows: list[Row]) -> list[GenerationResult]:
        pixels = self.image_processor(images=[row.image for row in rows], return_tensors="pt")["pixel_values"]
        try:
            features = self.runner.encode_images(pixels)
            engine_rows = [self._engine_row(row, features[i]) for i, row in enumerate(rows)]
            outputs = self.runner.decode(engine_rows)
        except torch.OutOfMemoryError as exc:
            raise TransientEngineError(f"out of memory generating a batch of {len(rows)}: {exc}") from None
        return [
            self._result(row.request, tokens, engine_row.hook.finish(tokens), len(engine_row.input_ids))
            for row, engine_row, tokens in zip(rows, engine_rows, outputs, strict=True)
        ]

    def _engine_row(self, row: Row, features: torch.Tensor) -> EngineRow:
        """The prompt tokenized whole (as the transformers processor does), its image token replaced by fake ids."""
        ids = self.tokenizer(row.request.prompt, add_special_tokens=True).input_ids
        if ids.count(self.image_token_id) != 1:
            raise EngineError(f"the prompt must hold exactly one {IMAGE_TOKEN} token, found {ids.count(self.image_token_id)}")
        at = ids.index(self.image_token_id)
        fake = list(range(self.runner.vocab_size, self.runner.vocab_size + features.shape[0]))
        input_ids = ids[:at] + fake + ids[at + 1 :]
        request = row.request
        return EngineRow(
            input_ids=input_ids,
            image_features=features,
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            hook=RowHook(row.matcher, self.banned, len(input_ids), eos_id=self.eos_id, max_new_tokens=request.max_new_tokens),
        )


class TensorRTRunner:
    """The real `EngineRunner`: TensorRT-LLM 1.2's MultimodalModelRunner (visual engine, C++ LLM executor).

    MultimodalModelRunner loads the visual engine and tokenizer/processor and would build
    the LLM's `ModelRunnerCpp` without logits post-processors; `init_llm` is replaced to
    register ours. Requests go straight to the executor so each carries its own prompt
    table, sampling settings and post-processor, and responses are matched by request id.
    """

    def __init__(self, engine_dir: Path, *, kv_cache_fraction: float = 0.85) -> None:
        try:
            import tensorrt_llm
            from tensorrt_llm.bindings import executor as trtllm
            from tensorrt_llm.runtime import ModelRunnerCpp, MultimodalModelRunner
        except ImportError:
            raise EngineError(
                "the trtllm backend needs tensorrt-llm==1.2.* on a GPU machine (NVIDIA's TensorRT-LLM release image)"
            ) from None
        self._trtllm = trtllm
        self._hooks: dict[int, RowHook] = {}
        self._hooks_lock = threading.Lock()
        post_process = self._post_process

        class _Runner(MultimodalModelRunner):
            def init_llm(inner) -> None:  # noqa: N805 - the runner's own self
                inner.model = ModelRunnerCpp.from_dir(
                    inner.llm_engine_dir,
                    rank=tensorrt_llm.mpi_rank(),
                    kv_cache_free_gpu_memory_fraction=kv_cache_fraction,
                    logits_processor_map={POST_PROCESSOR: post_process},
                )
                inner.model_config = inner.model.model_config
                inner.runtime_mapping = inner.model.mapping

        self.mm = _Runner(_runner_args(engine_dir, kv_cache_fraction))
        if self.mm.model_type != "llava":
            raise EngineError(f"{engine_dir}/vision holds a {self.mm.model_type!r} engine; expected llava")
        self.executor = self.mm.model.session
        self.vocab_size = self.mm.model.vocab_size
        self.logits_size = self.mm.model.vocab_size_padded
        self.dtype = self.mm.model.dtype

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features, _ = self.mm.get_visual_features(pixel_values.to(self.mm.device), {})
        return features

    def decode(self, rows: list[EngineRow]) -> list[list[int]]:
        trtllm = self._trtllm
        requests = [
            trtllm.Request(
                input_token_ids=row.input_ids,
                max_tokens=row.max_new_tokens,
                end_id=self.mm.tokenizer.eos_token_id,
                pad_id=self.mm.tokenizer.pad_token_id or self.mm.tokenizer.eos_token_id,
                sampling_config=_sampling(trtllm, row),
                output_config=trtllm.OutputConfig(exclude_input_from_output=True),
                prompt_tuning_config=trtllm.PromptTuningConfig(
                    embedding_table=row.image_features.to(device=self.mm.device, dtype=self.dtype)
                ),
                logits_post_processor_name=POST_PROCESSOR,
            )
            for row in rows
        ]
        with self._hooks_lock:  # the executor thread waits here until every id has its hook
            ids = self.executor.enqueue_requests(requests)
            self._hooks.update(zip(ids, (row.hook for row in rows)))
        outputs: dict[int, list[int]] = {}
        try:
            while len(outputs) < len(ids):
                for response in self.executor.await_responses():
                    if response.has_error():
                        raise TransientEngineError(f"TensorRT-LLM request {response.request_id}: {response.error_msg}")
                    if response.result.is_final:
                        outputs[response.request_id] = list(response.result.output_token_ids[0])
        finally:
            with self._hooks_lock:
                for request_id in ids:
                    self._hooks.pop(request_id, None)
        return [outputs[request_id] for request_id in ids]

    def _post_process(self, req_id: int, logits: torch.Tensor, token_ids: list[list[int]], stream_ptr: int, client_id) -> None:
        with self._hooks_lock:
            hook = self._hooks.get(req_id)
        if hook is None:
            return
        stream = torch.cuda.ExternalStream(stream_ptr) if stream_ptr else None
        with torch.cuda.stream(stream):
            hook(logits.view(-1, logits.shape[-1])[0], token_ids[0])


def _sampling(trtllm, row: EngineRow):
    if row.temperature > 0:
        return trtllm.SamplingConfig(beam_width=1, temperature=row.temperature, top_p=row.top_p, seed=row.seed)
    return trtllm.SamplingConfig(beam_width=1, top_k=1, seed=row.seed)


def _runner_args(engine_dir: Path, kv_cache_fraction: float) -> argparse.Namespace:
    """The attributes of TensorRT-LLM's multimodal run.py arguments that MultimodalModelRunner reads for llava."""
    return argparse.Namespace(
        engine_dir=str(engine_dir),
        hf_model_dir=str(engine_dir / "hf"),
        visual_engine_name="model.engine",
        audio_engine_name="model.engine",
        session="cpp_llm_only",
        kv_cache_free_gpu_memory_fraction=kv_cache_fraction,
        cross_kv_cache_fraction=None,
        enable_chunked_context=False,
        enable_context_fmha_fp32_acc=None,
        multi_block_mode=True,
        mm_embedding_offloading=False,
        debug_mode=False,
        batch_size=1,
        num_beams=1,
        top_k=1,
        top_p=0.0,
        temperature=1.0,
        repetition_penalty=1.0,
        lora_task_uids=None,
        image_path=None,
        video_path=None,
        video_num_frames=None,
    )
