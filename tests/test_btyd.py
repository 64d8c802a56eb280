"""Tests of clvtier.btyd: BG/NBD, Pareto/NBD, Gamma-Gamma, rfm_summary, BTYDFeatures."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.special import betaln, gammaln
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline

from clvtier.btyd import (
    BetaGeoModel,
    BTYDFeatures,
    BTYDFitWarning,
    GammaGammaModel,
    ParetoNBDModel,
    _bgnbd_loglik,
    _pareto_loglik,
    rfm_summary,
)
from clvtier.datasets import fetch_cdnow
from clvtier.errors import InputError

# Published fits on the CDNOW 1/10 sample, 39-week calibration, time in weeks.
BGNBD_PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # Fader, Hardie & Lee 2005
BGNBD_PUBLISHED_LL = -9582.4
PARETO_PUBLISHED = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
GG_PUBLISHED = {"p": 6.25, "q": 3.74, "v": 15.45}


def _arr(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _simulate_bgnbd(n: int, params: dict[str, float], seed: int = 0) -> pd.DataFrame:
    """Draw RFM summaries from the BG/NBD generative story (time unit: weeks)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params["r"], 1.0 / params["alpha"], n)
    p = rng.beta(params["a"], params["b"], n)
    T = rng.uniform(10, 40, n).round(1)
    freq, rec = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1.0 / lam[i])
            if t > T[i]:
                break
            freq[i] += 1
            rec[i] = t
            if rng.random() < p[i]:
                break
    return pd.DataFrame({"frequency": freq, "recency": rec, "T": T})


# --------------------------------------------------------------------------- likelihoods


def _gamma_pdf(x: float, shape: float, rate: float) -> float:
    return float(np.exp(shape * np.log(rate) + (shape - 1) * np.log(x) - rate * x
                        - gammaln(shape)))


@pytest.mark.parametrize(
    ("params", "x", "t_x", "T"),
    [
        pytest.param((1.3, 20.0, 2.0, 5.0), 2, 10.0, 30.0, id="alpha>beta"),
        pytest.param((1.5, 4.0, 1.2, 9.0), 5, 29.0, 30.0, id="alpha<beta"),
        pytest.param((0.55, 10.6, 0.61, 11.7), 0, 0.0, 38.9, id="cdnow-no-repeat"),
        # scipy's hyp2f1 returns NaN here (z near 1); the quadrature fallback takes over
        pytest.param((0.05, 0.5, 280.0, 9400.0), 1, 0.5, 1.0, id="huge-s-beta"),
        pytest.param((3.0, 300.0, 280.0, 0.5), 26, 0.5, 1.0, id="huge-alpha-s"),
    ],
)
def test_pareto_loglik_equals_integral_over_death_time(
    params: tuple[float, ...], x: int, t_x: float, T: float
) -> None:
    # Integrating lambda and mu out of the individual likelihood analytically leaves
    # Gamma(r+x) alpha^r beta^s / Gamma(r) * [(alpha+T)^-(r+x) (beta+T)^-s
    #   + s * int_{t_x}^{T} (alpha+y)^-(r+x) (beta+y)^-(s+1) dy]: no hypergeometric function.
    r, alpha, s, beta = params
    log_scale = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)

    def scaled_death_density(y: float) -> float:
        return float(np.exp(-(r + x) * np.log(alpha + y) - (s + 1) * np.log(beta + y)
                            - log_scale))

    dead, _ = integrate.quad(scaled_death_density, t_x, T, epsrel=1e-12, limit=200)
    expected = (gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
                + log_scale + np.log1p(s * dead))
    got = _pareto_loglik(np.array(params), _arr(x), _arr(t_x), _arr(T))[0]
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("x", "t_x", "T"),
    [pytest.param(0, 0.0, 30.0, id="no-repeat"), pytest.param(3, 12.0, 30.0, id="repeat")],
)
def test_bgnbd_loglik_equals_numerical_integral(x: int, t_x: float, T: float) -> None:
    r, alpha, a, b = 1.4, 5.0, 1.5, 3.0

    def integrand(p: float, lam: float) -> float:
        individual = (1 - p) ** x * lam**x * np.exp(-lam * T)
        if x > 0:
            individual += p * (1 - p) ** (x - 1) * lam**x * np.exp(-lam * t_x)
        beta_pdf = np.exp((a - 1) * np.log(p) + (b - 1) * np.log1p(-p) - betaln(a, b))
        return individual * _gamma_pdf(lam, r, alpha) * beta_pdf

    value, _ = integrate.dblquad(integrand, 0, np.inf, 0, 1, epsrel=1e-8)
    got = _bgnbd_loglik(np.array([r, alpha, a, b]), _arr(x), _arr(t_x), _arr(T))[0]
    assert got == pytest.approx(np.log(value), abs=1e-6)


