"""The wbc-edge benchmark suite (pytest-benchmark): preprocessing, inference per
backend and precision, and end to end, each against the prototype it replaces
(:mod:`benchmarks.prototype`), measured in the same run on the same machine.

Run it (not part of the default ``pytest``, whose testpaths are ``tests/``)::

    python -m pytest benchmarks/ --benchmark-only            # the full measurement
    python -m pytest benchmarks/ --benchmark-only --quick    # a smoke run (seconds)
    python -m benchmarks.report                              # newest results -> table + chart

Results go to ``benchmarks/results/`` (quick runs to ``benchmarks/results/quick/``).
"""
