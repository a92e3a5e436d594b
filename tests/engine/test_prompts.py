"""The prompt strings are a contract with the model's training: pin them exactly."""

import pytest

from engine import prompts
from engine.prompts import build_instruction, build_prompt, conversation_segments, prompt_hash

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def test_response_format_strings_are_the_papers():
    assert prompts.SHORT_ANSWER == "Answer the question using a single word or phrase."
    assert prompts.MULTIPLE_CHOICE == "Answer with the option's letter from the given choices directly."
    assert prompts.UNANSWERABLE == "When the provided information is insufficient, respond with 'Unanswerable'."
    assert prompts.SYSTEM == SYSTEM


def test_single_turn_prompt_is_vicuna_v1_with_image_first():
    assert build_prompt("What is this?") == f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"


def test_multi_turn_segments_supervise_only_answers():
    segments = conversation_segments(["<image>\nQ1", "A1", "Q2", "A2"])
    assert segments == [
        (f"{SYSTEM} USER: <image>\nQ1 ASSISTANT:", False),
        (" A1</s>", True),
        ("USER: Q2 ASSISTANT:", False),
        (" A2</s>", True),
    ]
    assert "".join(text for text, _ in segments) == f"{SYSTEM} USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"


def test_tasks_map_to_prompts():
    assert build_instruction("caption") == "Provide a brief description of the given image."
    assert build_instruction("caption", "Describe it in detail.") == "Describe it in detail."
    assert build_instruction("vqa", "What colour is the star?") == (
        "What colour is the star?\nAnswer the question using a single word or phrase."
    )
    assert build_instruction("vqa", "What is written?", unanswerable=True) == (
        "What is written?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
        "Answer the question using a single word or phrase."
    )
    assert build_instruction("vqa", "Which shape?", choices=["circle", "star"]) == (
        "Which shape?\nA. circle\nB. star\nAnswer with the option's letter from the given choices directly."
    )
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert build_instruction("json", "Count them.", schema=schema) == (
        'Count them.\nAnswer with a JSON object that follows this JSON schema: '
        '{"type":"object","properties":{"n":{"type":"integer"}}}'
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="vqa"), "needs a question"),
        (dict(task="json", instruction="x"), "needs a JSON schema"),
        (dict(task="vqa", instruction="x", choices=["only one"]), "2 to 26 choices"),
        (dict(task="ocr", instruction="x"), "unknown task 'ocr'"),
    ],
)
def test_bad_task_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_instruction(**kwargs)


def test_prompt_hash_is_stable_and_distinguishes_schema():
    assert prompt_hash("p") == prompt_hash("p")
    assert prompt_hash("p") != prompt_hash("q")
    assert prompt_hash("p", {"type": "object"}) != prompt_hash("p")
