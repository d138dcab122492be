"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmq.api.memory_guard import MemoryGuard
from llmq.api.schemas import Health
from llmq.worker import redis_keys

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(ok=True)


async def memory_check(request: Request) -> str:
    """'ok: …', 'high: …' (new jobs refused, running ones finish; still ready) or 'full: …' (writes refused)."""
    state = request.app.state
    guard: MemoryGuard = state.memory
    reading = await guard.refresh()
    try:
        # The direct test: Redis refuses a write when it is over maxmemory, whatever INFO said a moment ago.
        await state.redis.set(redis_keys.READY_PROBE, "1", px=10_000)
    except Exception as err:
        return f"full: writes refused ({type(err).__name__}); {reading.describe()}"
    if reading.full:
        return f"full: {reading.describe()}"
    if guard.above_high_water(reading):
        return f"high: new jobs refused above LLMQ_REDIS_HIGH_WATER={guard.high_water:g}; {reading.describe()}"
    return f"ok: {reading.describe()}"


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """Redis and the broker are reachable and Redis takes writes (503 otherwise)."""
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(state.redis.ping(), CHECK_TIMEOUT_S)
        checks["redis"] = "ok"
    except Exception as err:
        checks["redis"] = f"unreachable: {type(err).__name__}"
    else:
        try:
            checks["redis_memory"] = await asyncio.wait_for(memory_check(request), CHECK_TIMEOUT_S)
        except Exception as err:
            checks["redis_memory"] = f"unknown: {type(err).__name__}"
    checks["broker"] = await state.broker_check()
    ok = checks["redis"] == checks["broker"] == "ok" and checks["redis_memory"].startswith(("ok", "high"))
    return JSONResponse(Health(ok=ok, checks=checks).model_dump(), status_code=200 if ok else 503)
