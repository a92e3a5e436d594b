"""`data shapes`: LLaVA-format files, prompts from engine.prompts, a held-out split with ground truth."""

import json
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from engine import prompts
from engine.structured import GrammarCache
from entrypoints.cli.main import app
from training.shapes_data import CAPTION_INSTRUCTIONS, QUESTION_TYPES, STAGE2_WEIGHTS, TYPE_WEIGHTS, write_dataset
from training.world import COLOURS, SHAPES, shapes_schema

SHORT = "\n" + prompts.SHORT_ANSWER


def _load(directory: Path, name: str):
    return json.loads((directory / name).read_text())


def test_cli_writes_the_same_data_set_for_the_same_seed(tmp_path):
    runner = CliRunner()
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        result = runner.invoke(app, ["data", "shapes", "--out", str(tmp_path / name), "--n", "12", "--seed", str(seed), "--n-eval", "3"])
        assert result.exit_code == 0, result.output
    for name in ("pretrain.json", "finetune.json", "text.json", "compare.json", "eval.json", "scenes.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    images = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(images) == 15
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in images)
    # Growing n keeps the first images: each has its own random stream.
    runner.invoke(app, ["data", "shapes", "--out", str(tmp_path / "d"), "--n", "20", "--seed", "5", "--n-eval", "3"])
    assert _load(tmp_path / "d", "pretrain.json")[:12] == _load(tmp_path / "a", "pretrain.json")
    assert json.loads((tmp_path / "a" / "schema.json").read_text()) == shapes_schema()


