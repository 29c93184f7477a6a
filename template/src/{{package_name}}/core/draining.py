"""Draining: on SIGTERM, leave the load balancer before stopping (`SHUTDOWN_DELAY_SECONDS`).

A platform that stops a replica (Kubernetes, ECS, Cloud Run) sends it SIGTERM while the load
balancer may still route requests to it for a few seconds. With a delay, on SIGTERM the
readiness probe answers `503` at once, so that the replica is taken out of rotation, while every
request is still served for that long; then the server's own SIGTERM handling runs: it stops
accepting connections, finishes the requests in flight and runs the app's shutdown, which
disposes the pool.

It works wherever the server stops on SIGTERM through a Python signal handler, as uvicorn does,
in each of `serve --workers N`'s processes (uvicorn's supervisor passes SIGTERM on to each).
"""

import asyncio
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)


class Draining:
    """Whether this process was told to stop, and is waiting `delay` seconds before it does."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = False

    @contextmanager
    def on_sigterm(self) -> Iterator[None]:
        """While inside (the app's lifespan), SIGTERM starts draining, and the handler that was
        there before (the server's) runs `delay` seconds later; a second SIGTERM runs it at once.
        Without a delay, SIGTERM is left alone."""
        if self.delay <= 0:
            yield
            return
        loop = asyncio.get_running_loop()
        # None: a handler set outside Python, which cannot be put back; the default instead.
        server_handler = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL
        later: asyncio.TimerHandle | None = None
        stopped = False

        def stop(sig: int, frame: FrameType | None) -> None:
            nonlocal stopped
            if stopped:
                return
            stopped = True
            signal.signal(signal.SIGTERM, server_handler)
            if callable(server_handler):
                server_handler(sig, frame)
            else:  # no handler of the server's: what SIGTERM does by default (or nothing)
                signal.raise_signal(sig)

        def schedule(sig: int) -> None:
            nonlocal later
            if not stopped:
                later = loop.call_later(self.delay, stop, sig, None)

        def start(sig: int, frame: FrameType | None) -> None:
            if self.started:  # a second SIGTERM: stop now
                stop(sig, frame)
                return
            self.started = True
            logger.info("SIGTERM: readiness answers 503; stopping in %s s", self.delay)
            # A signal handler runs between any two bytecodes: it hands the loop its work.
            loop.call_soon_threadsafe(schedule, sig)

        signal.signal(signal.SIGTERM, start)
        try:
            yield
        finally:
            stopped = True
            if later is not None:
                later.cancel()
            if signal.getsignal(signal.SIGTERM) is start:
                signal.signal(signal.SIGTERM, server_handler)
