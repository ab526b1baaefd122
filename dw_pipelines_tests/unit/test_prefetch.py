"""`prefetched`: the staging load's reader thread (order, bound, errors, early stop)."""

import threading
import time
import traceback

import pytest

from dw_pipelines.core.prefetch import prefetched


class Source:
    """A generator source that records what it produced, on which thread, and its cleanup."""

    def __init__(self, count: int, fail_after: int | None = None):
        self.count = count
        self.fail_after = fail_after
        self.produced = 0
        self.threads: set[int] = set()
        self.closed_on: int | None = None

    def items(self):
        try:
            for i in range(self.count):
                if self.fail_after is not None and i == self.fail_after:
                    raise_bad_row(i)
                self.threads.add(threading.get_ident())
                self.produced += 1
                yield i
        finally:
            self.closed_on = threading.get_ident()


def raise_bad_row(i: int) -> None:
    raise ValueError(f"bad row {i}")


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dw-prefetch" and t.is_alive()]


def test_yields_every_item_in_order_from_another_thread():
    source = Source(50)
    assert list(prefetched(source.items(), depth=2)) == list(range(50))
    assert source.threads and threading.get_ident() not in source.threads
    assert source.closed_on in source.threads
    assert prefetch_threads() == []


def test_the_producer_stays_within_depth_of_the_consumer():
    source = Source(30)
    consumed = 0
    ahead = []
    for _ in prefetched(source.items(), depth=2):
        consumed += 1
        time.sleep(0.01)  # let the producer run as far as it may
        ahead.append(source.produced - consumed)
    assert consumed == 30
    # At most `depth` items wait in the hand-off and one more is held by the producer's `put`.
    assert max(ahead) <= 3
    assert max(ahead) >= 2  # it did read ahead: the overlap is the point


def test_an_error_reaches_the_consumer_after_the_items_before_it():
    source = Source(10, fail_after=4)
    received = []
    with pytest.raises(ValueError, match="bad row 4") as caught:
        for item in prefetched(source.items(), depth=1):
            received.append(item)
    assert received == [0, 1, 2, 3]
    # The producer's own frames are in the traceback: the error names where it happened.
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "raise_bad_row" in frames
    assert source.closed_on is not None
    assert prefetch_threads() == []


def test_a_consumer_that_stops_early_stops_and_closes_the_source():
    source = Source(1000)
    stream = prefetched(source.items(), depth=1)
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()
    # close() returns after the producer thread ended and the source ran its cleanup there.
    assert source.closed_on in source.threads
    assert source.produced <= 2 + 2
    assert prefetch_threads() == []


def test_an_error_on_the_consumer_side_stops_the_producer():
    source = Source(1000)

    def consume():
        for item in prefetched(source.items(), depth=1):
            if item == 3:
                raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="went away"):
        consume()
    assert source.closed_on is not None
    assert source.produced < 1000
    assert prefetch_threads() == []


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        next(prefetched(iter([1]), depth=0))
