"""The TensorRT-LLM backend: build commands, and the adapter's prompt/image/grammar plumbing.

TensorRT-LLM cannot be installed here (PyPI has a stub; it needs NVIDIA's GPU images), so
the adapter runs on `HFEngineRunnerFake`, a FAKE `EngineRunner`: the tiny transformers
model stands in for the visual and LLM engines and keeps the executor's contract (image
features behind prompt-table ids >= vocab_size, the logits post-processor called once per
step, greedy decoding to end-of-sequence or max_tokens). Everything else is the real
adapter. The tests marked `gpu` build and run real engines and skip without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

from engine.backend import GenerationRequest
from engine.backends.trtllm import EngineRow, RowHook, TRTLLMBackend
from engine.model import load_model
from engine.trtllm_build import BuildError, BuildPlan, llava_image_tokens, run_plan

DATA = Path(__file__).resolve().parents[1] / "data"
CLI = [sys.executable, "-m", "entrypoints"]


class HFEngineRunnerFake:
    """FAKE TensorRT-LLM runner (see the module docstring): the tiny model plays both engines."""

    def __init__(self, model) -> None:
        self.model = model
        self.vocab_size = model.config.text_config.vocab_size
        self.logits_size = model.get_output_embeddings().weight.shape[0]
        self.eos_id = model.config.text_config.eos_token_id

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # What the llava visual engine computes: penultimate CLIP layer, CLS dropped, projector.
        hidden = self.model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        return self.model.model.multi_modal_projector(hidden[self.model.config.vision_feature_layer][:, 1:])

    @torch.inference_mode()
    def decode(self, rows: list[EngineRow]) -> list[list[int]]:
        outputs = []
        for row in rows:
            sequence, generated = list(row.input_ids), []
            while len(generated) < row.max_new_tokens:
                logits = self.model(inputs_embeds=self._embed(sequence, row.image_features)).logits[0, -1].clone()
                row.hook(logits, sequence)
                token = int(logits.argmax())
                sequence.append(token)
                generated.append(token)
                if token == self.eos_id:
                    break
            outputs.append(generated)
        return outputs

    def _embed(self, ids: list[int], features: torch.Tensor) -> torch.Tensor:
        ids_t = torch.tensor(ids)
        table_rows = ids_t >= self.vocab_size  # prompt-table ids, as the C++ runtime reads them
        embeds = self.model.get_input_embeddings()(torch.where(table_rows, 0, ids_t))
        embeds[table_rows] = features[ids_t[table_rows] - self.vocab_size].to(embeds.dtype)
        return embeds.unsqueeze(0)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir):
    loaded = load_model(tiny_model_dir, device="cpu", dtype="float32")
    return TRTLLMBackend(
        HFEngineRunnerFake(loaded.model),
        loaded.processor,
        model_id="tiny-trt",
        image_tokens=llava_image_tokens(Path(tiny_model_dir)),
        max_batch_size=4,
    )


def test_adapter_gives_the_transformers_backends_answers(adapter, tiny_backend, shapes_schema):
    requests = [
        GenerationRequest(image=DATA / "images" / "red-circle.png", max_new_tokens=8),
        GenerationRequest(image=DATA / "images" / "two-blue-squares.png", task="vqa", instruction="How many squares?",
                          choices=("one", "two", "three"), max_new_tokens=4),
        GenerationRequest(image=DATA / "images" / "green-triangle.png", task="json", instruction="What is shown?",
                          schema=shapes_schema, max_new_tokens=80),
        GenerationRequest(image=b"not an image"),
    ]
    trt, hf = adapter.generate(requests), tiny_backend.generate(requests)
    for mine, theirs in zip(trt[:3], hf[:3]):
        assert mine.token_ids == theirs.token_ids and mine.text == theirs.text
        assert mine.finish_reason == theirs.finish_reason and mine.error == theirs.error
        assert mine.token_logprobs == pytest.approx(theirs.token_logprobs, abs=1e-3)
    assert trt[2].finish_reason == "stop"
    jsonschema.validate(trt[2].json, shapes_schema)
    assert not trt[3].ok and "not an image" in trt[3].error


def test_adapter_counts_576_image_tokens_for_llava_15(tmp_path):
    config = {"model_type": "llava", "vision_config": {"image_size": 336, "patch_size": 14}, "vision_feature_select_strategy": "default"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert llava_image_tokens(tmp_path) == 576


def test_row_hook_masks_with_the_grammar_and_records_unmasked_logprobs(adapter):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    tokenizer = adapter.tokenizer
    hook = RowHook(adapter.grammars.matcher(schema), adapter.banned, 3, eos_id=adapter.eos_id, max_new_tokens=8)
    logits = torch.randn(adapter.runner.logits_size)
    raw = torch.log_softmax(logits.clone(), -1)
    hook(logits, [7, 8, 9])
    allowed = torch.isfinite(logits).nonzero().flatten().tolist()
    texts = [tokenizer.decode([t]) for t in allowed]
    # The grammar opens the object, after at most one leading space (see engine.structured).
    assert texts and all(text.lstrip().startswith("{") or text == " " for text in texts), texts
    assert all(logits[t] == float("-inf") for t in adapter.banned)
    first = allowed[0]
    hook(torch.randn(adapter.runner.logits_size), [7, 8, 9, first])
    assert hook.logprobs == [pytest.approx(float(raw[first]))]


def test_build_plan_commands(tmp_path, tiny_model_dir):
    plan = BuildPlan.create(Path(tiny_model_dir), tmp_path / "out", max_batch_size=8, dtype="bfloat16",
                            examples_dir=Path("/ex"))
    convert, llm, visual = plan.steps()
    assert convert.argv[1:] == ("/ex/models/core/llama/convert_checkpoint.py", "--model_dir", str(tiny_model_dir),
                                "--output_dir", str(tmp_path / "out" / "checkpoint"), "--dtype", "bfloat16")
    args = dict(zip(llm.argv[1::2], llm.argv[2::2]))
    assert llm.argv[0] == "trtllm-build" and args["--max_batch_size"] == "8"
    assert args["--max_multimodal_len"] == str(8 * 64)  # max batch x the tiny model's 64 image features
    assert args["--max_input_len"] == "2048" and args["--max_seq_len"] == str(2048 + 512)
    assert args["--gemm_plugin"] == "bfloat16" and "--use_fused_mlp=enable" in llm.argv
    assert visual.argv[1:5] == ("/ex/models/core/multimodal/build_multimodal_engine.py", "--model_type", "llava", "--model_path")
    assert visual.argv[-2:] == ("--max_batch_size", "8")

    awq = BuildPlan.create(Path(tiny_model_dir), tmp_path / "awq", int4_awq=True, examples_dir=Path("/ex"))
    quantize, llm, _ = awq.steps()
    assert quantize.argv[1] == "/ex/quantization/quantize.py" and "--qformat int4_awq" in quantize.shell()
    assert "--use_fused_mlp=enable" not in llm.argv


def test_build_refuses_bad_inputs_before_running_anything(tmp_path, tiny_model_dir):
    with pytest.raises(BuildError, match="config.json is missing"):
        BuildPlan.create(tmp_path, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(BuildError, match="not empty"):
        BuildPlan.create(Path(tiny_model_dir), tmp_path / "busy")
    plan = BuildPlan.create(Path(tiny_model_dir), tmp_path / "out2")
    calls = []
    if _have_tensorrt_llm():
        pytest.skip("tensorrt_llm is installed: the missing-tool path cannot be shown")
    with pytest.raises(BuildError, match="tensorrt_llm is not installed"):
        run_plan(plan, runner=lambda argv: calls.append(argv))
    assert calls == []


def test_cli_build_dry_run_and_errors(tmp_path, tiny_model_dir):
    dry = subprocess.run([*CLI, "engine", "build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "e"),
                          "--max-batch-size", "4", "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    assert len(lines) == 3 and "--max_multimodal_len 256" in lines[1] and "--model_type llava" in lines[2]
    bad = subprocess.run([*CLI, "engine", "build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "e"),
                          "--dtype", "int8"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip() == "error: unknown dtype 'int8'; expected float16 or bfloat16"
    serve = subprocess.run([*CLI, "serve", "--backend", "trtllm", "--model", str(tiny_model_dir)],
                           capture_output=True, text=True, timeout=120)
    assert serve.returncode != 0 and "Traceback" not in serve.stderr
    assert "is not an `engine build` output: missing llm, vision, hf/" in serve.stderr


def _have_tensorrt_llm() -> bool:
    try:
        import tensorrt_llm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
def test_real_engines_answer_like_the_transformers_backend(tmp_path, tiny_model_dir, shapes_schema):
    if not _have_tensorrt_llm() or not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU and tensorrt-llm==1.2.* (NVIDIA's TensorRT-LLM release image)")
    out = tmp_path / "engines"
    run_plan(BuildPlan.create(Path(tiny_model_dir), out, max_batch_size=4,
                              examples_dir=Path(os.environ.get("TRTLLM_EXAMPLES", "/app/tensorrt_llm/examples"))))
    backend = TRTLLMBackend.load(out, max_batch_size=4)
    [caption, answer] = backend.generate([
        GenerationRequest(image=DATA / "images" / "red-circle.png", max_new_tokens=8),
        GenerationRequest(image=DATA / "images" / "green-triangle.png", task="json", schema=shapes_schema, max_new_tokens=80),
    ])
    assert caption.tokens == 8 and caption.finish_reason == "length" and caption.confidence < 0
    assert answer.finish_reason == "stop" and answer.error is None
    jsonschema.validate(answer.json, shapes_schema)
