"""An HTTP client for loading a served app from the tests.

aiohttp rather than httpx: with hundreds of requests in flight, httpx spends about 10 ms of CPU on
each, which on two cores leaves the server starved; aiohttp spends a fraction of that.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp


@dataclass(frozen=True)
class Response:
    status: int  # 0: no answer within the client's timeout
    headers: dict[str, str]
    body: bytes
    latency: float

    def json(self) -> Any:
        return json.loads(self.body)


class LoadClient:
    """`concurrency`: at most that many requests in flight, the others queued in the client (not
    timed meanwhile); None for no limit."""

    def __init__(self, base_url: str, timeout: float, concurrency: int | None = None) -> None:
        self.base_url = base_url
        self._timeout = timeout
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self._session = aiohttp.ClientSession(
            base_url, connector=aiohttp.TCPConnector(limit=0, force_close=False)
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send a request; on timeout, hang up and answer status 0."""
        if self._slots is None:
            return await self._request(method, path, json, content, headers, timeout)
        async with self._slots:
            return await self._request(method, path, json, content, headers, timeout)

    async def _request(
        self,
        method: str,
        path: str,
        json: Any,
        content: bytes | None,
        headers: dict[str, str] | None,
        timeout: float | None,
    ) -> Response:
        start = time.monotonic()
        client_timeout = aiohttp.ClientTimeout(total=timeout or self._timeout)
        try:
            async with self._session.request(
                method, path, json=json, data=content, headers=headers, timeout=client_timeout
            ) as response:
                body = await response.read()
                return Response(
                    response.status, dict(response.headers), body, time.monotonic() - start
                )
        except TimeoutError:
            return Response(0, {}, b"", time.monotonic() - start)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)

    async def gather(self, method: str, path: str, count: int, **kwargs: Any) -> list[Response]:
        """`count` identical requests, all in flight at once."""
        return await asyncio.gather(*(self.request(method, path, **kwargs) for _ in range(count)))
