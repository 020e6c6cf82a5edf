"""Class activation maps for the review page, computed when the page asks.

The model that classified the report is loaded once, on the first request
(the report's ``model.path``; where that file is not here, the shipped default
model), and asked for ``predict_batch([image], cam=True)``: each Prediction's
``cam`` is a float32 ``(classes, h, w)`` array (4x4 at 128 input). The page
gets one class's map, scaled to 0..1, and the region of the image the model
saw (the resize policy's source box), and draws it over the cell.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WbcEdgeError

NOT_AVAILABLE = "CAM not available for this model"


class CamUnavailable(Exception):
    """Why no map can be shown (the page says it as it is)."""


class CamProvider:
    """Computes and caches maps; thread-safe."""

    def __init__(self, report_model: Mapping[str, Any], classes: list[str], *, loader=None):
        self.report_model = dict(report_model)
        self.classes = list(classes)
        self._loader = loader
        self._lock = threading.Lock()
        self._classifier = None
        self._failure: str | None = None
        self.notes: list[str] = []
        self._cache: dict[tuple[int, str], dict] = {}

    # ----------------------------------------------------------------- model

    def _load(self):
        """The classifier, loaded on first use; CamUnavailable if it cannot be."""
        if self._failure is not None:
            raise CamUnavailable(self._failure)
        if self._classifier is not None:
            return self._classifier
        try:
            self._classifier = self._load_classifier()
        except CamUnavailable as error:
            self._failure = str(error)
            raise
        except Exception as error:  # a model that will not load: say why, once
            self._failure = f"{NOT_AVAILABLE}: the model could not be loaded ({error})"
            raise CamUnavailable(self._failure) from None
        return self._classifier

    def _load_classifier(self):
        from ..classifier import Classifier
        from ..metadata import sha256_of

        load = self._loader or Classifier.load
        path = self.report_model.get("path")
        if isinstance(path, str) and Path(path).is_file():
            clf = load(path)
        else:
            clf = load(None)
            self.notes.append(f"the report's model ({path or 'no path recorded'}) is not on this machine: "
                              "the maps are the shipped default model's")
        if list(clf.classes) != self.classes:
            clf.close()
            raise CamUnavailable(f"{NOT_AVAILABLE}: the model at hand has classes {list(clf.classes)}, "
                                 f"the report {self.classes}")
        expected = self.report_model.get("sha256")
        actual = None
        model_path = getattr(clf, "model_path", None)
        if model_path is not None and Path(model_path).is_file():
            actual = sha256_of(model_path)
        if expected and actual and expected != actual:
            self.notes.append(f"the model file differs from the one that made the report (sha256 {actual[:12]}... "
                              f"vs {expected[:12]}... in the report): the maps are this model's")
        elif not expected:
            self.notes.append("the report does not record its model's sha256: cannot confirm that the maps come "
                              "from the model that classified")
        self.model_sha256 = actual
        return clf

    def close(self) -> None:
        with self._lock:
            if self._classifier is not None:
                self._classifier.close()
                self._classifier = None

    # ------------------------------------------------------------------ maps

    def cam(self, cell: int, image_path: str | os.PathLike, class_name: str) -> dict[str, Any]:
        """``{"available": True, "class", "map" (h rows of w values in 0..1),
        "box" (x0, y0, x1, y1 as fractions of the image), "label" (the model's
        own answer now), "notes"}``; raises CamUnavailable."""
        key = (cell, class_name)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            clf = self._load()
            try:
                predictions = clf.predict_batch([str(image_path)], cam=True)
            except TypeError:
                raise CamUnavailable(f"{NOT_AVAILABLE} (this wbc-edge's Classifier does not compute class "
                                     "activation maps)") from None
            except WbcEdgeError as error:  # e.g. a model exported without the maps
                raise CamUnavailable(f"{NOT_AVAILABLE}: {error}") from None
            except Exception as error:  # never a server error for an explanation
                raise CamUnavailable(f"no map for this cell: {error}") from None
            pred = predictions[0]
            if getattr(pred, "error", None):
                raise CamUnavailable(f"no map for this cell: {pred.error}")
            cam = getattr(pred, "cam", None)
            if cam is None:
                raise CamUnavailable(NOT_AVAILABLE)
            cam = np.asarray(cam, dtype=np.float32)
            if cam.ndim != 3 or cam.shape[0] != len(self.classes):
                raise CamUnavailable(f"{NOT_AVAILABLE}: maps of shape {cam.shape}, expected "
                                     f"({len(self.classes)}, h, w)")
            result = {
                "available": True,
                "class": class_name,
                "map": normalize(cam[self.classes.index(class_name)]).round(4).tolist(),
                "box": source_box(clf, image_path),
                "label": pred.label,
                "notes": list(self.notes),
            }
            self._cache[key] = result
            return result


def normalize(m: np.ndarray) -> np.ndarray:
    """A map scaled to 0..1 (min to max); a flat map is all zeros."""
    m = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    span = float(m.max() - m.min())
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def source_box(clf, image_path) -> list[float]:
    """The part of the image the model saw, ``[x0, y0, x1, y1]`` as fractions
    of its width and height (the whole image for the ``stretch`` policy)."""
    meta = getattr(clf, "metadata", None)
    policy = getattr(meta, "resize_policy", "stretch")
    if policy in (None, "stretch"):
        return [0.0, 0.0, 1.0, 1.0]
    try:
        from ..decode import decode_image
        from ..preprocess import preprocess_batch

        image = decode_image(str(image_path))
        boxes = np.zeros((1, 5), np.float32)
        preprocess_batch([image], tuple(meta.input_size), policy=policy, boxes=boxes)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = (float(v) for v in boxes[0, :4])
        return [x0 / w, y0 / h, x1 / w, y1 / h]
    except Exception:
        return [0.0, 0.0, 1.0, 1.0]
