"""Tests of clvtier.target: the tier binner and tier codes."""

from __future__ import annotations

import doctest
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

import clvtier.target
from clvtier.errors import InputError
from clvtier.target import TIERS, TierBinner, tier_codes

NO_SPEND_CUT = float(np.nextafter(0.0, 1.0))


def tiers(*letters: str) -> list[str]:
    """Spell tiers compactly: tiers("L", "M", "H")."""
    return [{"L": "Low", "M": "Medium", "H": "High"}[x] for x in letters]


# --------------------------------------------------------------------------- quantile cuts


def test_quartile_cuts_on_one_to_eight():
    binner = TierBinner().fit(np.arange(1, 9))
    assert (binner.low_cut_, binner.high_cut_) == (2.75, 6.25)
    assert binner.transform(np.arange(1, 9)).tolist() == tiers(*"LLMMMMHH")
    assert binner.class_shares_ == {"Low": 0.25, "Medium": 0.5, "High": 0.25}
    assert binner.n_samples_fit_ == 8
    assert binner.rule_.startswith("quartile")
    assert not binner.zero_rule_applied_


@pytest.mark.parametrize(
    ("binner", "fit_values", "values", "expected"),
    [
        pytest.param(TierBinner(), np.arange(9), [1.999, 2, 5.999, 6], tiers(*"LMMH"), id="quartile-0..8-cuts-2-and-6"),
        pytest.param(
            TierBinner(method="amounts", cuts=(10, 100)),
            [1, 10, 50, 100, 200],
            [9.99, 10, 99.99, 100],
            tiers(*"LMMH"),
            id="amounts-10-100",
        ),
        pytest.param(
            TierBinner(method="quantiles", cuts=(0.5, 0.9)),
            np.arange(1, 12),
            [5.99, 6, 9.99, 10],
            tiers(*"LMMH"),
            id="quantiles-median-and-q90",
        ),
    ],
)
def test_ties_at_thresholds_go_up(binner, fit_values, values, expected):
    assert binner.fit(fit_values).transform(values).tolist() == expected


@pytest.mark.parametrize(
    ("binner", "fit_values", "cuts", "expected"),
    [
        pytest.param(
            TierBinner(method="quantiles", cuts=(0.5, 0.9)),
            np.arange(1, 12),
            (6.0, 10.0),
            tiers(*"LLLLLMMMMHH"),
            id="quantiles",
        ),
        pytest.param(
            TierBinner(method="amounts", cuts=(3, 7)),
            np.arange(1, 9),
            (3.0, 7.0),
            tiers(*"LLMMMMHH"),
            id="amounts",
        ),
        pytest.param(
            TierBinner(method="amounts", cuts=(0.5, 40.0)),
            [0, 0, 0, 0, 5, 50],
            (0.5, 40.0),
            tiers(*"LLLLMH"),
            id="amounts-with-zeros",
        ),
    ],
)
def test_quantiles_and_amounts_modes(binner, fit_values, cuts, expected):
    binner.fit(fit_values)
    assert (binner.low_cut_, binner.high_cut_) == pytest.approx(cuts)
    assert binner.transform(fit_values).tolist() == expected
    assert binner.rule_.startswith(binner.method)


# ------------------------------------------------------------------- zero inflation


@pytest.mark.parametrize(
    ("fit_values", "high_cut", "shares", "source"),
    [
        pytest.param([0] * 14 + [1, 2, 3, 4, 5, 6], 1.25, (0.7, 0.05, 0.25), "Q3 of all", id="70pct-zeros-q3-of-all"),
        pytest.param([0] * 7 + [1, 2, 3], 2.0, (0.7, 0.1, 0.2), "median", id="70pct-zeros-q3-leaves-medium-empty"),
        pytest.param([0] * 8 + [5, 10], 7.5, (0.8, 0.1, 0.1), "median", id="80pct-zeros-q3-is-zero"),
    ],
)
def test_zero_inflated_low_is_no_spend(fit_values, high_cut, shares, source):
    binner = TierBinner().fit(fit_values)
    assert binner.low_cut_ == NO_SPEND_CUT
    assert binner.high_cut_ == pytest.approx(high_cut)
    assert tuple(binner.class_shares_.values()) == pytest.approx(shares)
    assert min(binner.class_shares_.values()) > 0
    assert binner.zero_rule_applied_
    assert binner.rule_.startswith("zero-inflated")
    assert "no spend" in binner.rule_ and source in binner.rule_
    # Zero and refunds are Low; any positive spend, however small, is not.
    assert binner.transform([0.0, -3.0, 1e-300, high_cut]).tolist() == tiers(*"LLMH")


