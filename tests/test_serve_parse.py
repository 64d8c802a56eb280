"""The two ways a scoring request is parsed give one answer.

:func:`clvtier.serve.schemas.parse_score_request` reads a body with Arrow's JSON
reader and vectorised checks, and leaves every body they refuse to pydantic. These
tests hold the quick path to pydantic's verdict: whatever it accepts, pydantic accepts
too, with the same date and the same records.
"""

from __future__ import annotations

import datetime as dt
import json
import typing
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clvtier.serve import schemas
from clvtier.serve.schemas import CUSTOMER_TYPE, EXAMPLE_REQUEST, ScoreBatch, parse_score_request
from clvtier.serve.scoring import request_tables

TABLES = ("transactions", "customers", "engagements", "marketing")


def by_pydantic(raw: bytes) -> ScoreBatch | None:
    """The request as pydantic alone reads it (``None``: refused)."""
    with mock.patch.object(schemas, "columnar", lambda raw: None):
        try:
            return parse_score_request(raw)
        except RequestValidationError:
            return None


def assert_same_verdict(raw: bytes) -> ScoreBatch | None:
    """The quick path accepts only what pydantic accepts, and reads the same records from it."""
    quick = schemas.columnar(raw)
    if quick is None:
        return None
    slow = by_pydantic(raw)
    assert slow is not None, f"the quick path accepted a body pydantic refuses: {raw[:300]!r}"
    assert quick.as_of == slow.as_of
    assert quick.customers.field("customer_id").equals(slow.customers.field("customer_id"))  # the ids answered
    mine, theirs = request_tables(quick.customers, TABLES), request_tables(slow.customers, TABLES)
    for name in mine:
        assert mine[name].equals(theirs[name]), (name, mine[name].to_pydict(), theirs[name].to_pydict())
    return quick


def body(*customers: Any, as_of: Any = "2024-06-01") -> bytes:
    return json.dumps({"as_of": as_of, "customers": list(customers)}).encode()


def test_arrow_type_has_the_fields_of_the_typed_dicts() -> None:
    def fields(t: pa.DataType) -> list[str]:
        return [t.field(i).name for i in range(t.num_fields)]

    assert fields(CUSTOMER_TYPE) == list(typing.get_type_hints(schemas.Customer))
    for name, record in (("profile", schemas.Profile), ("engagement", schemas.Engagement)):
        assert fields(CUSTOMER_TYPE.field(name).type) == list(typing.get_type_hints(record))
    for name, record in (("transactions", schemas.Transaction), ("offers", schemas.Offer)):
        assert fields(CUSTOMER_TYPE.field(name).type.value_type) == list(typing.get_type_hints(record))


def test_large_bodies_are_read_by_arrow_first_and_small_ones_by_pydantic() -> None:
    customer = EXAMPLE_REQUEST["customers"][0]
    small = body(customer)
    large = body(*[dict(customer, customer_id=f"C-{i}") for i in range(400)])
    assert len(small) < schemas.COLUMNAR_FROM <= len(large)
    answers: list[ScoreBatch | None] = []
    columnar = schemas.columnar

    def quick(raw: bytes) -> ScoreBatch | None:
        answers.append(columnar(raw))
        return answers[-1]

    with mock.patch.object(schemas, "columnar", quick):
        assert len(parse_score_request(small)) == 1
        assert not answers
        assert len(parse_score_request(large)) == 400
        assert len(answers) == 1 and answers[0] is not None


def test_ordinary_requests_take_the_quick_path() -> None:
    raw = json.dumps(EXAMPLE_REQUEST).encode()
    quick = assert_same_verdict(raw)
    assert quick is not None and len(quick) == 2 and quick.as_of == dt.date(2024, 6, 1)
    pretty = json.dumps(EXAMPLE_REQUEST, indent=2, ensure_ascii=True).encode()
    assert assert_same_verdict(pretty) is not None
    # null lists are no records, as missing ones
    assert assert_same_verdict(body({"customer_id": "a", "transactions": None, "offers": None})) is not None
    assert assert_same_verdict(body({"customer_id": "Zoë", "profile": {"location": "Zürich"}})) is not None


