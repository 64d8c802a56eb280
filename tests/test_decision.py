"""TierDecision: a tuned tier decision that leaves the P(High) ranking of the base model intact."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from clvtier.decision import TierDecision, _cumulative, _shifted
from clvtier.errors import InputError

TIER_NAMES = np.array(["Low", "Medium", "High"], dtype=object)


def _rare_middle(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ordered tiers from a noisy score; Medium is a thin 7 % band, as future tiers often are."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    latent = X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.8, size=n)
    cuts = np.quantile(latent, [0.68, 0.75])
    return X, TIER_NAMES[np.searchsorted(cuts, latent, side="right")]


@pytest.fixture(scope="module")
def fitted() -> tuple[TierDecision, np.ndarray, np.ndarray]:
    X, y = _rare_middle()
    return TierDecision(LogisticRegression(), random_state=0).fit(X, y), X, y


def test_probabilities_are_rows_of_a_distribution(fitted) -> None:
    model, X, _ = fitted
    p = model.predict_proba(X)
    assert p.shape == (len(X), 3)
    assert (p >= 0).all() and (p <= 1).all()
    assert np.allclose(p.sum(axis=1), 1.0)
    assert model.classes_.tolist() == ["Low", "Medium", "High"]
    assert np.array_equal(model.predict(X), model.classes_[p.argmax(axis=1)])


def test_high_ranking_is_the_base_models(fitted) -> None:
    model, X, _ = fitted
    base = model.estimator_.predict_proba(X)[:, list(model.estimator_.classes_).index("High")]
    assert spearmanr(base, model.predict_proba(X)[:, 2]).statistic == pytest.approx(1.0)


def test_tuning_helps_the_rare_tier(fitted) -> None:
    model, _, _ = fitted
    assert model.oof_score_ > model.oof_score_base_
    assert model.shifts_.shape == (2,)
    assert np.abs(model.shifts_).max() > 0


def test_zero_shift_is_the_identity() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [1.0, 0.0, 0.0]])
    assert np.allclose(_shifted(_cumulative(p), np.zeros(2)), p)


@pytest.mark.parametrize("shifts", [np.array([2.0, -2.0]), np.array([-3.0, 3.0])], ids=["widen", "squeeze"])
def test_shifted_cumulative_stays_ordered(shifts: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], size=200)
    out = _shifted(_cumulative(p), shifts)
    assert (out >= -1e-12).all() and np.allclose(out.sum(axis=1), 1.0)


def test_two_tiers_only() -> None:
    X, y = _rare_middle()
    y = np.where(y == "Medium", "Low", y)
    model = TierDecision(LogisticRegression()).fit(X, y)
    assert model.classes_.tolist() == ["Low", "High"]
    assert model.predict_proba(X).shape == (len(X), 2)


def test_clones_and_follows_the_estimator_contract() -> None:
    model = TierDecision(LogisticRegression(C=0.5), metric="accuracy", cv=4)
    twin = clone(model)
    assert twin.get_params()["metric"] == "accuracy"
    assert twin.get_params()["estimator__C"] == 0.5


@pytest.mark.parametrize(
    ("params", "labels", "message"),
    [
        ({"metric": "auc"}, None, "unknown metric"),
        ({"cv": 1}, None, "cv=1"),
        ({"step": 0.0}, None, "step=0.0"),
        ({}, ["Low", "Gold"], "unknown tier label"),
    ],
    ids=["metric", "cv", "step", "labels"],
)
def test_bad_input_is_named(params: dict, labels: list[str] | None, message: str) -> None:
    X, y = _rare_middle(200)
    if labels is not None:
        y = np.resize(np.array(labels, dtype=object), len(y))
    with pytest.raises(InputError, match=message):
        TierDecision(LogisticRegression(), **params).fit(X, y)
