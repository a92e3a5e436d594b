"""Turn one row's generated tokens into a `GenerationResult`: the step every backend ends with.

The transformers backend and the TensorRT-LLM adapter decode differently but finish the
same way, so the rules live here once: `stop` only when the row ended on end-of-sequence,
confidence = mean token log-probability, and a row with a schema is JSON that validates
(with each field's confidence, `engine.field_confidence`) or an explicit failure (cut off
by the length limit, or invalid).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.backend import GenerationRequest, GenerationResult
from engine.field_confidence import field_confidence
from engine.structured import parse_and_validate


def result_from_tokens(
    request: GenerationRequest, tokens: Sequence[int], logprobs: Sequence[float], *, tokenizer, eos_id: int, prompt_tokens: int
) -> GenerationResult:
    """The result for `request` given its generated `tokens` (end-of-sequence included), their log-probs and
    the length of the prompt they followed."""
    tokens, logprobs = list(tokens), list(logprobs)
    stopped = bool(tokens) and tokens[-1] == eos_id
    result = GenerationResult(
        text=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
        finish_reason="stop" if stopped else "length",
        tokens=len(tokens),
        prompt_tokens=prompt_tokens,
        confidence=sum(logprobs) / len(logprobs) if logprobs else None,
        token_logprobs=logprobs,
        token_ids=tokens,
    )
    if request.json_schema is None:
        return result
    if not stopped:
        result.error = f"length: the JSON answer was cut off at max_new_tokens={request.max_new_tokens}"
        return result
    result.json, reason = parse_and_validate(result.text, request.json_schema)
    if reason:
        result.error = reason
    else:
        result.field_confidence = field_confidence(tokens, logprobs, tokenizer)
    return result