GOOD_TX = {"date": "2024-01-02", "amount": 10.5}
GOOD_OFFER = {"date": "2024-01-02", "response": "Yes", "promotion_type": "Discount"}
ENGAGED = {"site_visits": 1, "emails_opened": 2, "clicks": 3}

#: Bodies that sit on an edge of the rules; pydantic's verdict decides each.
EDGES: dict[str, bytes] = {
    "byte order mark": b"\xef\xbb\xbf" + body({"customer_id": "a"}),
    "null body": b" null ",  # crashes Arrow's reader if it gets there
    "null, then the request": b"null" + body({"customer_id": "a"}),
    "leading white space": b" \r\n\t" + body({"customer_id": "a"}),
    "repeated key": b'{"as_of":"2024-06-01","customers":[{"customer_id":"a","customer_id":"b"}]}',
    "escaped key": b'{"as_of":"2024-06-01","customers":[{"customer\\u005fid":"a"}]}',
    "escaped text": b'{"as_of":"2024-06-01","customers":[{"customer_id":"caf\\u00e9 \\ud83d\\ude00"}]}',
    "escaped control character": b'{"as_of":"2024-06-01","customers":[{"customer_id":"a\\u0007"}]}',
    "raw control character": b'{"as_of":"2024-06-01","customers":[{"customer_id":"a\tb"}]}',
    "lone surrogate": b'{"as_of":"2024-06-01","customers":[{"customer_id":"a\\ud800"}]}',
    "not UTF-8": b'{"as_of":"2024-06-01","customers":[{"customer_id":"a\xff"}]}',
    "NaN amount": body({"customer_id": "a", "transactions": [{"date": "2024-01-02", "amount": float("nan")}]}),
    "infinite amount": b'{"as_of":"2024-06-01","customers":[{"customer_id":"a","transactions":'
                       b'[{"date":"2024-01-02","amount":1e400}]}]}',
    "tiny amount": b'{"as_of":"2024-06-01","customers":[{"customer_id":"a","transactions":'
                   b'[{"date":"2024-01-02","amount":1e-400}]}]}',
    "negative zero": body({"customer_id": "a", "transactions": [{"date": "2024-01-02", "amount": -0.0}]}),
    "amount too large": body({"customer_id": "a", "transactions": [{"date": "2024-01-02", "amount": 1e9 + 1}]}),
    "amount as text": body({"customer_id": "a", "transactions": [{"date": "2024-01-02", "amount": "5"}]}),
    "amount as boolean": body({"customer_id": "a", "transactions": [{"date": "2024-01-02", "amount": True}]}),
    "whole float count": body({"customer_id": "a", "engagement": {**ENGAGED, "clicks": 3.0}}),
    "fractional count": body({"customer_id": "a", "engagement": {**ENGAGED, "clicks": 3.5}}),
    "huge count": body({"customer_id": "a", "engagement": {**ENGAGED, "clicks": 10**20}}),
    "negative count": body({"customer_id": "a", "engagement": {**ENGAGED, "clicks": -1}}),
    "partial engagement": body({"customer_id": "a", "engagement": {"clicks": 1}}),
    "empty profile": body({"customer_id": "a", "profile": {}}),
    "age too high": body({"customer_id": "a", "profile": {"age": 151}}),
    "two values": body({"customer_id": "a"}) + b"\n" + body({"customer_id": "b"}),
    "trailing text": body({"customer_id": "a"}) + b" x",
    "empty body": b"",
    "blank body": b"  \n",
    "array body": b"[" + body({"customer_id": "a"}) + b"]",
    "null customer": body(None),
    "no customers": body(),
    "null record": body({"customer_id": "a", "transactions": [None]}),
    "missing amount": body({"customer_id": "a", "transactions": [{"date": "2024-01-02"}]}),
    "missing id": body({"profile": {}}),
    "extra field": body({"customer_id": "a", "transactions": [{**GOOD_TX, "qty": 1}]}),
    "extra top field": b'{"as_of":"2024-06-01","customers":[{"customer_id":"a"}],"x":1}',
    "impossible day": body({"customer_id": "a", "transactions": [{"date": "2023-02-30", "amount": 1}]}),
    "impossible as_of": body({"customer_id": "a"}, as_of="2023-02-29"),
    "as_of out of range": body({"customer_id": "a"}, as_of="1899-12-31"),
    "as_of missing": b'{"customers":[{"customer_id":"a"}]}',
    "non-ASCII digits": body({"customer_id": "a", "transactions": [{"date": "２０２４-01-02", "amount": 1}]}),
    "date with time": body({"customer_id": "a", "transactions": [{"date": "2024-01-02T00:00", "amount": 1}]}),
    "blank id": body({"customer_id": " "}),
    "padded id": body({"customer_id": " a"}),
    "long id": body({"customer_id": "x" * 129}),
    "long text": body({"customer_id": "a", "profile": {"gender": "é" * 201}}),
    "longest text": body({"customer_id": "a", "profile": {"gender": "é" * 200}}),
    "blank text": body({"customer_id": "a", "transactions": [{**GOOD_TX, "category": "  "}]}),
    "response lower case": body({"customer_id": "a", "offers": [{**GOOD_OFFER, "response": "yes"}]}),
    "blank promotion": body({"customer_id": "a", "offers": [{**GOOD_OFFER, "promotion_type": " "}]}),
    "records of every kind": body({"customer_id": "a", "profile": {"join_date": "2020-01-01", "age": 30},
                                   "transactions": [GOOD_TX], "engagement": ENGAGED, "offers": [GOOD_OFFER]}),
}


