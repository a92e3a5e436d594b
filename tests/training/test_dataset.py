"""Dataset + collator: assistant-only labels at exact positions, inference-identical inputs, bad data named."""

import json
import shutil

import pytest
import torch

from engine import prompts
from engine.images import expand_to_square, load_image, pad_color
from engine.model import load_model
from training.dataset import IGNORE_INDEX, Collator, ConversationEncoder, SupervisedDataset
from training.records import DataError, Unusable


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_model(tiny_model_dir).processor


def _write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def _record(rid, image, *pairs):
    turns = []
    for i, (question, answer) in enumerate(pairs):
        turns += [{"from": "human", "value": (f"<image>\n{question}" if i == 0 else question)}, {"from": "gpt", "value": answer}]
    return {"id": rid, "image": image, "conversations": turns}


def test_labels_are_exactly_the_assistant_answers(processor, shapes_dir, tmp_path):
    record = _record("r1", "train/000000.png", ("What color is it?", "red"), ("How many?", "3"))
    dataset = SupervisedDataset(_write(tmp_path, [record]), shapes_dir / "images", processor)
    tokenizer = processor.tokenizer
    item = dataset[0]
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    # Expected by hand: tokenize each template piece on its own; only the answer pieces are labelled.
    segments = prompts.conversation_segments([t["value"] for t in record["conversations"]])
    expected_ids, expected_labels = [], []
    encoder = ConversationEncoder(processor, 4096)
    for text, supervised in segments:
        piece = tokenizer(text.replace("<image>", encoder.image_text), add_special_tokens=False)["input_ids"]
        expected_ids += piece
        expected_labels += piece if supervised else [IGNORE_INDEX] * len(piece)
    assert ids == expected_ids and labels == expected_labels
    answers = [tokenizer.decode([t for t in chunk]) for chunk in _runs(labels)]
    assert answers == [" red</s>", " 3</s>"]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    positions = [i for i, t in enumerate(ids) if t == image_id]
    assert len(positions) == 64 and positions == list(range(positions[0], positions[0] + 64))
    assert all(labels[i] == IGNORE_INDEX for i in positions)


def _runs(labels):
    run = []
    for label in labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            yield run
            run = []


def test_training_inputs_are_the_inference_inputs(processor, shapes_dir, tmp_path):
    """The first prompt's ids and the pixels equal what the engine's backend feeds the model."""
    question = prompts.build_instruction("vqa", "What shape is shown in the image?")
    record = _record("r1", "train/000001.png", (question, "star"))
    item = SupervisedDataset(_write(tmp_path, [record]), shapes_dir / "images", processor)[0]
    image = expand_to_square(load_image(shapes_dir / "images/train/000001.png"), pad_color(processor.image_processor.image_mean))
    served = processor(text=[prompts.build_prompt(question)], images=[image], return_tensors="pt")
    n = served["input_ids"].shape[1]
    assert item["input_ids"][:n].tolist() == served["input_ids"][0].tolist()
    assert torch.equal(item["pixel_values"], served["pixel_values"][0])


