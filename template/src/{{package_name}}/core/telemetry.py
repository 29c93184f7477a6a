"""Every request: an id, one access line in the log, and its metrics.

One pure ASGI middleware does the three in one pass (a `BaseHTTPMiddleware` would cost
throughput), placed outside the body limit so that a `413` is logged and counted like any other
answer:

- the request id is the request's `X-Request-ID` when it is sane (1 to 128 of `A-Z a-z 0-9 . _ -`),
  else a new one; it is echoed in the response's `X-Request-ID` and given to every log line
  logged while the request is served (`core/logs.py`);
- the access line (logger `<package>.access`) has the method, path, status, duration and request
  id: `INFO`, or `WARNING` for a `5xx` with its cause (a `503` says why: the database out of
  reach, the pool exhausted, the process draining), so that such an answer is logged once;
- the metrics (`core/metrics.py`) count the answer by method, route template and status, and
  time it.

An error that no handler answered is a `500` sent from here, with its `X-Request-ID`; the error
is then raised on, and the server logs its traceback with the request's id.
"""

import logging
import os
import re
import time
from typing import Final

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import request_id
from .metrics import LATENCY, REQUESTS, UNMATCHED

logger = logging.getLogger(f"{__name__.partition('.')[0]}.access")

HEADER: Final = b"x-request-id"
SANE_ID: Final = re.compile(rb"[A-Za-z0-9._-]{1,128}")
# Where a handler leaves the cause of a `503` for the access line (see `core/errors.py`).
CAUSE: Final = "log_cause"
INTERNAL_ERROR: Final = b'{"detail":"Internal Server Error"}'


def cause_of_answer(scope: Scope, cause: str) -> None:
    """Have the access line of the request of `scope` say why it was answered as it was."""
    scope.setdefault("state", {})[CAUSE] = cause


class TelemetryMiddleware:
    """Give each request an id, log it once, and count it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The metrics' children by method, route and status: a few dozen at most, as routes
        # are templates and methods and statuses few.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = _request_id(scope)
        token = request_id.set(rid)
        echoed = (HEADER, rid.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not status:
                await _internal_error(send_with_id)
            self._record(scope, status, started, "unhandled error", rid)
            raise  # and leave the request id set: the server logs the traceback with it
        self._record(scope, status, started, scope.get("state", {}).get(CAUSE), rid)
        request_id.reset(token)

    def _record(
        self, scope: Scope, status: int, started: float, cause: str | None, rid: str
    ) -> None:
        duration = time.perf_counter() - started
        method = scope["method"]
        route = getattr(scope.get("route"), "path", UNMATCHED)
        key = (method, route, status)
        if (children := self._children.get(key)) is None:  # `labels()` costs: once per key
            children = REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)
            self._children[key] = children
        children[0].inc()
        children[1].observe(duration)
        level = logging.WARNING if status >= 500 else logging.INFO
        if not logger.isEnabledFor(level):
            return
        path = scope["path"]
        milliseconds = round(duration * 1000, 1)
        fields = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": milliseconds,
            "request_id": rid,
        }
        message = f"{method} {path} {status} {milliseconds} ms"
        if cause:
            message = f"{message}: {cause}"
            fields["cause"] = cause
        # What `logger.log` does, less its search of the stack for the caller's file and line,
        # which an access line never shows: a fifth of the line's cost.
        record = logger.makeRecord(logger.name, level, "", 0, message, (), None, extra=fields)
        logger.handle(record)


def _request_id(scope: Scope) -> str:
    """The request's own `X-Request-ID` if it sent a sane one, else a new one."""
    for name, value in scope["headers"]:
        if name == HEADER:
            if SANE_ID.fullmatch(value):
                return str(value, "ascii")
            break
    return os.urandom(16).hex()  # 128 random bits, like `uuid4().hex` at a fifth of its cost


async def _internal_error(send: Send) -> None:
    length = str(len(INTERNAL_ERROR)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": INTERNAL_ERROR})
