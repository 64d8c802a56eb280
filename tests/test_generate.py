"""Tests of the synthetic EcomX generator and its ground-truth oracles."""

from __future__ import annotations

import filecmp
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clvtier.errors import InputError
from clvtier.generate import (
    SEASONALITY,
    GeneratedData,
    expected_horizon_spend,
    generate,
    oracle_tier_probabilities,
    read_ground_truth,
)

N = 1500
SEED = 3
START, END = "2020-01-01", "2024-05-31"

HEADERS = {
    "customers": "customer_id,join_date,last_purchase_date,age,gender,location",
    "transactions": ("transaction_id,customer_id,transaction_date,transaction_amount,product_category"),
    "engagements": ("customer_id,number_of_site_visits,number_of_emails_opened,number_of_clicks"),
    "marketing": "campaign_id,customer_id,response,promotion_type,campaign_date",
}
FILE_NAMES = {
    "customers": "customers_final",
    "transactions": "transactions_final",
    "engagements": "engagements_final",
    "marketing": "marketing_final",
    "ground_truth": "ground_truth",
}
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    return generate(N, SEED, tmp_path_factory.mktemp("csv"), chunk_size=1000)


@pytest.fixture(scope="module")
def raw(csv_data: GeneratedData) -> dict[str, pd.DataFrame]:
    """The CSV tables as text, exactly as written."""
    return {name: pd.read_csv(path, dtype=str, keep_default_na=False) for name, path in csv_data.files.items()}


@pytest.fixture(scope="module")
def tables(csv_data: GeneratedData) -> dict[str, pd.DataFrame]:
    dates = {
        "customers": ["join_date", "last_purchase_date"],
        "transactions": ["transaction_date"],
        "marketing": ["campaign_date"],
        "engagements": [],
    }
    out = {name: pd.read_csv(csv_data.files[name], parse_dates=cols) for name, cols in dates.items()}
    out["ground_truth"] = read_ground_truth(csv_data.files["ground_truth"])
    return out


def _epoch_day(d: str) -> int:
    return int(np.datetime64(d, "D").astype(np.int64))


def _resimulate(truth: pd.DataFrame, cutoff: str, horizon: int, n_sims: int, seed: int) -> np.ndarray:
    """Spend in the horizon, re-simulated from the latent state by daily thinning.

    Written independently of the module: seasonality is looked up day by day and every
    purchase amount is drawn on its own.
    """
    rng = np.random.default_rng(seed)
    c, end = float(_epoch_day(cutoff)), float(_epoch_day(cutoff) + horizon)
    t0 = truth["first_purchase_time"].to_numpy()
    tau = truth["lifetime_days"].to_numpy()
    lam = truth["purchase_rate"].to_numpy()
    mu = truth["dropout_rate"].to_numpy()
    m = truth["spend_mean"].to_numpy()
    shape = truth["spend_shape"].to_numpy()
    n = t0.size
    born_in = (t0 >= c) & (t0 < end)
    alive = born_in | ((t0 < c) & (t0 + tau > c))
    begin = np.where(born_in, t0, c)

    path = np.repeat(np.arange(n), n_sims)  # customer of each simulated path
    stop = np.minimum(begin[path] + rng.exponential(1.0 / mu[path]), end)
    s_max = max(SEASONALITY)
    n_cand = rng.poisson(lam[path] * s_max * np.clip(stop - begin[path], 0, None))
    n_cand[~alive[path]] = 0
    owner = np.repeat(np.arange(path.size), n_cand)
    times = begin[path][owner] + rng.random(owner.size) * (stop - begin[path])[owner]
    month = pd.DatetimeIndex(np.floor(times).astype(np.int64).astype("datetime64[D]")).month
    keep = rng.random(owner.size) * s_max < np.asarray(SEASONALITY)[month - 1]
    owner = owner[keep]
    first = np.flatnonzero(born_in[path])
    owner = np.concatenate([owner, first])
    cust = path[owner]
    amount = rng.gamma(shape[cust], m[cust] / shape[cust])
    spend = np.bincount(owner, weights=amount, minlength=path.size)
    return spend.reshape(n, n_sims)


