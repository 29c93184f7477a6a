"""A limit on request bodies: a body larger than any valid one is refused before it is read.

Neither uvicorn nor FastAPI limits a request body: a few clients each sending hundreds of MB can
take a worker out of memory. This middleware answers `413` itself, with the API's usual
`{"detail": ...}` JSON and `Connection: close`, so that the server closes the connection rather
than read (and discard) the rest of the body:

- at once, without reading anything, when `Content-Length` is over the limit;
- otherwise as soon as the bytes received pass it (a chunked body has no `Content-Length`). The
  app is then told that the client is gone, and what it answers is dropped. An exception would
  not do: FastAPI turns any error while it reads the body into a `400`.
"""

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    """Answer `413` to a request whose body is over `max_body_bytes`. Pure ASGI: it sees each
    chunk of the body as it arrives, and answers in the middle of it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return

        received = 0
        started = cut = answered = False

        async def counting_receive() -> Message:
            nonlocal received, cut, answered
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    cut = True
                    # Too late for a 413 once the app has begun its answer: it just reads no more.
                    if not started:
                        await self._too_large(scope, receive, send)
                        answered = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the app's answer to a body it never got
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"The request body is larger than {self.max_body_bytes} bytes"
        response = JSONResponse(
            {"detail": detail},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    """The body's `Content-Length`; 0 when there is none (or a malformed one, which the server
    refuses before any app sees it)."""
    try:
        return int(Headers(scope=scope).get("content-length", 0))
    except ValueError:
        return 0
