"""The metrics LLaVA-1.5 reports, as plain functions: VQA accuracy, POPE, multiple choice, JSON.

`vqa_accuracy` follows the official VQA evaluation (the VQA API's `vqaEval.py`) step
for step, quirks included: the prediction is always normalised (punctuation, number
words to digits, articles dropped, contractions restored), the ten human answers only
get the punctuation pass and only when they disagree (VQAv2 stores them normalised),
and the score is min(1, matches/3) averaged over the ten leave-one-out subsets.
`evalai_answer` is the EvalAI answer processor (LLaVA's `m4c_evaluator.py`), which the VQAv2
and VizWiz upload files and TextVQA's `textvqa_accuracy` use: both sides normalised, commas,
question marks and possessives handled first, at most 32 periods stripped (the original passes
`re.UNICODE` as `re.sub`'s count).
`pope_metrics` follows LLaVA's `eval_pope.py`: first sentence only, an answer with
"no"/"not"/"No" in it is no, anything else yes. The paper benchmarks (training/benchmarks/)
score through these functions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from engine.prompts import OPTION_LETTERS
from engine.structured import parse_and_validate

# The official tables (VQA API, vqaEval.py).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern (a malformed look-behind)
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def process_punctuation(text: str, comma_strip: re.Pattern[str] = COMMA_STRIP, periods: int = 0) -> str:
    """The official punctuation pass: drop marks next to spaces (or in numbers like 1,000), else space them;
    then strip periods that are not decimal points (at most `periods` of them; 0: all)."""
    out = text
    for mark in PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or comma_strip.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=periods)


def process_digit_article(text: str) -> str:
    """The official word pass: lower case, number words to digits, no articles, contractions restored."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """A prediction as the official evaluation compares it."""
    return process_digit_article(process_punctuation(_clean(text)))


def evalai_answer(text: str) -> str:
    """An answer as EvalAI compares it (`EvalAIAnswerProcessor` of LLaVA's m4c_evaluator.py): the VQAv2 and
    VizWiz upload files hold these, and TextVQA is scored on them."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = process_punctuation(_clean(text), EVALAI_COMMA_STRIP, periods=re.UNICODE)  # sic: count=re.UNICODE (32)
    return process_digit_article(text)


def _leave_one_out(predicted: str, truth: Sequence[str]) -> float:
    """min(1, matches/3) averaged over the subsets that leave one human answer out."""
    scores = []
    for held_out in range(len(truth)):
        matches = sum(1 for i, answer in enumerate(truth) if i != held_out and answer == predicted)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against its (usually ten) human answers."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    truth = [_clean(answer) for answer in answers]
    if len(set(truth)) > 1:
        truth = [process_punctuation(answer) for answer in truth]
    return _leave_one_out(normalize_answer(prediction), truth)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA accuracy (m4c_evaluator's `TextVQAAccuracyEvaluator`): prediction and the ten human answers
    both through `evalai_answer`, then the leave-one-out VQA score."""
    if len(answers) != 10:
        raise ValueError(f"TextVQA accuracy needs the ten human answers, got {len(answers)}")
    return _leave_one_out(evalai_answer(prediction), [evalai_answer(answer) for answer in answers])


def pope_answer(text: str) -> str:
    """LLaVA's POPE reading of a free-form answer: 'no' when the first sentence says no/not, else 'yes'."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE accuracy, precision, recall, F1 (yes = positive) and the ratio of yes answers."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"POPE needs as many predictions as labels (got {len(predictions)} and {len(labels)})")
    bad = {label for label in labels if label not in ("yes", "no")}
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {sorted(bad)}")
    said_yes = [pope_answer(p) == "yes" for p in predictions]
    is_yes = [label == "yes" for label in labels]
    tp = sum(p and t for p, t in zip(said_yes, is_yes))
    fp = sum(p and not t for p, t in zip(said_yes, is_yes))
    tn = sum(not p and not t for p, t in zip(said_yes, is_yes))
    fn = sum(not p and t for p, t in zip(said_yes, is_yes))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(said_yes) / len(labels),
    }


def choice_letter(prediction: str, options: Sequence[str]) -> str | None:
    """The option a free-form answer picked: a leading letter ("B", "B.", "(B) ...") or an option's exact text."""
    text = prediction.strip()
    letters = OPTION_LETTERS[: len(options)]
    match = re.match(r"^\(?([A-Z])(?:[).:\s]|$)", text)
    if match and match.group(1) in letters:
        return match.group(1)
    for letter, option in zip(letters, options):
        if text.rstrip(".").lower() == option.lower():
            return letter
    return None


def multiple_choice_accuracy(predictions: Sequence[str], answers: Sequence[str], options: Sequence[Sequence[str]]) -> float:
    """Share of predictions that pick the right letter."""
    if not (len(predictions) == len(answers) == len(options)) or not answers:
        raise ValueError("multiple-choice accuracy needs as many predictions, answers and option lists")
    return sum(choice_letter(p, o) == a for p, a, o in zip(predictions, answers, options)) / len(answers)


def caption_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Free-text answers (captions) against one reference each: token F1 and exact match, both after
    `normalize_answer` on either side (VQA accuracy cannot score them: it normalises only the prediction)."""
    if len(predictions) != len(references) or not references:
        raise ValueError("caption metrics need as many predictions as references")
    f1 = exact = 0.0
    for prediction, reference in zip(predictions, references):
        said, truth = normalize_answer(prediction).split(), normalize_answer(reference).split()
        exact += said == truth
        common = sum((Counter(said) & Counter(truth)).values())
        if common:
            precision, recall = common / len(said), common / len(truth)
            f1 += 2 * precision * recall / (precision + recall)
    return {"token_f1": f1 / len(references), "exact_match": exact / len(references)}


def _as_object(prediction: Any, schema: Mapping[str, Any] | None) -> Any:
    """A prediction as a JSON value, or None when it is not valid (against `schema`, when given)."""
    if prediction is None:
        return None
    text = prediction if isinstance(prediction, str) else json.dumps(prediction)
    if schema is not None:
        return parse_and_validate(text, dict(schema))[0]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def json_metrics(
    predictions: Sequence[Any], truths: Sequence[Mapping[str, Any]], schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """JSON answers: validity rate, per-field accuracy and exact match (an invalid answer is wrong everywhere).

    A prediction is a parsed value, JSON text, or None (no output); with `schema`, valid means
    valid against it, as the engine checks it.
    """
    if len(predictions) != len(truths) or not truths:
        raise ValueError("JSON metrics need as many predictions as ground truths")
    fields = list(truths[0])
    valid = exact = 0
    right = dict.fromkeys(fields, 0)
    for prediction, truth in zip(predictions, truths):
        value = _as_object(prediction, schema)
        if value is None:
            continue
        valid += 1
        if not isinstance(value, dict):
            continue
        for name in fields:
            right[name] += value.get(name) == truth.get(name)
        exact += value == dict(truth)
    n = len(truths)
    return {"validity": valid / n, "exact_match": exact / n, "fields": {name: right[name] / n for name in fields}}
