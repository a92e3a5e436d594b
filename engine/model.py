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


def checkpoint_keys(path: str | Path) -> list[str]:
    """Every tensor name stored in a checkpoint directory (to check its layout)."""
    keys: list[str] = []
    for shard in sorted(Path(path).glob("*.safetensors")):
        keys.extend(load_file(shard).keys())
    return keys
