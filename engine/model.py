"""Load and save LLaVA-1.5 checkpoints in the llava-hf format.

`load_model` takes a local directory or a hub id and gives back the model, its
processor and the device/dtype it chose; a missing or corrupt checkpoint is an
`EngineError` that names the path and the problem. `save_model` writes the key
layout of the published `llava-hf/llava-1.5-*-hf` checkpoints
(`vision_tower.vision_model.*`), which TensorRT-LLM's converter, vLLM and older
transformers read: transformers 5.x alone would drop the `vision_model` level.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.backend import EngineError

log = logging.getLogger(__name__)

LLAVA_HF_VISION_PREFIX = "vision_tower.vision_model."


@dataclass
class LoadedModel:
    """A ready-to-run model with its processor."""

    model: "torch.nn.Module"
    processor: object
    device: torch.device
    dtype: torch.dtype
    source: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def pick_device(device: str = "auto") -> torch.device:
    """CUDA when present (auto), else CPU; an explicit choice is honoured."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} asked for, but no CUDA device is available")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """bf16 on GPUs that have it, fp32 on the CPU (auto); an explicit choice is honoured."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise EngineError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16") from None


def _looks_local(source: str) -> bool:
    """Hub ids are `org/name`; anything else, or anything that exists on disk, is a path."""
    head = source.split("/", 1)[0]
    return source.startswith((".", "/", "~")) or source.count("/") != 1 or Path(head).exists()


def _check_local(path: Path) -> None:
    if not path.exists():
        raise EngineError(f"no checkpoint at {path}: the directory does not exist")
    if not path.is_dir():
        raise EngineError(f"checkpoint {path} is a file; expected a directory with config.json and weights")
    if not (path / "config.json").is_file():
        raise EngineError(f"{path} is not a checkpoint: config.json is missing")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise EngineError(f"{path} has no weights (*.safetensors or *.bin)")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise EngineError(f"corrupt checkpoint at {path}: config.json is not valid JSON ({exc})") from None
    if config.get("model_type") != "llava":
        raise EngineError(f"{path} holds a {config.get('model_type')!r} model; llava-labeler runs LLaVA-1.5 ('llava')")


def _fix_processor(processor, config) -> None:
    """transformers 5.x needs these on a LlavaProcessor for CLIP; older llava-hf configs lack them."""
    if getattr(processor, "patch_size", None) is None:
        processor.patch_size = config.vision_config.patch_size
    if not getattr(processor, "num_additional_image_tokens", 0):
        processor.num_additional_image_tokens = 1  # CLIP's CLS token
    if getattr(processor, "vision_feature_select_strategy", None) is None:
        processor.vision_feature_select_strategy = config.vision_feature_select_strategy
    processor.tokenizer.padding_side = "left"
    keep_word_start_after_special_tokens(processor.tokenizer)
    # LLaVA takes no token_type_ids; transformers 4.x's PreTrainedTokenizerFast returns them by
    # default and generate() then refuses them as unused model kwargs.
    names = getattr(processor.tokenizer, "model_input_names", None)
    if names and "token_type_ids" in names:
        processor.tokenizer.model_input_names = [name for name in names if name != "token_type_ids"]


def keep_word_start_after_special_tokens(tokenizer) -> None:
    """Make text after `<image>` start a new word (`▁`), as LLaVA-1.5 was trained, whatever the checkpoint's `legacy` says.

    The original LLaVA tokenizes the prompt chunk by chunk around `<image>`, each chunk with
    sentencepiece's leading `▁` (`<image>\\n` is `<image> ▁ <0x0A>`). transformers 5 rebuilds a
    tokenizer whose config says `LlamaTokenizer` with `legacy: false` (published llava-hf
    checkpoints do) with a Metaspace that prepends `▁` only to the first piece, dropping it
    after every special token; prepending to every piece gives the original's ids again.
    """
    from tokenizers import pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    metaspace = getattr(backend, "pre_tokenizer", None)
    if isinstance(metaspace, pre_tokenizers.Metaspace) and metaspace.prepend_scheme == "first":
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=metaspace.replacement, prepend_scheme="always", split=metaspace.split
        )


def load_model(source: str | Path, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a llava-hf-format LLaVA checkpoint (local directory or hub id) for inference."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    source = str(source)
    if _looks_local(source):
        _check_local(Path(source).expanduser())
        source = str(Path(source).expanduser())
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LlavaForConditionalGeneration.from_pretrained(source, dtype=torch_dtype)
            processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError, json.JSONDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"could not load the checkpoint {source}: {first_line}") from None
    _fix_processor(processor, model.config)
    model.to(torch_device).eval()
    log.info("loaded %s on %s (%s)", source, torch_device, torch_dtype)
    return LoadedModel(model=model, processor=processor, device=torch_device, dtype=torch_dtype, source=source)


def to_llava_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers-5 vision keys (`vision_tower.X`) to llava-hf's `vision_tower.vision_model.X`."""
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("vision_tower.") and not key.startswith(LLAVA_HF_VISION_PREFIX):
            key = LLAVA_HF_VISION_PREFIX + key[len("vision_tower.") :]
        renamed[key] = tensor
    return renamed


def save_model(model, processor, out_dir: str | Path) -> Path:
    """Save model + processor so that every LLaVA reader loads it (llava-hf key layout)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    portable_tokenizer_config(out / "tokenizer_config.json")
    for shard in out.glob("*.safetensors"):
        state = load_file(shard)
        fixed = to_llava_hf_keys(state)
        if list(fixed) != list(state):
            save_file(fixed, shard, metadata={"format": "pt"})
    index = out / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(zip(to_llava_hf_keys(data["weight_map"]), data["weight_map"].values()))
        index.write_text(json.dumps(data, indent=2))
    return out


# Standard special-token attributes; any other `*_token` entry is a model-specific named token.
_STANDARD_TOKENS = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}


def portable_tokenizer_config(path: Path) -> None:
    """Rewrite transformers 5.x's tokenizer_config.json into the form 4.x reads too.

    5.x names its fast tokenizer `TokenizersBackend` and stores `extra_special_tokens` as a
    list, with named tokens (`image_token`) at the top level; 4.x (TensorRT-LLM 1.2 pins
    4.57.1) knows neither and fails to load the tokenizer. `PreTrainedTokenizerFast` is
    what both load tokenizer.json as, and a `{name: token}` mapping is what both read.
    """
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    changed = False
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        if extra:
            config.setdefault("additional_special_tokens", extra)
        config["extra_special_tokens"] = {
            key: value
            for key, value in config.items()
            if key.endswith("_token") and key not in _STANDARD_TOKENS and isinstance(value, str)
        }
        changed = True
    if changed:
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def checkpoint_keys(path: str | Path) -> list[str]:
    """Every tensor name stored in a checkpoint directory (to check its layout)."""
    keys: list[str] = []
    for shard in sorted(Path(path).glob("*.safetensors")):
        keys.extend(load_file(shard).keys())
    return keys
