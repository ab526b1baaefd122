"""Produce an iterator's items on a background thread, a bounded number ahead of the consumer.

The staging load is a pipeline of two halves that each spend most of their time outside the
GIL: reading and validating a batch (Arrow's parser and compute kernels) and sending it
(ADBC's binary COPY encoder, which releases the GIL for the whole ingest). Run one after the
other on one thread they add up; with the reading half on its own thread they overlap on a
second core (see docs/benchmarks.md, "Round 4").
"""

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

# How long the producer waits for room before it checks again whether the consumer left.
_PUT_POLL_SECONDS = 0.1


class _End:
    """The producer finished: `error` is what it raised, or None when the items ran out."""

    def __init__(self, error: BaseException | None):
        self.error = error


def prefetched(items: Iterator[T], depth: int, name: str = "dw-prefetch") -> Iterator[T]:
    """Yield `items`, produced on a daemon thread at most `depth` items ahead.

    An exception raised by `items` is raised here, to the consumer, with its own traceback,
    after the items produced before it. When the consumer stops early (an error on its side,
    or `close()`), the producer stops at its next item and `items` is closed on the producer's
    thread, so its `finally` blocks (open files, say) run before this generator returns.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    handoff: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
    consumer_left = threading.Event()

    def put(item: T | _End) -> bool:
        while not consumer_left.is_set():
            try:
                handoff.put(item, timeout=_PUT_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        error: BaseException | None = None
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            error = exc
        finally:
            close = getattr(items, "close", None)
            try:
                if close is not None:
                    close()
            except BaseException as exc:
                error = error or exc
        put(_End(error))

    producer = threading.Thread(target=produce, name=name, daemon=True)
    producer.start()
    try:
        while True:
            item = handoff.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        consumer_left.set()
        producer.join()
