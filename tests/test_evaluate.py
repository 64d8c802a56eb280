"""Tests of clvtier.evaluate: metrics, bootstrap intervals, ranking curves, baselines."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import f1_score, log_loss, precision_recall_fscore_support, roc_auc_score

import clvtier.evaluate
from clvtier.errors import InputError
from clvtier.evaluate import (
    MajorityBaseline,
    bootstrap_ci,
    capture_at,
    carry_forward_tiers,
    classification_metrics,
    gains_curve,
    headline_with_ci,
    lift_at,
    paired_bootstrap_diff,
    reliability_curve,
    top_k_flag,
)
from clvtier.target import TIERS, TierBinner

Y = ["Low", "Low", "Medium", "Medium", "High", "High", "Low", "High"]
ONE_HOT = np.eye(3)[[TIERS.index(t) for t in Y]]
VALUE = np.array([0.0, 0.0, 10.0, 20.0, 100.0, 60.0, 5.0, 40.0])


def random_case(seed: int, n: int, tiers=TIERS):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(tiers, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.choice(TIERS, n))
    proba = rng.dirichlet([1, 1, 1], n)
    value = rng.exponential(50, n) * (rng.random(n) < 0.4)
    return y_true, y_pred, proba, value


# --------------------------------------------------------------- classification metrics


def test_perfect_prediction_scores_one():
    m = classification_metrics(Y, Y, proba=ONE_HOT, value=VALUE)
    for key in ("accuracy", "macro_f1", "weighted_f1", "high_precision", "high_recall", "roc_auc_high"):
        assert m[key] == 1.0, key
    assert m["confusion"] == [[3, 0, 0], [0, 2, 0], [0, 0, 3]]
    assert m["per_class"]["High"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-12)
    assert m["revenue_capture_high"] == pytest.approx(200 / 235)
    json.dumps(m, allow_nan=False)


def test_hand_checked_example():
    y_true = ["Low", "Medium", "High", "High"]
    y_pred = ["Low", "High", "High", "Medium"]
    value = [0.0, 10.0, 50.0, 40.0]
    m = classification_metrics(y_true, y_pred, value=value)
    assert m["accuracy"] == 0.5
    assert m["confusion"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert m["high_precision"] == 0.5 and m["high_recall"] == 0.5
    assert m["per_class"]["Medium"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((1 + 0 + 0.5) / 3)
    # Predicted High: customers 2 and 3 hold 60 of 100.
    assert m["revenue_capture_high"] == pytest.approx(0.6)
    # Score = tier code; top 25 % = 1 customer, the first High in row order (value 10).
    assert m["lift_top25"] == pytest.approx(0.1 / 0.25)
    assert "roc_auc_high" not in m and "log_loss" not in m


@pytest.mark.parametrize(
    ("seed", "n", "tiers"),
    [
        pytest.param(0, 50, TIERS, id="three-tiers"),
        pytest.param(1, 200, TIERS, id="larger"),
        pytest.param(2, 30, ("Low", "High"), id="no-medium-in-truth"),
    ],
)
def test_metrics_agree_with_sklearn_and_scipy(seed, n, tiers):
    y_true, y_pred, proba, value = random_case(seed, n, tiers)
    m = classification_metrics(y_true, y_pred, proba=proba, value=value)
    assert m["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    prec, rec, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=list(TIERS), zero_division=0)
    for i, tier in enumerate(TIERS):
        assert m["per_class"][tier] == pytest.approx(
            {"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": sup[i]}
        )
    assert m["roc_auc_high"] == pytest.approx(roc_auc_score(y_true == "High", proba[:, 2]))
    sklearn_order = np.argsort(TIERS)  # sklearn sorts labels alphabetically
    assert m["log_loss"] == pytest.approx(log_loss(y_true, proba[:, sklearn_order], labels=sorted(TIERS)))
    assert m["spearman"] == pytest.approx(spearmanr(proba[:, 2], value).statistic)


@pytest.mark.parametrize(
    ("kwargs", "undefined"),
    [
        pytest.param(
            {"y_true": ["Low"] * 4, "y_pred": ["Low"] * 4, "proba": [[1, 0, 0]] * 4, "value": [1, 2, 3, 4]},
            ["roc_auc_high", "spearman"],
            id="one-class-constant-score",
        ),
        pytest.param(
            {"y_true": ["Low", "High"] * 2, "y_pred": ["Low", "High"] * 2, "value": [0.0] * 4},
            ["revenue_capture_high", "lift_top25", "spearman"],
            id="value-all-zero",
        ),
        pytest.param(
            {"y_true": ["High"], "y_pred": ["Low"], "proba": [[0.2, 0.3, 0.5]], "value": [9.0]},
            ["lift_top25", "spearman", "roc_auc_high"],
            id="single-customer",
        ),
    ],
)
def test_undefined_metrics_are_none(kwargs, undefined):
    m = classification_metrics(**kwargs)
    for key in undefined:
        assert m[key] is None, key
    json.dumps(m, allow_nan=False)


def test_single_customer_still_scores():
    m = classification_metrics(["High"], ["Low"], proba=[[0.2, 0.3, 0.5]], value=[9.0])
    assert m["accuracy"] == 0.0 and m["high_recall"] == 0.0 and m["high_precision"] == 0.0
    assert m["revenue_capture_high"] == 0.0
    assert m["log_loss"] == pytest.approx(-np.log(0.5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"y_true": [], "y_pred": []}, "empty", id="empty"),
        pytest.param({"y_true": ["Low"], "y_pred": ["Low", "High"]}, "2 labels but y_true has 1", id="lengths"),
        pytest.param({"y_true": ["Low"], "y_pred": ["Top"]}, "not one of", id="unknown-label"),
        pytest.param({"y_true": ["Low"], "y_pred": ["Low"], "proba": [[0.5, 0.5]]}, "shape", id="proba-shape"),
        pytest.param({"y_true": ["Low"], "y_pred": ["Low"], "proba": [[0.5, 0.6, 0]]}, "not probabilities", id="sum"),
        pytest.param({"y_true": ["Low"], "y_pred": ["Low"], "value": [np.nan]}, "NaN", id="value-nan"),
        pytest.param({"y_true": ["Low"] * 2, "y_pred": ["Low"] * 2, "value": [1.0]}, "1 entries", id="value-len"),
    ],
)
def test_bad_metric_inputs_raise(kwargs, match):
    with pytest.raises(InputError, match=match):
        classification_metrics(**kwargs)


# ------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_is_deterministic_and_contains_the_estimate():
    hit = (np.arange(40) % 3 != 0).astype(float)
    metric = lambda idx: hit[idx].mean()  # noqa: E731
    lo, hi = bootstrap_ci(metric, n=40, n_boot=300, seed=7)
    assert lo <= hit.mean() <= hi and lo < hi
    assert bootstrap_ci(metric, n=40, n_boot=300, seed=7) == (lo, hi)
    assert bootstrap_ci(metric, n=40, n_boot=300, seed=8) != (lo, hi)


def test_bootstrap_ci_skips_undefined_resamples():
    assert np.isnan(bootstrap_ci(lambda idx: None, n=5, n_boot=20)).all()
    lo, hi = bootstrap_ci(lambda idx: np.nan if idx[0] == 0 else 1.0, n=5, n_boot=50)
    assert (lo, hi) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"n": 0}, "positive number of customers", id="n-zero"),
        pytest.param({"n": 5, "n_boot": 0}, "n_boot", id="n-boot-zero"),
        pytest.param({"n": 5, "alpha": 1.5}, "alpha", id="alpha"),
    ],
)
def test_bootstrap_ci_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        bootstrap_ci(lambda idx: 0.0, **kwargs)


def test_paired_bootstrap_uses_the_same_resamples():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    out = paired_bootstrap_diff(lambda i: x[i].mean() + 0.25, lambda i: x[i].mean(), n=30, n_boot=200)
    # Unpaired resamples would spread the difference; paired ones cancel the noise exactly.
    assert out == pytest.approx({"diff": 0.25, "lo": 0.25, "hi": 0.25})
    same = paired_bootstrap_diff(lambda i: x[i].mean(), lambda i: x[i].mean(), n=30, n_boot=50)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}


def test_headline_with_ci_matches_metrics_and_bootstrap_ci():
    y_true, y_pred, proba, value = random_case(5, 120)
    out = headline_with_ci(y_true, y_pred, proba=proba, value=value, n_boot=200, seed=1)
    m = classification_metrics(y_true, y_pred, proba=proba, value=value)
    expected = ["accuracy", "macro_f1", "high_recall", "high_precision"]
    expected += ["revenue_capture_high", "lift_top25", "spearman", "roc_auc_high"]
    assert sorted(out) == sorted(expected)
    for name, ci in out.items():
        assert ci["value"] == pytest.approx(m[name]), name
        assert ci["lo"] <= ci["value"] <= ci["hi"], name
    # The vectorised intervals use the same resamples as bootstrap_ci.
    hit = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)
    assert bootstrap_ci(lambda i: hit[i].mean(), n=120, n_boot=200, seed=1) == pytest.approx(
        (out["accuracy"]["lo"], out["accuracy"]["hi"])
    )
    assert headline_with_ci(y_true, y_pred, proba=proba, value=value, n_boot=200, seed=1) == out
    json.dumps(out, allow_nan=False)


def test_headline_with_ci_leaves_out_what_is_not_computable():
    out = headline_with_ci(["Low", "Low", "Medium"], ["Low", "Medium", "Medium"], proba=np.full((3, 3), 1 / 3))
    assert sorted(out) == ["accuracy", "high_precision", "high_recall", "macro_f1"]
    out = headline_with_ci(["Low", "High"], ["Low", "High"], value=[0.0, 0.0], n_boot=10)
    assert "revenue_capture_high" not in out and "spearman" not in out


# -------------------------------------------------------------------- ranking curves

SCORE = np.array([4.0, 3.0, 2.0, 1.0])
RANKED_VALUE = np.array([40.0, 30.0, 20.0, 10.0])


@pytest.mark.parametrize(
    ("top", "capture", "lift"),
    [
        pytest.param(0.25, 0.4, 1.6, id="top-quarter"),
        pytest.param(0.5, 0.7, 1.4, id="top-half"),
        pytest.param(1.0, 1.0, 1.0, id="everyone"),
        pytest.param(0.1, 0.0, None, id="top-rounds-to-nobody"),
    ],
)
def test_capture_and_lift_of_a_known_ranking(top, capture, lift):
    assert capture_at(SCORE, RANKED_VALUE, top) == pytest.approx(capture)
    assert lift_at(SCORE, RANKED_VALUE, top) == (None if lift is None else pytest.approx(lift))
    # Reversing the score captures from the bottom instead.
    assert capture_at(-SCORE, RANKED_VALUE[::-1], top) == pytest.approx(capture)


def test_capture_is_none_without_value():
    assert capture_at(SCORE, np.zeros(4), 0.5) is None
    assert lift_at(SCORE, np.zeros(4), 0.5) is None


@pytest.mark.parametrize(
    ("score", "top", "flagged"),
    [
        pytest.param([0.2, 0.9, 0.9, 0.1], 0.5, [1, 2], id="two-of-four"),
        pytest.param([0.5] * 4, 0.5, [0, 1], id="ties-keep-row-order"),
        pytest.param([0.1, 0.3], 0.25, [1], id="half-rounds-up"),
        pytest.param([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.25, [7, 8, 9], id="2.5-rounds-up-to-3"),
        pytest.param([3.0], 1.0, [0], id="one-customer"),
    ],
)
def test_top_k_flag(score, top, flagged):
    assert np.flatnonzero(top_k_flag(score, top)).tolist() == flagged


@pytest.mark.parametrize("top", [0, -0.1, 1.5, "a"], ids=["zero", "negative", "above-one", "text"])
def test_top_fraction_must_be_valid(top):
    with pytest.raises(InputError, match="fraction"):
        top_k_flag([1.0, 2.0], top)


def test_gains_curve_of_a_known_ranking():
    curve = gains_curve(SCORE, RANKED_VALUE, n_points=5)
    assert list(curve.columns) == ["share_of_customers", "share_of_value"]
    assert curve["share_of_customers"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve["share_of_value"].tolist() == pytest.approx([0.0, 0.4, 0.7, 0.9, 1.0])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4).map(float), st.floats(0, 1e4, allow_nan=False)),
        min_size=1,
        max_size=40,
    ),
    st.integers(2, 120),
)
def test_property_gains_curve_from_origin_to_one_and_monotone(rows, n_points):
    score, value = (np.array(col) for col in zip(*rows, strict=True))
    if not value.sum() > 0:
        with pytest.raises(InputError, match="total value"):
            gains_curve(score, value, n_points)
        return
    curve = gains_curve(score, value, n_points)
    assert len(curve) == n_points
    assert curve.iloc[0].tolist() == [0.0, 0.0]
    assert curve.iloc[-1].tolist() == [1.0, 1.0]
    assert (np.diff(curve["share_of_value"]) >= -1e-12).all()
    assert (np.diff(curve["share_of_customers"]) > 0).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda: gains_curve([], []), "empty", id="gains-empty"),
        pytest.param(lambda: gains_curve([1, 2], [0, 0]), "total value", id="gains-no-value"),
        pytest.param(lambda: gains_curve([1, 2], [1, 1], n_points=1), "n_points", id="gains-one-point"),
        pytest.param(lambda: capture_at([], [], 0.5), "empty", id="capture-empty"),
        pytest.param(lambda: capture_at([1, 2], [1], 0.5), "1 entries", id="capture-misaligned"),
        pytest.param(lambda: top_k_flag([1, np.nan], 0.5), "NaN", id="flag-nan"),
        pytest.param(lambda: reliability_curve([], []), "empty", id="reliability-empty"),
        pytest.param(lambda: reliability_curve([1.2], [1]), r"\[0, 1\]", id="reliability-p"),
        pytest.param(lambda: reliability_curve([0.5], [2]), "only 0 and 1", id="reliability-y"),
        pytest.param(lambda: reliability_curve([0.5], [1], n_bins=0), "n_bins", id="reliability-bins"),
    ],
)
def test_curve_inputs_are_validated(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_reliability_curve_keeps_non_empty_bins():
    p = [0.05, 0.1, 0.55, 0.95, 1.0]
    y = [False, True, True, True, True]
    table = reliability_curve(p, y, n_bins=4)
    assert table["count"].tolist() == [2, 1, 2]
    assert table["mean_predicted"].tolist() == pytest.approx([0.075, 0.55, 0.975])
    assert table["fraction_positive"].tolist() == [0.5, 1.0, 1.0]


# ------------------------------------------------------------------------ baselines


def test_majority_baseline():
    X = np.zeros((5, 2))
    y = ["Medium", "Medium", "High", "Low", "Medium"]
    base = MajorityBaseline().fit(X, y)
    assert base.majority_ == "Medium"
    assert base.classes_.tolist() == list(TIERS)
    assert base.predict(np.zeros((3, 2))).tolist() == ["Medium"] * 3
    assert base.predict_proba(X[:2]).tolist() == [[0.2, 0.6, 0.2]] * 2
    m = classification_metrics(y, base.predict(X), proba=base.predict_proba(X))
    assert m["accuracy"] == 0.6
    assert clone(base).get_params() == {}
    assert base.score(X, y) == 0.6


def test_majority_baseline_ties_go_to_the_lower_tier_and_errors():
    assert MajorityBaseline().fit([[0]] * 2, ["High", "Low"]).majority_ == "Low"
    with pytest.raises(InputError, match="3 rows but y has 2"):
        MajorityBaseline().fit(np.zeros((3, 1)), ["Low", "High"])
    with pytest.raises(InputError, match="empty"):
        MajorityBaseline().fit(np.zeros((0, 1)), [])
    with pytest.raises(NotFittedError):
        MajorityBaseline().predict([[0]])


def test_carry_forward_tiers_uses_the_callers_binner():
    binner = TierBinner().fit([10, 20, 30, 40, 50, 60, 70, 80])  # training customers' past value
    assert carry_forward_tiers([5, 27.5, 45, 72.5, 500], binner).tolist() == [
        "Low",
        "Medium",
        "Medium",
        "High",
        "High",
    ]
    with pytest.raises(NotFittedError):
        carry_forward_tiers([1.0], TierBinner())
    with pytest.raises(InputError, match="TierBinner"):
        carry_forward_tiers([1.0], MajorityBaseline())


def test_docstring_examples_run():
    result = doctest.testmod(clvtier.evaluate, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("n", [5, 50, 3000])
def test_resampled_auc_and_spearman_equal_the_rank_definition_bit_for_bit(n: int) -> None:
    """The bootstrap ranks from draw counts are the ranks of each resample, exactly (ties included)."""
    from scipy.stats import rankdata

    from clvtier import evaluate as ev

    rng = np.random.default_rng(n)
    score = np.round(rng.random(n), 2)  # many ties
    value = np.where(rng.random(n) < 0.5, 0.0, rng.exponential(50, n).round(1))
    positive = value > 30
    idx = np.vstack([np.arange(n)[None], rng.integers(0, n, (30, n))])
    y = positive[idx]
    ranks = rankdata(score[idx], axis=1)
    n_pos = y.sum(axis=1).astype(np.float64)
    want_auc = ev._ratio((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2, n_pos * (n - n_pos), np.nan)
    np.testing.assert_array_equal(ev._auc_rows(positive, score, idx), want_auc)
    rs, rv = ranks - ranks.mean(axis=1, keepdims=True), rankdata(value[idx], axis=1)
    rv -= rv.mean(axis=1, keepdims=True)
    want_rho = np.clip(ev._ratio((rs * rv).sum(axis=1), np.sqrt((rs**2).sum(axis=1) * (rv**2).sum(axis=1)),
                                 np.nan), -1.0, 1.0)
    np.testing.assert_array_equal(ev._spearman_rows(score, value, idx), want_rho)
