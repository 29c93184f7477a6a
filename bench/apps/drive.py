"""Serve requests to an ASGI app in-process, for `bench.instructions` (run under callgrind).

Usage: python drive.py TARGET METHOD COUNT [--app-dir DIR] [--access-log] [--no-telemetry]

TARGET is "module:attribute". The app's lifespan runs; 20 requests warm it up; then the driver
leaves a file `$DRIVE_READY_DIR/<pid>` and waits until it is removed (callgrind's counting is
turned on meanwhile), and serves COUNT more requests, one at a time: `GET /cities/biggest`, or
`POST /cities` with names of its own. A rendered variant gets its `serve`'s logging (text, the
access log as asked); `--no-telemetry` takes its request ids, access log and metrics out.
"""

import argparse
import asyncio
import importlib
import json
import logging.config
import os
import sys
from typing import Any

import uvloop
from asgi_lifespan import LifespanManager

WARMUP = 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("method", choices=("GET", "POST"))
    parser.add_argument("count", type=int)
    parser.add_argument("--app-dir")
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--no-telemetry", action="store_true")
    args = parser.parse_args()
    if args.app_dir:
        sys.path.insert(0, args.app_dir)
    module, _, attribute = args.target.partition(":")
    package = module.partition(".")[0]
    if not args.app_dir:  # a rendered variant: logging as its `serve` configures it
        logs = importlib.import_module(f"{package}.core.logs")
        logging.config.dictConfig(logs.logging_config("text", package, access_log=args.access_log))
    app = getattr(importlib.import_module(module), attribute)
    if args.no_telemetry:
        # The middleware stack is built at the first request: this one is never part of it.
        app.user_middleware = [
            m for m in app.user_middleware if m.cls.__name__ != "TelemetryMiddleware"
        ]
    uvloop.run(_serve(app, args.method, args.count))


async def _serve(app: Any, method: str, count: int) -> None:
    async with LifespanManager(app):
        for number in range(WARMUP):
            await _request(app, method, number)
        ready = os.path.join(os.environ["DRIVE_READY_DIR"], str(os.getpid()))
        open(ready, "w").close()
        while os.path.exists(ready):
            await asyncio.sleep(0.05)
        for number in range(WARMUP, WARMUP + count):
            await _request(app, method, number)


async def _request(app: Any, method: str, number: int) -> None:
    headers = [(b"host", b"bench")]
    if method == "GET":
        path, body = "/cities/biggest", b""
    else:
        path = "/cities"
        body = json.dumps({"name": f"drive-{os.getpid()}-{number}", "population": number}).encode()
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    received = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            await asyncio.Event().wait()  # the client stays connected
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    if not 200 <= status < 300:
        msg = f"{method} {path} answered {status}"
        raise RuntimeError(msg)


if __name__ == "__main__":
    main()