def test_collator_pads_right_and_masks_padding(processor, shapes_dir, tmp_path):
    records = [
        _record("short", "train/000000.png", ("Color?", "red")),
        _record("long", "train/000001.png", ("Color?", "red"), ("Shape of the objects in the picture?", "star")),
    ]
    dataset = SupervisedDataset(_write(tmp_path, records), shapes_dir / "images", processor)
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    short, long = len(dataset.samples[0].input_ids), len(dataset.samples[1].input_ids)
    assert batch["input_ids"].shape == (2, long) and batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (long - short)
    assert (batch["input_ids"][0, short:] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert dataset.lengths == [short, long]


@pytest.mark.parametrize(
    "breakage, reason, detail",
    [
        (lambda r: r.update(image="train/nope.png"), "missing image", "train/nope.png not found"),
        (lambda r: r.update(image="../../etc/passwd"), "missing image", "outside the images directory"),
        (lambda r: r["conversations"].reverse(), "turns in wrong order", "turn 0 is from 'gpt'"),
        (lambda r: r["conversations"].pop(), "turns in wrong order", "ends with a human turn"),
        (lambda r: r["conversations"][0].update(value="no image token"), "bad record", "exactly one <image>"),
        (lambda r: r["conversations"][1].update({"from": "assistant"}), "bad record", "turn 1 needs 'from'"),
        (lambda r: r.pop("conversations"), "bad record", "'conversations' must be"),
        (lambda r: r["conversations"][1].update(value="word " * 3000), "over-length", "tokens > max length"),
    ],
)
def test_bad_records_are_counted_and_named(processor, shapes_dir, tmp_path, breakage, reason, detail):
    good = [_record(f"ok-{i}", "train/000000.png", ("Color?", "red")) for i in range(9)]
    bad = _record("broken-7", "train/000001.png", ("Shape?", "star"))
    breakage(bad)
    path = _write(tmp_path, good + [bad])
    with pytest.raises(DataError) as error:
        SupervisedDataset(path, shapes_dir / "images", processor, max_length=2048)
    message = str(error.value)
    assert "broken-7" in message and reason in message and detail in message and "1 bad" in message
    # Under a threshold the user sets, the run goes on and the report still names it.
    dataset = SupervisedDataset(path, shapes_dir / "images", processor, max_length=2048, max_bad_fraction=0.1)
    assert len(dataset) == 9 and dataset.report.usable == 9
    assert [(b.id, b.reason) for b in dataset.report.bad] == [("broken-7", reason)]


def test_duplicate_ids_and_non_objects_are_bad(processor, shapes_dir, tmp_path):
    records = [_record("same", "train/000000.png", ("Color?", "red"))] * 2 + ["not a record"]
    dataset = SupervisedDataset(_write(tmp_path, records), shapes_dir / "images", processor, max_bad_fraction=1.0)
    assert [(b.id, b.reason) for b in dataset.report.bad] == [("same", "bad record"), ("record #2", "bad record")]
    assert "duplicate id" in dataset.report.summary()


def test_broken_json_file_names_the_record(processor, shapes_dir, tmp_path):
    records = [_record(f"rec-{i}", "train/000000.png", ("Color?", "red")) for i in range(3)]
    text = json.dumps(records, indent=1)
    cut = text.index('"rec-2"') + 40
    path = tmp_path / "broken.json"
    path.write_text(text[:cut] + "}{" + text[cut:])
    with pytest.raises(DataError, match=r"broken.json is not valid JSON: .* line \d+, column \d+, in or after record 'rec-2'"):
        SupervisedDataset(path, shapes_dir / "images", processor)
    with pytest.raises(DataError, match="data file not found"):
        SupervisedDataset(tmp_path / "absent.json", shapes_dir / "images", processor)


def test_json_lines_with_a_broken_line(processor, shapes_dir, tmp_path):
    lines = [json.dumps(_record(f"l{i}", "train/000000.png", ("Color?", "red"))) for i in range(3)]
    lines[1] = lines[1][:-5]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dataset = SupervisedDataset(path, shapes_dir / "images", processor, max_bad_fraction=0.5)
    assert len(dataset) == 2 and dataset.report.bad[0].id == "l1" and dataset.report.bad[0].reason == "bad JSON"


def test_a_corrupt_image_fails_with_the_record_id(processor, shapes_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(shapes_dir / "images" / "train", images / "train")
    (images / "train/000002.png").write_bytes(b"not a png")
    dataset = SupervisedDataset(_write(tmp_path, [_record("corrupt-1", "train/000002.png", ("Color?", "red"))]), images, processor)
    with pytest.raises(DataError, match="record corrupt-1: image .*000002.png: not an image"):
        dataset[0]


def test_tokenization_mismatch_is_counted(shapes_dir, tmp_path):
    """A tokenizer whose tokens cross the prompt/answer boundary (no pre-tokenizer) cannot be supervised exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from engine.tiny_model import SPECIAL_TOKENS, TinySpec, build_processor

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(["ASSISTANT: red"] * 200 + [prompts.SYSTEM], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    processor = build_processor(tokenizer, TinySpec())
    records = [_record("crossing", "train/000000.png", ("Color?", "red")), _record("also", "train/000000.png", ("Color?", "blue"))]
    with pytest.raises(DataError) as error:
        SupervisedDataset(_write(tmp_path, records), shapes_dir / "images", processor, max_bad_fraction=0.9)
    message = str(error.value)
    assert "0 usable" in message and "tokenization mismatch: 2" in message
    assert "crossing (tokenization mismatch: token 'ASSISTANT:Ġred' crosses the start or end of answer 1)" in message
    encoded = ConversationEncoder(processor, 4096).encode_many([["<image>\nColor?", "red"]])[0]
    assert isinstance(encoded, Unusable)
