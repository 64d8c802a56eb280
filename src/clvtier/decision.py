"""Decision: tier probabilities whose most probable tier is tuned, by cross-validation, for a metric.

A classifier fitted without class weights ranks customers well (its P(High)
orders them by their chance of being High) but its most probable tier favours
the large tiers, which costs macro-F1 when one tier is rare (a "Medium" that
holds 5 % of customers, say). Class weights fix the decision but distort the
ranking. :class:`TierDecision` keeps both: it shifts the log-odds of the
cumulative probabilities P(tier >= Medium) and P(tier >= High) by amounts chosen
on out-of-fold predictions of the training customers, so

* P(High) stays an increasing function of the base model's P(High): rankings,
  ROC AUC and revenue capture of the top customers are unchanged;
* the most probable tier (what clvtier reports) maximises the selection metric
  on the training customers' out-of-fold predictions.

The shift plays the role of a decision threshold, as in scikit-learn's
``TunedThresholdClassifierCV``, for ordered tiers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from clvtier.errors import InputError
from clvtier.target import TIERS

__all__ = ["TierDecision"]

#: Metrics the decision can be tuned for (the names of :data:`clvtier.train.METRICS`).
DECISION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "macro_f1": lambda y, p: float(f1_score(y, p, average="macro", zero_division=0)),
    "accuracy": lambda y, p: float(accuracy_score(y, p)),
    "weighted_f1": lambda y, p: float(f1_score(y, p, average="weighted", zero_division=0)),
    "balanced_accuracy": lambda y, p: float(balanced_accuracy_score(y, p)),
}
_EPS = 1e-12
_ROUNDS = 3


def _cumulative(proba: np.ndarray) -> np.ndarray:
    """P(tier >= k) for k = 1..K-1 from per-tier probabilities (K columns, ordered)."""
    return np.clip(proba[:, ::-1].cumsum(axis=1)[:, ::-1][:, 1:], 0.0, 1.0)


def _shifted(cum: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Per-tier probabilities after adding ``shifts`` to the log-odds of each cumulative column."""
    c = np.clip(cum, _EPS, 1 - _EPS)
    moved = 1.0 / (1.0 + np.exp(-(np.log(c) - np.log1p(-c) + shifts)))
    moved = np.where(cum <= 0, 0.0, np.where(cum >= 1, 1.0, moved))
    # P(tier >= k) must not increase with k; enforce it after the shifts.
    moved = np.minimum.accumulate(moved, axis=1)
    n = len(cum)
    full = np.column_stack([np.ones(n), moved, np.zeros(n)])
    return full[:, :-1] - full[:, 1:]


