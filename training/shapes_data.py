"""Shapes-world data sets in the file formats LLaVA-1.5 trains and evaluates on.

`write_dataset` renders a training split and a held-out evaluation split and writes:
- `pretrain.json`: stage-1 caption pairs, like LCS-558K (a varied brief-caption
  instruction, a one-sentence caption);
- `finetune.json`: the stage-2 instruction mix, like llava_v1_5_mix665k: short-answer
  VQA (colour, shape, count, position), POPE-style yes/no existence questions (half
  about absent objects), multiple choice, JSON answers for the fixed shapes schema,
  single- and multi-turn; existence questions at three times their share in the other files
  (`STAGE2_WEIGHTS`);
- `text.json`: conversations of the same kinds (`TYPE_WEIGHTS`) with the caption in place
  of the image, text only: the language a from-scratch LLM learns before alignment (LLaVA starts from a
  pretrained Vicuna; the demo model has to make its own);
- `compare.json`: one short question per training image with the caption in place of the
  image, half of them POPE's existence questions: the LLM learns to compare the question's
  words with what the context shows before it sees an image (a pretrained Vicuna can);
- `eval.json`: one question of every type per held-out image, with its ground truth;
- `withhold_colours`: training images of these colours stay out of the image-text data
  (`pretrain.json`, `finetune.json`) but keep their place in `scenes.json` (the vision
  tower's pretraining), `text.json` and `compare.json` (the LLM's language): like a LLaVA whose CLIP and
  Vicuna know purple but whose instruction data never showed it. The loop demo starts
  from such a weak model; the held-out split keeps every colour;
- `schema.json`: the shapes schema (for `predict --schema`).

The user-turn text of every question is built by `engine.prompts.build_instruction`,
exactly as the engine builds it at inference, so evaluation asks in the trained format.
Each image has its own random stream (`seed`, split, index): a data set is the same
on every machine, and the first k images do not change when `n` grows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import prompts
from training.world import COLOURS, MAX_COUNT, NUMBER_WORDS, SHAPES, Scene, render, sample_scene, shapes_schema

# LCS-558K's brief-caption instructions (LLaVA's pretraining data), LLaVA-1.5's COCO prompt first.
CAPTION_INSTRUCTIONS = (
    prompts.DEFAULT_CAPTION,
    "Describe the image concisely.",
    "Give a brief description of the image.",
    "Summarize the visual content of the image.",
    "Share a concise interpretation of the image provided.",
    "Write a terse but informative summary of the picture.",
    "Offer a succinct explanation of the picture presented.",
    "Render a clear and concise summary of the photo.",
)
JSON_QUESTIONS = (prompts.DEFAULT_JSON_QUESTION, "What shapes are there?", "Describe the shapes in the image.")
PLACE_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
QUESTION_TYPES = ("color", "shape", "count", "position", "pope", "mc", "json")
# Counting is the hardest skill for a small model: it gets twice the share of questions. So do
# JSON answers, whose fields the model reads across the long schema prompt: measured, the JSON
# colour field trailed colour VQA (87.5% against 100%) until JSON had twice the share (99.5%).
# Captions stay in the stage-2 mix (LLaVA's 665K mix keeps description data too): without
# them the finetuned model forgot how to caption and answered every caption request in a word.
TYPE_WEIGHTS = {"color": 1, "shape": 1, "count": 2, "position": 1, "pope": 1, "mc": 1, "json": 2, "caption": 1}
# finetune.json (stage 2) asks existence questions three times as often: the comparison they need is
# learnt on text (compare.json) and carried over to the image only in stage 2. Measured from one
# cached stage 1: POPE F1 0.906 at 1x, 0.941 at 2x, 0.965 at 3x (JSON exact 88.5, 86.0, 86.5%).
# text.json keeps the plain mix: tripled there as well, JSON exact match fell to 52.5%.
STAGE2_WEIGHTS = {**TYPE_WEIGHTS, "pope": 3}
# The short-answer questions about one attribute (VQA-scored against ten answers in eval.json).
SHORT_TYPES = ("color", "shape", "count", "position")
# compare.json: half existence questions, half the short questions whose reading routes they reuse.
COMPARE_POPE_SHARE = 0.5


@dataclass(frozen=True)
class Question:
    """One question about a scene, and how the engine should ask it."""

    type: str
    task: str  # engine task: "vqa", "json" or "caption"
    question: str
    answer: str  # the reference answer text the model is trained to give
    choices: tuple[str, ...] | None = None
    label: str | None = None  # POPE: "yes" / "no"

    @property
    def user_text(self) -> str:
        """The user's turn as the engine renders it (engine.prompts: one source of truth)."""
        schema = shapes_schema() if self.task == "json" else None
        return prompts.build_instruction(self.task, self.question, schema=schema, choices=self.choices)  # type: ignore[arg-type]