@pytest.mark.parametrize("name", list(EDGES))
def test_edge_cases_get_pydantics_verdict(name: str) -> None:
    assert_same_verdict(EDGES[name])


def test_edge_cases_that_pydantic_accepts_mostly_take_the_quick_path() -> None:
    accepted = [name for name, raw in EDGES.items() if by_pydantic(raw) is not None]
    quick = [name for name in accepted if schemas.columnar(EDGES[name]) is not None]
    assert {"records of every kind", "escaped text", "longest text", "empty profile"} <= set(quick)
    # left to pydantic on purpose: repeated keys (the last one counts) and counts written as 3.0
    assert set(accepted) - set(quick) == {"repeated key", "whole float count"}
    assert "leading white space" in quick


# Values near and beyond each rule, for records built at random; most values are valid, so
# that many requests pass, and any one value may break a rule.
plain_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=6)
edge_text = st.one_of(st.text(max_size=4), st.sampled_from(["", " ", " a", "a ", "x" * 201, "é" * 200, "x" * 128]))
texts = st.one_of(plain_text, plain_text, plain_text, st.none(), edge_text)
valid_dates = st.dates(dt.date(1900, 1, 1), dt.date(2199, 12, 31)).map(str)
dates = st.one_of(valid_dates, valid_dates, valid_dates, st.dates(dt.date(1800, 1, 1), dt.date(2300, 1, 1)).map(str),
                  st.sampled_from(["2023-02-29", "2024-02-29", "2024-13-01", "2024-1-1", "", "１９９９-01-01"]))
numbers = st.one_of(st.floats(-1e9, 1e9), st.floats(-1e9, 1e9), st.integers(-10**3, 10**3),
                    st.floats(allow_nan=True, allow_infinity=False),
                    st.sampled_from([0, -0.0, 1e9, -1e9, 1e9 + 1, 150, 150.5, 3.0, 10**20]))


