"""What the platform's HTTP servers (`cme serve`, `cme webhooks serve`) share: reading a
request body within a limit, and an orderly exit on SIGTERM."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import Request

DRAIN_LIMITS = 4


def exit_cleanly_on_sigterm() -> None:
    """uvicorn shuts down gracefully on SIGTERM, then raises it again under the handler it
    found: this one turns it into an orderly exit, so the caller's `finally` blocks run."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


async def body_within(request: Request, limit: int) -> tuple[bytes, int]:
    """The body and its size. Past `limit` the rest is read and dropped, so that the client
    gets its 413 rather than a connection reset mid-upload; past DRAIN_LIMITS x `limit` the
    server stops reading (the client may then see the reset)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_LIMITS * limit:
        return b"", int(declared)
    kept, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            kept += chunk
        elif size > DRAIN_LIMITS * limit:
            break
    return bytes(kept), size
