"""How the CPU engines share the cores: streams.

A stream is one batch in inference at a time, on its own share of the
threads. With one stream (the default), a batch gets every thread while the
next batch is read, decoded and preprocessed in reader threads meanwhile
(``Classifier.predict_stream``). With more, that many batches are inferred at
once (OpenVINO's THROUGHPUT streams, an infer request each; an onnxruntime
session each), each on ``threads // streams`` threads, and each batch is
read on the same share, so the threads of all streams add up to the thread
count and no engine thread waits at a layer's barrier for one that another
stream's work pushed off its core.

The default is one stream because that is what measured best where it was
measured (docs/measurements.md, "Streams"): on a 2-core AVX2 CPU two streams
gave 0.99-1.05x the images per second of one, whole path, on both engines
and both shipped models, and a single image's latency grew by half. More
streams are the usual way to fill many cores with small batches; ask for them
(``streams=``, ``--streams``) and measure with ``wbc-edge benchmark --streams``.
"""

from __future__ import annotations

from ..errors import WbcEdgeError
from ..preprocess import default_num_threads

#: Streams the CPU engines run with unless asked for more.
DEFAULT_STREAMS = 1


def check_streams(streams) -> int:
    """``streams`` as an int, or WbcEdgeError naming the bad value."""
    if not isinstance(streams, int) or isinstance(streams, bool) or streams < 1:
        raise WbcEdgeError(f"streams must be a positive integer, got {streams!r}")
    return streams


def default_streams(num_threads: int | None = None) -> int:
    """The streams for ``num_threads`` threads (default: every CPU this
    process may use): :data:`DEFAULT_STREAMS`, at most one per thread."""
    return max(1, min(DEFAULT_STREAMS, int(num_threads or default_num_threads())))


def streams_for(streams: int | None, num_threads: int | None = None) -> int:
    """``streams`` checked, or None: :func:`default_streams` for the threads."""
    return default_streams(num_threads) if streams is None else check_streams(streams)


def threads_per_stream(num_threads: int | None, streams: int) -> tuple[int, int]:
    """``(threads in all, threads of each stream)`` for ``num_threads``
    threads (default: every CPU this process may use) shared by ``streams``;
    WbcEdgeError where there are more streams than threads."""
    threads = int(num_threads or default_num_threads())
    if streams > threads:
        raise WbcEdgeError(f"streams={streams} with {threads} thread{'s' * (threads > 1)}: each stream needs a "
                           "thread of its own; ask for fewer streams or more threads")
    return threads, threads // streams