def _noun(scene: Scene, *, colour: bool = False) -> str:
    word = scene.shape + ("s" if scene.count > 1 else "")
    return f"{scene.colour} {word}" if colour else word


def _be(scene: Scene) -> str:
    return "are" if scene.count > 1 else "is"


def caption(scene: Scene) -> str:
    """A one-sentence caption that states every ground-truth field."""
    count = NUMBER_WORDS[scene.count]
    article = "A" if scene.count == 1 else count.capitalize()
    return f"{article} {_noun(scene, colour=True)} {PLACE_PHRASES[scene.position]} of the image."


def _color(scene: Scene, rng: random.Random) -> Question:
    text = rng.choice([f"What color {_be(scene)} the {_noun(scene)}?", "What color are the shapes in the image?"])
    return Question("color", "vqa", text, scene.colour)


def _shape(scene: Scene, rng: random.Random) -> Question:
    text = rng.choice(
        [f"What shape {_be(scene)} the {scene.colour} object{'s' if scene.count > 1 else ''}?", "What shape is shown in the image?"]
    )
    return Question("shape", "vqa", text, scene.shape)


def _count(scene: Scene, rng: random.Random) -> Question:
    text = rng.choice(
        [
            f"How many {scene.shape}s are there?",
            f"How many {scene.colour} {scene.shape}s are in the image?",
            "How many shapes are there in the image?",
        ]
    )
    return Question("count", "vqa", text, str(scene.count))


def _position(scene: Scene, rng: random.Random) -> Question:
    text = rng.choice([f"Where {_be(scene)} the {_noun(scene)}?", "In which part of the image are the shapes?"])
    return Question("position", "vqa", text, scene.position)


def _pope(scene: Scene, rng: random.Random, present: bool | None = None) -> Question:
    """POPE's "Is there a ... in the image?"; half the questions name an absent object.

    Absent objects are adversarial where they can be: the right shape in a wrong colour
    or the right colour as a wrong shape.
    """
    present = rng.random() < 0.5 if present is None else present
    kind = rng.choice(["shape", "colour", "both"])
    shape, colour = scene.shape, scene.colour
    if not present:
        change = kind if kind != "both" else rng.choice(["shape", "colour"])
        if change == "shape":
            shape = rng.choice([s for s in SHAPES if s != scene.shape])
        else:
            colour = rng.choice([c for c in COLOURS if c != scene.colour])
    thing = {"shape": shape, "colour": f"{colour} object", "both": f"{colour} {shape}"}[kind]
    article = "an" if thing[0] in "aeiou" else "a"
    label = "yes" if present else "no"
    return Question("pope", "vqa", f"Is there {article} {thing} in the image?", label.capitalize(), label=label)


def _multiple_choice(scene: Scene, rng: random.Random) -> Question:
    kind = rng.choice(["shape", "color", "count"])
    if kind == "shape":
        text, correct, pool = "What shape is shown in the image?", scene.shape, list(SHAPES)
    elif kind == "color":
        text, correct, pool = f"What color {_be(scene)} the {_noun(scene)}?", scene.colour, list(COLOURS)
    else:
        text, correct, pool = f"How many {scene.shape}s are there?", str(scene.count), [str(n) for n in range(1, MAX_COUNT + 1)]
    options = [correct, *rng.sample([p for p in pool if p != correct], 3)]
    rng.shuffle(options)
    letter = prompts.OPTION_LETTERS[options.index(correct)]
    return Question("mc", "vqa", text, letter, choices=tuple(options))


