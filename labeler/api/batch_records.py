"""Batches: documents in the store whose status follows their jobs.

A batch document (`batches/<id>.json`) holds OpenAI's batch object plus what it became: the
job ids, the refused lines and the number of requests. Its status is worked out when it is
read: `validating` while the file is submitted, `in_progress` while a job has items to do,
then `finalizing` while the output and error files are written, and `completed` (or
`cancelled`, when a job was cancelled) once they are. A batch read after its 24-hour window
with work left is cancelled and ends `expired`; a submit that breaks ends `failed`.

The files are written when a read finds every job finished (lazily), not by the workers: the
workers stay unaware of batches, a batch nobody asks about costs nothing, and the step is
idempotent, so two readers racing at the end write the same result.
"""

from __future__ import annotations

import re
import time
from typing import Any

from engine.openai_api import OpenAIError
from labeler.api.files import Files
from labeler.jobs import JobError, JobStatus
from labeler.models import JobState
from labeler.openai_batch import ENDPOINT, Refused, new_batch_id, submit_batch_lines, write_batch_results
from labeler.service import Labeler
from labeler.sources import SourceError

BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
WINDOWS = {"24h": 24 * 3600}
FINAL = ("completed", "failed", "cancelled", "expired")


class Batches:
    """The batches in one store, run as jobs of one labeler."""

    def __init__(self, labeler: Labeler, files: Files):
        self.labeler, self.files, self.store = labeler, files, files.store

    def _key(self, batch_id: str) -> str:
        if not BATCH_ID.match(batch_id) or not self.store.exists(f"batches/{batch_id}.json"):
            raise OpenAIError(404, f"no batch {batch_id!r}", param="batch_id", code="batch_not_found")
        return f"batches/{batch_id}.json"

    def _save(self, document: dict[str, Any]) -> None:
        self.store.write_json(f"batches/{document['batch']['id']}.json", document)

    def create(self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, str] | None) -> dict[str, Any]:
        """Submit the file's requests as jobs; the batch object, `in_progress` (or `failed` when the submit broke)."""
        if endpoint != ENDPOINT:
            raise OpenAIError(400, f"endpoint {endpoint!r} is not supported; use {ENDPOINT!r}", param="endpoint")
        if completion_window not in WINDOWS:
            raise OpenAIError(400, f"completion_window must be one of {', '.join(WINDOWS)}", param="completion_window")
        if self.files.get(input_file_id)["purpose"] != "batch":
            raise OpenAIError(400, f"file {input_file_id!r} is not a batch input file", param="input_file_id")
        now = int(time.time())
        batch = {
            "id": new_batch_id(),
            "object": "batch",
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "validating",
            "created_at": now,
            "expires_at": now + WINDOWS[completion_window],
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        document: dict[str, Any] = {"batch": batch, "jobs": [], "refused": [], "created_ns": time.time_ns()}
        self._save(document)
        try:
            with self.store.open(Files.content_key(input_file_id)) as lines:
                submitted = submit_batch_lines(self.labeler, lines, store=self.store, batch_id=batch["id"])
        except (JobError, SourceError, OSError) as exc:  # the broker, the store or its scheme
            error = {"code": "submit_failed", "message": str(exc), "param": None, "line": None}
            batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [error]})
            self._save(document)
            return batch
        document.update(jobs=submitted.job_ids, refused=[vars(r) for r in submitted.refused])
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"]["total"] = submitted.total
        self._save(document)
        return self._refresh(document)

    def get(self, batch_id: str) -> dict[str, Any]:
        return self._refresh(self.store.read_json(self._key(batch_id)))

    def list(self, *, after: str | None, limit: int) -> dict[str, Any]:
        """Newest first, `limit` after the batch `after` (OpenAI's cursor pagination)."""
        documents = [self.store.read_json(key) for key in self.store.keys("batches") if key.endswith(".json")]
        ordered = [d["batch"] for d in sorted(documents, key=lambda d: d["created_ns"], reverse=True)]
        ids = [b["id"] for b in ordered]
        start = ids.index(after) + 1 if after in ids else 0
        page = [self.get(b["id"]) for b in ordered[start : start + limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(ordered),
        }

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Cancel the batch's jobs (their unfinished items); what finished is still in the output file."""
        document = self.store.read_json(self._key(batch_id))
        batch = document["batch"]
        if batch["status"] in FINAL:
            raise OpenAIError(409, f"cannot cancel batch {batch_id}: it is {batch['status']}", code="batch_not_cancellable")
        batch["cancelling_at"] = int(time.time())
        self._cancel_jobs(document)
        return self._finalize(document, "cancelled", "batch_cancelled")

    def _cancel_jobs(self, document: dict[str, Any]) -> None:
        for job_id in document["jobs"]:
            try:
                self.labeler.cancel(job_id)
            except JobError:
                pass  # finished already: nothing left to cancel

    def _statuses(self, document: dict[str, Any]) -> list[JobStatus]:
        return [self.labeler.status(job_id) for job_id in document["jobs"]]

    def _refresh(self, document: dict[str, Any]) -> dict[str, Any]:
        """The batch object as its jobs now stand; finalized (files written) once they are finished."""
        batch = document["batch"]
        if batch["status"] in FINAL or batch["status"] == "validating":
            return batch
        statuses = self._statuses(document)
        if not all(s.finished for s in statuses):
            if time.time() < batch["expires_at"]:
                done = sum(s.done for s in statuses)
                failed = len(document["refused"]) + sum(s.failed for s in statuses)
                batch["request_counts"].update(completed=done, failed=failed)
                return batch
            self._cancel_jobs(document)
            return self._finalize(document, "expired", "batch_expired")
        cancelled = any(s.status == JobState.CANCELLED for s in statuses)
        return self._finalize(document, "cancelled" if cancelled else "completed", "batch_cancelled")

    def _finalize(self, document: dict[str, Any], final: str, cancelled_code: str) -> dict[str, Any]:
        """Write the output and error files and end the batch in `final`."""
        batch = document["batch"]
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        self._save(document)
        refused = [Refused(**r) for r in document["refused"]]
        output_id, errors_id = Files.new_id(), Files.new_id()
        with self.store.open(Files.content_key(output_id), "wb") as output, self.store.open(Files.content_key(errors_id), "wb") as errors:
            counts = write_batch_results(
                self.labeler.db, document["jobs"], output, errors, refused=refused, cancelled_code=cancelled_code
            )
        for file_id, which, written in ((output_id, "output", counts.completed), (errors_id, "error", counts.failed)):
            if written:
                batch[f"{which}_file_id"] = self.files.record(file_id, f"{batch['id']}_{which}.jsonl", "batch_output")["id"]
            else:
                self.store.delete(Files.content_key(file_id))
        batch["request_counts"].update(completed=counts.completed, failed=counts.failed)
        batch.update(status=final, **{f"{final}_at": int(time.time())})
        self._save(document)
        return batch
