"""Metrics, confidence intervals and naive baselines for tier predictions (no I/O).

Everything here is a pure function of arrays. Tier labels are the strings in
:data:`clvtier.target.TIERS`; probability matrices have one column per tier in
that order. Metrics that are undefined on the given data (ROC AUC with one
class, value shares when nobody spent, a correlation with a constant input)
are returned as ``None`` and never emit warnings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import _num_samples, check_is_fitted

from clvtier.errors import InputError
from clvtier.target import TIERS, TierBinner, tier_codes

__all__ = [
    "MajorityBaseline",
    "bootstrap_ci",
    "capture_at",
    "carry_forward_tiers",
    "classification_metrics",
    "gains_curve",
    "headline_with_ci",
    "lift_at",
    "paired_bootstrap_diff",
    "reliability_curve",
    "top_k_flag",
]

_HIGH = 2
_TOP_LIFT = 0.25
# Bootstrap index matrices are built in chunks of about this many entries.
_CHUNK_ENTRIES = 2_000_000


# --------------------------------------------------------------------------- validation


def _tiers(y, name: str) -> np.ndarray:
    codes = tier_codes(y)
    if codes.size == 0:
        raise InputError(f"{name} is empty.", fix="evaluate at least one customer")
    return codes


def _numbers(x, name: str, n: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}", fix=f"pass numbers as {name}") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(
            f"{name} must be one-dimensional; got shape {arr.shape}.",
            fix=f"pass one {name} per customer",
        )
    if arr.size == 0:
        raise InputError(f"{name} is empty.", fix="evaluate at least one customer")
    if n is not None and arr.size != n:
        raise InputError(
            f"{name} has {arr.size} entries but there are {n} customers.",
            fix="pass arrays aligned on the same customers",
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} of {arr.size} entries of {name} are NaN or infinite.",
            fix=f"fill or drop the missing {name} before evaluating",
        )
    return arr


def _probabilities(proba, n: int) -> np.ndarray:
    try:
        arr = np.asarray(proba, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"proba must be numeric: {exc}", fix="pass predict_proba output") from exc
    if arr.shape != (n, len(TIERS)):
        raise InputError(
            f"proba must have shape ({n}, {len(TIERS)}); got {arr.shape}.",
            fix="pass one row per customer with columns in the order " + ", ".join(TIERS),
        )
    bad_rows = ~(np.isfinite(arr).all(axis=1) & (arr >= 0).all(axis=1) & (arr <= 1).all(axis=1))
    bad_rows |= ~np.isclose(arr.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    if bad_rows.any():
        raise InputError(
            f"{int(bad_rows.sum())} of {n} rows of proba are not probabilities "
            "(each entry in [0, 1], each row summing to 1).",
            fix="pass the output of predict_proba",
        )
    return arr


def _top_count(n: int, top: float) -> int:
    """How many of ``n`` customers form the top fraction: ``top * n`` rounded half up."""
    if not (isinstance(top, int | float | np.floating) and 0 < top <= 1):
        raise InputError(f"top={top!r} must be a fraction in (0, 1].", fix="pass e.g. top=0.1")
    # The epsilon keeps products such as 0.15 * 10 = 1.4999999... from rounding down.
    return int(np.floor(top * n + 0.5 + 1e-9))


def _descending(score: np.ndarray) -> np.ndarray:
    """Order by score, highest first; ties keep their input order."""
    return np.argsort(-score, kind="stable", axis=-1)


# --------------------------------------------------------------- vectorised metrics
# Each takes an index matrix ``idx`` of shape (b, n) (one resample per row; the
# full data is ``np.arange(n)[None]``) and returns b floats, NaN when undefined.


def _confusion(pairs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Confusion matrices (b, 3, 3), rows true, columns predicted; pairs = 3 * true + pred."""
    b = idx.shape[0]
    flat = (pairs[idx] + 9 * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=9 * b).reshape(b, 3, 3)


def _ratio(num: np.ndarray, den: np.ndarray, undefined: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, undefined)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (zero_division=0) and support per tier, each (b, 3)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    predicted = cm.sum(axis=1)
    support = cm.sum(axis=2)
    precision = _ratio(tp, predicted, 0.0)
    recall = _ratio(tp, support, 0.0)
    f1 = _ratio(2 * tp, predicted + support, 0.0)
    return precision, recall, f1, support