def test_worker_processes_draw_the_same_data_set_as_one_process(tmp_path):
    # Enough images for two workers (a pool pays off from a few hundred); a withheld colour and both splits.
    for name, workers in (("one", 1), ("two", 2)):
        counts = write_dataset(tmp_path / name, 520, seed=4, n_eval=10, withhold_colours=("red",), workers=workers)
    assert counts["text"] == 520 and counts["eval"] == 80 and 0 < counts["pretrain"] < 520
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 530 + 9 and files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert all((tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes() for p in files)


def _check_llava_record(record, images: Path):
    assert set(record) == {"id", "image", "conversations"}
    assert (images / record["image"]).is_file()
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert turns[0]["value"].startswith(prompts.IMAGE_TOKEN + "\n")
    assert sum(t["value"].count(prompts.IMAGE_TOKEN) for t in turns) == 1


def test_stage1_captions_state_the_ground_truth(shapes_dir):
    scenes = {s["image"]: s for s in _load(shapes_dir, "scenes.json")}
    for record in _load(shapes_dir, "pretrain.json"):
        _check_llava_record(record, shapes_dir / "images")
        human, caption = (t["value"] for t in record["conversations"])
        scene = scenes[record["image"]]
        assert f"{scene['colour']} {scene['shape']}" in caption
        assert human.removeprefix("<image>\n") == prompts.build_instruction("caption", human.removeprefix("<image>\n"))


def test_stage2_mix_uses_the_papers_prompts_and_is_consistent_with_the_truth(shapes_dir):
    scenes = {s["image"]: s for s in _load(shapes_dir, "scenes.json")}
    records = _load(shapes_dir, "finetune.json")
    assert any(len(r["conversations"]) > 2 for r in records) and any(len(r["conversations"]) == 2 for r in records)
    schema_prompt = prompts.JSON_ANSWER.format(schema=prompts.schema_text(shapes_schema()))
    seen = Counter()
    for record in records:
        _check_llava_record(record, shapes_dir / "images")
        truth = scenes[record["image"]]
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            question, answer = human["value"].removeprefix("<image>\n"), gpt["value"]
            if question.endswith(schema_prompt):
                seen["json"] += 1
                assert json.loads(answer) == {"shape": truth["shape"], "color": truth["colour"], "count": truth["count"], "position": truth["position"]}
                assert question == prompts.build_instruction("json", question.split("\n")[0], schema=shapes_schema())
            elif question in CAPTION_INSTRUCTIONS:
                seen["caption"] += 1
                assert truth["colour"] in answer.lower() and truth["shape"] in answer.lower(), answer
            elif question.endswith(prompts.MULTIPLE_CHOICE):
                seen["mc"] += 1
                lines = question.split("\n")
                options = [line[3:] for line in lines[1:-1]]
                assert question == prompts.multiple_choice(lines[0], options)
                assert options[prompts.OPTION_LETTERS.index(answer)] in (truth["shape"], truth["colour"], str(truth["count"]))
            else:
                assert question.endswith(SHORT)
                seen["short"] += 1
                if question.startswith("Is there"):
                    seen[answer] += 1
                    assert answer in ("Yes", "No")
                    named = question.removeprefix("Is there ").removesuffix(" in the image?" + SHORT).split()[1:]
                    present = all(word in (truth["shape"], truth["colour"], "object") for word in named)
                    assert (answer == "Yes") == present, question
                elif question.startswith("How many"):
                    assert answer == str(truth["count"])
    assert seen["json"] and seen["mc"] and seen["short"] and seen["Yes"] and seen["No"] and seen["caption"]


def test_eval_split_has_every_question_type_with_ground_truth(shapes_dir):
    items = _load(shapes_dir, "eval.json")
    train_images = {r["image"] for r in _load(shapes_dir, "finetune.json")}
    assert not {i["image"] for i in items} & train_images  # held out
    assert len({i["id"] for i in items}) == len(items)
    kinds = Counter(i["type"] for i in items)
    assert set(kinds) == set(QUESTION_TYPES) and kinds["pope"] == 2 * 6
    assert Counter(i["label"] for i in items if i["type"] == "pope") == {"yes": 6, "no": 6}
    for item in items:
        if item["type"] in ("color", "shape", "count", "position"):
            assert item["answers"] == [item["answer"]] * 10
            field = {"color": "color", "shape": "shape", "count": "count", "position": "position"}[item["type"]]
            assert item["answer"] == str(item["truth"][field])
        if item["type"] == "json":
            assert item["schema"] == shapes_schema() and json.loads(item["answer"]) == item["truth"]
    assert {i["truth"]["color"] for i in items} <= set(COLOURS) and {i["truth"]["shape"] for i in items} <= set(SHAPES)


def test_json_answers_are_what_constrained_decoding_can_produce(shapes_dir, tiny_model_dir):
    """The answer text (key order, separators) is a path xgrammar allows under the engine's settings."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    grammar = GrammarCache(tokenizer, len(tokenizer))
    for item in [i for i in _load(shapes_dir, "eval.json") if i["type"] == "json"]:
        matcher = grammar.matcher(item["schema"])
        ids = tokenizer(item["answer"] + tokenizer.eos_token)["input_ids"]
        assert all(matcher.accept_token(token) for token in ids)
        assert matcher.is_terminated()


def test_text_only_conversations_put_the_caption_where_the_image_goes(shapes_dir):
    records = _load(shapes_dir, "text.json")
    captions = {r["image"]: r["conversations"][1]["value"] for r in _load(shapes_dir, "pretrain.json")}
    mixes = _load(shapes_dir, "finetune.json")
    assert len(records) == len(mixes)
    for record, mix in zip(records, mixes):
        assert "image" not in record and "<image>" not in json.dumps(record)
        first, copy = record["conversations"][0]["value"], record["conversations"][1]["value"]
        caption = captions[mix["image"]]
        assert first.startswith(caption + "\n") and copy == caption  # describe what was described
        assert [t["from"] for t in record["conversations"]] == ["human", "gpt"] * (len(record["conversations"]) // 2)


def test_comparison_questions_are_single_turn_about_the_caption_half_of_them_pope(shapes_dir):
    scenes = [s for s in _load(shapes_dir, "scenes.json") if s["split"] == "train"]
    captions = {r["image"]: r["conversations"][1]["value"] for r in _load(shapes_dir, "pretrain.json")}
    records = _load(shapes_dir, "compare.json")
    assert len(records) == len(scenes) and len({r["id"] for r in records}) == len(records)
    pope = 0
    for record, scene in zip(records, scenes):
        assert "image" not in record
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        caption, question = human["value"].split("\n", 1)
        assert caption == captions[scene["image"]] and question.endswith(SHORT)
        if question.startswith("Is there"):
            pope += 1
            named = question.removeprefix("Is there ").removesuffix(" in the image?" + SHORT).split()[1:]
            assert (gpt["value"] == "Yes") == all(word in (scene["shape"], scene["colour"], "object") for word in named)
        else:
            assert gpt["value"] in {scene["shape"], scene["colour"], str(scene["count"]), scene["position"]}
    assert 0.3 * len(records) <= pope <= 0.7 * len(records)


def test_eval_manifests_are_labeler_jobs_with_the_ground_truth(shapes_dir):
    scenes = {s["image"]: s for s in json.loads((shapes_dir / "scenes.json").read_text()) if s["split"] == "eval"}
    captions = [json.loads(line) for line in (shapes_dir / "eval-caption.jsonl").read_text().splitlines()]
    answers = [json.loads(line) for line in (shapes_dir / "eval-json.jsonl").read_text().splitlines()]
    assert len(captions) == len(answers) == len(scenes)
    for line in captions + answers:
        assert (shapes_dir / line["image"]).is_file()
    for line in answers:
        scene = scenes[line["image"].removeprefix("images/")]
        assert line["reference"] == {k: scene[k] for k in ("shape", "count", "position")} | {"color": scene["colour"]}
        assert line["question"]
    assert all(scenes[c["image"].removeprefix("images/")]["shape"] in c["reference"] for c in captions)


def test_withheld_colours_leave_the_image_text_data_only(tmp_path):
    """The loop demo's weak model: no image-text record shows a withheld colour; the tower's scenes,
    the LLM's text and the held-out split keep every colour, and the other records are unchanged."""
    runner = CliRunner()
    args = ["data", "shapes", "--n", "60", "--seed", "3", "--n-eval", "12"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "all")]).exit_code == 0
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "weak"), "--withhold-colour", "purple", "--withhold-colour", "orange"])
    assert result.exit_code == 0, result.output
    scenes = {s["image"]: s for s in _load(tmp_path / "weak", "scenes.json")}
    withheld = {image for image, s in scenes.items() if s["split"] == "train" and s["colour"] in ("purple", "orange")}
    assert withheld, "seed 3 draws some purple or orange training images"
    for name in ("pretrain.json", "finetune.json"):
        everything, kept = _load(tmp_path / "all", name), _load(tmp_path / "weak", name)
        assert [r for r in everything if r["image"] not in withheld] == kept
        assert all("purple" not in turn["value"] and "orange" not in turn["value"] for r in kept for turn in r["conversations"][1::2])
    for name in ("text.json", "compare.json", "eval.json", "scenes.json"):
        assert (tmp_path / "all" / name).read_bytes() == (tmp_path / "weak" / name).read_bytes()

    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"), "--withhold-colour", "mauve"])
    assert bad.exit_code == 1 and "unknown colour(s) to withhold: mauve" in bad.output


def _existence_share(records) -> float:
    """The share of a file's questions that are POPE's "Is there ...?"."""
    questions = [turn["value"].split("\n") for record in records for turn in record["conversations"][::2]]
    return sum(any(line.startswith("Is there") for line in lines) for lines in questions) / len(questions)


def test_stage2_asks_existence_questions_more_often_than_the_text_mix(shapes_dir):
    """STAGE2_WEIGHTS triples POPE in finetune.json only; text.json keeps TYPE_WEIGHTS."""
    stage2, text = _existence_share(_load(shapes_dir, "finetune.json")), _existence_share(_load(shapes_dir, "text.json"))
    assert STAGE2_WEIGHTS == {**TYPE_WEIGHTS, "pope": 3 * TYPE_WEIGHTS["pope"]}
    assert stage2 > 2 * text, (stage2, text)  # 48 images: 19.4% against 7.3% (12,000: 25.2% against 10.3%)
