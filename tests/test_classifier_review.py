"""The review policy: thresholds, always-reviewed classes, how to set them,
and that the Classifier applies them to real predictions."""

from __future__ import annotations

import pytest

from tests.conftest import SAMPLE_DIR, sample_rows
from wbc_edge import Classifier, ReviewPolicy, WbcEdgeError
from wbc_edge.review import DEFAULT_THRESHOLD, parse_review_options

CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def test_decide_by_threshold_and_class():
    policy = ReviewPolicy(threshold=0.9, class_thresholds={"monocyte": 0.97}, always_review={"ig"})
    assert policy.decide("neutrophil", 0.95) == (False, None)
    review, reason = policy.decide("neutrophil", 0.5)
    assert review and reason == "low confidence (0.500 < 0.90)"
    assert policy.decide("monocyte", 0.95)[0]  # its own, stricter threshold
    review, reason = policy.decide("ig", 0.999)
    assert review and reason == "ig is always reviewed"
    review, reason = policy.decide("ig", 0.3)
    assert "always reviewed" in reason and "low confidence" in reason
    assert policy.decide("neutrophil", 0.9) == (False, None)  # at the threshold: accepted


def test_defaults_for_the_shipped_classes_and_for_other_models():
    policy = ReviewPolicy.default_for(CLASSES)
    assert policy.threshold == DEFAULT_THRESHOLD
    assert policy.always_review == {"ig", "erythroblast"}
    other = ReviewPolicy.default_for(["lymphocyte", "neutrophil"])
    assert other.always_review == frozenset()
    from_model = ReviewPolicy.default_for(CLASSES, {"threshold": 0.8, "always_review": ["basophil"]})
    assert (from_model.threshold, from_model.always_review) == (0.8, {"basophil"})


def test_invalid_policies_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ReviewPolicy(threshold=1.5)
    with pytest.raises(ValueError, match="monocyte"):
        ReviewPolicy(class_thresholds={"monocyte": -0.1})
    with pytest.raises(TypeError):
        ReviewPolicy(always_review="ig")
    with pytest.raises(WbcEdgeError, match="blast"):
        ReviewPolicy(always_review={"blast"}).validate(CLASSES)
    with pytest.raises(WbcEdgeError, match="unknown keys"):
        ReviewPolicy.from_dict({"treshold": 0.5})


def test_command_line_values():
    base = ReviewPolicy.default_for(CLASSES)
    assert parse_review_options([], [], base) is None
    policy = parse_review_options(["0.8", "monocyte=0.95"], ["basophil,ig", "platelet"], base)
    assert policy.threshold == 0.8 and policy.class_thresholds == {"monocyte": 0.95}
    assert policy.always_review == {"basophil", "ig", "platelet"}
    assert parse_review_options([], ["none"], base).always_review == frozenset()
    assert parse_review_options(["0.7"], [], base).always_review == base.always_review
    with pytest.raises(WbcEdgeError, match="not a number"):
        parse_review_options(["high"], [], base)
    with pytest.raises(WbcEdgeError, match=r"\[0, 1\]"):
        parse_review_options(["95"], [], base)


def test_round_trip():
    policy = ReviewPolicy(0.85, {"ig": 0.99}, {"erythroblast"})
    assert ReviewPolicy.from_dict(policy.to_dict()) == policy


@pytest.fixture(scope="module")
def classifier():
    with Classifier.load() as c:
        yield c


@pytest.fixture(scope="module")
def paths():
    return [SAMPLE_DIR / r["path"] for r in sample_rows("test")][::4]


def test_classifier_applies_the_policy(classifier, paths):
    assert classifier.review.always_review == {"ig", "erythroblast"} & set(classifier.classes)
    default = classifier.predict_batch(paths)
    for p in default:
        expected = p.label in classifier.review.always_review or p.confidence < classifier.review.threshold
        assert p.review == expected and (p.review_reason is not None) == expected
    try:
        classifier.review = ReviewPolicy(threshold=0.0, always_review=())
        assert not any(p.review for p in classifier.predict_batch(paths))
        classifier.review = {"threshold": 0.0, "always_review": classifier.classes}
        assert all(p.review for p in classifier.predict_batch(paths))
        labels = {p.label for p in default}
        one = sorted(labels)[0]
        classifier.review = ReviewPolicy(threshold=0.0, class_thresholds={one: 1.0}, always_review=())
        got = classifier.predict_batch(paths)
        assert all(p.review == (p.label == one and p.confidence < 1.0) for p in got)
        # probabilities and labels do not depend on the policy
        assert [p.probabilities for p in got] == [p.probabilities for p in default]
        with pytest.raises(WbcEdgeError, match="does not have"):
            classifier.review = ReviewPolicy(always_review={"blast"})
    finally:
        classifier.review = None
    assert classifier.review == ReviewPolicy.default_for(classifier.classes)


def test_load_takes_a_policy(paths):
    with Classifier.load(review={"threshold": 1.0, "always_review": []}) as c:
        assert all(p.review == (p.confidence < 1.0) for p in c.predict_batch(paths[:4]))
