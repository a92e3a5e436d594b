"""A database or broker that is down: one line naming it (password masked), never a traceback,
and a submit whose enqueue failed says how to send its saved items later."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The installed console script's entry point, as a user runs it."""
    environ = {
        **os.environ,
        "LLAVA_LABELER_DATA_DIR": str(tmp_path / "data"),
        "LLAVA_LABELER_DATABASE_URL": f"sqlite:///{tmp_path}/data/labeler.db",
        "LLAVA_LABELER_BROKER_URL": f"sqla+sqlite:///{tmp_path}/data/broker.db",
        **env,
    }
    command = [sys.executable, "-m", "entrypoints", *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_unreachable_database_is_one_line_with_the_password_masked(tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://labeler:s3cret-pw@127.0.0.1:{_closed_port()}/test"
    done = _cli(tmp_path, "status", LLAVA_LABELER_DATABASE_URL=url)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot reach the database postgresql+psycopg2://labeler:***@127.0.0.1:")
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_submit_with_the_broker_down_keeps_the_job_and_says_resume_sends_it(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    broker = f"redis://:br0ker-pw@127.0.0.1:{_closed_port()}/0"
    done = _cli(tmp_path, "submit", str(tmp_path / "a.png"), LLAVA_LABELER_BROKER_URL=broker)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "br0ker-pw" not in done.stderr
    assert "job 1 is saved with its items but could not be queued" in done.stderr
    assert "`llava-labeler resume 1`" in done.stderr

    again = _cli(tmp_path, "resume", "1", LLAVA_LABELER_BROKER_URL=broker)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert again.stderr.startswith("error: cannot reach the broker redis://:**@127.0.0.1:")

    healed = _cli(tmp_path, "resume", "1")  # the embedded broker is up: the saved item is sent
    assert healed.returncode == 0, healed.stderr
    assert "job 1 [queued]" in healed.stdout and "1 to do" in healed.stdout
