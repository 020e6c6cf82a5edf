"""``wbc-edge review``: a local web page where a technologist checks the
classified cells of a report, reclassifies them with one key, and signs the
differential off.

* :mod:`.state` — the review of one report: its cells, the images it may
  serve, the decisions (saved atomically as they are made), undo, sign-off,
  and the exports (``corrections.csv``, ``REPORT.reviewed.json``).
* :mod:`.cam` — class activation maps, computed on request by the report's model.
* :mod:`.app` — the Starlette application and the server (needs the
  ``review`` extra: ``pip install "wbc-edge[review]"``).

The policy deciding which cells are flagged is :mod:`wbc_edge.review`.
"""

from .state import ReviewError, ReviewSession

__all__ = ["ReviewError", "ReviewSession"]
