"""The domain guard's verdicts: per cell (is it like the training images?) and
per run (do these images, taken together, come from a lab the model knows?).

The model computes each image's ``ood_score`` in its graph (the last output
column, see ``training/domain_guard.py``); its metadata's ``domain_guard``
record holds the threshold fitted with it. A cell is out of distribution when
its score is above that threshold, or when cell centring found no white cell
in the picture at all. A run's status is ``"shift"`` when more of its cells
are out of distribution than ``shift_fraction`` (in-distribution images go
over the threshold at about the guard's nominal rate, a few percent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .prediction import Prediction

#: Below this many classified cells a run's status is reported with a caveat.
MIN_CELLS_FOR_STATUS = 30
#: The default share of out-of-distribution cells above which a run is "shift".
DEFAULT_SHIFT_FRACTION = 0.15

NO_CELL_REASON = "no white cell found in the image"


def cell_verdict(score: float | None, cell_found: bool, guard: Mapping[str, Any] | None
                 ) -> tuple[float | None, bool | None, str | None]:
    """(ood_score, out_of_distribution, reason) of one classified cell.
    Without a guard in the model both are None (unavailable, never guessed),
    unless cell centring found no cell."""
    if not cell_found:
        finite = score if score is not None and math.isfinite(score) else None
        return finite, True, NO_CELL_REASON
    if guard is None or score is None:
        return None, None, None
    if not math.isfinite(score):
        return None, True, "the domain guard's score is not finite"
    threshold = float(guard["threshold"])
    if score > threshold:
        return score, True, f"unlike the training images (ood score {score:.2f} > {threshold:.2f})"
    return score, False, None


def domain_check(predictions: Sequence[Prediction], guard: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's ``domain_check`` record for the JSON report."""
    classified = [p for p in predictions if p.ok]
    if guard is None:
        return {"status": "unavailable", "reason": "this model carries no domain guard statistics "
                                                   "(retrain or re-export it with wbc-edge >= this version)",
                "cells": len(classified)}
    flagged = sum(bool(p.out_of_distribution) for p in classified)
    fraction = flagged / len(classified) if classified else 0.0
    limit = float(guard.get("shift_fraction", DEFAULT_SHIFT_FRACTION))
    record = {
        "status": "shift" if fraction > limit else "ok",
        "out_of_distribution": flagged,
        "cells": len(classified),
        "fraction": round(fraction, 4),
        "threshold": float(guard["threshold"]),
        "shift_fraction": limit,
        "expected_fraction": guard.get("expected_fraction"),
        "fitted_on": guard.get("fitted_on"),
    }
    if len(classified) < MIN_CELLS_FOR_STATUS:
        record["caveat"] = (f"only {len(classified)} classified cell{'s' if len(classified) != 1 else ''}: "
                            f"a run's status needs about {MIN_CELLS_FOR_STATUS} to be meaningful; "
                            "judge each cell by its own out_of_distribution flag")
    return record


def shift_warning(check: Mapping[str, Any]) -> str | None:
    """The warning ``classify`` prints for a run whose status is "shift"."""
    if check.get("status") != "shift":
        return None
    return (f"WARNING: {check['out_of_distribution']} of {check['cells']} cells "
            f"({100 * check['fraction']:.0f}%) do not look like the model's training images "
            f"(domain check: shift). Its answers on this lab are not to be trusted as they are: "
            f"adapt the model to this lab, or review every cell.")
