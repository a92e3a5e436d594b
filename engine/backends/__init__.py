"""The backends behind the engine's contract (`engine.backend`), and the one factory that picks one.

- `hf`: transformers, in-process (CPU or GPU);
- `trtllm`: TensorRT-LLM engines built by `llava-labeler engine build` (GPU only);
- `remote`: the predictor over HTTP (`engine.url`), so a worker switches to a GPU pod by one setting.
"""

from __future__ import annotations

from typing import Literal

from engine.backend import Backend
from engine.settings import EngineConfig

BackendKind = Literal["hf", "trtllm"]


def load_backend(
    config: EngineConfig,
    *,
    model: str | None = None,
    url: str | None = None,
    kind: BackendKind = "hf",
    max_batch_size: int | None = None,
) -> Backend:
    """The remote predictor at `url` when one is given, else the `kind` backend on `model` (default: engine.model).

    Each backend's module is imported only when chosen: the transformers and TensorRT-LLM stacks are heavy.
    """
    if url:
        from engine.backends.remote import RemoteBackend

        return RemoteBackend(url, settings=config.serving, image_limits=config.images)
    source = model or config.engine.model
    batch = max_batch_size or config.engine.max_batch_size
    if kind == "trtllm":
        from engine.backends.trtllm import TRTLLMBackend

        return TRTLLMBackend.load(source, image_limits=config.images, max_batch_size=batch)
    from engine.backends.hf import HFBackend

    return HFBackend.load(
        source, device=config.engine.device, dtype=config.engine.dtype, image_limits=config.images, max_batch_size=batch
    )
