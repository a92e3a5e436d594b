"""The engine's public contract: a request, a result, and the backend interface.

Callers (the labeler's workers, the predictor, evaluation) build `GenerationRequest`s
and hand a batch to any `Backend`; the in-process transformers backend, the remote
predictor client and the TensorRT-LLM adapter all implement the same two members,
so switching between them never touches a caller.

Per-item problems (a bad image, an uncompilable schema, JSON cut off by the length
limit) come back as a result with `error` set; only problems that make the whole
batch impossible right now (engine unreachable, out of memory) raise
`TransientEngineError`, which callers retry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from engine.prompts import Task, build_instruction, build_prompt

FinishReason = Literal["stop", "length", "error"]


DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS_LIMIT = 4096


class GenerationOptions(BaseModel):
    """What to ask of an image: everything of a request but the image.

    The one definition of the tasks, the defaults and the bounds: the predictor's wire format,
    a job's stored options, the OpenAI mapping and the command-line options all are this model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    task: Task = Field(default="caption", description="caption | vqa | json")
    instruction: str | None = Field(
        default=None, description="The question (vqa, json) or the caption instruction (default: the task's own)."
    )
    json_schema: dict[str, Any] | None = Field(
        default=None, alias="schema", description="The JSON schema every answer satisfies (json task)."
    )
    choices: tuple[str, ...] | None = Field(
        default=None, description="Multiple-choice options (vqa): the paper's lettered format."
    )
    unanswerable: bool = Field(default=False, description="Add the paper's 'Unanswerable' instruction (vqa).")
    max_new_tokens: int = Field(
        default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS_LIMIT, description="Token budget per answer."
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0: greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling (with a temperature above 0).")
    seed: int | None = Field(default=None, description="Sampling seed (with a temperature above 0).")

    @property
    def prompt(self) -> str:
        """The full vicuna_v1 prompt these options render to (one source: engine.prompts)."""
        text = build_instruction(
            self.task, self.instruction, schema=self.json_schema, choices=self.choices, unanswerable=self.unanswerable
        )
        return build_prompt(text)


class GenerationRequest(GenerationOptions):
    """One image and what to do with it."""

    image: bytes | str | Path = Field(repr=False)

    @classmethod
    def of(cls, options: GenerationOptions, image: bytes | str | Path) -> "GenerationRequest":
        """The request asking `options` of `image`; raises ValueError when they make no prompt (vqa without a question)."""
        request = cls(image=image, **options.model_dump(include=set(GenerationOptions.model_fields)))
        _ = request.prompt  # render now: a request that cannot become a prompt fails before it is queued
        return request

    @property
    def sampling_key(self) -> tuple[float, float]:
        """Requests with equal keys can share one decoding call."""
        return (self.temperature, self.top_p if self.temperature > 0 else 1.0)


@dataclass
class GenerationResult:
    """What came back for one request."""

    text: str = ""
    json: Any = None
    finish_reason: FinishReason = "stop"
    tokens: int = 0
    confidence: float | None = None
    prompt_tokens: int = 0  # the prompt's length in LLM positions (image features included): usage, cost
    error: str | None = None
    field_confidence: dict[str, Any] | None = None  # a JSON answer's per-field log-probs (engine.field_confidence)
    token_logprobs: list[float] = field(default_factory=list, repr=False)
    token_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, error: str, *, text: str = "", finish_reason: FinishReason = "error", tokens: int = 0) -> "GenerationResult":
        return cls(text=text, finish_reason=finish_reason, tokens=tokens, error=error)

    def to_dict(self, *, with_logprobs: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_logprobs:
            out.pop("token_logprobs")
            out.pop("token_ids")
        return out


class EngineError(Exception):
    """A problem the caller should show to a person (bad checkpoint, bad configuration)."""


class TransientEngineError(EngineError):
    """The whole batch failed for a reason that may pass (unreachable, out of memory): retry."""


@runtime_checkable
class Backend(Protocol):
    """Anything that turns a batch of requests into results, in order, one per request."""

    model_id: str

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...


@runtime_checkable
class ServableBackend(Backend, Protocol):
    """A backend the predictor can serve: it also checks requests up front and sizes prompts and tokens."""

    image_tokens: int  # LLM positions one image takes (576 for LLaVA-1.5 at 336 px, patch 14)

    def check(self, request: GenerationRequest) -> None:
        """Raise `ValueError` (a `SchemaError` for a schema) when `request` cannot run."""
        ...

    def prompt_tokens(self, prompt: str) -> int:
        """The prompt's length in LLM positions, the image's features included."""
        ...

    def token_text(self, token_id: int) -> str: ...