def _as_csv_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Format a frame read from Parquet the way the CSV writer does."""

    def text(value: object) -> str:
        if value is None or value != value:
            return ""
        return str(value)

    out = frame.apply(lambda col: col.map(text)).astype(str)
    if "transaction_amount" in frame:
        out["transaction_amount"] = frame["transaction_amount"].map("{:.2f}".format)
    return out


# --------------------------------------------------------------------------- files and formats


def test_file_names_and_headers(csv_data: GeneratedData) -> None:
    assert csv_data.n_customers == N
    assert sorted(p.name for p in csv_data.out.iterdir()) == sorted(f"{stem}.csv" for stem in FILE_NAMES.values())
    for name, stem in FILE_NAMES.items():
        assert csv_data.files[name] == csv_data.out / f"{stem}.csv"
    for name, header in HEADERS.items():
        with open(csv_data.files[name], encoding="utf-8") as handle:
            assert handle.readline() == header + "\n"


def test_value_formats(raw: dict[str, pd.DataFrame]) -> None:
    cust, tx, mk = raw["customers"], raw["transactions"], raw["marketing"]
    for frame, cols in [
        (cust, ["join_date", "last_purchase_date"]),
        (tx, ["transaction_date"]),
        (mk, ["campaign_date"]),
    ]:
        for col in cols:
            assert frame[col].str.match(ISO_DATE).all(), col
    assert cust["age"].str.fullmatch(r"(\d{2}\.0)?").all()
    ages = pd.to_numeric(cust["age"].replace("", np.nan))
    assert ages.min() >= 18 and ages.max() <= 69
    assert set(cust["gender"]) == {"Male", "Female", ""}
    assert (cust["location"] != "").all()
    assert tx["transaction_amount"].str.fullmatch(r"\d+\.\d{2}").all()
    assert set(tx["product_category"]) == {"Electronics", "Clothing", "Home Goods"}
    assert set(mk["response"]) == {"Yes", "No"}
    assert set(mk["promotion_type"]) == {"Discount", "Buy One Get One", "Free Shipping"}
    for col in HEADERS["engagements"].split(",")[1:]:
        assert raw["engagements"][col].str.fullmatch(r"\d+").all()


def test_missing_rates_and_marginals(tables: dict[str, pd.DataFrame]) -> None:
    cust, tx, mk = tables["customers"], tables["transactions"], tables["marketing"]
    assert cust["age"].isna().mean() == pytest.approx(0.1009, abs=0.03)
    assert cust["gender"].isna().mean() == pytest.approx(0.0533, abs=0.02)
    assert cust["location"].nunique() > 0.6 * N
    assert (mk["response"] == "Yes").mean() == pytest.approx(0.5, abs=0.05)
    shares = tx["product_category"].value_counts(normalize=True)
    assert shares.between(0.28, 0.39).all()
    per_customer = tx.groupby("customer_id")["transaction_amount"].agg(["size", "mean"])
    assert per_customer["size"].mean() == pytest.approx(13, rel=0.2)
    assert per_customer["mean"].mean() == pytest.approx(600, rel=0.1)
    means = tables["engagements"].iloc[:, 1:].mean()
    assert means.to_numpy() == pytest.approx([100, 40, 19.7], rel=0.25)


# --------------------------------------------------------------------------- invariants


def test_ids_and_counts(tables: dict[str, pd.DataFrame], csv_data: GeneratedData) -> None:
    cust, tx, mk = tables["customers"], tables["transactions"], tables["marketing"]
    ids = np.arange(1, N + 1)
    assert cust["customer_id"].tolist() == ids.tolist()
    assert tables["engagements"]["customer_id"].tolist() == ids.tolist()
    assert tx["transaction_id"].tolist() == list(range(1, len(tx) + 1))
    assert mk["campaign_id"].tolist() == list(range(1, len(mk) + 1))
    assert csv_data.n_transactions == len(tx)
    assert set(tx["customer_id"]) == set(ids)
    offers = mk.groupby("customer_id").size().reindex(ids, fill_value=0)
    assert offers.between(1, 4).all()
    assert offers.mean() == pytest.approx(2.5, abs=0.15)
    assert (tables["engagements"].iloc[:, 1:] >= 1).all().all()


def test_date_invariants(tables: dict[str, pd.DataFrame]) -> None:
    cust = tables["customers"].set_index("customer_id")
    tx, mk, truth = tables["transactions"], tables["marketing"], tables["ground_truth"]
    lo, hi = pd.Timestamp(START), pd.Timestamp(END)
    for frame, col in [
        (cust, "join_date"),
        (cust, "last_purchase_date"),
        (tx, "transaction_date"),
        (mk, "campaign_date"),
    ]:
        assert frame[col].between(lo, hi).all(), col
    span = tx.groupby("customer_id")["transaction_date"].agg(["min", "max"])
    assert (span["min"] >= cust["join_date"]).all()
    assert (span["max"] == cust["last_purchase_date"]).all()
    offer = mk.join(cust, on="customer_id")
    assert offer["campaign_date"].between(offer["join_date"], offer["last_purchase_date"]).all()

    truth = truth.set_index(truth["customer_id"].astype(int))
    assert (truth["join_date"] == cust["join_date"]).all()
    assert (truth["first_purchase_date"] == span["min"]).all()
    assert (truth["dropout_date"] >= cust["last_purchase_date"]).all()
    assert (truth["n_transactions"] == tx.groupby("customer_id").size()).all()
    totals = tx.groupby("customer_id")["transaction_amount"].sum()
    assert np.allclose(truth["total_spend"], totals, atol=0.01)
    assert (truth["alive_at_end"] == (truth["dropout_date"] > hi)).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    days=st.integers(1, 400),
)
def test_invariants_hold_for_any_window(tmp_path_factory: pytest.TempPathFactory, n: int, seed: int, days: int) -> None:
    start = pd.Timestamp("2021-03-10")
    end = start + pd.Timedelta(days=days)
    data = generate(n, seed, tmp_path_factory.mktemp("w"), start=str(start.date()), end=str(end.date()))
    cust = pd.read_csv(data.files["customers"], parse_dates=["join_date", "last_purchase_date"])
    tx = pd.read_csv(data.files["transactions"], parse_dates=["transaction_date"])
    mk = pd.read_csv(data.files["marketing"], parse_dates=["campaign_date"])
    assert len(cust) == n and tx["customer_id"].nunique() == n
    assert tx["transaction_date"].between(start, end).all()
    assert (cust["join_date"] <= cust["last_purchase_date"]).all()
    assert cust["last_purchase_date"].le(end).all() and cust["join_date"].ge(start).all()
    offer = mk.merge(cust, on="customer_id")
    assert offer["campaign_date"].between(offer["join_date"], offer["last_purchase_date"]).all()


# --------------------------------------------------------------------------- determinism, parquet


def test_same_seed_same_bytes_whatever_the_chunk_size(csv_data: GeneratedData, tmp_path: Path) -> None:
    again = generate(N, SEED, tmp_path / "a", chunk_size=1000)
    rechunked = generate(N, SEED, tmp_path / "b", chunk_size=300)
    for name, path in csv_data.files.items():
        assert filecmp.cmp(path, again.files[name], shallow=False), name
        assert filecmp.cmp(path, rechunked.files[name], shallow=False), name
    other = generate(N, SEED + 1, tmp_path / "c")
    assert not filecmp.cmp(csv_data.files["transactions"], other.files["transactions"], False)


def test_progress_reports_every_customer(tmp_path: Path) -> None:
    seen: list[int] = []
    generate(2500, 0, tmp_path, chunk_size=1000, progress=seen.append)
    assert seen == [1000, 1000, 500]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_failed_run_leaves_no_partial_tables(tmp_path: Path, fmt: str) -> None:
    """Interrupted after the first chunk: the earlier tables stay as they were, and nothing else is left."""
    earlier = generate(300, 0, tmp_path, fmt=fmt)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupt(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(2500, 1, tmp_path, fmt=fmt, chunk_size=1000, progress=interrupt)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert set(before) == {f.name for f in earlier.files.values()}


def test_parquet_types_and_content(csv_data: GeneratedData, tmp_path: Path) -> None:
    data = generate(N, SEED, tmp_path, fmt="parquet", chunk_size=600)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{stem}.parquet" for stem in FILE_NAMES.values())
    schema = pq.read_schema(data.files["transactions"])
    assert schema.names == HEADERS["transactions"].split(",")
    assert [str(t) for t in schema.types] == ["int64", "int64", "date32[day]", "double", "string"]
    schema = pq.read_schema(data.files["customers"])
    assert schema.names == HEADERS["customers"].split(",")
    assert [str(t) for t in schema.types] == [
        "int64", "date32[day]", "date32[day]", "double", "string", "string",
    ]  # fmt: skip
    assert pq.read_schema(data.files["marketing"]).field("campaign_date").type == "date32[day]"
    assert pq.read_schema(data.files["engagements"]).names == HEADERS["engagements"].split(",")
    for name in HEADERS:
        from_csv = pd.read_csv(csv_data.files[name], dtype=str, keep_default_na=False)
        from_parquet = pq.read_table(data.files[name]).to_pandas()
        pd.testing.assert_frame_equal(from_csv, _as_csv_text(from_parquet))
    truth_csv = read_ground_truth(csv_data.files["ground_truth"])
    truth_parquet = read_ground_truth(data.files["ground_truth"])
    pd.testing.assert_frame_equal(truth_csv, truth_parquet)


# --------------------------------------------------------------------------- oracles


def test_expected_spend_matches_resimulation(tables: dict[str, pd.DataFrame]) -> None:
    truth = tables["ground_truth"]
    cutoff, horizon, n_sims = "2023-10-15", 120, 400
    exact = expected_horizon_spend(truth, cutoff, horizon)
    assert exact.index.tolist() == truth["customer_id"].tolist()
    sims = _resimulate(truth, cutoff, horizon, n_sims, seed=11)
    mc, se = sims.mean(axis=1), sims.std(axis=1) / np.sqrt(n_sims)
    assert mc.sum() == pytest.approx(exact.sum(), rel=0.02)
    z = np.abs(mc - exact.to_numpy()) / np.maximum(se, 1e-9)
    assert (z[se > 0] < 3).mean() > 0.97
    assert np.all(exact.to_numpy()[se == 0] == 0)


def test_expected_spend_is_zero_when_not_active(tables: dict[str, pd.DataFrame]) -> None:
    truth = tables["ground_truth"]
    cutoff, horizon = pd.Timestamp("2023-01-01"), 90
    exact = expected_horizon_spend(truth, cutoff.date(), horizon).to_numpy()
    dropped = (truth["dropout_date"] < cutoff).to_numpy()
    unborn = (truth["first_purchase_date"] >= cutoff + pd.Timedelta(days=horizon)).to_numpy()
    assert dropped.sum() > 50 and unborn.sum() > 50
    assert np.all(exact[dropped | unborn] == 0)
    assert np.all(exact[~(dropped | unborn)] > 0)
    newcomers = truth["first_purchase_date"].between(cutoff, cutoff + pd.Timedelta(days=89))
    assert np.all(exact[newcomers.to_numpy()] > truth["spend_mean"][newcomers] - 1e-9)


def test_expected_spend_matches_generated_data(tables: dict[str, pd.DataFrame]) -> None:
    tx, truth = tables["transactions"], tables["ground_truth"]
    cutoff, horizon = pd.Timestamp("2023-06-01"), 300
    exact = expected_horizon_spend(truth, cutoff, horizon)
    window = tx["transaction_date"].between(cutoff, cutoff + pd.Timedelta(days=horizon - 1))
    realised = tx[window].groupby("customer_id")["transaction_amount"].sum()
    realised = realised.reindex(range(1, N + 1), fill_value=0.0)
    assert realised.sum() == pytest.approx(exact.sum(), rel=0.08)


def test_past_spend_predicts_expected_future_spend(tables: dict[str, pd.DataFrame]) -> None:
    tx, cust, truth = tables["transactions"], tables["customers"], tables["ground_truth"]
    cutoff = pd.Timestamp("2023-06-01")
    past = tx[tx["transaction_date"] < cutoff].groupby("customer_id")["transaction_amount"].sum()
    past = past.reindex(cust["customer_id"], fill_value=0.0).to_numpy()
    exact = expected_horizon_spend(truth, "2023-06-01", 180).to_numpy()
    joined = (cust["join_date"] < cutoff).to_numpy()
    rho = pd.Series(past[joined]).corr(pd.Series(exact[joined]), method="spearman")
    assert 0.2 < rho < 0.9


def test_oracle_probabilities(tables: dict[str, pd.DataFrame]) -> None:
    truth = tables["ground_truth"]
    args = (truth, "2023-06-01", 180, 500.0, 2500.0)
    probs = oracle_tier_probabilities(*args, n_sims=200, seed=5)
    assert list(probs.columns) == ["p_low", "p_medium", "p_high"]
    assert probs.index.tolist() == truth["customer_id"].tolist()
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert ((probs >= 0) & (probs <= 1)).all().all()
    pd.testing.assert_frame_equal(probs, oracle_tier_probabilities(*args, n_sims=200, seed=5))
    exact = expected_horizon_spend(truth, "2023-06-01", 180)
    assert (probs.loc[exact == 0, "p_low"] == 1).all()
    rho = exact.corr(probs["p_high"] - probs["p_low"], method="spearman")
    assert rho > 0.8
    higher_cut = oracle_tier_probabilities(truth, "2023-06-01", 180, 500.0, 5000.0, seed=5)
    assert (higher_cut["p_high"] <= probs["p_high"]).all()


def test_oracle_is_fast_enough(tables: dict[str, pd.DataFrame]) -> None:
    truth = pd.concat([tables["ground_truth"]] * 7, ignore_index=True)  # ~10k customers
    probs = oracle_tier_probabilities(truth, "2023-06-01", 180, 500.0, 2500.0, n_sims=200)
    assert len(probs) == 7 * N


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n_customers": 0}, "n_customers must be an integer >= 1, got 0"),
        ({"n_customers": -5}, "got -5"),
        ({"n_customers": 2.5}, "got 2.5"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"fmt": "xlsx"}, "'csv' or 'parquet', got 'xlsx'"),
        ({"end": "2020-01-01"}, "end (2020-01-01) must be after start (2020-01-01)"),
        ({"start": "2024-06-01"}, "must be after start (2024-06-01)"),
        ({"start": "yesterday-ish"}, "start must be a date"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
    ],
    ids=["zero", "negative", "float", "seed", "fmt", "same-day", "reversed", "not-a-date", "chunk"],
)
def test_bad_arguments_raise_input_error(tmp_path: Path, kwargs: dict, needle: str) -> None:
    args = {"n_customers": 10, "seed": 0, "out": tmp_path, **kwargs}
    with pytest.raises(InputError) as info:
        generate(**args)
    assert needle in str(info.value)
    assert info.value.fix


def test_bad_oracle_arguments(tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    truth = tables["ground_truth"]
    with pytest.raises(InputError, match="horizon_days must be an integer >= 1, got 0"):
        expected_horizon_spend(truth, "2023-01-01", 0)
    with pytest.raises(InputError, match="cutoff must be a date"):
        expected_horizon_spend(truth, "soon", 30)
    with pytest.raises(InputError, match="lacks column"):
        expected_horizon_spend(truth.drop(columns="dropout_rate"), "2023-01-01", 30)
    with pytest.raises(InputError, match=r"low_cut \(10.0\) must be <= high_cut \(1.0\)"):
        oracle_tier_probabilities(truth, "2023-01-01", 30, 10.0, 1.0)
    with pytest.raises(InputError, match="n_sims"):
        oracle_tier_probabilities(truth, "2023-01-01", 30, 1.0, 10.0, n_sims=0)
    with pytest.raises(InputError, match="does not exist"):
        read_ground_truth(tmp_path / "nope.csv")
