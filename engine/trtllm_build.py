"""`llava-labeler engine build`: compile a llava-hf checkpoint into TensorRT-LLM 1.2 engines.

TensorRT-LLM's LLM API / PyTorch backend does not support `LlavaForConditionalGeneration`,
so LLaVA-1.5 takes the TensorRT engine path of the 1.2 line (end-of-life after 1.2:
pin `tensorrt-llm==1.2.*`), exactly as its multimodal example documents:

1. `examples/models/core/llama/convert_checkpoint.py` turns the Llama half into a
   TensorRT-LLM checkpoint (or, with `--int4-awq`, `examples/quantization/quantize.py
   --qformat int4_awq` calibrates and quantizes it);
2. `trtllm-build` compiles it with `--max_multimodal_len = max_batch_size x 576`: every
   row of a batch carries its image's 576 projected CLIP features as prompt-table rows;
3. `examples/models/core/multimodal/build_multimodal_engine.py --model_type llava`
   exports the CLIP tower + projector (penultimate layer, CLS dropped) to a TensorRT engine.

The output directory is what `serve --backend trtllm` loads: `llm/`, `vision/` (the
layout `MultimodalModelRunner` expects), `hf/` (tokenizer and image processor, so
prompts and pixels are made exactly as for the transformers backend) and `build.json`.
The scripts live in TensorRT-LLM's examples tree, present at /app/tensorrt_llm/examples
in NVIDIA's release images; `--examples-dir` or $TRTLLM_EXAMPLES points elsewhere.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

DEFAULT_EXAMPLES = Path("/app/tensorrt_llm/examples")
CONVERT = Path("models/core/llama/convert_checkpoint.py")
QUANTIZE = Path("quantization/quantize.py")
VISUAL = Path("models/core/multimodal/build_multimodal_engine.py")
# Files of a llava-hf checkpoint that describe text and pixels, not weights.
PROCESSOR_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)


class BuildError(Exception):
    """The build cannot start or a step failed; the message says which and why."""


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class BuildPlan:
    """Everything the three builds need, checked before anything runs."""

    model_dir: Path
    out_dir: Path
    max_batch_size: int
    dtype: Literal["float16", "bfloat16"]
    int4_awq: bool
    max_input_len: int
    max_new_tokens: int
    image_tokens: int
    examples_dir: Path
    python: str = sys.executable

    @classmethod
    def create(
        cls,
        model_dir: Path,
        out_dir: Path,
        *,
        max_batch_size: int = 16,
        dtype: Literal["float16", "bfloat16"] = "float16",
        int4_awq: bool = False,
        max_input_len: int = 2048,
        max_new_tokens: int = 512,
        examples_dir: Path | None = None,
    ) -> "BuildPlan":
        image_tokens = llava_image_tokens(model_dir)
        if max_input_len <= image_tokens:
            raise BuildError(f"--max-input-len {max_input_len} leaves no room for text after {image_tokens} image tokens")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise BuildError(f"{out_dir} exists and is not empty")
        examples = examples_dir or Path(os.environ.get("TRTLLM_EXAMPLES", DEFAULT_EXAMPLES))
        return cls(
            model_dir=model_dir,
            out_dir=out_dir,
            max_batch_size=max_batch_size,
            dtype=dtype,
            int4_awq=int4_awq,
            max_input_len=max_input_len,
            max_new_tokens=max_new_tokens,
            image_tokens=image_tokens,
            examples_dir=examples,
        )

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def steps(self) -> list[Step]:
        """The commands, in order: LLM checkpoint, LLM engine, visual engine."""
        py, model, ckpt = self.python, str(self.model_dir), str(self.checkpoint_dir)
        if self.int4_awq:
            convert = Step("quantize the LLM to INT4 AWQ", (
                py, str(self.examples_dir / QUANTIZE), "--model_dir", model, "--output_dir", ckpt,
                "--dtype", self.dtype, "--qformat", "int4_awq", "--calib_size", "32",
            ))
        else:
            convert = Step("convert the LLM checkpoint", (
                py, str(self.examples_dir / CONVERT), "--model_dir", model, "--output_dir", ckpt, "--dtype", self.dtype,
            ))
        llm = [
            "trtllm-build", "--checkpoint_dir", ckpt, "--output_dir", str(self.out_dir / "llm"),
            "--gemm_plugin", self.dtype, "--max_batch_size", str(self.max_batch_size),
            "--max_input_len", str(self.max_input_len),
            "--max_seq_len", str(self.max_input_len + self.max_new_tokens),
            "--max_multimodal_len", str(self.max_batch_size * self.image_tokens),
        ]
        if not self.int4_awq:  # TensorRT-LLM: no fused MLP with quantized weights
            llm.append("--use_fused_mlp=enable")
        visual = Step("build the visual engine", (
            py, str(self.examples_dir / VISUAL), "--model_type", "llava", "--model_path", model,
            "--output_dir", str(self.out_dir / "vision"), "--max_batch_size", str(self.max_batch_size),
        ))
        return [convert, Step("build the LLM engine", tuple(llm)), visual]

    def check_tools(self) -> None:
        """Fail before any work when TensorRT-LLM or its example scripts are missing."""
        try:
            import tensorrt_llm  # noqa: F401
        except ImportError:
            raise BuildError(
                "tensorrt_llm is not installed: engines are built on a GPU machine with tensorrt-llm==1.2.* "
                "(NVIDIA's TensorRT-LLM release image); pip's tensorrt-llm package is only a stub"
            ) from None
        if shutil.which("trtllm-build") is None:
            raise BuildError("trtllm-build is not on PATH (it comes with tensorrt-llm)")
        for script in (QUANTIZE if self.int4_awq else CONVERT, VISUAL):
            if not (self.examples_dir / script).is_file():
                raise BuildError(f"{self.examples_dir / script} not found: set --examples-dir or $TRTLLM_EXAMPLES")


def llava_image_tokens(model_dir: Path) -> int:
    """Image features per image of a llava-hf checkpoint (576 for LLaVA-1.5: 336 px / patch 14, CLS dropped)."""
    config_file = model_dir / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise BuildError(f"{model_dir} is not a checkpoint: config.json is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BuildError(f"cannot read {config_file}: {exc}") from None
    if config.get("model_type") != "llava":
        raise BuildError(f"{model_dir} holds a {config.get('model_type')!r} model; engine build compiles LLaVA-1.5 ('llava')")
    vision = config.get("vision_config") or {}
    size, patch = vision.get("image_size", 336), vision.get("patch_size", 14)
    extra = 1 if config.get("vision_feature_select_strategy", "default") == "full" else 0
    return (size // patch) ** 2 + extra


def copy_processor(model_dir: Path, out: Path) -> None:
    """The tokenizer and image-processor files the adapter needs next to the engines."""
    out.mkdir(parents=True, exist_ok=True)
    for name in PROCESSOR_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)


def run_plan(plan: BuildPlan, *, echo: Callable[[str], None] = print, runner=subprocess.run) -> None:
    """Run every step (output streams through), then write `hf/` and `build.json`."""
    plan.check_tools()
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    for number, step in enumerate(plan.steps(), 1):
        echo(f"[{number}/3] {step.name}: {step.shell()}")
        code = runner(list(step.argv)).returncode
        if code != 0:
            raise BuildError(f"step {number} ({step.name}) failed with exit code {code}; see its output above")
    copy_processor(plan.model_dir, plan.out_dir / "hf")
    shutil.rmtree(plan.checkpoint_dir, ignore_errors=True)
    manifest = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(plan).items()}
    manifest["steps"] = [step.shell() for step in plan.steps()]
    (plan.out_dir / "build.json").write_text(json.dumps(manifest, indent=2) + "\n")
