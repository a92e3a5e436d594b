"""Build tiny LLaVA-1.5-architecture models, with a tokenizer trained here or the real LLaMA one.

No weights can be downloaded on the build machines, so tests, benchmarks and the
demo model start from this factory: a tiny CLIP ViT vision tower (features from the
penultimate layer, CLS dropped), LLaVA-1.5's 2-layer GELU MLP projector and a tiny
Llama, saved in the llava-hf format and loaded by the same `load_model` as
`llava-hf/llava-1.5-7b-hf`. The tokenizer is a byte-level BPE trained with
`tokenizers` on the project's own prompt strings plus any corpus the caller adds, so
every string (JSON included) stays encodable.

`real_geometry` gives the published llava-hf geometry instead (CLIP ViT-L/14 at 336 px,
576 image tokens, Vicuna-7B/13B widths, 4096 positions, the 32k LLaMA vocabulary with
`<image>` at 32000 and `<pad>` at 32001, 32064 embedding rows), with as few layers and
as narrow widths as a test wants; such a model takes the real tokenizer
(`engine.llama_tokenizer`) through `build_tiny_model(..., tokenizer_dir=...)`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from engine import prompts

PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", PAD_TOKEN, prompts.IMAGE_TOKEN]
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
    vocab_size: int = 1024  # the trained tokenizer's size, or the embedding rows with a given tokenizer
    max_positions: int = 1024
    rms_norm_eps: float = 1e-6
    seed: int = 0

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# The published llava-hf configurations (llava-hf/llava-1.5-7b-hf, -13b-hf): CLIP ViT-L/14-336 (24 layers,
# 1024 wide, 16 heads, MLP 4096), Vicuna v1.5 (RMSNorm eps 1e-5, 4096 positions) and the LLaMA
# vocabulary plus `<image>` and `<pad>`, padded to 32064 rows.
Geometry = Literal["llava-1.5-7b", "llava-1.5-13b"]
GEOMETRIES: dict[Geometry, TinySpec] = {
    "llava-1.5-7b": TinySpec(
        image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
        text_hidden=4096, text_layers=32, text_heads=32, text_intermediate=11008,
        vocab_size=32064, max_positions=4096, rms_norm_eps=1e-5,
    ),  # fmt: skip
}
GEOMETRIES["llava-1.5-13b"] = replace(
    GEOMETRIES["llava-1.5-7b"], text_hidden=5120, text_layers=40, text_heads=40, text_intermediate=13824
)


def real_geometry(
    name: Geometry,
    *,
    text_layers: int = 1,
    vision_layers: int = 1,
    text_hidden: int | None = None,
    vision_hidden: int | None = None,
    seed: int = 0,
) -> TinySpec:
    """The published geometry `name` with fewer layers and, for fast tests, narrower widths.

    Image size, patch, vocabulary and positions stay the real ones (576 image tokens, 32064
    rows). A narrower width keeps the published MLP ratio and as many of the published heads
    as fit it whole (a greatest common divisor), the Llama's of an even size, as RoPE needs.
    """
    if name not in GEOMETRIES:
        raise ValueError(f"unknown geometry {name!r}; expected one of {', '.join(GEOMETRIES)}")
    full = GEOMETRIES[name]
    text = text_hidden or full.text_hidden
    vision = vision_hidden or full.vision_hidden
    if text % 2:
        raise ValueError(f"the text width must be even (RoPE rotates pairs of dimensions), got {text}")
    return replace(
        full,
        text_layers=text_layers,
        vision_layers=vision_layers,
        text_hidden=text,
        text_heads=math.gcd(text // 2, full.text_heads),
        text_intermediate=round(full.text_intermediate * text / full.text_hidden),
        vision_hidden=vision,
        vision_heads=math.gcd(vision, full.vision_heads),
        seed=seed,
    )


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
    return _llava_tokenizer(tokenizer)


def _llava_tokenizer(tokenizer):
    """A `tokenizers` pipeline as the fast tokenizer a LLaVA processor holds (Llama's special tokens, `<image>`).

    Saved as a plain `PreTrainedTokenizerFast`, so transformers 4.x and 5.x both run the
    pipeline in `tokenizer.json` as it is, instead of rebuilding one from the class.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": prompts.IMAGE_TOKEN},
        padding_side="left",
        model_max_length=1 << 30,
    )


def llava_tokenizer(tokenizer_dir: Path):
    """The tokenizer in `tokenizer_dir` (its `tokenizer.json`), `<image>` and `<pad>` added after it as llava-hf adds them."""
    from tokenizers import AddedToken, Tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{tokenizer_dir} is not a tokenizer directory: tokenizer.json is missing")
    tokenizer = Tokenizer.from_file(str(path))
    added = (prompts.IMAGE_TOKEN, PAD_TOKEN)
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in added])
    return _llava_tokenizer(tokenizer)


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


def llava_config(spec: TinySpec, tokenizer, vocab_rows: int):
    """The `LlavaConfig` of `spec` for `tokenizer`, with `vocab_rows` rows of embeddings."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text_config = LlamaConfig(
        vocab_size=vocab_rows,
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=spec.rms_norm_eps,
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
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=spec.image_tokens,
        tie_word_embeddings=False,
    )


def build_tiny_model(
    out_dir: str | Path, spec: TinySpec = TinySpec(), corpus: Iterable[str] = (), tokenizer_dir: Path | None = None
) -> Path:
    """Create a randomly initialised tiny LLaVA-1.5 and save it in the llava-hf format.

    Without `tokenizer_dir` a tokenizer is trained here and its size is the vocabulary's;
    with it (e.g. `engine.llama_tokenizer.fetch_llama_tokenizer`), that tokenizer gets
    `<image>` and `<pad>` and the embeddings get `spec.vocab_size` rows, as llava-hf pads them.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    from engine.model import save_model

    if tokenizer_dir is None:
        tokenizer = train_tokenizer(spec.vocab_size, corpus)
        rows = len(tokenizer)
    else:
        tokenizer = llava_tokenizer(tokenizer_dir)
        rows = spec.vocab_size
        if rows < len(tokenizer):
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the {rows} rows of embeddings asked for")
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(llava_config(spec, tokenizer, rows))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = save_model(model, build_processor(tokenizer, spec), out_dir)
    (out / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return out
