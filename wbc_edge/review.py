"""Which predictions a technologist must review.

A cell goes to review when the model is unsure of it (its calibrated
confidence is below the threshold for the predicted class) or when its
predicted class is one the lab always looks at.

Defaults, for the shipped model:

* threshold **0.90** for every class. The confidence is temperature-calibrated,
  so a cell passed without review is expected to be right at least 9 times in
  10, and in practice far more often, because most cells are far above the
  threshold: on the validation split (701 real cells), an early checkpoint of
  the shipped model (89 % accurate) passed 56 % of the cells at 0.90, and only
  0.5 % of those were wrong, while 75 of its 77 errors fell below 0.90. The
  share flagged falls as the model gets better. A lab that wants fewer reviews
  lowers the threshold; one that wants fewer unreviewed errors raises it.
* always review ``ig`` (immature granulocytes) and ``erythroblast``: neither is
  normally found in adult peripheral blood, so any such cell is a finding
  (left shift, infection, marrow stress, haemolysis) that a person confirms.

A model may carry its own defaults in its metadata
(``extra["review"] = {"threshold": ..., "class_thresholds": {...},
"always_review": [...]}``); an explicit policy overrides both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import WbcEdgeError

DEFAULT_THRESHOLD = 0.90
#: Classes always reviewed when the model has them, with why.
DEFAULT_ALWAYS_REVIEW = {
    "ig": "immature granulocytes are not normally in adult peripheral blood",
    "erythroblast": "erythroblasts are not normally in adult peripheral blood",
}


@dataclass(frozen=True)
class ReviewPolicy:
    """Per-class confidence thresholds and classes always sent to review.

    Args:
        threshold: review a prediction whose confidence is below this
            (0 disables the confidence rule, 1 reviews everything not certain).
        class_thresholds: per predicted class, replacing ``threshold``.
        always_review: classes every prediction of which is reviewed.
    """

    threshold: float = DEFAULT_THRESHOLD
    class_thresholds: Mapping[str, float] = field(default_factory=dict)
    always_review: frozenset = frozenset(DEFAULT_ALWAYS_REVIEW)

    def __post_init__(self):
        object.__setattr__(self, "threshold", _check_threshold(self.threshold, "threshold"))
        object.__setattr__(self, "class_thresholds", {
            str(k): _check_threshold(v, f"threshold for {k!r}") for k, v in dict(self.class_thresholds).items()})
        if isinstance(self.always_review, str):
            raise TypeError("always_review must be a collection of class names, not one string")
        object.__setattr__(self, "always_review", frozenset(str(c) for c in self.always_review))

    @classmethod
    def default_for(cls, classes: Sequence[str], model_defaults: Mapping[str, Any] | None = None) -> ReviewPolicy:
        """The default policy for a model with these classes: the model's own
        defaults where its metadata has them, else the package's, keeping
        only always-review classes the model has."""
        if model_defaults:
            return cls.from_dict(model_defaults).validate(classes)
        return cls(always_review=frozenset(c for c in DEFAULT_ALWAYS_REVIEW if c in classes))

    @classmethod
    def for_model(cls, policy: ReviewPolicy | Mapping[str, Any] | None, classes: Sequence[str],
                  model_defaults: Mapping[str, Any] | None = None) -> ReviewPolicy:
        """``policy`` (a ReviewPolicy, its dict, or None for the model's
        default) checked against the model's classes; WbcEdgeError for a bad one."""
        if policy is None:
            policy = cls.default_for(classes, model_defaults)
        elif isinstance(policy, Mapping):
            try:
                policy = cls.from_dict(policy)
            except ValueError as error:
                raise WbcEdgeError(f"review policy: {error}") from None
        elif not isinstance(policy, cls):
            raise TypeError(f"review must be a ReviewPolicy, a dict or None, got {type(policy).__name__}")
        return policy.validate(classes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReviewPolicy:
        unknown = set(data) - {"threshold", "class_thresholds", "always_review"}
        if unknown:
            raise WbcEdgeError(f"review policy: unknown keys {sorted(unknown)}")
        return cls(
            threshold=data.get("threshold", DEFAULT_THRESHOLD),
            class_thresholds=data.get("class_thresholds") or {},
            always_review=frozenset(data.get("always_review", DEFAULT_ALWAYS_REVIEW)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "class_thresholds": dict(sorted(self.class_thresholds.items())),
            "always_review": sorted(self.always_review),
        }

    def validate(self, classes: Sequence[str]) -> ReviewPolicy:
        """Refuses class names the model does not have (a typo would silently
        never trigger); returns self."""
        named = set(self.class_thresholds) | set(self.always_review)
        unknown = sorted(named - set(classes))
        if unknown:
            raise WbcEdgeError(f"review policy names classes the model does not have: {', '.join(unknown)}; "
                               f"the model's classes are {', '.join(classes)}")
        return self

    def threshold_for(self, label: str) -> float:
        return self.class_thresholds.get(label, self.threshold)

    def decide(self, label: str, confidence: float) -> tuple[bool, str | None]:
        """``(review, reason)`` for one prediction."""
        reasons = []
        if label in self.always_review:
            reasons.append(f"{label} is always reviewed")
        threshold = self.threshold_for(label)
        if confidence < threshold:
            reasons.append(f"low confidence ({confidence:.3f} < {threshold:.2f})")
        return (True, "; ".join(reasons)) if reasons else (False, None)


def parse_review_options(thresholds: Iterable[str] = (), always: Iterable[str] = (),
                         base: ReviewPolicy | None = None) -> ReviewPolicy | None:
    """A policy from command-line values, over ``base`` (default: the package's).

    ``thresholds``: ``"0.8"`` (every class) or ``"CLASS=0.95"`` (one class),
    repeatable. ``always``: comma-separated class names, repeatable; ``none``
    clears the set. Returns None when nothing was given (use the model's
    default policy).
    """
    thresholds, always = list(thresholds or ()), list(always or ())
    if not thresholds and not always:
        return None
    base = base or ReviewPolicy()
    threshold, per_class = base.threshold, dict(base.class_thresholds)
    for item in thresholds:
        name, sep, value = item.rpartition("=")
        number = _parse_float(value, item)
        if sep:
            if not name:
                raise WbcEdgeError(f"--review-threshold {item!r}: expected CLASS=VALUE")
            per_class[name] = number
        else:
            threshold = number
    always_review = base.always_review
    if always:
        names = [n.strip() for item in always for n in item.split(",") if n.strip()]
        always_review = frozenset() if [n.lower() for n in names] == ["none"] else frozenset(names)
    try:
        return ReviewPolicy(threshold, per_class, always_review)
    except ValueError as error:
        raise WbcEdgeError(f"review policy: {error}") from None


def _parse_float(value: str, item: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise WbcEdgeError(f"--review-threshold {item!r}: {value!r} is not a number") from None


def _check_threshold(value, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value}")
    return value
