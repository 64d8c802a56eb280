"""Point-in-time features: hand-checked values on the tiny fixture, invariants, and a pandas reference."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, TINY_AS_OF, TINY_CUTOFF, write_ecomx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from clvtier.cli import app
from clvtier.errors import InputError
from clvtier.features import FeatureSet, FeatureSpec, build_features
from clvtier.validate import Dataset, load

NAN = float("nan")

# -- the tiny fixture, every value by hand (cutoff 2024-01-01) -------------------------------
# Customer 1, purchases before the cutoff (days before the cutoff = "ago"):
#   2023-01-10 100 Electronics (ago 356) | 2023-03-01 50 Clothing + 30 Electronics (ago 306)
#   2023-09-15 40 Home Goods (ago 108)   | 2023-12-20 60 Electronics (ago 12)
#   (2024-01-05 999 is after the cutoff and ignored.)
#   4 purchase days -> frequency 3; recency 2023-12-20 - 2023-01-10 = 344; T = 356;
#   monetary = (280 - first day 100) / 3 = 60; gaps 50, 198, 96.
#   spend 30d/90d = 60, 180d = 60 + 40, 365d = 280; previous 180 days (ago 181..360) = 80 + 100
# Customer 2: 2023-07-04 200 (ago 181), 2023-12-31 10 (ago 1), both Clothing; joined 2023-06-01.
# Customer 3: joined 2023-11-01, never bought; one offer (No) on 2023-12-31.
# Customer 5: orphan; 2023-12-01 25 Home Goods (ago 31); the 2024-01-01 purchase is on the cutoff.
ZEROS = dict.fromkeys(
    ["n_transactions", "total_spend", "mean_spend", "max_spend", "first_purchase_value", "btyd_frequency",
     "btyd_recency", "btyd_T", "btyd_monetary", "spend_30d", "spend_90d", "spend_180d", "spend_365d",
     "spend_trend", "ipt_mean", "ipt_std", "days_since_last_purchase", "n_categories", "share_electronics",
     "share_clothing", "share_home_goods", "eng_site_visits", "eng_emails_opened", "eng_clicks",
     "eng_clicks_per_email", "eng_clicks_per_visit", "offers_received", "offers_responded", "response_rate",
     "responded_discount", "responded_free_shipping", "responded_buy_one_get_one"],
    0.0,
)
EXPECTED: dict[str, dict[str, Any]] = {
    "1": {
        **ZEROS,
        "n_transactions": 5, "total_spend": 280, "mean_spend": 280 / 5, "max_spend": 100,
        "first_purchase_value": 100,
        "btyd_frequency": 3, "btyd_recency": 344, "btyd_T": 356, "btyd_monetary": 60,
        "spend_30d": 60, "spend_90d": 60, "spend_180d": 100, "spend_365d": 280, "spend_trend": 100 - 180,
        "ipt_mean": (50 + 198 + 96) / 3, "ipt_std": float(np.std([50, 198, 96])),
        "days_since_last_purchase": 12, "n_categories": 3,
        "share_electronics": 190 / 280, "share_clothing": 50 / 280, "share_home_goods": 40 / 280,
        "age": 30.0, "gender": "Female", "location": "Paris", "days_since_join": 365,
        "eng_site_visits": 100, "eng_emails_opened": 20, "eng_clicks": 10,
        "eng_clicks_per_email": 10 / 20, "eng_clicks_per_visit": 10 / 100,
        # offers 2023-05-01 Yes Discount, 2023-08-01 No Free Shipping (2024-02-01 is after the cutoff)
        "offers_received": 2, "offers_responded": 1, "response_rate": 0.5, "responded_discount": 1,
    },
    "2": {
        **ZEROS,
        "n_transactions": 2, "total_spend": 210, "mean_spend": 105, "max_spend": 200,
        "first_purchase_value": 200,
        "btyd_frequency": 1, "btyd_recency": 180, "btyd_T": 181, "btyd_monetary": 10,
        "spend_30d": 10, "spend_90d": 10, "spend_180d": 10, "spend_365d": 210, "spend_trend": 10 - 200,
        "ipt_mean": 180, "ipt_std": 0, "days_since_last_purchase": 1, "n_categories": 1,
        "share_clothing": 1,
        "age": NAN, "gender": "Male", "location": "Lyon", "days_since_join": 214,
        # engagement row of zeros: rates are 0, not NaN
        # offer 2023-10-10 "yes" (normalised to Yes), Buy One Get One
        "offers_received": 1, "offers_responded": 1, "response_rate": 1, "responded_buy_one_get_one": 1,
    },
    "3": {
        **ZEROS,
        "age": 45.0, "gender": NAN, "location": "Nice", "days_since_join": 61,
        "eng_site_visits": 10, "eng_emails_opened": 5, "eng_clicks": 1,
        "eng_clicks_per_email": 1 / 5, "eng_clicks_per_visit": 1 / 10,
        "offers_received": 1,
    },
    "5": {
        **ZEROS,
        "n_transactions": 1, "total_spend": 25, "mean_spend": 25, "max_spend": 25, "first_purchase_value": 25,
        "btyd_T": 31, "spend_90d": 25, "spend_180d": 25, "spend_365d": 25, "spend_trend": 25,
        "days_since_last_purchase": 31, "n_categories": 1, "share_home_goods": 1,
        # not in customers: no profile; days since joining counts from the first purchase
        "age": NAN, "gender": NAN, "location": NAN, "days_since_join": 31,
        # offer 2023-12-01 "1" (normalised to Yes), Free Shipping
        "offers_received": 1, "offers_responded": 1, "response_rate": 1, "responded_free_shipping": 1,
    },
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return load(write_ecomx(tmp_path_factory.mktemp("tiny")), as_of=TINY_AS_OF)


@pytest.fixture(scope="module")
def tiny_features(tiny: Dataset) -> FeatureSet:
    return build_features(tiny, TINY_CUTOFF)


def same(a: Any, b: Any) -> bool:
    if isinstance(b, float) and math.isnan(b):
        return a is None or (isinstance(a, float) and math.isnan(a)) or a is pd.NA
    if isinstance(b, str):
        return a == b
    return bool(np.isclose(a, b, rtol=1e-9, atol=1e-9))


def test_tiny_customers_known_at_the_cutoff(tiny_features: FeatureSet) -> None:
    # 4 joins after the cutoff and buys after it; 5 is known from its transactions only.
    assert tiny_features.frame["customer_id"].tolist() == ["1", "2", "3", "5"]
    transaction_side = list(ZEROS)[:21]
    engagement, marketing = list(ZEROS)[21:26], list(ZEROS)[26:]
    profile = ["age", "gender", "location", "days_since_join"]
    assert list(tiny_features.frame.columns) == ["customer_id", *transaction_side, *profile, *engagement, *marketing]


@pytest.mark.parametrize("customer", EXPECTED, ids=[f"customer-{c}" for c in EXPECTED])
def test_tiny_feature_values_by_hand(customer: str, tiny_features: FeatureSet) -> None:
    row = tiny_features.frame.set_index("customer_id").loc[customer]
    wrong = {
        name: (row[name], expected) for name, expected in EXPECTED[customer].items() if not same(row[name], expected)
    }
    assert wrong == {}


def test_last_purchase_date_of_the_customers_table_is_not_read(tiny_features: FeatureSet) -> None:
    # customers_final.csv says customer 1 last bought on 2024-01-05, after the cutoff.
    assert "2024-01-05" in TINY["customers"].splitlines()[1]
    row = tiny_features.frame.set_index("customer_id").loc["1"]
    assert row["days_since_last_purchase"] == 12


def test_feature_dtypes_and_no_missing_values(tiny_features: FeatureSet) -> None:
    frame = tiny_features.frame
    for name in tiny_features.numeric:
        assert frame[name].dtype == np.float64, name
    profile = ["age", "gender", "location"]
    assert not frame.drop(columns=profile).isna().any().any()


def test_metadata_marks_undated_features(tiny_features: FeatureSet) -> None:
    undated = ["age", "eng_site_visits", "eng_emails_opened", "eng_clicks", "eng_clicks_per_email",
               "eng_clicks_per_visit"]
    assert tiny_features.undated == undated
    assert tiny_features.columns["days_since_join"]["time_bounded"]
    assert tiny_features.columns["offers_received"]["time_bounded"]
    assert tiny_features.categorical == ["gender", "location"]
    meta = tiny_features.metadata()
    assert meta["not_time_bounded"] == undated
    assert meta["cutoff"] == "2024-01-01"
    assert meta["n_customers"] == 4
    assert FeatureSpec.from_dict(json.loads(json.dumps(meta["spec"]))) == tiny_features.spec


def test_a_later_cutoff_sees_later_events_with_the_same_columns(tiny: Dataset, tiny_features: FeatureSet) -> None:
    later = build_features(tiny, "2024-03-01")
    assert list(later.frame.columns) == list(tiny_features.frame.columns)
    assert later.columns == tiny_features.columns
    rows = later.frame.set_index("customer_id")
    assert rows.index.tolist() == ["1", "2", "3", "4", "5"]
    # customer 4: two purchases on 2024-02-05 are one purchase day
    assert rows.loc["4", ["n_transactions", "total_spend", "btyd_frequency", "btyd_T", "days_since_join"]].tolist() == [
        2, 100, 0, 25, 29
    ]
    # customer 1: the 999 of 2024-01-05 and the offer of 2024-02-01 now count
    assert rows.loc["1", ["total_spend", "btyd_frequency", "offers_received", "offers_responded"]].tolist() == [
        1279, 4, 3, 2
    ]


def test_a_saved_spec_fixes_the_columns(tiny: Dataset) -> None:
    spec = FeatureSpec(categories=("Clothing",), promotion_types=(), tables=("customers",))
    frame = build_features(tiny, TINY_CUTOFF, spec).frame
    assert "share_clothing" in frame.columns and "share_electronics" not in frame.columns
    assert "offers_received" not in frame.columns and "eng_clicks" not in frame.columns
    # categories outside the spec count together as one "other" category:
    # customer 1 bought Clothing, Electronics and Home Goods -> Clothing + other
    assert frame.set_index("customer_id").loc["1", "n_categories"] == 2


def test_a_spec_needing_a_missing_table_is_refused(tmp_path: Path) -> None:
    ds = load(write_ecomx(tmp_path, {"transactions": TINY["transactions"]}), as_of=TINY_AS_OF)
    with pytest.raises(InputError, match=r"need the table\(s\) \['marketing'\]"):
        build_features(ds, TINY_CUTOFF, FeatureSpec(tables=("marketing",)))


def test_join_date_after_the_cutoff_is_not_used(tmp_path: Path) -> None:
    """A join date after the cutoff is future information: count from the first purchase instead."""
    ds = load(write_ecomx(tmp_path, {
        "transactions": "transaction_id,customer_id,transaction_date,transaction_amount\n1,1,2023-12-01,5\n",
        "customers": "customer_id,join_date\n1,2024-02-01\n",
    }), as_of=TINY_AS_OF)
    row = build_features(ds, TINY_CUTOFF).frame.iloc[0]
    assert row["days_since_join"] == 31


def test_cli_features_writes_parquet_and_metadata(tiny_dir: Path, tmp_path: Path, tiny_features: FeatureSet) -> None:
    out = tmp_path / "out" / "x.parquet"
    result = CliRunner().invoke(
        app, ["features", str(tiny_dir), "--cutoff", "2024-01-01", "--out", str(out), "--as-of", TINY_AS_OF.isoformat()]
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 4 customers x 36 features" in result.output
    assert "Not time-bounded (may leak the future): age, eng_site_visits" in result.output
    pd.testing.assert_frame_equal(pd.read_parquet(out), tiny_features.frame)
    meta = json.loads(out.with_name("x.parquet.meta.json").read_text())
    assert meta["cutoff"] == "2024-01-01" and meta["n_customers"] == 4
    assert meta["not_time_bounded"] == tiny_features.undated
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.parquet", "x.parquet.meta.json"]


def test_cli_features_refuses_an_unknown_output_format(tiny_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["features", str(tiny_dir), "--cutoff", "2024-01-01",
                                      "--out", str(tmp_path / "x.xlsx"), "--as-of", TINY_AS_OF.isoformat()])
    assert result.exit_code == 2
    assert "Name the output file .csv or .parquet" in result.output
    assert list(tmp_path.glob("x*")) == []


# -- random data --------------------------------------------------------------------------------
BASE = dt.date(2022, 1, 1)
IDS = ["1", "01", "2", "3", "10", "A"]
CATEGORIES = ["Electronics", "Clothing", "Home Goods"]
PROMOTIONS = ["Discount", "Buy One Get One", "Free Shipping"]

days = st.integers(0, 800)
amounts = st.integers(-2_000, 60_000).map(lambda cents: cents / 100)
transactions = st.lists(
    st.tuples(st.sampled_from(IDS), days, amounts, st.sampled_from([*CATEGORIES, None])), min_size=1, max_size=30
)
# customer id -> (join day or None, age or None, gender or None)
profiles = st.tuples(
    st.one_of(st.none(), days), st.one_of(st.none(), st.integers(18, 80)), st.sampled_from(["Male", None])
)
customers = st.dictionaries(st.sampled_from(IDS), profiles)
offers = st.lists(st.tuples(st.sampled_from(IDS), days, st.booleans(), st.sampled_from(PROMOTIONS)), max_size=12)
cutoffs = st.integers(1, 820)
# Each example loads and validates files and compiles the queries (~0.5 s): keep the count modest.
PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _date(offset: int) -> str:
    return (BASE + dt.timedelta(days=offset)).isoformat()


def write_random(directory: Path, tx: list, cust: dict | None = None, mk: list | None = None) -> Path:
    """Write random tables as EcomX CSV files; ids, dates and amounts exactly as generated.

    Empty optional tables are not written (a header-only file is an error).
    """
    tables = {
        "transactions": "transaction_id,customer_id,transaction_date,transaction_amount,product_category\n"
        + "".join(f"{i},{c},{_date(d)},{a},{cat or ''}\n" for i, (c, d, a, cat) in enumerate(tx, 1))
    }
    if cust:
        tables["customers"] = "customer_id,join_date,last_purchase_date,age,gender,location\n" + "".join(
            f"{c},{'' if j is None else _date(j)},,{'' if age is None else age},{g or ''},City {c}\n"
            for c, (j, age, g) in cust.items()
        )
    if mk:
        tables["marketing"] = "campaign_id,customer_id,response,promotion_type,campaign_date\n" + "".join(
            f"{i},{c},{'Yes' if r else 'No'},{p},{_date(d)}\n" for i, (c, d, r, p) in enumerate(mk, 1)
        )
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        path.unlink()
    return write_ecomx(directory, tables)


def reference_features(tx: list, cust: dict, mk: list, cutoff_offset: int) -> pd.DataFrame:
    """The feature definitions of issue 2, written directly in pandas, one customer at a time."""
    cutoff = pd.Timestamp(_date(cutoff_offset))
    t = pd.DataFrame(tx, columns=["customer_id", "day", "amount", "category"])
    t["date"] = pd.Timestamp(BASE) + pd.to_timedelta(t["day"], unit="D")
    t = t[t["date"] < cutoff]
    m = pd.DataFrame(mk, columns=["customer_id", "day", "yes", "promotion"])
    m = m[pd.Timestamp(BASE) + pd.to_timedelta(m["day"], unit="D") < cutoff]
    joined = {c for c, (j, _, _) in cust.items() if j is not None and pd.Timestamp(_date(j)) < cutoff}
    rows = []
    for cid in sorted(set(t["customer_id"]) | joined):
        mine = t[t["customer_id"] == cid]
        r: dict[str, Any] = {"customer_id": cid}
        total = mine["amount"].sum()
        per_day = mine.groupby("date")["amount"].sum().sort_index()
        ago = (cutoff - mine["date"]).dt.days
        gaps = per_day.index.to_series().diff().dt.days.dropna()
        active = len(mine) > 0
        r["n_transactions"] = len(mine)
        r["total_spend"] = total
        r["mean_spend"] = total / len(mine) if active else 0.0
        r["max_spend"] = mine["amount"].max() if active else 0.0
        r["first_purchase_value"] = per_day.iloc[0] if active else 0.0
        frequency = len(per_day) - 1 if active else 0
        r["btyd_frequency"] = frequency
        r["btyd_recency"] = (per_day.index[-1] - per_day.index[0]).days if active else 0
        r["btyd_T"] = (cutoff - per_day.index[0]).days if active else 0
        r["btyd_monetary"] = (total - per_day.iloc[0]) / frequency if frequency > 0 else 0.0
        for w in (30, 90, 180, 365):
            r[f"spend_{w}d"] = mine.loc[ago <= w, "amount"].sum()
        r["spend_trend"] = r["spend_180d"] - mine.loc[(ago > 180) & (ago <= 360), "amount"].sum()
        r["ipt_mean"] = gaps.mean() if len(gaps) else 0.0
        r["ipt_std"] = gaps.std(ddof=0) if len(gaps) else 0.0
        r["days_since_last_purchase"] = (cutoff - per_day.index[-1]).days if active else 0
        bought = mine[mine["amount"] > 0]  # the category mix is over purchases, not returns
        r["n_categories"] = bought["category"].nunique()
        for c in CATEGORIES:
            spent = bought.loc[bought["category"] == c, "amount"].sum()
            gross = bought["amount"].sum()
            r[f"share_{c.lower().replace(' ', '_')}"] = spent / gross if gross > 0 else 0.0
        join, age, gender = cust.get(cid, (None, None, None))
        r["age"] = float(age) if age is not None else NAN
        r["gender"] = gender if gender is not None else NAN
        r["location"] = f"City {cid}" if cid in cust else NAN
        if join is not None and pd.Timestamp(_date(join)) < cutoff:
            r["days_since_join"] = (cutoff - pd.Timestamp(_date(join))).days
        else:
            r["days_since_join"] = (cutoff - per_day.index[0]).days if active else 0
        offered = m[m["customer_id"] == cid]
        r["offers_received"] = len(offered)
        r["offers_responded"] = offered["yes"].sum()
        r["response_rate"] = offered["yes"].mean() if len(offered) else 0.0
        for p in PROMOTIONS:
            r[f"responded_{p.lower().replace(' ', '_')}"] = (offered["yes"] & (offered["promotion"] == p)).sum()
        rows.append(r)
    return pd.DataFrame(rows)


def assert_frames_match(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert actual["customer_id"].tolist() == expected["customer_id"].tolist()
    for name in expected.columns:
        for cid, a, e in zip(expected["customer_id"], actual[name], expected[name], strict=True):
            assert same(a, e), f"{name} of customer {cid}: {a!r} != {e!r}"


def assert_invariants(frame: pd.DataFrame) -> None:
    """What must hold for any data: 0 <= recency <= T, zeros (not NaN) for customers without activity."""
    assert (frame["btyd_recency"] >= 0).all()
    assert (frame["btyd_recency"] <= frame["btyd_T"]).all()
    active = frame[frame["n_transactions"] > 0]
    assert (active["btyd_frequency"] < active["n_transactions"]).all()  # purchase days - 1
    profile = [c for c in ("age", "gender", "location") if c in frame.columns]
    assert not frame.drop(columns=profile).isna().any().any()
    inactive = frame[frame["n_transactions"] == 0]
    numeric = inactive.drop(columns=["customer_id", *profile, "days_since_join", "offers_received",
                                     "offers_responded", "response_rate"], errors="ignore")
    numeric = numeric.drop(columns=[c for c in numeric.columns if c.startswith("responded_")])
    assert (numeric == 0).all().all()
    if "days_since_join" in frame.columns:
        # known without purchases only by joining before the cutoff
        assert (inactive["days_since_join"] > 0).all()


@PROPERTY
@given(tx=transactions, cust=customers, mk=offers, cutoff=cutoffs)
def test_features_equal_a_pandas_reference(tmp_path: Path, tx: list, cust: dict, mk: list, cutoff: int) -> None:
    ds = load(write_random(tmp_path / "data", tx, cust, mk), as_of=dt.date(2030, 1, 1))
    fs = build_features(ds, _date(cutoff))
    assert_invariants(fs.frame)
    expected = reference_features(tx, cust, mk, cutoff)
    if expected.empty:  # nobody bought or joined before the cutoff
        assert fs.frame.empty
        return
    if not cust:
        expected = expected.drop(columns=["age", "gender", "location", "days_since_join"])
    present = {c for _, _, _, c in tx if c}
    assert set(fs.spec.categories) == present
    for c in set(CATEGORIES) - present:  # categories absent from the data get no column
        del expected[f"share_{c.lower().replace(' ', '_')}"]
    for p in set(PROMOTIONS) - {p for *_, p in mk}:
        del expected[f"responded_{p.lower().replace(' ', '_')}"]
    if not mk:
        expected = expected.drop(columns=[c for c in expected.columns if "offer" in c or "respon" in c])
    assert sorted(fs.frame.columns) == sorted(expected.columns)
    assert_frames_match(fs.frame, expected)


@settings(PROPERTY, max_examples=15)  # its data sets are twice as large
@given(
    tx=transactions, cust=customers, mk=offers, cutoff=cutoffs,
    later_tx=st.lists(st.tuples(st.sampled_from(IDS), st.integers(0, 60), amounts, st.sampled_from(CATEGORIES))),
    later_customers=st.lists(st.sampled_from(["new1", "new2"]), unique=True),
    seed=st.integers(0, 2**32 - 1),
)
def test_row_order_and_events_after_the_cutoff_do_not_change_features(
    tmp_path: Path, tx: list, cust: dict, mk: list, cutoff: int, later_tx: list, later_customers: list, seed: int
) -> None:
    """One data set holds two copies of the same history, under ids ``a...`` and ``b...``.

    The ``b`` copy also has purchases, offers and new customers on or after the cutoff, and
    all rows of every file are shuffled. Both copies must get identical features. (One data
    set instead of two keeps the test fast: compiling the queries dominates its run time.)
    """
    rng = np.random.default_rng(seed)

    def copy(prefix: str, rows: list) -> list:
        return [(prefix + row[0], *row[1:]) for row in rows]

    all_tx = copy("a", tx) + copy("b", tx) + [(f"b{c}", cutoff + d, a, cat) for c, d, a, cat in later_tx]
    all_mk = copy("a", mk) + copy("b", mk) + [(f"b{c}", cutoff + d, True, "Discount") for c, d, *_ in later_tx]
    all_cust = {f"a{c}": v for c, v in cust.items()} | {f"b{c}": v for c, v in cust.items()}
    all_cust |= {f"b{c}": (cutoff + 1, 30, "Male") for c in later_customers}
    shuffle = lambda rows: [rows[i] for i in rng.permutation(len(rows))]  # noqa: E731
    all_cust = dict(shuffle(list(all_cust.items())))

    ds = load(write_random(tmp_path / "data", shuffle(all_tx), all_cust, shuffle(all_mk)), as_of=dt.date(2030, 1, 1))
    frame = build_features(ds, _date(cutoff)).frame
    a = frame[frame["customer_id"].str.startswith("a")].reset_index(drop=True)
    b = frame[frame["customer_id"].str.startswith("b")].reset_index(drop=True)
    a["customer_id"] = a["customer_id"].str[1:]
    b["customer_id"] = b["customer_id"].str[1:]
    if "location" in frame.columns:
        a["location"] = a["location"].str.replace("City a", "City ")
        b["location"] = b["location"].str.replace("City b", "City ")
    pd.testing.assert_frame_equal(a, b)
    assert_invariants(frame)


def test_horizon_spend_aligned_to_customers(tiny_dir: Path) -> None:
    """Spend in [cutoff, cutoff + horizon), in the order asked for, 0 for those who bought nothing."""
    from clvtier.clv import horizon_spend

    ds = load(tiny_dir, as_of=TINY_AS_OF)
    by_customer = horizon_spend(ds, TINY_CUTOFF, 60)
    # 1: 999 on 2024-01-05; 5: 70 on the cutoff day itself; 4: 80 + 20 on 2024-02-05.
    assert by_customer.sort_index().to_dict() == {"1": 999.0, "4": 100.0, "5": 70.0}
    asked = pd.Index(["5", "3", "1", "4", "nobody", "2"])
    aligned = horizon_spend(ds, TINY_CUTOFF, 60, asked)
    assert aligned.index.equals(asked)
    assert aligned.tolist() == [70.0, 0.0, 999.0, 100.0, 0.0, 0.0]
    assert horizon_spend(ds, TINY_CUTOFF, 60, pd.Index([], dtype=object)).empty


def test_amounts_are_summed_exactly(tmp_path: Path) -> None:
    """0.1 + 0.2 is 0.3, not 0.30000000000000004: sums do not depend on the order rows are added in,
    so a rerun on more threads gives the same features to the last bit."""
    rows = "".join(f"{k},1,2023-11-0{k},{a}\n" for k, a in enumerate(("0.1", "0.2"), start=1))
    ds = load(write_ecomx(tmp_path, {
        "transactions": "transaction_id,customer_id,transaction_date,transaction_amount\n" + rows,
    }), as_of=TINY_AS_OF)
    row = build_features(ds, TINY_CUTOFF).frame.iloc[0]
    assert 0.1 + 0.2 != 0.3
    assert row["total_spend"] == 0.3 and row["spend_90d"] == 0.3 and row["mean_spend"] == 0.15