def _accuracy(cm: np.ndarray) -> np.ndarray:
    return np.trace(cm, axis1=1, axis2=2) / cm.sum(axis=(1, 2))


def _macro_f1(cm: np.ndarray) -> np.ndarray:
    # Averaged over the tiers present in y_true or y_pred, as scikit-learn does.
    _, _, f1, support = _per_class(cm)
    present = (support + cm.sum(axis=1)) > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def _weighted_f1(cm: np.ndarray) -> np.ndarray:
    _, _, f1, support = _per_class(cm)
    return (f1 * support).sum(axis=1) / support.sum(axis=1)


def _value_share(held: np.ndarray, total: np.ndarray) -> np.ndarray:
    share = _ratio(held, total, np.nan)
    share[total <= 0] = np.nan
    return share


def _capture_rows(score: np.ndarray, value: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Share of value held by the k customers with the highest score, per resample."""
    s, v = score[idx], value[idx]
    top = np.take_along_axis(v, _descending(s)[:, :k], axis=1).sum(axis=1)
    return _value_share(top, v.sum(axis=1))


def _flag_share_rows(flag: np.ndarray, value: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Share of value held by the flagged customers, per resample."""
    v = value[idx]
    return _value_share((v * flag[idx]).sum(axis=1), v.sum(axis=1))


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How many times each of the ``n`` customers is drawn in each resample: (b, n)."""
    b = idx.shape[0]
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)


def _resample_ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each customer's average rank (ties averaged) among the resample's draws: (b, n).

    The same numbers ``rankdata(values[idx], axis=1)`` gives each drawn copy, computed
    from the draw counts after one sort of ``values`` instead of a sort per resample.
    Ranks are half-integers, so the sums made of them are exact, in any order.
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    group = np.cumsum(np.r_[False, ordered[1:] != ordered[:-1]])  # tie group of each sorted customer
    drawn = np.add.reduceat(counts[:, order], starts, axis=1).astype(np.float64)
    below = np.cumsum(drawn, axis=1) - drawn
    ranks = np.empty(counts.shape, dtype=np.float64)
    ranks[:, order] = (below + (drawn + 1.0) / 2.0)[:, group]
    return ranks


def _auc_rows(positive: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    # Mann-Whitney U with average ranks for ties; equals sklearn's roc_auc_score.
    counts = _counts(idx, score.size)
    drawn_positive = counts * positive
    ranks = _resample_ranks(score, counts)
    n_pos = drawn_positive.sum(axis=1).astype(np.float64)
    n_neg = idx.shape[1] - n_pos
    u = (ranks * drawn_positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
    return _ratio(u, n_pos * n_neg, np.nan)


def _spearman_rows(score: np.ndarray, value: np.ndarray, idx: np.ndarray) -> np.ndarray:
    counts = _counts(idx, score.size)
    middle = (idx.shape[1] + 1) / 2.0  # the mean rank of every resample
    rs = _resample_ranks(score, counts) - middle
    rv = _resample_ranks(value, counts) - middle
    den = np.sqrt((counts * rs**2).sum(axis=1) * (counts * rv**2).sum(axis=1))
    # Rank deviations of a constant input are exactly 0, so den == 0 means "undefined".
    return np.clip(_ratio((counts * rs * rv).sum(axis=1), den, np.nan), -1.0, 1.0)


def _headline_fns(
    t: np.ndarray, p: np.ndarray, proba: np.ndarray | None, value: np.ndarray | None
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    pairs = 3 * t + p
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "accuracy": lambda idx: _accuracy(_confusion(pairs, idx)),
        "macro_f1": lambda idx: _macro_f1(_confusion(pairs, idx)),
        "high_recall": lambda idx: _per_class(_confusion(pairs, idx))[1][:, _HIGH],
        "high_precision": lambda idx: _per_class(_confusion(pairs, idx))[0][:, _HIGH],
    }
    score = proba[:, _HIGH] if proba is not None else p.astype(np.float64)
    if value is not None:
        predicted_high = p == _HIGH
        k = _top_count(t.size, _TOP_LIFT)
        fns["revenue_capture_high"] = lambda idx: _flag_share_rows(predicted_high, value, idx)
        fns["lift_top25"] = lambda idx: (
            _capture_rows(score, value, idx, k) / (k / t.size) if k else np.full(len(idx), np.nan)
        )
        fns["spearman"] = lambda idx: _spearman_rows(score, value, idx)
    if proba is not None:
        fns["roc_auc_high"] = lambda idx: _auc_rows(t == _HIGH, score, idx)
    return fns


def _float_or_none(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


# ------------------------------------------------------------------------- metrics


#: Metrics undefined for a method that puts no customer in High (stored as 0, shown as undefined).
NEEDS_PREDICTED_HIGH = ("high_precision", "revenue_capture_high")


def none_predicted_high(metrics: dict | None) -> bool:
    """Whether a method put no test customer in High: the High column of its stored confusion matrix is empty."""
    cm = (metrics or {}).get("confusion")
    return bool(cm) and not np.asarray(cm, dtype=float)[:, TIERS.index("High")].any()


def classification_metrics(
    y_true,
    y_pred,
    proba: np.ndarray | None = None,
    value: np.ndarray | None = None,
) -> dict:
    """Score tier predictions, optionally against probabilities and money.

    Parameters
    ----------
    y_true, y_pred : array-like of str, shape (n,)
        Actual and predicted tiers (labels from :data:`~clvtier.target.TIERS`).
    proba : array-like of shape (n, 3), optional
        Predicted probabilities, columns in ``TIERS`` order; rows must sum to 1.
    value : array-like of shape (n,), optional
        Each customer's actual value (money) in the horizon.

    Returns
    -------
    dict
        JSON-serialisable. Always: ``accuracy``, ``macro_f1`` and ``weighted_f1``
        (averaged over the tiers present in ``y_true`` or ``y_pred``),
        ``per_class`` (``{tier: {precision, recall, f1, support}}``),
        ``confusion`` (3 x 3 list, rows true, columns predicted, ``TIERS``
        order), ``high_precision`` and ``high_recall``; precision, recall and F1
        use ``zero_division=0``.

        With ``value``: ``revenue_capture_high`` (share of the total value held by
        customers predicted High), ``lift_top25`` (share of value held by the top
        25 % ranked by score, divided by the share of customers in that top; see
        :func:`lift_at`) and ``spearman`` (rank correlation of score and value).
        The score is ``proba[:, 2]`` when ``proba`` is given, else the ordinal
        code of ``y_pred``.

        With ``proba``: ``roc_auc_high`` (High versus the rest, by ``proba[:, 2]``)
        and ``log_loss``.

        Undefined metrics are ``None``: value shares when the total value is not
        positive, ``lift_top25`` when the top 25 % holds no customer (n < 2),
        ``spearman`` with a constant score or value, ``roc_auc_high`` when
        ``y_true`` has only High or no High.

    Raises
    ------
    InputError
        Empty or misaligned inputs, unknown tier labels, non-finite values,
        probabilities of the wrong shape or not summing to 1.

    Examples
    --------
    >>> m = classification_metrics(["Low", "High", "High"], ["Low", "High", "Medium"],
    ...                            value=[0.0, 30.0, 10.0])
    >>> m["accuracy"], m["high_recall"], m["revenue_capture_high"]
    (0.6666666666666666, 0.5, 0.75)
    >>> m["confusion"]
    [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    """
    t = _tiers(y_true, "y_true")
    p = _tiers(y_pred, "y_pred")
    n = t.size
    if p.size != n:
        raise InputError(
            f"y_pred has {p.size} labels but y_true has {n}.",
            fix="pass predictions aligned on the same customers",
        )
    proba_arr = None if proba is None else _probabilities(proba, n)
    value_arr = None if value is None else _numbers(value, "value", n)

    full = np.arange(n)[None, :]
    cm = _confusion(3 * t + p, full)
    precision, recall, f1, support = (a[0] for a in _per_class(cm))
    out: dict = {
        "accuracy": float(_accuracy(cm)[0]),
        "macro_f1": float(_macro_f1(cm)[0]),
        "weighted_f1": float(_weighted_f1(cm)[0]),
        "per_class": {
            tier: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, tier in enumerate(TIERS)
        },
        "confusion": cm[0].tolist(),
        "high_precision": float(precision[_HIGH]),
        "high_recall": float(recall[_HIGH]),
    }
    fns = _headline_fns(t, p, proba_arr, value_arr)
    if value_arr is not None:
        for name in ("revenue_capture_high", "lift_top25", "spearman"):
            out[name] = _float_or_none(fns[name](full)[0])
    if proba_arr is not None:
        out["roc_auc_high"] = _float_or_none(fns["roc_auc_high"](full)[0])
        eps = np.finfo(np.float64).eps
        p_true = np.clip(proba_arr[np.arange(n), t], eps, 1 - eps)
        out["log_loss"] = float(-np.mean(np.log(p_true)))
    return out


# ------------------------------------------------------------------------ bootstrap


def _check_bootstrap_args(n: int, n_boot: int, alpha: float) -> None:
    if not (isinstance(n, int | np.integer) and n >= 1):
        raise InputError(f"n={n!r} must be a positive number of customers.", fix="pass len(data)")
    if not (isinstance(n_boot, int | np.integer) and n_boot >= 1):
        raise InputError(f"n_boot={n_boot!r} must be a positive integer.", fix="pass n_boot=1000")
    if not 0 < alpha < 1:
        raise InputError(f"alpha={alpha!r} must lie in (0, 1).", fix="pass alpha=0.05")


def _resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield bootstrap index matrices (b, n), b rows per chunk, n_boot rows in all.

    Rows are drawn one at a time so that the resamples depend only on
    ``(n, n_boot, seed)``, not on the chunk size.
    """
    rng = np.random.default_rng(seed)
    per_chunk = max(1, min(n_boot, _CHUNK_ENTRIES // n))
    done = 0
    while done < n_boot:
        b = min(per_chunk, n_boot - done)
        yield np.stack([rng.integers(0, n, size=n) for _ in range(b)])
        done += b


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _scalar(x) -> float:
    return float("nan") if x is None else float(x)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric over customers.

    Parameters
    ----------
    metric_fn : callable
        Takes an array of ``n`` row indices (drawn with replacement) and returns
        the metric on those rows as a float, or None / NaN when undefined on the
        resample; undefined resamples are left out of the interval.
    n : int
        Number of customers.
    n_boot : int, default=1000
        Number of resamples.
    seed : int, default=0
        Seed of ``numpy.random.default_rng``; the same seed gives the same interval.
    alpha : float, default=0.05
        The interval covers ``1 - alpha``.

    Returns
    -------
    (float, float)
        The ``alpha / 2`` and ``1 - alpha / 2`` percentiles; ``(nan, nan)`` when
        the metric is undefined on every resample.

    Examples
    --------
    >>> hit = np.array([1, 1, 0, 1, 0, 1, 1, 1], dtype=float)
    >>> lo, hi = bootstrap_ci(lambda idx: hit[idx].mean(), n=8, n_boot=200)
    >>> bool(lo <= hit.mean() <= hi)
    True
    """
    _check_bootstrap_args(n, n_boot, alpha)
    samples = np.array([_scalar(metric_fn(row)) for chunk in _resamples(n, n_boot, seed) for row in chunk])
    return _interval(samples, alpha)


def paired_bootstrap_diff(
    metric_fn_a: Callable[[np.ndarray], float],
    metric_fn_b: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Difference of two metrics on the same customers, with a paired bootstrap interval.

    Both metrics are evaluated on the *same* resamples, so the interval reflects
    the difference between the two models rather than the spread of each.

    Parameters
    ----------
    metric_fn_a, metric_fn_b : callable
        As in :func:`bootstrap_ci`.
    n, n_boot, seed, alpha
        As in :func:`bootstrap_ci`.

    Returns
    -------
    dict
        ``{"diff": a - b on all customers, "lo": ..., "hi": ...}``; None where undefined.

    Examples
    --------
    >>> a = np.array([1, 1, 1, 0, 1, 1, 1, 1], dtype=float)
    >>> b = np.array([1, 0, 1, 0, 0, 1, 0, 1], dtype=float)
    >>> out = paired_bootstrap_diff(lambda i: a[i].mean(), lambda i: b[i].mean(), n=8)
    >>> out["diff"]
    0.375
    """
    _check_bootstrap_args(n, n_boot, alpha)
    full = np.arange(n)
    diff = _scalar(metric_fn_a(full)) - _scalar(metric_fn_b(full))
    samples = np.array(
        [
            _scalar(metric_fn_a(row)) - _scalar(metric_fn_b(row))
            for chunk in _resamples(n, n_boot, seed)
            for row in chunk
        ]
    )
    lo, hi = _interval(samples, alpha)
    return {"diff": _float_or_none(diff), "lo": _float_or_none(lo), "hi": _float_or_none(hi)}


def headline_with_ci(
    y_true,
    y_pred,
    proba=None,
    value=None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Headline metrics with percentile bootstrap intervals.

    Parameters
    ----------
    y_true, y_pred, proba, value
        As in :func:`classification_metrics`.
    n_boot, seed, alpha
        As in :func:`bootstrap_ci`; the resamples are the same as there.

    Returns
    -------
    dict
        ``{metric: {"value": v, "lo": lo, "hi": hi}}`` for ``accuracy``,
        ``macro_f1``, ``high_recall``, ``high_precision`` and, when computable
        (inputs given and the metric defined on the full data),
        ``revenue_capture_high``, ``lift_top25``, ``spearman`` and
        ``roc_auc_high``. ``value`` equals :func:`classification_metrics`;
        ``lo`` / ``hi`` are None if the metric is undefined on every resample.

    Examples
    --------
    >>> out = headline_with_ci(["Low", "High", "High", "Medium"],
    ...                        ["Low", "High", "Medium", "Medium"], n_boot=100)
    >>> out["accuracy"]["value"]
    0.75
    >>> sorted(out)
    ['accuracy', 'high_precision', 'high_recall', 'macro_f1']
    """
    t = _tiers(y_true, "y_true")
    p = _tiers(y_pred, "y_pred")
    n = t.size
    if p.size != n:
        raise InputError(
            f"y_pred has {p.size} labels but y_true has {n}.",
            fix="pass predictions aligned on the same customers",
        )
    _check_bootstrap_args(n, n_boot, alpha)
    proba_arr = None if proba is None else _probabilities(proba, n)
    value_arr = None if value is None else _numbers(value, "value", n)
    fns = _headline_fns(t, p, proba_arr, value_arr)
    full = np.arange(n)[None, :]
    points = {name: float(fn(full)[0]) for name, fn in fns.items()}
    fns = {name: fn for name, fn in fns.items() if not np.isnan(points[name])}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    for chunk in _resamples(n, n_boot, seed):
        for name, fn in fns.items():
            samples[name].append(fn(chunk))
    out = {}
    for name in fns:
        lo, hi = _interval(np.concatenate(samples[name]), alpha)
        out[name] = {"value": points[name], "lo": _float_or_none(lo), "hi": _float_or_none(hi)}
    return out


# -------------------------------------------------------------------- ranking curves


def _score_and_value(score, value) -> tuple[np.ndarray, np.ndarray]:
    s = _numbers(score, "score")
    v = _numbers(value, "value", s.size)
    return s, v


def gains_curve(score, value, n_points: int = 101) -> pd.DataFrame:
    """Cumulative share of value captured when customers are taken by score.

    Customers are sorted by score, highest first (ties keep their input order),
    and the cumulative share of value is linearly interpolated at
    ``n_points`` evenly spaced shares of customers.

    Parameters
    ----------
    score : array-like of shape (n,)
        Higher means more valuable (e.g. ``proba[:, 2]``).
    value : array-like of shape (n,)
        Actual value per customer; the total must be positive.
    n_points : int, default=101
        Number of points, at least 2.

    Returns
    -------
    pandas.DataFrame
        Columns ``share_of_customers`` and ``share_of_value``, from (0, 0) to
        (1, 1); non-decreasing when no value is negative.

    Raises
    ------
    InputError
        Empty or misaligned inputs, non-finite numbers, a total value that is
        not positive, or ``n_points < 2``.

    Examples
    --------
    >>> gains_curve([0.9, 0.1, 0.5, 0.2], [50, 0, 30, 20], n_points=5)
       share_of_customers  share_of_value
    0                0.00             0.0
    1                0.25             0.5
    2                0.50             0.8
    3                0.75             1.0
    4                1.00             1.0
    """
    s, v = _score_and_value(score, value)
    if not (isinstance(n_points, int | np.integer) and n_points >= 2):
        raise InputError(f"n_points={n_points!r} must be an integer >= 2.", fix="pass 101")
    cumulative = np.concatenate([[0.0], np.cumsum(v[_descending(s)])])
    if not cumulative[-1] > 0:
        raise InputError(
            f"The total value is {cumulative[-1]:g}, so shares of value are undefined.",
            fix="evaluate on customers with some spend in the horizon",
        )
    grid = np.linspace(0.0, 1.0, n_points)
    shares = np.interp(grid, np.arange(s.size + 1) / s.size, cumulative / cumulative[-1])
    return pd.DataFrame({"share_of_customers": grid, "share_of_value": shares})


def top_k_flag(score, top: float) -> np.ndarray:
    """Flag the top fraction of customers by score.

    Parameters
    ----------
    score : array-like of shape (n,)
        Higher ranks first; ties keep their input order.
    top : float
        Fraction in (0, 1]; exactly ``top * n`` customers, rounded half up, are flagged.

    Returns
    -------
    numpy.ndarray of bool, shape (n,)

    Examples
    --------
    >>> top_k_flag([0.2, 0.9, 0.9, 0.1], top=0.5).tolist()
    [False, True, True, False]
    >>> top_k_flag([0.5, 0.5, 0.5, 0.5], top=0.25).tolist()
    [True, False, False, False]
    """
    s = _numbers(score, "score")
    k = _top_count(s.size, top)
    mask = np.zeros(s.size, dtype=bool)
    mask[_descending(s)[:k]] = True
    return mask


def capture_at(score, value, top: float) -> float | None:
    """Share of the total value held by the top ``top`` fraction ranked by score.

    Parameters
    ----------
    score, value : array-like of shape (n,)
        As in :func:`gains_curve`.
    top : float
        Fraction in (0, 1]; the top is chosen as in :func:`top_k_flag`.

    Returns
    -------
    float or None
        None when the total value is not positive.

    Examples
    --------
    >>> capture_at([0.9, 0.1, 0.5, 0.2], [50, 0, 30, 20], top=0.5)
    0.8
    """
    s, v = _score_and_value(score, value)
    k = _top_count(s.size, top)
    return _float_or_none(_capture_rows(s, v, np.arange(s.size)[None, :], k)[0])


def lift_at(score, value, top: float) -> float | None:
    """Value captured by the top fraction divided by the share of customers in it.

    The denominator is the share actually flagged, ``k / n`` with ``k`` from
    :func:`top_k_flag`, which equals ``top`` whenever ``top * n`` is whole.

    Parameters
    ----------
    score, value, top
        As in :func:`capture_at`.

    Returns
    -------
    float or None
        1.0 means no better than random; None when the total value is not
        positive or the top holds no customer.

    Examples
    --------
    >>> lift_at([0.9, 0.1, 0.5, 0.2], [50, 0, 30, 20], top=0.25)
    2.0
    """
    s, v = _score_and_value(score, value)
    k = _top_count(s.size, top)
    capture = capture_at(s, v, top)
    if capture is None or k == 0:
        return None
    return capture / (k / s.size)


def reliability_curve(p, y_binary, n_bins: int = 10) -> pd.DataFrame:
    """Calibration table: mean predicted probability versus observed frequency.

    Parameters
    ----------
    p : array-like of shape (n,)
        Predicted probabilities of the positive event, in [0, 1].
    y_binary : array-like of shape (n,)
        1 / True where the event happened, 0 / False otherwise.
    n_bins : int, default=10
        Equal-width bins on [0, 1]; 1.0 falls in the last bin.

    Returns
    -------
    pandas.DataFrame
        One row per non-empty bin, in increasing order: ``mean_predicted``,
        ``fraction_positive`` and ``count``.

    Examples
    --------
    >>> reliability_curve([0.1, 0.15, 0.8, 0.9], [0, 1, 1, 1], n_bins=2)
       mean_predicted  fraction_positive  count
    0           0.125                0.5      2
    1           0.850                1.0      2
    """
    prob = _numbers(p, "p")
    y = _numbers(y_binary, "y_binary", prob.size)
    if ((prob < 0) | (prob > 1)).any():
        raise InputError("p must lie in [0, 1].", fix="pass probabilities, e.g. proba[:, 2]")
    if not np.isin(y, (0.0, 1.0)).all():
        raise InputError("y_binary must hold only 0 and 1.", fix="pass (y_true == 'High')")
    if not (isinstance(n_bins, int | np.integer) and n_bins >= 1):
        raise InputError(f"n_bins={n_bins!r} must be a positive integer.", fix="pass 10")
    bins = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "mean_predicted": np.bincount(bins, prob, n_bins)[keep] / count[keep],
            "fraction_positive": np.bincount(bins, y, n_bins)[keep] / count[keep],
            "count": count[keep],
        }
    )


# ------------------------------------------------------------------------ baselines


class MajorityBaseline(ClassifierMixin, BaseEstimator):
    """Predict the most frequent training tier for everyone.

    ``predict_proba`` returns the training tier shares (the prior), so the log
    loss of this baseline is that of knowing only the class balance. ``X`` is
    only used for its number of rows.

    Attributes
    ----------
    classes_ : numpy.ndarray of object, shape (3,)
        Always :data:`~clvtier.target.TIERS`, so ``predict_proba`` columns line
        up with every other model in this package.
    class_prior_ : numpy.ndarray of shape (3,)
        Share of each tier in the training labels.
    majority_ : str
        The most frequent tier; ties go to the lower tier.

    Examples
    --------
    >>> base = MajorityBaseline().fit([[0]] * 4, ["Low", "Low", "Medium", "High"])
    >>> base.predict([[0], [0]]).tolist()
    ['Low', 'Low']
    >>> base.predict_proba([[0]]).tolist()
    [[0.5, 0.25, 0.25]]
    """

    _parameter_constraints: dict = {}

    def fit(self, X, y) -> MajorityBaseline:
        """Learn the tier shares of ``y``.

        Parameters
        ----------
        X : array-like of shape (n, ...)
            Ignored except for its length.
        y : array-like of str, shape (n,)
            Training tiers.

        Returns
        -------
        MajorityBaseline
        """
        codes = _tiers(y, "y")
        if _num_samples(X) != codes.size:
            raise InputError(
                f"X has {_num_samples(X)} rows but y has {codes.size} labels.",
                fix="pass features and tiers of the same customers",
            )
        counts = np.bincount(codes, minlength=len(TIERS))
        self.classes_ = np.array(TIERS, dtype=object)
        self.class_prior_ = counts / codes.size
        self.majority_ = TIERS[int(np.argmax(counts))]
        return self

    def predict(self, X) -> np.ndarray:
        """Return the majority tier for each row of ``X`` (object array)."""
        check_is_fitted(self)
        return np.full(_num_samples(X), self.majority_, dtype=object)

    def predict_proba(self, X) -> np.ndarray:
        """Return the training tier shares for each row, columns in ``TIERS`` order."""
        check_is_fitted(self)
        return np.tile(self.class_prior_, (_num_samples(X), 1))


def carry_forward_tiers(past_value, binner: TierBinner) -> np.ndarray:
    """The naive rule: a customer's future tier is the tier of their spend so far.

    The caller fits ``binner`` on the *past* value (spend before the cutoff) of
    the *training* customers, e.g. ``TierBinner().fit(past_value[train])``,
    and passes every customer to evaluate here, so that no test information
    leaks into the thresholds.

    Parameters
    ----------
    past_value : array-like of shape (n,)
        Each customer's spend before the cutoff.
    binner : TierBinner
        Fitted on the training customers' past value.

    Returns
    -------
    numpy.ndarray of object, shape (n,)
        Tier labels.

    Examples
    --------
    >>> from clvtier.target import TierBinner
    >>> past_train = [10, 20, 30, 40, 50, 60, 70, 80]
    >>> binner = TierBinner().fit(past_train)
    >>> carry_forward_tiers([5, 45, 500], binner).tolist()
    ['Low', 'Medium', 'High']
    """
    if not isinstance(binner, TierBinner):
        raise InputError(
            f"binner must be a TierBinner; got {type(binner).__name__}.",
            fix="fit clvtier.target.TierBinner on the training customers' past value",
        )
    check_is_fitted(binner)
    return binner.transform(past_value)