def test_pareto_branches_meet_at_alpha_equal_beta() -> None:
    x, t_x, T = _arr(0, 4, 20), _arr(0, 10, 35), _arr(30, 30, 39)
    below = _pareto_loglik(np.array([0.5, 10.0 - 1e-7, 0.6, 10.0]), x, t_x, T)
    above = _pareto_loglik(np.array([0.5, 10.0 + 1e-7, 0.6, 10.0]), x, t_x, T)
    np.testing.assert_allclose(below, above, rtol=1e-6)


# --------------------------------------------------------------------------- predictions


def _bgnbd_published() -> BetaGeoModel:
    model = BetaGeoModel()
    model.params_ = dict(BGNBD_PUBLISHED)
    return model


def _pareto_published() -> ParetoNBDModel:
    model = ParetoNBDModel()
    model.params_ = dict(PARETO_PUBLISHED)
    return model


def test_bgnbd_p_alive_is_one_without_repeat_purchases() -> None:
    p = _bgnbd_published().p_alive(_arr(0, 0, 0), _arr(0, 0, 0), _arr(0, 5, 1e6))
    np.testing.assert_array_equal(p, 1.0)


def test_worked_example_customer_1516() -> None:
    # CDNOW sample customer 1516 (x = 26, t_x = 30.86, T = 31): expected purchases in the
    # next 52 weeks, 25.76 under BG/NBD (Fader, Hardie & Lee 2005) and about 25.46 under
    # Pareto/NBD (BTYD R package vignette, with its own slightly different fit).
    args = (_arr(26), _arr(30.86), _arr(31.0))
    assert _bgnbd_published().expected_purchases(52, *args)[0] == pytest.approx(25.76, abs=0.01)
    assert _pareto_published().expected_purchases(52, *args)[0] == pytest.approx(25.46, abs=0.05)


@pytest.mark.parametrize("model", [_bgnbd_published(), _pareto_published()],
                         ids=["bgnbd", "pareto"])
def test_expected_purchases_grows_with_horizon(model: BetaGeoModel | ParetoNBDModel) -> None:
    x, t_x, T = _arr(0, 1, 5, 26), _arr(0, 2.0, 20.0, 30.86), _arr(38.0, 38.0, 38.0, 31.0)
    horizons = [0, 1, 10, 52, 520]
    values = np.array([model.expected_purchases(t, x, t_x, T) for t in horizons])
    np.testing.assert_array_equal(values[0], 0.0)
    assert np.all(np.diff(values, axis=0) > 0)


@pytest.mark.parametrize("model", [_bgnbd_published(), _pareto_published()],
                         ids=["bgnbd", "pareto"])
def test_p_alive_falls_with_time_since_last_purchase(
    model: BetaGeoModel | ParetoNBDModel,
) -> None:
    p = model.p_alive(_arr(4, 4, 4), _arr(35, 20, 2), _arr(39, 39, 39))
    assert np.all(np.diff(p) < 0)
    assert np.all((p > 0) & (p <= 1))


