"""Every benchmark text becomes an engine request whose user turn is that text, read as the engine's own format."""

from __future__ import annotations

import pytest

from engine.prompts import MULTIPLE_CHOICE, SHORT_ANSWER, UNANSWERABLE, build_prompt
from training.benchmarks.base import options_for

CASES = [  # (the question file's text, the engine task, its question, its choices, unanswerable)
    (f"Is there a dog in the image?\n{SHORT_ANSWER}", "vqa", "Is there a dog in the image?", None, False),
    (f"What is it?\n{UNANSWERABLE}\n{SHORT_ANSWER}", "vqa", "What is it?", None, True),
    (f"what brand?\nReference OCR token: coca, cola\n{SHORT_ANSWER}", "vqa", "what brand?\nReference OCR token: coca, cola", None, False),
    (f"A hint.\nWhat colour?\nA. red\nB. blue\n{MULTIPLE_CHOICE}", "vqa", "A hint.\nWhat colour?", ("red", "blue"), False),
    (f"Question: q?\nOptions: (A) x (B) y\n{MULTIPLE_CHOICE}", "caption", f"Question: q?\nOptions: (A) x (B) y\n{MULTIPLE_CHOICE}", None, False),
    (f"A. only one\n{MULTIPLE_CHOICE}", "caption", f"A. only one\n{MULTIPLE_CHOICE}", None, False),
    (f"Q?\nA. only one\n{MULTIPLE_CHOICE}", "caption", f"Q?\nA. only one\n{MULTIPLE_CHOICE}", None, False),
    (f"Q?\nA. x\nC. y\n{MULTIPLE_CHOICE}", "caption", f"Q?\nA. x\nC. y\n{MULTIPLE_CHOICE}", None, False),
    ("Describe the image in detail.", "caption", "Describe the image in detail.", None, False),
]


@pytest.mark.parametrize(("text", "task", "question", "choices", "unanswerable"), CASES)
def test_the_request_renders_the_text_exactly(text: str, task: str, question: str, choices, unanswerable: bool) -> None:
    options = options_for(text, max_new_tokens=16)
    assert (options.task, options.instruction, options.choices, options.unanswerable) == (task, question, choices, unanswerable)
    assert options.prompt == build_prompt(text) and options.max_new_tokens == 16 and options.temperature == 0.0
