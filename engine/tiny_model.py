"""Build tiny LLaVA-1.5-architecture models, with a tokenizer trained here.

No weights can be downloaded on the build machines, so tests, benchmarks and the
demo model start from this factory: a tiny CLIP ViT vision tower (features from the
penultimate layer, CLS dropped), LLaVA-1.5's 2-layer GELU MLP projector and a tiny
Llama, saved in the llava-hf format and loaded by the same `load_model` as
`llava-hf/llava-1.5-7b-hf`. The tokenizer is a byte-level BPE trained with
`tokenizers` on the project's own prompt strings plus any corpus the caller adds, so
every string (JSON included) stays encodable.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import prompts

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", prompts.IMAGE_TOKEN]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny LLaVA-1.5 (the real one: 336 px, patch 14, 1024/24 CLIP, 4096/32 Vicuna, 32k vocab)."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 344
    vocab_size: int = 1024
    max_positions: int = 1024
    seed: int = 0

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def base_corpus() -> list[str]:
    """Text every tiny tokenizer learns from: the prompts, JSON punctuation, digits, common words."""
    words = (
        "a an the is are there this that what which how many where color colour shape object objects image "
        "picture photo of in on at to left right top bottom middle center and or not no yes one two three four "
        "five six seven eight nine ten small large big tiny red green blue yellow purple orange white black gray "
        "circle square triangle star describe question answer true false null unanswerable"
    ).split()
    rng = random.Random(0)
    lines = [
        prompts.SYSTEM,
        prompts.SHORT_ANSWER,
        prompts.MULTIPLE_CHOICE,
        prompts.UNANSWERABLE,
        prompts.DEFAULT_CAPTION,
        prompts.JSON_ANSWER,
        prompts.DEFAULT_JSON_QUESTION,
        f"{prompts.USER}: {prompts.IMAGE_TOKEN}\n {prompts.ASSISTANT}:",
        '{"type":"object","properties":{"name":{"type":"string"},"count":{"type":"integer"},'
        '"score":{"type":"number"},"tags":{"type":"array","items":{"type":"string"}},"ok":{"type":"boolean"}},'
        '"required":["name"],"enum":[],"minimum":0,"maximum":10,"$defs":{},"$ref":"#/$defs/x"}',
        "0123456789 +-.,:;!?'\"()[]{}<>/\\_=*&%$#@ \n\t",
    ]
    lines += [" ".join(rng.choices(words, k=12)) for _ in range(400)]
    return lines


def pseudo_words(count: int, seed: int = 0) -> list[str]:
    """Made-up text with enough distinct words for BPE to reach a large vocabulary (e.g. 32k)."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "ng", "qu", "ck"]
    return [" ".join("".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(16)) for _ in range(count)]


def train_tokenizer(vocab_size: int, corpus: Iterable[str] = ()):
    """A byte-level BPE tokenizer (Llama's special tokens plus `<image>`) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = base_corpus() + list(corpus)
    if vocab_size > 2048:
        lines += pseudo_words(vocab_size * 4)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": prompts.IMAGE_TOKEN},
        padding_side="left",
        model_max_length=1 << 30,
    )


def build_processor(tokenizer, spec: TinySpec):
    """CLIP preprocessing at the tiny image size, wrapped in a LlavaProcessor."""
    from transformers import LlavaProcessor

    try:  # transformers 5.x: the PIL-backed CLIP processor (no torchvision needed)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4.x (TensorRT-LLM 1.2's pin): CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as ImageProcessor

    image_processor = ImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def build_tiny_model(out_dir: str | Path, spec: TinySpec = TinySpec(), corpus: Iterable[str] = ()) -> Path:
    """Create a randomly initialised tiny LLaVA-1.5 and save it in the llava-hf format."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from engine.model import save_model

    tokenizer = train_tokenizer(spec.vocab_size, corpus)
    vocab = len(tokenizer)
    text_config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 4,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=spec.image_tokens,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = save_model(model, build_processor(tokenizer, spec), out_dir)
    (out / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return out