def maybe(record: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(record, st.none())


@st.composite
def customer(draw: st.DrawFn, clean: bool) -> dict[str, Any]:
    """A customer; ``clean``: only values within the rules (yet any key may be missing or null)."""
    text = maybe(plain_text) if clean else texts
    day = valid_dates if clean else dates
    number = st.floats(0, 150) if clean else numbers
    count = st.integers(0, 10**4) if clean else st.one_of(st.integers(0, 10**4), st.integers(-2, 10**10),
                                                            st.sampled_from([2.0, 2.5]))
    out: dict[str, Any] = {}
    if clean or draw(st.integers(0, 20)):
        out["customer_id"] = draw(plain_text.filter(lambda x: x.strip() == x and len(x) <= 128) if clean else
                                  st.one_of(plain_text, st.text(max_size=4), st.sampled_from(["C-1", " C", "C "])))
    if draw(st.booleans()):
        out["profile"] = draw(maybe(st.fixed_dictionaries({}, optional={
            "join_date": maybe(day), "age": maybe(number), "gender": text, "location": text})))
    if draw(st.booleans()):
        amount = st.floats(-1e9, 1e9) if clean else numbers
        ident = maybe(st.sampled_from(["T-1", "x"])) if clean else texts
        out["transactions"] = draw(maybe(st.lists(st.fixed_dictionaries(
            {"date": day, "amount": amount}, optional={"category": text, "id": ident}), max_size=3)))
    if draw(st.booleans()):
        engagement = {"site_visits": count, "emails_opened": count, "clicks": count}
        out["engagement"] = draw(maybe(st.fixed_dictionaries(engagement) if clean else
                                       st.fixed_dictionaries({}, optional=engagement)))
    if draw(st.booleans()):
        response = st.sampled_from(["Yes", "No"] if clean else ["Yes", "No", "yes", ""])
        promotion = plain_text.filter(str.strip) if clean else st.one_of(texts, st.just("Discount"))
        out["offers"] = draw(maybe(st.lists(st.fixed_dictionaries(
            {"date": day, "response": response, "promotion_type": promotion},
            optional={"id": maybe(st.just("O-1")) if clean else texts}), max_size=3)))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), clean=st.booleans(), ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_random_requests_get_pydantics_verdict(data: st.DataObject, clean: bool, ascii_only: bool,
                                               indent: int | None) -> None:
    customers = data.draw(st.lists(customer(clean), min_size=1 if clean else 0, max_size=4))
    as_of = data.draw(valid_dates if clean else dates)
    raw = json.dumps({"as_of": as_of, "customers": customers}, ensure_ascii=ascii_only, indent=indent).encode()
    quick = assert_same_verdict(raw)
    event("quick path" if quick is not None else "left to pydantic")
    assert quick is not None or not clean, raw


@settings(max_examples=100, deadline=None)
@given(amounts=st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=20))
def test_amounts_read_to_the_same_double(amounts: list[float]) -> None:
    quick = assert_same_verdict(body({"customer_id": "a", "transactions": [
        {"date": "2024-01-02", "amount": a} for a in amounts]}))
    assert quick is not None
    assert quick.customers.field("transactions").flatten().field("amount").to_pylist() == amounts


#: Pieces of JSON that mutations insert.
PIECES = [b"null", b"[", b"]", b"{", b"}", b",", b":", b'"x"', b"1e999", b"\\u0000", b'"', b"[null]", b"{}", b"[]",
          b'"customers"', b'"transactions"', b'"as_of"', b"0", b"-", b" ", b"\n", b"\xff", b"\\", b"true"]


@settings(max_examples=400, deadline=None)
@given(seed=st.sampled_from(sorted(EDGES)), edits=st.lists(st.tuples(
    st.integers(0, 3), st.integers(0, 10**4), st.sampled_from(PIECES), st.integers(0, 10**4), st.integers(1, 30)),
    min_size=1, max_size=4))
def test_mutated_bodies_get_pydantics_verdict(seed: str, edits: list[tuple[int, int, bytes, int, int]]) -> None:
    """Bodies cut, spliced and overwritten at random: no crash, and the same verdict."""
    raw = bytearray(EDGES[seed])
    for op, at, piece, other, size in edits:
        at %= len(raw) + 1
        if op == 0:
            del raw[at:at + size]
        elif op == 1:
            raw[at:at] = piece
        elif op == 2 and raw:
            start = other % len(raw)
            raw[at:at] = raw[start:start + size]
        elif raw:
            raw[min(at, len(raw) - 1)] = other % 256
    assert_same_verdict(bytes(raw))
