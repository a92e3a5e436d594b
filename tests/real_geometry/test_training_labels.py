"""Training samples carry the original LLaVA's input ids and labels: `preprocess_v1` of llava-torch 1.2.2.post1 is the oracle.

The oracle. `preprocess_multimodal` then `preprocess_v1`, as the original's `LazySupervisedDataset`
runs them for a record with an image, and the module-level `IS_TOKENIZER_GREATER_THAN_0_14 = ...`
line are cut out of the installed `llava/train/train.py` with `ast` and executed unchanged; the file
itself is not imported (its imports pull in the whole model and its trainer). What they run with:
  - `conversation_lib`, `tokenizer_image_token`, `IGNORE_INDEX`, `DEFAULT_IMAGE_TOKEN`,
    `DEFAULT_IM_START_TOKEN`, `DEFAULT_IM_END_TOKEN`: the original conversation.py, mm_utils.py and
    constants.py as the conftest's `original_llava` loads them by path (the `llava` package
    `__init__` is the one thing stubbed there), with `conversation_lib.default_conversation` set to
    `conv_templates["v1"]` for this module, as `train()` does for `--version v1` (LLaVA-1.5's scripts);
  - `torch`, `tokenizers`, `packaging.version`, and `transformers`, `typing.Dict`, `typing.Sequence`
    (annotations only): the real modules;
  - STUB 1, `data_args` (read by `preprocess_multimodal`): `SimpleNamespace(is_multimodal=True,
    mm_use_im_start_end=False)`, the values of LLaVA-1.5's scripts, in place of its CLI dataclass;
  - the tokenizer: the real LLaMA tokenizer (conftest `llama_tokenizer_dir`) as `train()` sets it up
    (`model_max_length=2048`, `padding_side="right"`, `pad_token = unk_token` for v1), its published
    tokenizer.json pipeline read by `PreTrainedTokenizerFast`. `train()` asks for the sentencepiece
    tokenizer (`use_fast=False`), which transformers 5 no longer has; its `AutoTokenizer` rebuilds a
    `LlamaTokenizer` that drops sentencepiece's lone `▁` before a leading space (checked in the
    fixture), the tokenizer.json pipeline keeps it. STUB 2: `tokenizer.legacy = True`, an attribute
    `preprocess_v1` reads and this class lacks; true is what the directory's config says and how the
    pipeline tokenizes (a `▁` starts the text after a special token, as sentencepiece did).
Nothing else is stubbed.

Ours. A `SupervisedDataset` over a JSON file (and an image file), with the processor `load_model`
gives the trainer (`training.train.run_training`) on the real-geometry checkpoint (conftest
`real_model_dir`); ids and labels are read from `dataset[i]`, as the collator gets them.

Mapping. Our `<image>` is expanded by the llava-hf processor to 576 image-token ids (labelled
-100); the original keeps one `IMAGE_TOKEN_INDEX` (-200) placeholder. The run is checked
(contiguous, exactly 576, all -100) and collapsed to one -200 labelled -100 before comparing.

Identical: input ids and labels of a single-turn record, a three-exchange record, and records whose
`<image>` ends the first question or follows it on the same line, each against the original's whole
path for a record with an image, `preprocess_multimodal` then `preprocess_v1` (which prints no warning
for them): both move the `<image>` to the front of its message, followed by a newline.
In both, the `</s>` after every answer is supervised and the space after `ASSISTANT:` is the `▁` of
the answer's first supervised token.

Different, pinned exactly:
  - A later question that quotes the separator (`USER: hi ASSISTANT: hello`): `preprocess_v1` splits
    each round at " ASSISTANT: ", gets three parts, stops counting after the first round, prints
    "WARNING: tokenization mismatch: 53 vs. 99. (ignored)" (53: the end of the first answer's `</s>`;
    99: the whole sequence) and sets every label to -100: the record is trained on with loss 0.
    Ours is right: the ids are the same, and ours labels by the character offsets of the rendered
    answers, so it supervises exactly the answer tokens the original itself supervises for the same
    answers when the question quotes nothing.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from engine.model import load_model
from engine.prompts import IMAGE_TOKEN
from training.dataset import IGNORE_INDEX, SupervisedDataset

IMAGE_TOKENS = 576  # (336 / 14) ** 2 patches of CLIP ViT-L/14-336
IMAGE = "shape.png"


def _exchanges(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    turns = []
    for question, answer in pairs:
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


SINGLE = _exchanges(("<image>\nWhat shape is shown?", "A red circle."))
MULTI = _exchanges(
    ("<image>\nWhat shape is shown?", "A red circle."),
    ("What colour is it?", "Red."),
    ("How many shapes are there?", "There is one shape."),
)
IMAGE_LAST = _exchanges(("What shape is shown?\n<image>", "A red circle."), ("Is it big?", "No."))
IMAGE_INLINE = _exchanges(("<image> What shape is shown? ", "A red circle."))
QUOTES_SEPARATOR = _exchanges(
    ("<image>\nWhat shape is shown?", "A red circle."),
    ("Finish this chat: USER: hi ASSISTANT: hello", "Done."),
    ("How many shapes are there?", "There is one shape."),
)
# QUOTES_SEPARATOR with the quote taken out of the question: the same answers, nothing unusual.
QUOTES_NOTHING = _exchanges(
    ("<image>\nWhat shape is shown?", "A red circle."),
    ("Finish this chat: USER: hi", "Done."),
    ("How many shapes are there?", "There is one shape."),
)


@pytest.fixture(scope="module")
def original(original_llava, llama_tokenizer_dir: Path):
    """`preprocess_v1` / `preprocess_multimodal` of the installed train.py, and the tokenizer `train()` would build."""
    import packaging.version
    import tokenizers
    import transformers

    train_py = Path(original_llava.conversation.__file__).parent / "train" / "train.py"
    source = train_py.read_text()
    tree = ast.parse(source)
    wanted = [
        node
        for node in tree.body
        if (isinstance(node, ast.FunctionDef) and node.name in ("preprocess_v1", "preprocess_multimodal"))
        or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IS_TOKENIZER_GREATER_THAN_0_14" for t in node.targets))
    ]  # fmt: skip
    assert len(wanted) == 3, "train.py no longer has preprocess_v1, preprocess_multimodal and IS_TOKENIZER_GREATER_THAN_0_14"
    conversation_lib = original_llava.conversation
    constants = original_llava.constants
    namespace = {
        "conversation_lib": conversation_lib,
        "tokenizer_image_token": original_llava.mm_utils.tokenizer_image_token,
        "IGNORE_INDEX": constants.IGNORE_INDEX,
        "DEFAULT_IMAGE_TOKEN": constants.DEFAULT_IMAGE_TOKEN,
        "DEFAULT_IM_START_TOKEN": constants.DEFAULT_IM_START_TOKEN,
        "DEFAULT_IM_END_TOKEN": constants.DEFAULT_IM_END_TOKEN,
        "torch": torch,
        "transformers": transformers,
        "tokenizers": tokenizers,
        "version": packaging.version,
        "Dict": typing.Dict,
        "Sequence": typing.Sequence,
    }
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(train_py), "exec"), namespace)
    assert namespace["IS_TOKENIZER_GREATER_THAN_0_14"] is True

    # train() loads `AutoTokenizer(..., use_fast=False)`: sentencepiece, which transformers 5 no longer
    # has; its `AutoTokenizer` rebuilds a LlamaTokenizer whose Metaspace swallows a leading space, so
    # the published tokenizer.json pipeline is read as it is.
    sentencepiece_ids = [1, 29871, 15043, 3186]  # Meta's LLaMA tokenizer on " Hello world"
    assert transformers.AutoTokenizer.from_pretrained(llama_tokenizer_dir)(" Hello world").input_ids == [1, 15043, 3186]
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(
        llama_tokenizer_dir, model_max_length=2048, padding_side="right"
    )
    assert tokenizer(" Hello world").input_ids == sentencepiece_ids
    tokenizer.pad_token = tokenizer.unk_token  # train(), for every template but v0 and plain
    # STUB 2: `legacy`, read by preprocess_v1, absent from this class. True is what the directory's config
    # says and how the pipeline tokenizes: a `▁` starts the text after a special token.
    assert json.loads((llama_tokenizer_dir / "tokenizer_config.json").read_text())["legacy"] is True
    assert tokenizer.convert_ids_to_tokens(tokenizer("a</s>USER").input_ids) == ["<s>", "▁a", "</s>", "▁US", "ER"]
    tokenizer.legacy = True
    data_args = SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)  # STUB 1

    def preprocess(conversations: list[dict[str, str]]) -> tuple[list[int], list[int], str]:
        """The original's (input_ids, labels) for one record, and what it printed."""
        sources = copy.deepcopy([conversations])
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            sources = namespace["preprocess_multimodal"](sources, data_args)
            out = namespace["preprocess_v1"](sources, tokenizer, has_image=True)
        return out["input_ids"][0].tolist(), out["labels"][0].tolist(), printed.getvalue()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conversation_lib, "default_conversation", conversation_lib.conv_templates["v1"])  # train(): --version v1
        yield SimpleNamespace(preprocess=preprocess, tokenizer=tokenizer, image_index=constants.IMAGE_TOKEN_INDEX)