class TierDecision(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Wrap a tier classifier so that its most probable tier maximises a metric.

    Parameters
    ----------
    estimator : classifier
        Fitted on the tiers without class weights; needs ``predict_proba``.
    metric : {"macro_f1", "accuracy", "weighted_f1", "balanced_accuracy"}, default="macro_f1"
        What the decision is tuned for (use the model-selection metric).
    cv : int, default=3
        Folds of the out-of-fold predictions the shifts are chosen on.
    max_shift : float, default=3.0
        Largest log-odds shift tried, in either direction (a factor of about 20 on the odds).
    step : float, default=0.2
        Spacing of the shifts tried.
    random_state : int, default=0
        Seed of the fold assignment.

    Attributes
    ----------
    classes_ : ndarray of str
        The tiers seen in fit, in :data:`~clvtier.target.TIERS` order.
    estimator_ : classifier
        ``estimator`` refitted on all the data.
    shifts_ : ndarray of shape (n_classes - 1,)
        Log-odds shift of P(tier >= Medium) and P(tier >= High); 0 means no change.
    oof_score_base_ : float
        The metric of the base model's most probable tier, out of fold.
    oof_score_ : float
        The metric after the shifts, out of fold (optimistic: the shifts were chosen on it).

    Notes
    -----
    The shifts are found by coordinate ascent on a grid, starting from 0 and
    moving only on a strict improvement, so with no gain to be had the base
    model's probabilities are returned unchanged. The output probabilities are
    those of the base model under a different prior, like those of a model fitted
    with class weights: use them to rank, not as calibrated frequencies.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from clvtier.decision import TierDecision
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 2))
    >>> y = np.array(["Low", "Medium", "High"], dtype=object)[
    ...     np.digitize(X[:, 0] + rng.normal(size=600), [0.9, 1.3])]
    >>> model = TierDecision(LogisticRegression()).fit(X, y)
    >>> model.classes_.tolist()
    ['Low', 'Medium', 'High']
    >>> bool(model.oof_score_ >= model.oof_score_base_)
    True
    """

    def __init__(self, estimator: Any, metric: str = "macro_f1", cv: int = 3, max_shift: float = 3.0,
                 step: float = 0.2, random_state: int = 0) -> None:
        self.estimator = estimator
        self.metric = metric
        self.cv = cv
        self.max_shift = max_shift
        self.step = step
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.metric not in DECISION_METRICS:
            raise InputError(f"TierDecision: unknown metric {self.metric!r}.",
                             f"Use one of {', '.join(DECISION_METRICS)}.")
        if not (isinstance(self.cv, int | np.integer) and self.cv >= 2):
            raise InputError(f"TierDecision: cv={self.cv!r} must be an integer >= 2.", "Use e.g. cv=3.")
        if not (self.max_shift > 0 and 0 < self.step <= self.max_shift):
            raise InputError(
                f"TierDecision: max_shift={self.max_shift!r} and step={self.step!r} must satisfy "
                "0 < step <= max_shift.", "Use e.g. max_shift=3, step=0.2.")

    def fit(self, X: Any, y: Any) -> TierDecision:
        """Choose the shifts on out-of-fold predictions, then refit the estimator on everything.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n, m)
        y : array-like of str, shape (n,)
            Tiers (labels from :data:`~clvtier.target.TIERS`).

        Returns
        -------
        self : TierDecision
        """
        self._check_params()
        y = np.asarray(y, dtype=object)
        unknown = sorted({str(v) for v in y} - set(TIERS))
        if unknown:
            raise InputError(f"TierDecision: unknown tier label(s) {unknown[:5]}.",
                             f"Labels must be tiers: {', '.join(TIERS)}.")
        self.classes_ = np.array([t for t in TIERS if t in set(y)], dtype=object)
        self.shifts_ = np.zeros(max(len(self.classes_) - 1, 0))
        counts = np.array([(y == c).sum() for c in self.classes_])
        if len(self.classes_) >= 2 and counts.min() >= self.cv:
            oof = np.zeros((len(y), len(self.classes_)))
            folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
            for train, test in folds.split(np.zeros(len(y)), y):
                model = clone(self.estimator).fit(_rows(X, train), y[train])
                oof[test] = self._aligned(model, _rows(X, test))
            self._tune(oof, y)
        else:
            self.oof_score_base_ = self.oof_score_ = float("nan")
        self.estimator_ = clone(self.estimator).fit(X, y)
        return self

    def _tune(self, oof: np.ndarray, y: np.ndarray) -> None:
        score_fn = DECISION_METRICS[self.metric]
        cum = _cumulative(oof)
        grid = np.arange(-self.max_shift, self.max_shift + self.step / 2, self.step)

        def score(shifts: np.ndarray) -> float:
            return score_fn(y, self.classes_[np.argmax(_shifted(cum, shifts), axis=1)])

        shifts = np.zeros(cum.shape[1])
        best = self.oof_score_base_ = score(shifts)
        for _ in range(_ROUNDS):
            moved = False
            for k in range(len(shifts)):
                for g in grid:
                    trial = shifts.copy()
                    trial[k] = g
                    s = score(trial)
                    if s > best + _EPS or (abs(s - best) <= _EPS and abs(g) < abs(shifts[k]) - _EPS):
                        best, shifts, moved = s, trial, True
            if not moved:
                break
        self.shifts_ = shifts
        self.oof_score_ = float(best)

    def _aligned(self, model: Any, X: Any) -> np.ndarray:
        proba = model.predict_proba(X)
        classes = list(model.classes_)
        out = np.zeros((proba.shape[0], len(self.classes_)))
        for j, c in enumerate(self.classes_):
            if c in classes:
                out[:, j] = proba[:, classes.index(c)]
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """Tier probabilities after the tuned shifts, columns in ``classes_`` order.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n, m)

        Returns
        -------
        ndarray of shape (n, n_classes)
        """
        check_is_fitted(self, "estimator_")
        base = self._aligned(self.estimator_, X)
        if base.shape[1] < 2:
            return base
        return _shifted(_cumulative(base), self.shifts_)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable tier after the shifts."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _rows(X: Any, idx: np.ndarray) -> Any:
    return X.iloc[idx] if hasattr(X, "iloc") else np.asarray(X)[idx]