def _json(scene: Scene, rng: random.Random) -> Question:
    return Question("json", "json", rng.choice(JSON_QUESTIONS), json_answer(scene))


def json_answer(scene: Scene) -> str:
    """The JSON text the model learns to emit: schema key order and the separators the
    engine's constrained decoder (xgrammar, no free whitespace) produces, so that decoding
    under the grammar follows the exact token path the model was trained on."""
    return json.dumps(scene.truth(), separators=(", ", ": "))


def _caption(scene: Scene, rng: random.Random) -> Question:
    return Question("caption", "caption", rng.choice(CAPTION_INSTRUCTIONS), caption(scene))


ASK: dict[str, Callable[[Scene, random.Random], Question]] = {
    "color": _color,
    "shape": _shape,
    "count": _count,
    "position": _position,
    "pope": _pope,
    "mc": _multiple_choice,
    "json": _json,
    "caption": _caption,
}


def conversation(questions: list[Question], context: str = prompts.IMAGE_TOKEN) -> list[dict[str, str]]:
    """LLaVA's conversation list; the image token (or text standing in for it) leads the first user turn."""
    turns: list[dict[str, str]] = []
    for i, question in enumerate(questions):
        text = question.user_text if i else f"{context}\n{question.user_text}"
        turns += [{"from": "human", "value": text}, {"from": "gpt", "value": question.answer}]
    return turns


def _scene_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"shapes:{seed}:{split}:{index}")


def _instruction_mix(
    scene: Scene, rng: random.Random, max_turns: int, weights: dict[str, int] = TYPE_WEIGHTS
) -> list[Question]:
    turns = 1 if rng.random() < 0.4 else rng.randint(2, max_turns)
    kinds = rng.choices(list(weights), weights=list(weights.values()), k=turns)
    if kinds.count("json") > 1:  # the schema prompt is long: one JSON turn per conversation is enough
        kinds = [kind for i, kind in enumerate(kinds) if kind != "json" or i == kinds.index("json")]
    return [ASK[kind](scene, rng) for kind in kinds]


def _comparison(scene: Scene, rng: random.Random) -> Question:
    kind = "pope" if rng.random() < COMPARE_POPE_SHARE else rng.choice(SHORT_TYPES)
    return ASK[kind](scene, rng)


def eval_items(scene: Scene, rng: random.Random, image: str, index: int, prefix: str) -> list[dict[str, Any]]:
    """One question of every type about a held-out image (POPE twice: one present, one absent object)."""
    questions = [ASK[kind](scene, rng) for kind in QUESTION_TYPES if kind != "pope"]
    questions += [_pope(scene, rng, present=True), _pope(scene, rng, present=False)]
    items = []
    for k, q in enumerate(questions):
        item: dict[str, Any] = {
            "id": f"{prefix}-{index:06d}-{q.type}-{k}",
            "image": image,
            "type": q.type,
            "task": q.task,
            "question": q.question,
            "answer": q.answer,
            "truth": scene.truth(),
        }
        if q.choices:
            item["choices"] = list(q.choices)
        if q.task == "json":
            item["schema"] = shapes_schema()
        if q.type in SHORT_TYPES:
            item["answers"] = [q.answer] * 10  # VQAv2's ten human answers; here all agree
        if q.label:
            item["label"] = q.label
        items.append(item)
    return items


