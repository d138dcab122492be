"""/v1/jobs/{id}/events: a job's live event stream (server-sent events)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
