"""Metrics against hand-computed examples of the official VQA evaluation and LLaVA's POPE script."""

import pytest

from training.evaluate import (
    choice_letter,
    json_metrics,
    multiple_choice_accuracy,
    normalize_answer,
    pope_answer,
    pope_metrics,
    vqa_accuracy,
)
from training.world import shapes_schema


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Two", "2"),  # number words to digits, lower case
        ("a dog.", "dog"),  # articles dropped, final period stripped
        ("The Red Circle!", "red circle"),
        ("dont", "don't"),  # contractions restored
        ("1,000", "1000"),  # commas inside numbers vanish
        ("3.5", "3.5"),  # a decimal point stays
        ("yes, it is", "yes it is"),  # a mark next to a space is dropped
        ("left-hand", "left hand"),  # a mark between words becomes a space
        ("  ten\n", "10"),
    ],
)
def test_official_answer_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_ten_agreeing_answers_score_a_match_one():
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_accuracy("three", ["2"] * 10) == 0.0


def test_leave_one_out_average_by_hand():
    # 2 of 10 humans said yes. Leaving out a "yes": 1 match -> 1/3 (twice); leaving out a "no": 2 -> 2/3 (8 times).
    assert vqa_accuracy("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    # 3 of 10 said dog: leaving out a dog leaves 2 (2/3, three times); otherwise 3 -> 1 (seven times) = 0.9.
    assert vqa_accuracy("A dog.", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    # 4 or more matches always score 1.
    assert vqa_accuracy("cat", ["dog"] * 3 + ["cat"] * 7) == 1.0
    # One matching human: only the 9 subsets that keep it count, each 1/3.
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(9 * (1 / 3) / 10)


def test_human_answers_get_only_the_punctuation_pass_and_only_when_they_disagree():
    # Official quirk: agreeing human answers are compared raw, so "two" never matches the normalised "2".
    assert vqa_accuracy("two", ["two"] * 10) == 0.0
    # Disagreeing answers get the punctuation pass ("dog." -> "dog"), not the number pass...
    assert vqa_accuracy("dog", ["dog."] * 5 + ["cat"] * 5) == 1.0
    # ...in which a mark not next to a space becomes one ("dog!" -> "dog "), as in the official code.
    assert vqa_accuracy("dog", ["dog!"] * 5 + ["cat"] * 5) == 0.0
    assert vqa_accuracy("2", ["two"] * 5 + ["cat"] * 5) == 0.0


def test_pope_reads_the_first_sentence_and_no_or_not():
    assert pope_answer("Yes") == "yes"
    assert pope_answer("No") == "no"
    assert pope_answer("There is not a cat.") == "no"
    assert pope_answer("Yes. But no dog is there.") == "yes"  # only the first sentence counts
    assert pope_answer("no, there is none") == "no"  # commas removed before splitting
    assert pope_answer("Nope") == "yes"  # only the words no/not/No


def test_pope_metrics_by_hand():
    predictions = ["Yes", "Yes", "No", "No", "Yes", "No"]
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    # TP=2 FN=1 FP=1 TN=2
    metrics = pope_metrics(predictions, labels)
    assert metrics == pytest.approx(
        {"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 3 / 6}
    )
    assert pope_metrics(["No"] * 2, ["yes", "no"])["f1"] == 0.0  # no positives predicted: F1 0, not an error
    with pytest.raises(ValueError, match="as many"):
        pope_metrics(["yes"], ["yes", "no"])
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope_metrics(["yes"], ["maybe"])


def test_multiple_choice():
    options = ["circle", "star", "square"]
    assert choice_letter("B", options) == "B"
    assert choice_letter("B. star", options) == "B"
    assert choice_letter("(C)", options) == "C"
    assert choice_letter("star", options) == "B"  # the option's own text
    assert choice_letter("D", options) is None  # not an option
    assert choice_letter("Because", options) is None
    assert multiple_choice_accuracy(["A", "star", "A"], ["A", "B", "C"], [options] * 3) == pytest.approx(2 / 3)


def test_json_validity_fields_and_exact_match():
    schema = shapes_schema()
    truths = [
        {"shape": "star", "color": "red", "count": 2, "position": "left"},
        {"shape": "circle", "color": "blue", "count": 1, "position": "top"},
        {"shape": "square", "color": "green", "count": 3, "position": "center"},
        {"shape": "triangle", "color": "purple", "count": 4, "position": "right"},
    ]
    predictions = [
        '{"shape": "star", "color": "red", "count": 2, "position": "left"}',  # exact
        {"shape": "circle", "color": "blue", "count": 2, "position": "top"},  # count wrong
        '{"shape": "square", "color": "green", "count": 9, "position": "center"}',  # invalid: count > 4
        None,  # no output
    ]
    metrics = json_metrics(predictions, truths, schema)
    assert metrics["validity"] == 0.5
    assert metrics["exact_match"] == 0.25
    assert metrics["fields"] == {"shape": 0.5, "color": 0.5, "count": 0.25, "position": 0.5}
    # Without a schema, any JSON object is valid.
    assert json_metrics(predictions, truths)["validity"] == 0.75


def test_caption_metrics_normalise_both_sides_and_give_partial_credit():
    from training.evaluate import caption_metrics

    scores = caption_metrics(["A red circle.", "two blue squares", "nothing"], ["a red circle", "Three blue squares.", "a star"])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    # "two blue squares" vs "3 blue squares" (number words become digits): 2 of 3 tokens on both sides
    assert scores["token_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError):
        caption_metrics(["a"], [])
