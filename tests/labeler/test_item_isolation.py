"""One item's surprise is that item's alone: it fails at once with its own reason, the rest of its batch is labelled.

Through a real Celery worker (in-process, on the SQLite broker) and the tiny model. The
lease is ten minutes long, so a batch that a stray exception took down would only come
back long after the test's deadline, and then fail every item as "the worker stopped".
"""

from __future__ import annotations

import io
import logging
import os

import fsspec
import pytest
from sqlalchemy import select

from labeler.jobs import JobSpec
from labeler.models import Item
from labeler.service import Labeler
from labeler.worker import InProcessWorker

BROKEN = "the store's connection broke mid-read"


class _BrokenEntry(io.BytesIO):
    """An object-store entry whose read fails in a way nobody planned for (as a driver bug would)."""

    def read(self, *args) -> bytes:
        raise RuntimeError(BROKEN)


@pytest.fixture
def broken_object() -> str:
    """The URL of an in-process (memory://) object whose read raises RuntimeError; removed afterwards."""
    url = f"memory://isolation-{os.getpid()}/broken.png"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe(path, b"placeholder")
    fs.store[path] = _BrokenEntry()
    yield url
    fs.rm(path)


def test_an_unexpected_error_fails_only_its_item_and_at_once(
    labeler_settings, tiny_backend, wait_for, tmp_path, png, broken_object, caplog
) -> None:
    settings = labeler_settings(batch_size=8, visibility_timeout_s=600)
    settings.fetch.object_stores = ["memory"]
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(png(len(name) + ord(name[0])))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(f'{{"image": "{image}"}}\n' for image in ["a.png", "b.png", broken_object, "c.png", "reference://x"]))
    labeler = Labeler(settings)
    with caplog.at_level(logging.WARNING, logger="labeler.batches"), InProcessWorker(settings, tiny_backend):
        job = labeler.submit(str(manifest), JobSpec(task="caption", max_new_tokens=4))
        wait_for(lambda: labeler.status(job.id).finished, 60, "the job to finish without waiting out a lease")
    status = labeler.status(job.id)
    assert (status.status, status.done, status.failed) == ("completed", 3, 2)
    reasons = {item.uri: item.error for item in labeler.failed_items(job.id)}
    assert reasons[broken_object] == f"RuntimeError: {BROKEN}", "its own reason: type and message, no traceback"
    assert reasons["reference://x"].startswith("refused 'reference://x': the reference: scheme is not read")
    with labeler.db.read() as session:
        attempts = dict(session.execute(select(Item.uri, Item.attempts).where(Item.job_id == job.id)).all())
    assert attempts.pop("reference://x") == 0, "refused at submit, never sent to a worker"
    assert set(attempts.values()) == {1}, f"every item was claimed once: {attempts}"
    (logged,) = [record for record in caplog.records if record.levelno == logging.WARNING and record.exc_info]
    assert logged.exc_info[0] is RuntimeError and broken_object in logged.getMessage()
