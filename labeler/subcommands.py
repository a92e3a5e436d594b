"""Run `llava-labeler` commands as child processes: how the labeler drives training.

Labeler and training never import each other (docs/architecture.md); where the
labeler needs a model trained, evaluated or a data set rendered, it runs the training
command with this interpreter, echoes its output and keeps it in a log file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class CommandFailed(RuntimeError):
    """A child command exited non-zero; the message holds the end of its output and the log's path."""


def run_command(args: Sequence[str], log: Path, what: str, echo: Callable[[str], None] = print) -> None:
    """Run `llava-labeler ARGS`, its output echoed line by line and kept in `log`."""
    command = [sys.executable, "-m", "entrypoints", *args]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with log.open("w") as handle, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            handle.write(line)
            echo(f"  | {line.rstrip()}")
            tail = [*tail[-9:], line.rstrip()]
    if process.returncode:
        last = "; ".join(line for line in tail if line.strip())[-1500:]
        raise CommandFailed(f"{what} failed (exit {process.returncode}): {last} (log: {log})")


def evaluate(
    model: str, data: Path, images: Path, out: Path, what: str, echo: Callable[[str], None] = print, *, batch_size: int | None = None
) -> dict[str, dict[str, Any]]:
    """`llava-labeler eval` of `model` on `data`, answers kept in `out` (its log beside it); the score table."""
    args = ["eval", "--model", model, "--data", str(data), "--images", str(images), "--out", str(out)]
    args += ["--batch-size", str(batch_size)] if batch_size is not None else []
    run_command(args, out.with_suffix(".log"), what, echo)
    return json.loads(out.read_text())["scores"]