EXTREME = pytest.mark.parametrize(
    ("x", "t_x", "T"),
    [
        pytest.param(0, 0.0, 0.0, id="first-purchase-at-cutoff"),
        pytest.param(0, 0.0, 1e6, id="one-time-very-old"),
        pytest.param(1, 0.0, 1e6, id="recency-zero"),
        pytest.param(1000, 500.0, 500.0, id="large-frequency-T-eq-recency"),
        pytest.param(100_000, 1e4, 1e4, id="huge-frequency"),
        pytest.param(50, 1e-9, 1e6, id="dead-for-ages"),
        pytest.param(3, 1e6, 1e6, id="huge-T"),
    ],
)


@EXTREME
@pytest.mark.parametrize("model", [_bgnbd_published(), _pareto_published()],
                         ids=["bgnbd", "pareto"])
def test_predictions_are_finite_for_extreme_inputs(
    model: BetaGeoModel | ParetoNBDModel, x: int, t_x: float, T: float
) -> None:
    args = (_arr(x), _arr(t_x), _arr(T))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = model.p_alive(*args)
        expected = [model.expected_purchases(t, *args) for t in (0.0, 1.0, 52.0, 1e6)]
    assert p.dtype == np.float64 and np.all((p >= 0) & (p <= 1))
    assert all(np.all(np.isfinite(e) & (e >= 0)) for e in expected)


@EXTREME
def test_loglik_is_finite_for_extreme_inputs(x: int, t_x: float, T: float) -> None:
    args = (_arr(x), _arr(t_x), _arr(T))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(_bgnbd_loglik(np.array(list(BGNBD_PUBLISHED.values())), *args)).all()
        assert np.isfinite(_pareto_loglik(np.array(list(PARETO_PUBLISHED.values())), *args)).all()


def test_gamma_gamma_expected_spend() -> None:
    model = GammaGammaModel()
    model.params_ = dict(GG_PUBLISHED)
    p, q, v = GG_PUBLISHED.values()
    model.mean_spend_ = p * v / (q - 1)
    spend = model.expected_spend(_arr(0, 2, 2, 1000), _arr(0, 30.0, 10.0, 50.0))
    assert spend[0] == pytest.approx(p * v / (q - 1))
    assert spend[1] == pytest.approx(p * (v + 60.0) / (2 * p + q - 1))
    # shrunk from the customer's own mean towards the population mean (35.2)
    assert 10.0 < spend[2] < spend[0]
    assert 30.0 < spend[1] < spend[0]
    assert spend[3] == pytest.approx(50.0, rel=1e-3)  # many purchases: own mean wins


# --------------------------------------------------------------------------- fitting


def test_predict_before_fit_raises() -> None:
    with pytest.raises(NotFittedError):
        BetaGeoModel().p_alive([0], [0], [1])
    with pytest.raises(NotFittedError):
        GammaGammaModel().expected_spend([1], [10.0])


@pytest.mark.parametrize(
    ("frequency", "recency", "T", "match"),
    [
        pytest.param([1, 2], [5.0, 40.0], [10.0, 30.0], "recency > T", id="recency-after-T"),
        pytest.param([-1, 2], [0.0, 4.0], [10.0, 30.0], "negative", id="negative"),
        pytest.param([1.5, 2], [1.0, 4.0], [10.0, 30.0], "non-integer", id="fractional"),
        pytest.param([1, 2], [np.nan, 4.0], [10.0, 30.0], "non-finite", id="nan"),
        pytest.param([1, 2], [1.0], [10.0, 30.0], "different lengths", id="lengths"),
    ],
)
def test_bad_rfm_input_is_an_input_error(
    frequency: list[float], recency: list[float], T: list[float], match: str
) -> None:
    with pytest.raises(InputError, match=match):
        BetaGeoModel().fit(frequency, recency, T)


