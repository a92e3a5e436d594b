"""`llava-labeler serve` as a child process: started, waited for, always stopped.

Tests, benchmarks and local end-to-end runs need a real predictor on 127.0.0.1; this
starts one on a free port, reads the URL it announces, and stops it (SIGTERM, then
SIGKILL) however the caller exits. Its stderr goes to a log file kept for reading.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ANNOUNCEMENT = " on http://"


class PredictorProcess:
    """A running predictor; use as a context manager, or call `start()`/`stop()`."""

    def __init__(
        self,
        model: str | Path,
        *,
        backend: str = "hf",
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        startup_timeout_s: float = 180.0,
        log_path: Path | None = None,
    ) -> None:
        self.command = [
            sys.executable, "-m", "entrypoints",
            "serve", "--model", str(model), "--backend", backend, "--host", host, "--port", "0", *args,
        ]
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="predictor-", suffix=".log")[1])
        self.url = ""
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "PredictorProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "PredictorProcess":
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=log, env=self.env, start_new_session=True
        )
        log.close()
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self._process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            if ANNOUNCEMENT in line:
                self.url = "http://" + line.split(ANNOUNCEMENT, 1)[1].strip()
                return self
        self.stop()
        raise RuntimeError(f"the predictor did not start: {self.log_tail()}")

    def _pump(self, stream, lines: queue.Queue) -> None:
        with self.log_path.open("a") as log:
            for raw in stream:
                text = raw.decode(errors="replace")
                log.write(text)
                log.flush()
                lines.put(text)
        lines.put(None)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, grace_s: float = 15.0) -> int | None:
        """Stop the server (and anything it started); its exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"
