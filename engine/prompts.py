"""LLaVA-1.5 prompts: the vicuna_v1 conversation template and the paper's response-format prompts.

This module is the one source of truth for every string the model sees: inference
(`build_prompt`) and training (`conversation_segments`) both render through it, so
a model is always asked questions in exactly the format it was trained on.

We keep the system line of the original LLaVA-1.5 training ("A chat between a
curious user ..."); the llava-hf chat template drops it, but the published weights
were trained with it, so inference with it matches training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

Task = Literal["caption", "vqa", "json"]
TASKS: tuple[Task, ...] = ("caption", "vqa", "json")

IMAGE_TOKEN = "<image>"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
USER, ASSISTANT = "USER", "ASSISTANT"
SEP = " "  # after the system line and after each user turn
SEP2 = "</s>"  # after each assistant turn (the LLM's end-of-sequence token)

# Response-format prompts from the paper (Liu et al. 2023, Table 7 / the LLaVA-1.5 eval scripts).
SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
# LLaVA-1.5's short-caption instruction (its COCO caption prompt).
DEFAULT_CAPTION = "Provide a brief description of the given image."
# Ours: JSON answers are constrained by the schema at decode time; showing the schema
# tells the model what each field means.
JSON_ANSWER = "Answer with a JSON object that follows this JSON schema: {schema}"
DEFAULT_JSON_QUESTION = "Describe the image."

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def schema_text(schema: dict[str, Any]) -> str:
    """The schema as it appears in prompts: compact, key order kept (it is the output order)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def multiple_choice(question: str, choices: Sequence[str]) -> str:
    """The paper's multiple-choice format: question, `A. ...` lines, then the letter prompt."""
    if not 2 <= len(choices) <= len(OPTION_LETTERS):
        raise ValueError(f"multiple choice needs 2 to {len(OPTION_LETTERS)} choices, got {len(choices)}")
    lines = [question, *(f"{OPTION_LETTERS[i]}. {choice}" for i, choice in enumerate(choices)), MULTIPLE_CHOICE]
    return "\n".join(lines)


def build_instruction(
    task: Task,
    instruction: str | None = None,
    *,
    schema: dict[str, Any] | None = None,
    choices: Sequence[str] | None = None,
    unanswerable: bool = False,
) -> str:
    """Map a task to the text of the user's turn (without the image token).

    - caption: the instruction, or LLaVA-1.5's short-caption prompt;
    - vqa: the question plus the short-answer prompt, or the multiple-choice format when
      `choices` are given; `unanswerable` adds the paper's 'Unanswerable' line first;
    - json: the question plus the schema the answer must follow.
    """
    if task == "caption":
        return instruction or DEFAULT_CAPTION
    if task == "vqa":
        if not instruction:
            raise ValueError("a vqa task needs a question (instruction)")
        if choices:
            return multiple_choice(instruction, choices)
        lines = [instruction, *([UNANSWERABLE] if unanswerable else []), SHORT_ANSWER]
        return "\n".join(lines)
    if task == "json":
        if schema is None:
            raise ValueError("a json task needs a JSON schema")
        return f"{instruction or DEFAULT_JSON_QUESTION}\n{JSON_ANSWER.format(schema=schema_text(schema))}"
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def conversation_segments(messages: Sequence[str]) -> list[tuple[str, bool]]:
    """Render alternating user/assistant messages with vicuna_v1, as (text, supervised) pieces.

    Joined, the pieces are the exact training string; the `True` pieces are the assistant
    answers (with their `</s>`), the only tokens a model is trained to produce. A trailing
    user message yields a prompt that ends in `ASSISTANT:`, ready for generation.
    """
    if not messages:
        raise ValueError("a conversation needs at least one user message")
    segments: list[tuple[str, bool]] = []
    prefix = SYSTEM + SEP
    for i, message in enumerate(messages):
        if i % 2 == 0:
            prefix += f"{USER}: {message}{SEP}{ASSISTANT}:"
        else:
            segments.append((prefix, False))
            segments.append((f" {message}{SEP2}", True))
            prefix = ""
    if prefix:
        segments.append((prefix, False))
    return segments


def build_prompt(user_text: str, *, with_image: bool = True) -> str:
    """The full single-turn generation prompt: image token first, as LLaVA-1.5 was trained."""
    first = f"{IMAGE_TOKEN}\n{user_text}" if with_image else user_text
    return "".join(text for text, _ in conversation_segments([first]))


def prompt_hash(prompt: str, schema: dict[str, Any] | None = None) -> str:
    """A stable key for 'the same question': identical prompt and schema give the same hash."""
    payload = json.dumps({"prompt": prompt, "schema": schema}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