def test_bad_parameters_are_input_errors() -> None:
    data = ([0, 1], [0, 1], [2, 2])
    with pytest.raises(InputError, match="penalizer"):
        BetaGeoModel(penalizer=-1).fit(*data)
    with pytest.raises(InputError, match="max_iter"):
        ParetoNBDModel(max_iter=0).fit(*data)
    with pytest.raises(InputError, match="models"):
        BTYDFeatures(models=("bgnbd", "nope")).fit(_features_frame(50))


SIMULATED = {"r": 0.8, "alpha": 6.0, "a": 1.2, "b": 3.5}


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    return _simulate_bgnbd(4000, SIMULATED, seed=1)


def test_bgnbd_recovers_simulated_parameters(simulated: pd.DataFrame) -> None:
    model = BetaGeoModel().fit(simulated["frequency"], simulated["recency"], simulated["T"])
    assert model.converged_ and model.n_customers_ == 4000
    assert model.params_["r"] / model.params_["alpha"] == pytest.approx(
        SIMULATED["r"] / SIMULATED["alpha"], rel=0.15)
    for name, truth in SIMULATED.items():
        assert model.params_[name] == pytest.approx(truth, rel=0.35), name


@pytest.mark.parametrize(
    ("cls", "rel"),
    # Data simulated from BG/NBD leave the Pareto/NBD likelihood nearly flat along
    # s / beta = const, so s and beta agree less tightly there.
    [(BetaGeoModel, 1e-3), (ParetoNBDModel, 2e-2)],
    ids=["bgnbd", "pareto"],
)
def test_models_are_unit_agnostic(cls: type, rel: float, simulated: pd.DataFrame) -> None:
    data = simulated.iloc[:1500]
    weeks = cls().fit(data["frequency"], data["recency"], data["T"])
    days = cls().fit(data["frequency"], data["recency"] * 7, data["T"] * 7)
    scale = {"alpha", "beta"}
    for name, value in weeks.params_.items():
        expected = value * 7 if name in scale else value
        assert days.params_[name] == pytest.approx(expected, rel=rel), name
    sample = data.iloc[:50]
    np.testing.assert_allclose(
        weeks.expected_purchases(10, sample["frequency"], sample["recency"], sample["T"]),
        days.expected_purchases(70, sample["frequency"], sample["recency"] * 7, sample["T"] * 7),
        rtol=1e-3,
    )


def test_estimators_clone_and_keep_params() -> None:
    model = BetaGeoModel(penalizer=0.01, max_iter=50)
    assert clone(model).get_params() == {"penalizer": 0.01, "max_iter": 50}
    assert not hasattr(clone(model), "params_")


# --------------------------------------------------------------------------- rfm_summary


def test_rfm_summary_hand_example() -> None:
    tx = pd.DataFrame({
        "customer_id": ["a", "a", "a", "b", "c"],
        "date": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-15", "2024-01-10",
                                "2024-02-01"]),
        "amount": [10.0, 5.0, 30.0, 8.0, 99.0],
    })
    # cutoff 2024-01-22: c is after the cutoff; the last calibration day is 2024-01-21
    got = rfm_summary(tx, cutoff="2024-01-22", time_unit_days=7)
    expected = pd.DataFrame(
        {"frequency": [1, 0], "recency": [2.0, 0.0], "T": [20 / 7, 11 / 7],
         "monetary_value": [30.0, 0.0]},
        index=pd.Index(["a", "b"], name="customer_id"),
    )
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_index_type=False)
    assert got["frequency"].dtype == np.int64


def test_rfm_summary_excludes_the_cutoff_day() -> None:
    tx = pd.DataFrame({"customer_id": [1, 1], "date": ["2024-01-01", "2024-01-31"],
                       "amount": [1.0, 2.0]})
    got = rfm_summary(tx, cutoff="2024-01-31")
    assert got.loc[1].tolist() == [0, 0.0, 29.0, 0.0]