def labeler_manifests(captions: list[tuple[str, str]], evaluation: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The held-out split as labeler job manifests (`llava-labeler run data/eval-json.jsonl ...`),
    with the ground truth as each line's `reference`, so a labeling job reports its accuracy."""
    return {
        "eval-caption.jsonl": [{"image": f"images/{image}", "reference": text} for image, text in captions],
        "eval-json.jsonl": [
            {"image": f"images/{item['image']}", "question": item["question"], "reference": item["truth"], "metadata": {"id": item["id"]}}
            for item in evaluation
            if item["task"] == "json"
        ],
    }


def check_withheld(colours: tuple[str, ...]) -> None:
    """Refuse colours the world does not have (before any rendering or training starts)."""
    unknown = sorted(set(colours) - set(COLOURS))
    if unknown:
        raise ValueError(f"unknown colour(s) to withhold: {', '.join(unknown)} (the world's colours: {', '.join(COLOURS)})")


@dataclass(frozen=True)
class _Draw:
    """What every image of a data set is drawn under (sent to the worker processes)."""

    out: Path
    seed: int
    noise_fraction: float
    max_turns: int
    withhold_colours: tuple[str, ...]


def _draw_image(draw: _Draw, job: tuple[str, int]) -> dict[str, list[Any]]:
    """Render one image and build its records, from its own random stream (so any process can draw it)."""
    split, i = job
    prefix = f"shapes-{draw.seed}"
    rng = _scene_rng(draw.seed, split, i)
    scene = sample_scene(rng, noise_fraction=draw.noise_fraction)
    image = f"{split}/{i:06d}.png"
    render(scene).save(draw.out / "images" / image)
    described = caption(scene)
    records: dict[str, list[Any]] = {"scenes.json": [{"image": image, "split": split, **scene.to_dict()}]}
    if split == "eval":
        records["eval.json"] = eval_items(scene, rng, image, i, f"{prefix}-eval")
        records["captions"] = [(image, described)]
        return records
    instruction = rng.choice(CAPTION_INSTRUCTIONS)
    user = f"{prompts.IMAGE_TOKEN}\n{prompts.build_instruction('caption', instruction)}"
    mix = _instruction_mix(scene, rng, draw.max_turns, STAGE2_WEIGHTS)  # drawn for every scene: the random stream stays aligned
    if scene.colour not in draw.withhold_colours:
        records["pretrain.json"] = [
            {
                "id": f"{prefix}-cap-{i:06d}",
                "image": image,
                "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": described}],
            }
        ]
        records["finetune.json"] = [{"id": f"{prefix}-mix-{i:06d}", "image": image, "conversations": conversation(mix)}]
    questions = [Question("caption", "caption", instruction, described)] + _instruction_mix(scene, rng, draw.max_turns)
    records["text.json"] = [{"id": f"{prefix}-text-{i:06d}", "conversations": conversation(questions, described)}]
    records["compare.json"] = [
        {"id": f"{prefix}-compare-{i:06d}", "conversations": conversation([_comparison(scene, rng)], described)}
    ]
    return records


def _workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_dataset(
    out: str | Path,
    n: int,
    seed: int = 0,
    *,
    n_eval: int = 200,
    noise_fraction: float = 0.3,
    max_turns: int = 4,
    withhold_colours: tuple[str, ...] = (),
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Render `n` training and `n_eval` held-out images under `out` and write the JSON files.

    Images are drawn by `workers` processes (default: one per core); each image has its own random
    stream, so the files are the same whatever the number of workers."""
    if n < 1 or n_eval < 0:
        raise ValueError("need n >= 1 training images and n_eval >= 0")
    check_withheld(withhold_colours)
    out = Path(out)
    draw = _Draw(out, seed, noise_fraction, max_turns, tuple(withhold_colours))
    jobs = [("train", i) for i in range(n)] + [("eval", i) for i in range(n_eval)]
    for split in ("train", "eval"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
    names = ("pretrain.json", "finetune.json", "text.json", "compare.json", "eval.json", "scenes.json", "captions")
    drawn: dict[str, list[Any]] = {name: [] for name in names}
    workers = min(workers or _workers(), max(1, len(jobs) // 256))
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")))
            results = pool.map(functools.partial(_draw_image, draw), jobs, chunksize=64)
        else:
            results = map(functools.partial(_draw_image, draw), jobs)
        for records in results:
            for name, lines in records.items():
                drawn[name] += lines
            if progress:
                progress(1)
    captions = drawn.pop("captions")
    for name, lines in labeler_manifests(captions, drawn["eval.json"]).items():
        (out / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    files: dict[str, Any] = {**drawn, "schema.json": shapes_schema()}
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=1 if name != "scenes.json" else None) + "\n")
    counts = {name.removesuffix(".json"): len(drawn[name]) for name in ("pretrain.json", "finetune.json", "text.json", "compare.json", "eval.json")}
    return {"train_images": n, "eval_images": n_eval, **counts}
