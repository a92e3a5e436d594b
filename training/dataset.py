"""Supervised LLaVA-1.5 samples: token ids, labels on the assistant turns only, pixel values.

Text is rendered by `engine.prompts.conversation_segments` (the vicuna_v1 template the
engine prompts with), `<image>` is expanded by the checkpoint's own processor
(`replace_image_token`, what `processor(text, images)` does at inference) and the
whole conversation is tokenized once with character offsets: a token is supervised
when it lies inside an assistant answer (`</s>` included), every other label is -100.
A token that straddles a prompt/answer boundary, a first prompt that tokenizes
differently from the inference prompt, or a sample over the length limit is a
counted, reported `BadSample`, never a silently unsupervised one.

Images get exactly the inference preprocessing: `load_image`, then `expand_to_square`
with the processor's mean colour (LLaVA-1.5's `pad`), then the processor's image
processor — the steps of `engine.backends.local.LocalBackend._prepare` and `HFBackend._run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine.images import ImageError, expand_to_square, load_image, pad_color
from engine.prompts import IMAGE_TOKEN, conversation_segments
from training.records import BadSample, DataError, DataReport, Unusable, check_record, read_records, record_id

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


class ConversationEncoder:
    """Turns a conversation into (input_ids, labels) exactly as the processor would tokenize it."""

    def __init__(self, processor, max_length: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.pad_color = pad_color(processor.image_processor.image_mean)
        blank = Image.new("RGB", (8, 8), self.pad_color)
        self.image_text = processor.replace_image_token(processor.image_processor([blank]), 0)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.image_tokens = self.image_text.count(IMAGE_TOKEN)

    def _expand(self, text: str) -> str:
        return text.replace(IMAGE_TOKEN, self.image_text)

    def encode_many(self, conversations: list[list[str]]) -> list[Encoded | Unusable]:
        """Encode a batch of conversations (one fast-tokenizer call), or say why one cannot be."""
        rendered = []
        for messages in conversations:
            pieces, spans, at = [], [], 0
            for text, supervised in conversation_segments(messages):
                text = self._expand(text)
                if supervised:
                    spans.append((at, at + len(text)))
                pieces.append(text)
                at += len(text)
            first_prompt = self._expand(conversation_segments(messages[:1])[0][0])
            rendered.append(("".join(pieces), spans, first_prompt))
        full = self.tokenizer([r[0] for r in rendered], return_offsets_mapping=True)
        prompts = self.tokenizer([r[2] for r in rendered])
        return [
            self._labels(ids, offsets, spans, prompt_ids, messages)
            for ids, offsets, (_, spans, _), prompt_ids, messages in zip(
                full["input_ids"], full["offset_mapping"], rendered, prompts["input_ids"], conversations
            )
        ]

    def _labels(self, ids, offsets, spans, prompt_ids, messages) -> Encoded | Unusable:
        labels = [IGNORE_INDEX] * len(ids)
        covered = [0] * len(spans)
        for i, (start, end) in enumerate(offsets):
            if end <= start:
                continue  # special tokens the tokenizer added (BOS): never supervised
            for k, (lo, hi) in enumerate(spans):
                if lo <= start and end <= hi:
                    labels[i] = ids[i]
                    covered[k] += 1
                    break
                if start < hi and lo < end:
                    piece = repr(self.tokenizer.convert_ids_to_tokens(ids[i]))
                    return Unusable("tokenization mismatch", f"token {piece} crosses the start or end of answer {k + 1}")
        if not all(covered):
            return Unusable("tokenization mismatch", f"answer {covered.index(0) + 1} produced no tokens")
        if list(ids[: len(prompt_ids)]) != list(prompt_ids):
            return Unusable("tokenization mismatch", "the first prompt tokenizes differently from the inference prompt")
        expected = self.image_tokens * sum(m.count(IMAGE_TOKEN) for m in messages)
        if ids.count(self.image_token_id) != expected:
            return Unusable("tokenization mismatch", f"{ids.count(self.image_token_id)} image tokens, expected {expected}")
        if len(ids) > self.max_length:
            return Unusable("over-length", f"{len(ids)} tokens > max length {self.max_length}")
        return Encoded(list(ids), labels)

    def pixel_values(self, path: Path) -> torch.Tensor:
        """The model input for one image file, preprocessed exactly as at inference."""
        image = expand_to_square(load_image(path), self.pad_color)
        return self.processor.image_processor([image], return_tensors="pt")["pixel_values"][0]


@dataclass
class Sample:
    id: str
    image: Path | None
    input_ids: list[int]
    labels: list[int]


class SupervisedDataset(torch.utils.data.Dataset):
    """All usable samples of one LLaVA conversation file, validated and tokenized up front."""

    def __init__(
        self,
        data: str | Path,
        images: str | Path | None,
        processor,
        *,
        max_length: int = 2048,
        max_bad_fraction: float = 0.0,
        chunk: int = 1024,
    ) -> None:
        self.encoder = ConversationEncoder(processor, max_length)
        self.report = DataReport(source=str(data))
        records = read_records(data, self.report)
        images_dir = Path(images) if images is not None else None
        self.samples: list[Sample] = []
        seen: set[str] = set()
        pending: list[tuple[str, Path | None, list[str]]] = []
        for index, record in enumerate(records):
            rid = record_id(record, index)
            self.report.total += 1
            try:
                if rid in seen:
                    raise Unusable("bad record", "duplicate id")
                seen.add(rid)
                messages, image = check_record(record, images_dir)
            except Unusable as problem:
                self.report.bad.append(BadSample(rid, problem.reason, problem.detail))
                continue
            pending.append((rid, image, messages))
        for start in range(0, len(pending), chunk):
            batch = pending[start : start + chunk]
            for (rid, image, _), encoded in zip(batch, self.encoder.encode_many([m for _, _, m in batch])):
                if isinstance(encoded, Unusable):
                    self.report.bad.append(BadSample(rid, encoded.reason, encoded.detail))
                else:
                    self.samples.append(Sample(rid, image, encoded.input_ids, encoded.labels))
        self.report.check(max_bad_fraction)

    @property
    def lengths(self) -> list[int]:
        """Token counts, for length-grouped sampling (without loading a single image)."""
        return [len(sample.input_ids) for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        item: dict[str, Any] = {
            "input_ids": torch.tensor(sample.input_ids),
            "labels": torch.tensor(sample.labels),
            "pixel_values": None,
        }
        if sample.image is not None:
            try:
                item["pixel_values"] = self.encoder.pixel_values(sample.image)
            except ImageError as exc:
                raise DataError(f"record {sample.id}: image {sample.image}: {exc}") from None
        return item


class Collator:
    """Right-pads a batch; pixel values are stacked for the samples that have an image."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = item["input_ids"]
            labels[row, :n] = item["labels"]
            attention[row, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        pixels = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
        if pixels:
            batch["pixel_values"] = torch.stack(pixels)
        return batch