def test_rfm_summary_reports_missing_columns() -> None:
    with pytest.raises(InputError, match="missing column"):
        rfm_summary(pd.DataFrame({"customer_id": [1]}), cutoff="2024-01-01")


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 60), st.floats(0.5, 500.0)),
        min_size=1, max_size=40,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_rfm_summary_invariants(rows: list[tuple[int, int, float]], seed: int) -> None:
    tx = pd.DataFrame(rows, columns=["customer_id", "day", "amount"])
    tx["date"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(tx["day"], unit="D")
    got = rfm_summary(tx, cutoff="2024-02-15")
    shuffled = rfm_summary(tx.sample(frac=1.0, random_state=seed % 2**31), cutoff="2024-02-15")
    pd.testing.assert_frame_equal(got, shuffled)
    assert ((got["recency"] >= 0) & (got["recency"] <= got["T"])).all()
    in_window = tx[tx["day"] < 45]
    assert set(got.index) == set(in_window["customer_id"])
    days = in_window.groupby("customer_id")["day"].nunique()
    assert (got["frequency"] == days.reindex(got.index) - 1).all()
    assert ((got["monetary_value"] > 0) == (got["frequency"] > 0)).all()


# --------------------------------------------------------------------------- BTYDFeatures


def _features_frame(n: int, seed: int = 0, n_never: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    T = rng.integers(1, 365, n).astype(float)
    freq = rng.poisson(1.5, n)
    recency = np.where(freq > 0, np.floor(T * rng.uniform(0, 1, n)), 0.0)
    monetary = np.where(freq > 0, rng.gamma(3.0, 10.0, n).round(2), 0.0)
    frame = pd.DataFrame({
        "customer_id": [f"c{i}" for i in range(n)],
        "btyd_frequency": freq, "btyd_recency": recency, "btyd_T": T, "btyd_monetary": monetary,
        "n_orders": freq + 1,
    })
    frame.loc[frame.index[:n_never], ["btyd_frequency", "btyd_recency", "btyd_T",
                                      "btyd_monetary"]] = 0
    return frame.set_index("customer_id")


NEW_COLUMNS = ["bgnbd_p_alive", "bgnbd_expected_purchases", "gg_expected_spend",
               "bgnbd_expected_value"]


def test_btyd_features_in_a_pipeline() -> None:
    X = _features_frame(300, n_never=10)
    y = X["btyd_frequency"].to_numpy() * 2.0
    features = BTYDFeatures(horizon_days=180)
    out = clone(features).fit(X).transform(X)
    assert list(out.columns) == [*X.columns, *NEW_COLUMNS]
    pd.testing.assert_frame_equal(out[X.columns], X)
    assert out[NEW_COLUMNS].dtypes.eq(np.float64).all()
    assert np.isfinite(out[NEW_COLUMNS].to_numpy()).all()
    never = out.iloc[:10]
    assert (never[NEW_COLUMNS] == 0).all().all()
    np.testing.assert_allclose(
        out["bgnbd_expected_value"], out["bgnbd_expected_purchases"] * out["gg_expected_spend"])

    pipe = Pipeline([("btyd", BTYDFeatures(horizon_days=180)), ("model", LinearRegression())])
    pipe.fit(X, y)
    assert np.isfinite(pipe.predict(X)).all()
    fitted = pipe.named_steps["btyd"]
    assert fitted.degenerate_ is False
    assert list(fitted.get_feature_names_out()) == [*X.columns, *NEW_COLUMNS]
    assert list(pipe[:-1].get_feature_names_out()) == list(out.columns)


def test_btyd_features_with_pareto_and_pandas_output() -> None:
    weeks = _simulate_bgnbd(300, SIMULATED, seed=3)
    X = pd.DataFrame({
        "btyd_frequency": weeks["frequency"], "btyd_recency": weeks["recency"] * 7,
        "btyd_T": weeks["T"] * 7, "btyd_monetary": np.where(weeks["frequency"] > 0, 25.0, 0.0),
    })
    features = BTYDFeatures(models=("bgnbd", "pareto", "gg")).set_output(transform="pandas")
    out = features.fit_transform(X)
    added = [c for c in out.columns if c not in X.columns]
    assert added == ["bgnbd_p_alive", "bgnbd_expected_purchases", "pareto_p_alive",
                     "pareto_expected_purchases", "gg_expected_spend", "bgnbd_expected_value",
                     "pareto_expected_value"]
    assert np.isfinite(out[added].to_numpy()).all()
    assert isinstance(features.models_["pareto"], ParetoNBDModel)


@pytest.mark.parametrize(
    "X",
    [
        pytest.param(_features_frame(15), id="too-few-customers"),
        pytest.param(_features_frame(100).assign(btyd_frequency=0, btyd_recency=0.0,
                                                 btyd_monetary=0.0), id="no-repeat-buyers"),
        pytest.param(_features_frame(30, n_never=30), id="no-buyers-at-all"),
    ],
)
def test_btyd_features_degenerate_input_falls_back(X: pd.DataFrame) -> None:
    with pytest.warns(BTYDFitWarning, match="fall back"):
        features = BTYDFeatures().fit(X)
    assert features.degenerate_ is True
    out = features.transform(X)
    pd.testing.assert_frame_equal(out[X.columns], X)
    assert np.isfinite(out[NEW_COLUMNS].to_numpy()).all()
    assert (out[["bgnbd_p_alive", "bgnbd_expected_purchases"]] == 0).all().all()


def test_btyd_features_spend_model_falls_back_alone() -> None:
    X = _features_frame(200, seed=5)
    spenders = X.index[X["btyd_frequency"] > 0][:5]
    X["btyd_monetary"] = 0.0
    X.loc[spenders, "btyd_monetary"] = [10.0, 20.0, 30.0, 40.0, 50.0]
    with pytest.warns(BTYDFitWarning, match="gg: 5 repeat buyers"):
        features = BTYDFeatures().fit(X)
    assert features.degenerate_ is True
    assert features.models_["gg"] is None
    assert isinstance(features.models_["bgnbd"], BetaGeoModel)
    out = features.transform(X)
    buyers = X["btyd_T"] > 0
    np.testing.assert_array_equal(out.loc[buyers, "gg_expected_spend"], 30.0)
    assert (out.loc[buyers, "bgnbd_p_alive"] > 0).all()


def test_btyd_features_refuses_other_columns_than_in_fit() -> None:
    X = _features_frame(100)
    features = BTYDFeatures().fit(X)
    with pytest.raises(InputError, match="differ"):
        features.transform(X.drop(columns="n_orders"))


def test_btyd_features_rejects_missing_columns() -> None:
    with pytest.raises(InputError, match="btyd_T"):
        BTYDFeatures().fit(_features_frame(50).drop(columns="btyd_T"))


# --------------------------------------------------------------------------- CDNOW (slow)


def _read_sample(path: Path) -> pd.DataFrame:
    return pd.read_csv(
        path, sep=r"\s+", header=None,
        names=["master_id", "customer_id", "date", "number_of_cds", "amount"],
        dtype={"master_id": str, "customer_id": str, "date": str},
    ).assign(date=lambda d: pd.to_datetime(d["date"], format="%Y%m%d"))


@pytest.fixture(scope="module")
def cdnow_calibration() -> pd.DataFrame:
    transactions = _read_sample(fetch_cdnow("sample"))
    # Weeks 1-39 (1997-01-01 .. 1997-09-30); T runs to 1997-09-30, so a customer first
    # seen on 1997-01-01 has T = 272 / 7 = 38.86 weeks, as in Fader & Hardie's summary.
    return rfm_summary(transactions, cutoff="1997-10-01", time_unit_days=7.0)


@pytest.mark.slow
def test_cdnow_calibration_summary(cdnow_calibration: pd.DataFrame) -> None:
    assert len(cdnow_calibration) == 2357
    assert (cdnow_calibration["frequency"] > 0).sum() == 946
    first = cdnow_calibration.loc["0001"]
    assert first["frequency"] == 2
    assert first["recency"] == pytest.approx(30.43, abs=0.005)
    assert first["T"] == pytest.approx(38.86, abs=0.005)
    # repeat purchases 29.73 and 14.96; Fader & Hardie print the mean as 22.35
    assert first["monetary_value"] == pytest.approx((29.73 + 14.96) / 2)


@pytest.mark.slow
def test_cdnow_bgnbd_matches_published_fit(cdnow_calibration: pd.DataFrame) -> None:
    c = cdnow_calibration
    model = BetaGeoModel().fit(c["frequency"], c["recency"], c["T"])
    assert model.converged_
    for name, published in BGNBD_PUBLISHED.items():
        assert model.params_[name] == pytest.approx(published, rel=0.01), name
    assert model.log_likelihood_ == pytest.approx(BGNBD_PUBLISHED_LL, abs=0.5)


@pytest.mark.slow
def test_cdnow_pareto_matches_published_fit(cdnow_calibration: pd.DataFrame) -> None:
    c = cdnow_calibration
    model = ParetoNBDModel().fit(c["frequency"], c["recency"], c["T"])
    assert model.converged_
    for name, published in PARETO_PUBLISHED.items():
        assert model.params_[name] == pytest.approx(published, rel=0.01), name
    # Pareto/NBD fits CDNOW slightly worse than BG/NBD (-9595.0 vs -9582.4 published)
    assert model.log_likelihood_ == pytest.approx(-9595.0, abs=0.5)


@pytest.mark.slow
def test_cdnow_gamma_gamma_matches_published_fit(cdnow_calibration: pd.DataFrame) -> None:
    c = cdnow_calibration
    model = GammaGammaModel().fit(c["frequency"], c["monetary_value"])
    assert model.converged_ and model.n_customers_ == 946
    for name, published in GG_PUBLISHED.items():
        assert model.params_[name] == pytest.approx(published, rel=0.01), name


@pytest.mark.slow
def test_cdnow_master_fits_quickly() -> None:
    master = pd.read_csv(fetch_cdnow("master"), sep=r"\s+", header=0,
                         dtype={"customer_id": str, "date": str})
    master["date"] = pd.to_datetime(master["date"], format="%Y%m%d")
    summary = rfm_summary(master, cutoff="1997-10-01", amount_col="dollar_value",
                          time_unit_days=7.0)
    assert len(summary) == 23_570
    start = time.perf_counter()
    bgnbd = BetaGeoModel().fit(summary["frequency"], summary["recency"], summary["T"])
    elapsed = time.perf_counter() - start
    assert bgnbd.converged_
    assert elapsed < 20  # about 0.15 s on a laptop; generous for shared CI runners


def test_bgnbd_loglik_per_distinct_frequency_equals_per_customer_bit_for_bit() -> None:
    """The special functions run once per distinct frequency; the values must not move by a bit."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 30, 5_000).astype(float)
    T = rng.uniform(0.5, 80.0, 5_000)
    t_x = np.where(x > 0, rng.uniform(0.0, 1.0, 5_000) * T, 0.0)
    for r, alpha, a, b in [(0.243, 4.414, 0.793, 2.426), (3.0, 50.0, 0.2, 0.7), (0.6, 17.0, 990.0, 1900.0)]:
        repeat = x > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            want = (gammaln(r + x) - gammaln(r) + r * np.log(alpha) - betaln(a, b)
                    + np.logaddexp(betaln(a, b + x) - (r + x) * np.log(alpha + T),
                                   np.where(repeat, betaln(a + 1.0, np.where(repeat, b + x - 1.0, b))
                                            - (r + x) * np.log(alpha + t_x), -np.inf)))
        got = _bgnbd_loglik(np.array([r, alpha, a, b]), x, t_x, T)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            _bgnbd_loglik(np.array([r, alpha, a, b]), x, t_x, T, np.unique(x, return_inverse=True)), want)
