"""The service's prepared feature plan holds for any records.

A scoring session plans the feature query once per cutoff, on the records of the
first request at that cutoff, and executes that plan for every later request. Each
later answer must equal the query planned afresh on that request's records alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
from collections.abc import Iterator
from typing import Any

import duckdb
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clvtier.features import FeatureSpec
from clvtier.serve.schemas import parse_score_request
from clvtier.serve.scoring import DUCKDB_CONFIG, FeatureQuery, _Session, request_tables

SPEC = FeatureSpec(categories=("Clothing", "Electronics"), promotion_types=("Discount", "Free Shipping"),
                   tables=("customers", "engagements", "marketing"))
QUERY = FeatureQuery(SPEC)


@contextlib.contextmanager
def new_session(query: FeatureQuery = QUERY) -> Iterator[_Session]:
    """A session on a database of its own, set up as the service's."""
    db = duckdb.connect(":memory:", config={**DUCKDB_CONFIG, "threads": 1})
    one = _Session(db.cursor(), query)
    try:
        yield one
    finally:
        one.close()
        db.close()


@pytest.fixture(scope="module")
def session() -> Iterator[_Session]:
    """One session for the module: each test's requests follow the earlier tests' requests."""
    with new_session() as one:
        yield one


def planned_afresh(arrow: dict[str, Any], cutoff: dt.date, query: FeatureQuery) -> pd.DataFrame:
    """The feature query planned for these records only, with every optimizer on."""
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        for name, table in arrow.items():
            con.register(name, table)
        return con.execute(query.sql(cutoff)).df()
    finally:
        con.close()


def assert_same(session: _Session, customers: list[dict[str, Any]], as_of: str) -> None:
    batch = parse_score_request(json.dumps({"as_of": as_of, "customers": customers}).encode())
    arrow = request_tables(batch.customers, session.query.tables)
    got = session.run(arrow, batch.as_of).sort_values("customer_id", ignore_index=True)
    want = planned_afresh(arrow, batch.as_of, session.query).sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(got, want)


def buyer(i: int, offers: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"customer_id": f"C-{i}",
                           "transactions": [{"date": "2023-05-01", "amount": 10.5 + i, "category": "Clothing"}]}
    if offers:
        out["offers"] = [{"date": "2023-04-01", "response": "Yes", "promotion_type": "Discount"}]
    return out


def test_a_plan_made_on_two_customers_holds_for_a_thousand() -> None:
    # Planned on customer keys "0" and "1" (and no offers), DuckDB's compressed
    # materialization packed the keys into one byte: a thousand customers' offers
    # then collapsed into a dozen groups. The optimizers that read such statistics are off.
    with new_session() as fresh:
        assert_same(fresh, [buyer(0, offers=False), buyer(1, offers=False)], "2024-01-01")
        assert_same(fresh, [buyer(i) for i in range(1000)], "2024-01-01")
        assert_same(fresh, [buyer(i) for i in range(3)], "2024-01-01")


def test_each_cutoff_gets_its_own_plan_and_old_ones_are_let_go(session: _Session) -> None:
    customers = [buyer(i) for i in range(5)]
    for day in range(1, _Session.KEEP + 4):
        assert_same(session, customers, f"2023-0{1 + day % 9}-{day:02d}")
    assert len(session._prepared) == _Session.KEEP
    (prepared,) = session.con.execute("SELECT count(*) FROM duckdb_prepared_statements()").fetchone() or (0,)
    assert prepared == _Session.KEEP


OPTIONAL = ("customers", "engagements", "marketing")


@pytest.mark.parametrize("spec", [
    FeatureSpec(categories=categories, promotion_types=promotions, tables=tables)
    for tables in itertools.chain.from_iterable(itertools.combinations(OPTIONAL, k) for k in range(4))
    for categories, promotions in (((), ()), (("Clothing", "Toys"), ("Discount",)))], ids=repr)
def test_every_kind_of_model_gets_a_plan_that_holds(spec: FeatureSpec) -> None:
    """With those optimizers off, DuckDB still plans the query of any spec, and rightly."""
    with new_session(FeatureQuery(spec)) as fresh:
        for customers in ([buyer(0, offers=False)], [buyer(i) for i in range(30)]):
            assert_same(fresh, customers, "2024-01-01")


def test_the_request_tables_are_empty_after_each_call(session: _Session) -> None:
    assert_same(session, [buyer(i) for i in range(4)], "2024-01-01")
    for name in session.tables:
        assert session.con.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)


days = st.dates(dt.date(2021, 1, 1), dt.date(2025, 12, 31)).map(str)
rare_days = st.one_of(days, days, days, st.dates(dt.date(1900, 1, 1), dt.date(2199, 12, 31)).map(str))
amounts = st.one_of(st.floats(-500, 5000), st.sampled_from([0.0, -0.0, 1e-9, 1e9, -1e9]))
ids = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=40)


@st.composite
def customer(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"customer_id": draw(ids)}
    if draw(st.booleans()):
        out["profile"] = draw(st.fixed_dictionaries({}, optional={
            "join_date": rare_days, "age": st.floats(0, 120), "gender": st.sampled_from(["Male", "Female"]),
            "location": st.sampled_from(["Urban", "Rural"])}))
    out["transactions"] = draw(st.lists(st.fixed_dictionaries(
        {"date": rare_days, "amount": amounts},
        optional={"category": st.sampled_from(["Clothing", "Electronics", "Toys", " clothing "])}), max_size=6))
    if draw(st.booleans()):
        count = st.integers(0, 10**6)
        out["engagement"] = {"site_visits": draw(count), "emails_opened": draw(count), "clicks": draw(count)}
    if draw(st.booleans()):
        out["offers"] = draw(st.lists(st.fixed_dictionaries(
            {"date": rare_days, "response": st.sampled_from(["Yes", "No"]),
             "promotion_type": st.sampled_from(["Discount", "Free Shipping", "Bundle"])}), max_size=4))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests=st.lists(st.tuples(st.lists(customer(), min_size=1, max_size=14),
                                   st.sampled_from(["2023-01-01", "2024-06-15"])), min_size=2, max_size=4))
def test_any_sequence_of_requests_gets_the_features_planned_afresh(
        session: _Session, requests: list[tuple[list[dict[str, Any]], str]]) -> None:
    for customers, as_of in requests:
        assert_same(session, customers, as_of)
