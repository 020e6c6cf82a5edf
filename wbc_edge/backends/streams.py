"""How the CPU engines share the cores: streams.

A stream is one batch in inference at a time, on its own share of the
threads. With one stream, a batch gets every thread, and the cores wait while
the next batch is decoded and preprocessed, and at each layer's barrier
(onnxruntime's and OpenVINO's threads synchronize per operator). With two,
one batch is inferred while the next is read, and each engine thread runs
without waiting for another; the threads in all streams add up to the
thread count, so nothing is oversubscribed. Measurements: docs/measurements.md
("Streams"); ``streams=1`` gives the lowest latency for a single batch.
"""

from __future__ import annotations

from ..errors import WbcEdgeError
from ..preprocess import default_num_threads

#: Streams the CPU engines run with by default (never more than the threads).
DEFAULT_STREAMS = 2


def check_streams(streams) -> int:
    """``streams`` as an int, or WbcEdgeError naming the bad value."""
    if not isinstance(streams, int) or isinstance(streams, bool) or streams < 1:
        raise WbcEdgeError(f"streams must be a positive integer, got {streams!r}")
    return streams


def default_streams(num_threads: int | None = None) -> int:
    """The streams for ``num_threads`` threads (default: every CPU this
    process may use): :data:`DEFAULT_STREAMS`, at most one per thread."""
    return max(1, min(DEFAULT_STREAMS, int(num_threads or default_num_threads())))


def threads_per_stream(num_threads: int | None, streams: int) -> tuple[int, int]:
    """``(threads in all, threads of each stream)`` for ``num_threads``
    threads (default: every CPU this process may use) shared by ``streams``."""
    threads = int(num_threads or default_num_threads())
    return threads, max(1, threads // streams)
