"""The garbage collector, tuned for a long-lived server."""

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# Net allocations between two passes of the garbage collector over young objects. At Python's
# default (700) a pass came every few requests under load, and each one walked all that the
# requests in flight hold: 5% of the CPU. Objects are freed by reference counting as they go,
# so passes become rare; cycles are still collected.
YOUNG_THRESHOLD: Final = 10_000


@contextmanager
def tuned_for_serving() -> Iterator[None]:
    """Tune the garbage collector for a long-lived server; restore it when the server stops.

    What exists at start-up (modules, the app, the engine) lives as long as the process: frozen,
    full passes no longer walk it again and stall every request in flight (under load, p99
    latency was 4x p50 without this, 1.3x with it).
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
