"""Job status for scripts that are not OpenAI clients: `GET /v1/jobs`, `GET /v1/jobs/{id}`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from engine.openai_api import OpenAIError
from labeler.jobs import JobError
from labeler.service import Labeler


def jobs_router(labeler: Labeler) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["Jobs"])

    @router.get("")
    def list_jobs(limit: int = Query(default=50, ge=1, le=1000), offset: int = Query(default=0, ge=0)) -> dict[str, Any]:
        """Newest first, as `llava-labeler status` lists them."""
        return {"object": "list", "data": [job.to_dict() for job in labeler.list_jobs(limit=limit, offset=offset)]}

    @router.get("/{job_id}")
    def job(job_id: int) -> dict[str, Any]:
        try:
            return labeler.status(job_id).to_dict()
        except JobError as exc:
            raise OpenAIError(404, str(exc), param="job_id", code="job_not_found") from None

    return router