def test_zero_rule_never_refuses_degenerate_cuts():
    with pytest.raises(InputError, match="leave the Low tier empty") as err:
        TierBinner(zero_rule="never").fit([0] * 14 + [1, 2, 3, 4, 5, 6])
    assert "zero_rule='auto'" in err.value.fix


@pytest.mark.parametrize(
    ("fit_values", "match"),
    [
        pytest.param([0.0] * 10, r"High 100\.0%", id="all-zero"),
        pytest.param([42.0], "at least 3 customers to form three tiers; got 1", id="single-customer"),
        pytest.param([1.0, 2.0], "at least 3 customers to form three tiers; got 2", id="two-customers"),
        pytest.param([7.0] * 5, "Medium 0.0%", id="all-equal"),
        pytest.param([1, 2, 2, 2, 2, 2, 2, 3], r"Q1 = 2 and Q3 = 2", id="ties-without-zeros"),
        pytest.param([0] * 74 + [10] * 26, "Medium 0.0%", id="zeros-and-one-amount"),
        pytest.param([0] * 9 + [5], "Medium 0.0%", id="single-spender"),
    ],
)
def test_degenerate_data_raises_with_shares(fit_values, match):
    with pytest.raises(InputError, match=match) as err:
        TierBinner().fit(fit_values)
    assert err.value.fix


def test_amounts_outside_the_data_raise():
    with pytest.raises(InputError, match="leave the High tier empty") as err:
        TierBinner(method="amounts", cuts=(10, 1000)).fit(np.arange(1, 50))
    assert "1 to 49" in err.value.fix


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("values", "match"),
    [
        pytest.param([1.0, np.nan, 3.0, 4.0], "1 of 4 customer values are NaN or infinite", id="nan"),
        pytest.param([1.0, np.nan, np.inf, -np.inf, 5.0], "3 of 5", id="nan-and-inf"),
        pytest.param([], "one number per customer", id="empty"),
        pytest.param(np.ones((4, 2)), r"shape \(4, 2\)", id="two-columns"),
        pytest.param(["a", "b", "c"], "one number per customer", id="strings"),
    ],
)
def test_bad_values_raise(values, match):
    with pytest.raises(InputError, match=match):
        TierBinner().fit(values)


def test_transform_validates_values_too():
    binner = TierBinner().fit(np.arange(1, 9))
    with pytest.raises(InputError, match="2 of 3"):
        binner.transform([np.nan, 1.0, np.inf])


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        pytest.param({"cuts": (0.2, 0.8)}, InputError, "only used with", id="quartile-with-cuts"),
        pytest.param({"method": "quantiles"}, InputError, "needs cuts", id="quantiles-without-cuts"),
        pytest.param({"method": "amounts"}, InputError, "needs cuts", id="amounts-without-cuts"),
        pytest.param({"method": "quantiles", "cuts": (0.0, 0.5)}, InputError, "strictly between", id="q-zero"),
        pytest.param({"method": "quantiles", "cuts": (0.5, 1.0)}, InputError, "strictly between", id="q-one"),
        pytest.param({"method": "quantiles", "cuts": (0.9, 0.5)}, InputError, "increasing", id="q-decreasing"),
        pytest.param({"method": "amounts", "cuts": (5, 5)}, InputError, "increasing", id="amounts-equal"),
        pytest.param({"method": "amounts", "cuts": (1, np.nan)}, InputError, "finite", id="amounts-nan"),
        pytest.param({"method": "amounts", "cuts": (1, 2, 3)}, InputError, "two finite", id="three-cuts"),
        pytest.param({"method": "amounts", "cuts": ("a", "b")}, InputError, "not two numbers", id="text-cuts"),
        pytest.param({"method": "deciles"}, InvalidParameterError, "method", id="unknown-method"),
        pytest.param({"zero_rule": "sometimes"}, InvalidParameterError, "zero_rule", id="unknown-zero-rule"),
    ],
)
def test_bad_parameters_raise(params, error, match):
    with pytest.raises(error, match=match):
        TierBinner(**params).fit(np.arange(1, 9))


