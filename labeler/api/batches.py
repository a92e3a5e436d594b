"""The batch routes: create, retrieve, list (cursor pages), cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from labeler.api.batch_records import Batches


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


def batches_router(batches: Batches) -> APIRouter:
    router = APIRouter(prefix="/v1/batches", tags=["Batches"])

    @router.post("")
    def create(body: CreateBatch) -> dict[str, Any]:
        return batches.create(body.input_file_id, body.endpoint, body.completion_window, body.metadata)

    @router.get("")
    def list_batches(after: str | None = None, limit: int = Query(default=20, ge=1, le=100)) -> dict[str, Any]:
        return batches.list(after=after, limit=limit)

    @router.get("/{batch_id}")
    def retrieve(batch_id: str) -> dict[str, Any]:
        return batches.get(batch_id)

    @router.post("/{batch_id}/cancel")
    def cancel(batch_id: str) -> dict[str, Any]:
        return batches.cancel(batch_id)

    return router
