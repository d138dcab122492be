"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmq.api.schemas import Health

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(ok=True)


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """Redis and the broker are reachable (503 otherwise)."""
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(state.redis.ping(), CHECK_TIMEOUT_S)
        checks["redis"] = "ok"
    except Exception as err:
        checks["redis"] = f"unreachable: {type(err).__name__}"
    checks["broker"] = await state.broker_check()
    ok = all(value == "ok" for value in checks.values())
    return JSONResponse(Health(ok=ok, checks=checks).model_dump(), status_code=200 if ok else 503)