@pytest.mark.parametrize(
    "X",
    [
        pytest.param(np.arange(1, 9), id="1d-array"),
        pytest.param(np.arange(1, 9).reshape(-1, 1), id="column"),
        pytest.param(list(range(1, 9)), id="list"),
        pytest.param(pd.Series(np.arange(1, 9), name="clv"), id="series"),
        pytest.param(pd.DataFrame({"clv": np.arange(1, 9)}), id="dataframe"),
    ],
)
def test_input_containers(X):
    binner = TierBinner().fit(X)
    out = binner.transform(X)
    assert out.dtype == object and out.shape == (8,)
    assert out.tolist() == tiers(*"LLMMMMHH")
    assert binner.get_feature_names_out().tolist() == ["tier"]
    assert binner.n_features_in_ == 1


def test_feature_names_from_dataframe():
    binner = TierBinner().fit(pd.DataFrame({"clv": np.arange(1, 9)}))
    assert binner.feature_names_in_.tolist() == ["clv"]
    assert binner.get_feature_names_out(["clv"]).tolist() == ["tier"]
    with pytest.raises(ValueError, match="input_features"):
        binner.get_feature_names_out(["other"])


def test_unfitted_binner_refuses_to_transform():
    with pytest.raises(NotFittedError):
        TierBinner().transform([1.0])


# ------------------------------------------------------------- estimator contract


def test_describe_is_json_serialisable():
    binner = TierBinner().fit([0] * 14 + [1, 2, 3, 4, 5, 6])
    described = json.loads(json.dumps(binner.describe(), allow_nan=False))
    assert described["low_cut"] == NO_SPEND_CUT
    assert described["high_cut"] == 1.25
    assert described["class_shares"] == {"Low": 0.7, "Medium": 0.05, "High": 0.25}
    assert described["zero_rule_applied"] is True
    assert described["rule"] == binner.rule_
    assert described["tiers"] == list(TIERS)


def test_clone_and_pickle_round_trip():
    binner = TierBinner(method="quantiles", cuts=(0.4, 0.8), zero_rule="never").fit(np.arange(1, 21))
    cloned = clone(binner)
    assert cloned.get_params() == binner.get_params()
    assert not hasattr(cloned, "low_cut_")
    restored = pickle.loads(pickle.dumps(binner))
    values = np.linspace(-5, 30, 50)
    assert restored.transform(values).tolist() == binner.transform(values).tolist()
    assert restored.describe() == binner.describe()


def test_inside_a_pipeline_and_cloned():
    values = np.arange(1, 9).reshape(-1, 1)
    pipe = Pipeline([("tiers", TierBinner())])
    assert pipe.fit_transform(values).tolist() == tiers(*"LLMMMMHH")
    cloned = clone(pipe)
    assert cloned.get_params()["tiers__method"] == "quartile"
    assert cloned.fit(values).transform([[0], [100]]).tolist() == tiers(*"LH")


def test_refit_is_idempotent_and_transform_is_stateless():
    values = np.array([0, 0, 0, 3, 1, 9, 4, 2, 8, 0.5])
    binner = TierBinner().fit(values)
    first = binner.describe()
    state = dict(binner.__dict__)
    out = binner.transform(values)
    assert binner.__dict__ == state
    assert binner.fit(values).describe() == first
    # Transforming any subset gives the same tiers as transforming all rows.
    assert binner.transform(values[3:7]).tolist() == out[3:7].tolist()