@pytest.fixture(scope="module")
def ours(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Our (input_ids, labels) for records, through `SupervisedDataset` with the trainer's processor."""
    processor = load_model(real_model_dir, device="cpu", dtype="float32").processor
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    folder = tmp_path_factory.mktemp("training-labels")
    Image.new("RGB", (336, 336), (200, 30, 30)).save(folder / IMAGE)

    def encode(*records: list[dict[str, str]]) -> list[tuple[list[int], list[int]]]:
        data = folder / "data.json"
        data.write_text(json.dumps([{"id": str(i), "image": IMAGE, "conversations": c} for i, c in enumerate(records)]))
        dataset = SupervisedDataset(data, folder, processor)
        assert dataset.report.bad == [] and len(dataset) == len(records)
        assert dataset.encoder.image_tokens == IMAGE_TOKENS
        out = []
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["pixel_values"] is not None
            out.append((item["input_ids"].tolist(), item["labels"].tolist()))
        return out

    return SimpleNamespace(encode=encode, image_id=image_id)


def _collapse(ids: list[int], labels: list[int], image_id: int, placeholder: int) -> tuple[list[int], list[int]]:
    """Our 576 image-token ids as the original's one placeholder (label -100), after checking the run."""
    first = ids.index(image_id)
    assert ids[first : first + IMAGE_TOKENS] == [image_id] * IMAGE_TOKENS and ids.count(image_id) == IMAGE_TOKENS
    assert labels[first : first + IMAGE_TOKENS] == [IGNORE_INDEX] * IMAGE_TOKENS
    return (ids[:first] + [placeholder] + ids[first + IMAGE_TOKENS :],
            labels[:first] + [IGNORE_INDEX] + labels[first + IMAGE_TOKENS :])  # fmt: skip


def _runs(labels: list[int]) -> list[list[int]]:
    """The supervised stretches of a label list."""
    runs, run = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs.append(run)
            run = []
    return runs


@pytest.mark.parametrize(
    "conversation", [SINGLE, MULTI, IMAGE_LAST, IMAGE_INLINE], ids=["single-turn", "three-exchanges", "image-last", "image-inline"]
)
def test_ids_and_labels_are_preprocess_v1s(original, ours, conversation):
    expected_ids, expected_labels, printed = original.preprocess(conversation)
    assert printed == ""  # no tokenization-mismatch warning: the oracle really supervised this record
    [(ids, labels)] = ours.encode(conversation)
    ids, labels = _collapse(ids, labels, ours.image_id, original.image_index)
    assert ids == expected_ids
    assert labels == expected_labels
    answers = [turn["value"] for turn in conversation[1::2]]
    runs = _runs(labels)
    assert [original.tokenizer.decode(run) for run in runs] == [f"{answer}</s>" for answer in answers]
    assert all(run[-1] == original.tokenizer.eos_token_id for run in runs)  # `</s>` supervised, in both


def test_a_question_quoting_the_separator_is_dropped_by_the_original_and_kept_by_ours(original, ours):
    expected_ids, expected_labels, printed = original.preprocess(QUOTES_SEPARATOR)
    [(ids, labels)] = ours.encode(QUOTES_SEPARATOR)
    ids, labels = _collapse(ids, labels, ours.image_id, original.image_index)
    assert ids == expected_ids  # same sequence fed to the model
    # The original counted the first round (BOS + its tokens) and stopped at the second:
    # `cur_len` is the position after the first answer's `</s>`, `total_len` the whole sequence.
    first_answer_end = expected_ids.index(original.tokenizer.eos_token_id) + 1
    assert printed == f"WARNING: tokenization mismatch: {first_answer_end} vs. {len(expected_ids)}. (ignored)\n"
    assert printed == "WARNING: tokenization mismatch: 53 vs. 99. (ignored)\n"
    assert expected_labels == [IGNORE_INDEX] * len(expected_ids)  # the original trains on it with loss 0
    # Ours supervises exactly the answer tokens the original supervises for the same answers elsewhere.
    _, control_labels, control_printed = original.preprocess(QUOTES_NOTHING)
    assert control_printed == ""
    assert _runs(labels) == _runs(control_labels) and len(_runs(labels)) == 3
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(labels, ids))
