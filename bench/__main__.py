"""Run every benchmark section in one process, one after the other, and print their tables."""

from __future__ import annotations

import importlib
import os

SECTIONS = ["bench.engine_bench", "bench.real_geometry_bench", "bench.serving_bench", "bench.labeler_bench", "bench.million_bench", "bench.trust_bench", "bench.cache_bench"]


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in SECTIONS:
        importlib.import_module(name).main()


if __name__ == "__main__":
    main()