def _expected_failed_checks(estimator) -> dict[str, str]:
    one_d = (
        "sklearn's check reduces X to 1-D for one_d_array estimators and then indexes it "
        "as 2-D (X[:, 0] or X.shape[1]); TierBinner bins one value per customer"
    )
    strings = "transform returns tier labels (strings); the check compares outputs with assert_allclose"
    input_error = "raises clvtier.errors.InputError, which by project convention is not a ValueError"
    return {
        "check_dont_overwrite_parameters": one_d,
        "check_dtype_object": one_d,
        "check_f_contiguous_array_estimator": one_d,
        "check_methods_sample_order_invariance": one_d + " (covered by a Hypothesis test here)",
        "check_methods_subset_invariance": one_d + " (covered by a test here)",
        "check_fit2d_1sample": one_d,
        "check_fit2d_1feature": one_d,
        "check_fit2d_predict1d": one_d,
        "check_dict_unchanged": one_d + " (covered by a test here)",
        "check_n_features_in": one_d,
        "check_n_features_in_after_fitting": one_d,
        "check_transformer_general": one_d,
        "check_transformer_data_not_an_array": one_d,
        "check_estimator_sparse_array": "the check cannot build a 1-D sparse X; sparse input is not supported",
        "check_fit1d": "1-D X is the intended input (one value per customer); the check expects it rejected",
        "check_pipeline_consistency": strings + " (pipeline use covered by a test here)",
        "check_estimators_pickle": strings + " (pickling covered by a test here)",
        "check_fit_idempotent": strings + " (covered by a test here)",
        "check_complex_data": input_error,
        "check_estimators_empty_data_messages": input_error,
        "check_estimators_nan_inf": input_error + " (NaN / inf covered by a test here)",
        "check_estimators_dtypes": (
            "the check's integer data has values 0, 1, 2 only, which leave a tier empty; "
            "the binner refuses degenerate thresholds on purpose"
        ),
    }


@parametrize_with_checks([TierBinner()], expected_failed_checks=_expected_failed_checks, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- property tests

values_strategy = st.lists(
    st.one_of(
        st.just(0.0),
        st.integers(0, 5).map(float),
        st.floats(-10, 1e6, allow_nan=False, allow_infinity=False),
    ),
    min_size=3,
    max_size=40,
)


def _fit_or_none(values) -> TierBinner | None:
    try:
        return TierBinner().fit(values)
    except InputError:
        return None


@settings(max_examples=60, deadline=None)
@given(values_strategy)
def test_property_shares_sum_to_one_and_no_tier_is_empty(values):
    binner = _fit_or_none(values)
    if binner is None:
        return
    shares = binner.class_shares_
    assert list(shares) == list(TIERS)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert min(shares.values()) > 0
    codes = tier_codes(binner.transform(values))
    assert np.bincount(codes, minlength=3) / len(values) == pytest.approx(list(shares.values()))
    if binner.zero_rule_applied_:
        assert ((codes == 0) == (np.asarray(values) <= 0)).all()


@settings(max_examples=60, deadline=None)
@given(values_strategy, st.lists(st.floats(-1e7, 1e7, allow_nan=False), min_size=1, max_size=30))
def test_property_higher_value_never_gets_a_lower_tier(values, probe):
    binner = _fit_or_none(values)
    if binner is None:
        return
    ordered = np.sort(np.asarray(probe))
    assert (np.diff(tier_codes(binner.transform(ordered))) >= 0).all()


@settings(max_examples=60, deadline=None)
@given(values_strategy, st.randoms(use_true_random=False))
def test_property_thresholds_do_not_depend_on_row_order(values, random):
    shuffled = list(values)
    random.shuffle(shuffled)
    a, b = _fit_or_none(values), _fit_or_none(shuffled)
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.describe() == b.describe()


# ----------------------------------------------------------------------- tier codes


@pytest.mark.parametrize(
    ("labels", "codes"),
    [
        pytest.param(["High", "Low", "Medium", "Low"], [2, 0, 1, 0], id="list"),
        pytest.param(np.array([["Medium"], ["High"]], dtype=object), [1, 2], id="column"),
        pytest.param(pd.Series(["Low", "High"], dtype="string"), [0, 2], id="pandas-string"),
        pytest.param([], [], id="empty"),
    ],
)
def test_tier_codes(labels, codes):
    out = tier_codes(labels)
    assert out.dtype == np.int64
    assert out.tolist() == codes


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        pytest.param(["Low", "low", "HIGH"], "2 of 3 tier labels", id="wrong-case"),
        pytest.param(["Low", None, np.nan], "2 of 3", id="missing"),
        pytest.param([0, 1, 2], "3 of 3", id="codes-not-labels"),
        pytest.param([["Low", "High"]], "one-dimensional", id="2d"),
    ],
)
def test_tier_codes_rejects_unknown_labels(labels, match):
    with pytest.raises(InputError, match=match):
        tier_codes(labels)


def test_docstring_examples_run():
    result = doctest.testmod(clvtier.target, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
