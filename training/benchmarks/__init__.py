"""LLaVA-1.5's paper benchmarks, run through the engine and scored as their official scripts score them.

`BENCHMARKS` is the one list (name -> benchmark); docs/paper-benchmarks.md describes each
benchmark's layout, prompts, scorer and upload file.
"""

from __future__ import annotations

from training.benchmarks.base import Benchmark
from training.benchmarks.files import BenchmarkError
from training.benchmarks.gqa import Gqa
from training.benchmarks.mmbench import MmBench
from training.benchmarks.mme import Mme
from training.benchmarks.pope import Pope
from training.benchmarks.scienceqa import ScienceQa
from training.benchmarks.seed import SeedBench
from training.benchmarks.textvqa import TextVqa
from training.benchmarks.vizwiz import Vizwiz
from training.benchmarks.vqav2 import Vqav2

BENCHMARKS: dict[str, Benchmark] = {
    bench.name: bench for bench in (Vqav2(), Gqa(), Vizwiz(), ScienceQa(), TextVqa(), Pope(), Mme(), MmBench(), SeedBench())
}


def get(name: str) -> Benchmark:
    """The benchmark called `name`, or the error listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise BenchmarkError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}") from None
