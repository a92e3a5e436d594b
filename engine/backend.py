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

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from engine.prompts import Task, build_instruction, build_prompt

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True, kw_only=True)
class GenerationOptions:
    """What to ask of an image: everything of a request but the image (a labeler job stores one for all its items)."""

    task: Task = "caption"
    instruction: str | None = None
    schema: dict[str, Any] | None = None
    options: tuple[str, ...] | None = None
    unanswerable: bool = False
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    def option_fields(self) -> dict[str, Any]:
        """The options as keyword arguments (for a request, or to store)."""
        return {f.name: getattr(self, f.name) for f in fields(GenerationOptions)}

    @property
    def prompt(self) -> str:
        """The full vicuna_v1 prompt these options render to (one source: engine.prompts)."""
        text = build_instruction(
            self.task, self.instruction, schema=self.schema, options=self.options, unanswerable=self.unanswerable
        )
        return build_prompt(text)


@dataclass(frozen=True, kw_only=True)
class GenerationRequest(GenerationOptions):
    """One image and what to do with it."""

    image: bytes | str | Path

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
    error: str | None = None
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
