"""Reading ahead from a source that may be slow (a camera, a queue of files
arriving): groups of inputs for :meth:`wbc_edge.Classifier.predict_stream`.

A group is sent on when it is full, or when ``max_wait`` seconds have passed
since its first input arrived, whichever comes first, so a source that
delivers one cell a second gets its first answers after about ``max_wait``
seconds, not after a full batch. A source that is fast (a list) always fills
its groups: the same batches as before.

Two threads: one pulls inputs from the source (``next()`` may block for as
long as the source likes) into a bounded queue; one forms the groups and
starts ``read(group)`` in a pool of ``prefetch`` threads. At most
``prefetch`` groups are gathered, read or waiting at a time, besides the one
the consumer holds, so memory stays bounded whatever the source.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

#: Seconds a partial group waits for more inputs before it is sent on.
DEFAULT_MAX_WAIT = 0.1

T = TypeVar("T")

_END = object()


class _Failed:
    """The source raised: passed along, re-raised where the consumer is."""

    def __init__(self, error: BaseException):
        self.error = error


def read_ahead(read: Callable[[list], T], source: Iterator, size: int, prefetch: int,
               max_wait: float | None = DEFAULT_MAX_WAIT) -> Iterator[T]:
    """``read(group)`` for consecutive groups of up to ``size`` inputs of
    ``source``, in order (see the module docstring). ``max_wait`` None: only
    full groups (and the last one) are sent on."""
    if size < 1 or prefetch < 1:
        raise ValueError(f"size and prefetch must be positive, got {size} and {prefetch}")
    if max_wait is not None and not max_wait >= 0:
        raise ValueError(f"max_wait must be None or at least 0 seconds, got {max_wait!r}")
    stop = threading.Event()
    items: queue.Queue = queue.Queue(maxsize=1)
    started: queue.Queue = queue.Queue()
    slots = threading.Semaphore(prefetch)
    pool = ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="wbc-read")

    def put(q: queue.Queue, value) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:  # the source -> items
        try:
            for item in source:
                if not put(items, item):
                    return
            put(items, _END)
        except BaseException as error:
            put(items, _Failed(error))

    def group() -> None:  # items -> groups being read, in order
        try:
            ended = None
            while ended is None and not stop.is_set():
                # a slot first: the group being gathered counts among the `prefetch`
                while not slots.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                first = _get(items, stop, None)
                if first is _END or isinstance(first, _Failed) or (first is None and stop.is_set()):
                    ended = first
                    break
                batch = [first]
                deadline = None if max_wait is None else time.monotonic() + max_wait
                while len(batch) < size:
                    item = _get(items, stop, deadline)
                    if item is _TIMEOUT:
                        break
                    if item is _END or isinstance(item, _Failed):
                        ended = item
                        break
                    batch.append(item)
                put(started, pool.submit(read, batch))
            if ended is not None:
                put(started, ended)
        except BaseException as error:
            put(started, _Failed(error))

    threads = [threading.Thread(target=pull, name="wbc-stream-source", daemon=True),
               threading.Thread(target=group, name="wbc-stream-groups", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while True:
            entry = started.get()
            if entry is _END:
                return
            if isinstance(entry, _Failed):
                raise entry.error
            assert isinstance(entry, Future)
            yield entry.result()
            slots.release()  # only now: the consumer is done with the group it had
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(source, "close", None)
        if close is not None and not threads[0].is_alive():
            close()


_TIMEOUT = object()


def _get(q: queue.Queue, stop: threading.Event, deadline: float | None):
    """The next queued value; _TIMEOUT once ``deadline`` (monotonic) passes;
    None when ``stop`` is set."""
    while not stop.is_set():
        wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
        if deadline is not None and wait <= 0:
            return _TIMEOUT
        try:
            return q.get(timeout=wait)
        except queue.Empty:
            continue
    return None
