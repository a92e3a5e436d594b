"""Files: batch input files uploaded by clients, and the output and error files of finished batches.

Each file is two objects in the store: `files/<id>.jsonl` (the content) and `files/<id>.json`
(OpenAI's file object). An upload is copied into the store bounded by the size limit, then
checked line by line, so a file that is not JSONL or is too large is a 400 naming the line.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import IO, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import StreamingResponse

from engine.openai_api import OpenAIError
from labeler.file_store import FileStore
from labeler.openai_batch import BatchFileError, check_batch_file
from labeler.settings import ApiSettings

FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")
CHUNK = 1024 * 1024


class Files:
    """The file objects in one store."""

    def __init__(self, store: FileStore):
        self.store = store

    @staticmethod
    def content_key(file_id: str) -> str:
        return f"files/{file_id}.jsonl"

    @staticmethod
    def new_id() -> str:
        return f"file-{uuid.uuid4().hex}"

    def record(self, file_id: str, filename: str, purpose: str) -> dict[str, Any]:
        """Record the file object of content already written under `content_key(file_id)`."""
        record = {
            "id": file_id,
            "object": "file",
            "bytes": self.store.size(self.content_key(file_id)),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        self.store.write_json(f"files/{file_id}.json", record)
        return record

    def get(self, file_id: str) -> dict[str, Any]:
        if not FILE_ID.match(file_id) or not self.store.exists(f"files/{file_id}.json"):
            raise OpenAIError(404, f"no file {file_id!r}", param="file_id", code="file_not_found")
        return self.store.read_json(f"files/{file_id}.json")

    def delete(self, file_id: str) -> dict[str, Any]:
        self.get(file_id)
        self.store.delete(self.content_key(file_id))
        self.store.delete(f"files/{file_id}.json")
        return {"id": file_id, "object": "file", "deleted": True}

    def upload(self, filename: str, source: IO[bytes], settings: ApiSettings) -> dict[str, Any]:
        """A batch input file: copied (at most one byte past the limit), then checked; refused files are not kept."""
        limit, file_id = settings.max_request_bytes, self.new_id()
        with self.store.open(self.content_key(file_id), "wb") as handle:
            left = limit + 1
            while left > 0 and (chunk := source.read(min(CHUNK, left))):
                handle.write(chunk)
                left -= len(chunk)
        try:
            with self.store.open(self.content_key(file_id)) as handle:
                check_batch_file(handle, max_bytes=limit, max_requests=settings.max_requests)
        except BatchFileError as exc:
            self.store.delete(self.content_key(file_id))
            raise OpenAIError(400, f"{filename}: {exc}", param="file", code="invalid_file") from None
        return self.record(file_id, filename, "batch")


def files_router(files: Files, settings: ApiSettings) -> APIRouter:
    router = APIRouter(prefix="/v1/files", tags=["Files"])

    @router.post("")
    def create(file: UploadFile = File(...), purpose: str = Form(...)) -> dict[str, Any]:
        if purpose != "batch":
            raise OpenAIError(400, f"purpose {purpose!r} is not supported; this API takes batch files (purpose 'batch')", param="purpose")
        return files.upload(file.filename or "upload.jsonl", file.file, settings)

    @router.get("/{file_id}")
    def retrieve(file_id: str) -> dict[str, Any]:
        return files.get(file_id)

    @router.get("/{file_id}/content")
    def content(file_id: str) -> StreamingResponse:
        files.get(file_id)
        handle = files.store.open(Files.content_key(file_id))

        def chunks():
            with handle:
                while chunk := handle.read(CHUNK):
                    yield chunk

        return StreamingResponse(chunks(), media_type="application/jsonl")

    @router.delete("/{file_id}")
    def delete(file_id: str) -> dict[str, Any]:
        return files.delete(file_id)

    return router
