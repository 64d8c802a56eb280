"""The scoring service through TestClient: every endpoint and error, equality with batch predict, OpenAPI snapshot.

A small model is trained once per session (see :func:`small_run`); the HTTP and
fuzz tests reuse it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from clvtier.errors import InputError, ModelError
from clvtier.predict import Model, load, predict
from clvtier.serve import Settings, create_app, get_settings
from clvtier.serve.batching import MicroBatcher, Overloaded
from clvtier.serve.logs import JsonFormatter
from clvtier.serve.routes import get_batcher
from clvtier.serve.schemas import COLUMNAR_FROM, EXAMPLE_REQUEST, columnar
from clvtier.validate import Dataset

SNAPSHOT = Path(__file__).parent / "snapshots" / "openapi.json"
TIERS = ("Low", "Medium", "High")


# -- the model ----------------------------------------------------------------------------------
def small_run(base: Path) -> tuple[Path, Path]:
    """Generate ~800 customers and train a small logistic model under ``base`` once; (data_dir, run_dir)."""
    data_dir, run_dir = base / "data", base / "run"
    if (run_dir / "metadata.json").is_file():
        return data_dir, run_dir
    from clvtier.generate import generate
    from clvtier.persist import write_run
    from clvtier.train import TrainConfig, train
    from clvtier.validate import load as load_data

    generate(800, seed=11, out=data_dir)
    result = train(load_data(data_dir), TrainConfig(candidates=("logreg",), cv_folds=3, n_boot=20, backtests=0))
    write_run(result, run_dir)
    return data_dir, run_dir


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return small_run(tmp_path_factory.getbasetemp() / "serve-model")


@pytest.fixture(scope="module")
def model(trained: tuple[Path, Path]) -> Model:
    return load(trained[1])


@pytest.fixture(scope="module")
def dataset(trained: tuple[Path, Path]) -> Dataset:
    from clvtier.validate import load as load_data

    return load_data(trained[0])


@pytest.fixture(scope="module")
def client(trained: tuple[Path, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=trained[1]))) as c:
        yield c


@pytest.fixture
def settings_override(client: TestClient, trained: tuple[Path, Path]) -> Iterator[Any]:
    """Call with Settings fields to inject other settings into the routes for one test."""

    def override(**fields: Any) -> None:
        client.app.dependency_overrides[get_settings] = lambda: Settings(model_dir=trained[1], **fields)

    yield override
    client.app.dependency_overrides.clear()


# -- request building ---------------------------------------------------------------------------
def _iso(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).date().isoformat()


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _txt(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def records(ds: Dataset) -> dict[str, dict[str, Any]]:
    """Every customer of a validated data set as a scoring-request customer, keyed by customer_id."""
    frames = {name: ds.con.execute(table) for name, table in ds.tables.items()}
    out: dict[str, dict[str, Any]] = {}

    def customer(cid: Any) -> dict[str, Any]:
        cid = str(cid)
        return out.setdefault(cid, {"customer_id": cid, "transactions": [], "offers": []})

    for r in frames.get("customers", pd.DataFrame()).itertuples(index=False):
        customer(r.customer_id)["profile"] = {
            "join_date": _iso(r.join_date), "age": _num(r.age), "gender": _txt(r.gender), "location": _txt(r.location)
        }
    for r in frames["transactions"].itertuples(index=False):
        customer(r.customer_id)["transactions"].append({
            "date": _iso(r.transaction_date), "amount": float(r.transaction_amount),
            "category": _txt(r.product_category), "id": _txt(r.transaction_id),
        })
    for r in frames.get("engagements", pd.DataFrame()).itertuples(index=False):
        customer(r.customer_id)["engagement"] = {
            "site_visits": int(r.number_of_site_visits), "emails_opened": int(r.number_of_emails_opened),
            "clicks": int(r.number_of_clicks),
        }
    for r in frames.get("marketing", pd.DataFrame()).itertuples(index=False):
        customer(r.customer_id)["offers"].append({
            "date": _iso(r.campaign_date), "response": r.response, "promotion_type": r.promotion_type,
            "id": _txt(r.campaign_id),
        })
    return out


def one(customer_id: str = "A1", **fields: Any) -> dict[str, Any]:
    return {"customer_id": customer_id, **fields}


def post(client: TestClient, customers: list[dict[str, Any]], as_of: str = "2024-01-01",
         **kwargs: Any) -> Any:
    return client.post("/v1/score", json={"as_of": as_of, "customers": customers}, **kwargs)


def assert_no_leak(response: Any) -> None:
    text = response.text
    for marker in ("Traceback", "/work/", "/tmp/", "site-packages", 'File "', ".py"):
        assert marker not in text, f"{marker!r} leaked: {text[:300]}"


# -- endpoints ----------------------------------------------------------------------------------
def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model": "logreg"}
    assert len(r.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize(("given", "echoed"), [("abc-123", True), ("bad id\u00e9;", False), ("x" * 129, False)],
                         ids=["safe", "unsafe", "too-long"])
def test_request_id_echoed_or_generated(client: TestClient, given: str, echoed: bool) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": given.encode("utf-8")})  # type: ignore[dict-item]
    assert (r.headers["X-Request-ID"] == given) is echoed


def test_model_metadata(client: TestClient, model: Model) -> None:
    r = client.get("/v1/model")
    assert r.status_code == 200
    body = r.json()
    assert body["feature_names"] == model.feature_names
    assert body["chosen_model"] == "logreg"
    assert body["cutoff"] == model.metadata["cutoff"]
    assert body["horizon_days"] == model.metadata["horizon_days"]
    assert body["thresholds"] == model.metadata["thresholds"]
    assert body["headline"] == model.metadata["headline"]
    assert body["tiers"] == list(TIERS)
    assert body["versions"]["scikit-learn"]


def test_score_in_request_order_with_reasons(client: TestClient) -> None:
    customers = [
        one("b", transactions=[{"date": "2023-06-01", "amount": 50.0}]),
        one("a", profile={"join_date": "2022-01-01", "age": 30, "gender": "Female", "location": "Paris"},
            transactions=[{"date": "2023-12-01", "amount": 900.0, "category": "Electronics"}] * 3),
        one("c"),  # no records at all: still scored
        one("0", profile={"join_date": "2025-01-01"}),  # joins after as_of: still scored
    ]
    r = post(client, customers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "logreg" and body["as_of"] == "2024-01-01"
    assert [s["customer_id"] for s in body["scores"]] == ["b", "a", "c", "0"]
    for s in body["scores"]:
        p = s["probabilities"]
        assert s["tier"] == max(TIERS, key=lambda t: p[t])
        assert math.isclose(sum(p.values()), 1.0, abs_tol=1e-9)
        assert len(s["reasons"]) == 3
        assert all(set(x) == {"feature", "effect"} for x in s["reasons"])


def test_score_without_reasons(client: TestClient) -> None:
    r = client.post("/v1/score?reasons=false", json={"as_of": "2024-01-01", "customers": [one()]})
    assert r.status_code == 200
    assert r.json()["scores"][0]["reasons"] == []


def test_repeated_id_is_scored_per_entry(client: TestClient) -> None:
    small = one("x", transactions=[{"date": "2023-06-01", "amount": 5.0}])
    big = one("x", transactions=[{"date": "2023-12-01", "amount": 9000.0}] * 5)
    both = post(client, [small, big], params={"reasons": "false"}).json()["scores"]
    alone = [post(client, [c], params={"reasons": "false"}).json()["scores"][0] for c in (small, big)]
    assert [s["customer_id"] for s in both] == ["x", "x"]
    assert [s["tier"] for s in both] == [s["tier"] for s in alone]
    for got, want in zip(both, alone, strict=True):
        for tier in TIERS:
            assert abs(got["probabilities"][tier] - want["probabilities"][tier]) <= 1e-12


def test_openapi_example_is_accepted(client: TestClient) -> None:
    r = client.post("/v1/score", json=EXAMPLE_REQUEST)
    assert r.status_code == 200, r.text
    assert [s["customer_id"] for s in r.json()["scores"]] == ["C-1001", "C-1002"]


def test_text_is_normalised_as_validation_does(client: TestClient) -> None:
    base = {"date": "2023-06-01", "amount": 50.0}
    plain = post(client, [one(transactions=[{**base, "category": "Electronics"}],
                              offers=[{"date": "2023-05-01", "response": "Yes", "promotion_type": "Discount"}])])
    padded = post(client, [one(transactions=[{**base, "category": "  Electronics "}],
                               offers=[{"date": "2023-05-01", "response": "Yes", "promotion_type": " Discount "}])])
    assert plain.json()["scores"] == padded.json()["scores"]


# -- equality with batch predict ----------------------------------------------------------------
@pytest.mark.parametrize("when", ["after-last-date", "training-cutoff"])
def test_scores_equal_batch_predict(client: TestClient, model: Model, dataset: Dataset, when: str) -> None:
    as_of = dataset.last_date + dt.timedelta(days=1) if when == "after-last-date" else \
        dt.date.fromisoformat(model.metadata["cutoff"])
    batch = predict(model, dataset, as_of).set_index("customer_id")
    customers = list(records(dataset).values())
    raw = json.dumps({"as_of": as_of.isoformat(), "customers": customers}).encode()
    assert len(raw) >= COLUMNAR_FROM and columnar(raw) is not None  # read by Arrow, not pydantic
    r = client.post("/v1/score", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    served = r.json()["scores"]
    assert [s["customer_id"] for s in served] == [c["customer_id"] for c in customers]
    by_id = {s["customer_id"]: s for s in served}
    assert set(batch.index) <= set(by_id)  # every customer predict knows, and the others too
    if when == "training-cutoff":
        assert len(by_id) > len(batch)  # some customers join later: scored by the service all the same
    worst = 0.0
    for cid, row in batch.iterrows():
        s = by_id[cid]
        assert s["tier"] == row["tier"], cid
        got = np.array([s["probabilities"][t] for t in TIERS])
        want = row[["p_low", "p_medium", "p_high"]].to_numpy(dtype=float)
        worst = max(worst, float(np.abs(got - want).max()))
        assert [x["feature"] for x in s["reasons"]] == [row[f"reason_{k}"] for k in (1, 2, 3)], cid
        effects = np.array([x["effect"] for x in s["reasons"]])
        assert np.abs(effects - row[[f"reason_{k}_effect" for k in (1, 2, 3)]].to_numpy(dtype=float)).max() <= 1e-12
    assert worst <= 1e-12


def test_single_customer_requests_equal_batch_predict(client: TestClient, model: Model, dataset: Dataset) -> None:
    as_of = dataset.last_date + dt.timedelta(days=1)
    batch = predict(model, dataset, as_of, with_reasons=False).set_index("customer_id")
    everyone = records(dataset)
    for cid in list(batch.index[:: max(1, len(batch) // 6)]):
        r = client.post("/v1/score?reasons=false", json={"as_of": as_of.isoformat(), "customers": [everyone[cid]]})
        s = r.json()["scores"][0]
        assert s["tier"] == batch.loc[cid, "tier"]
        got = [s["probabilities"][t] for t in TIERS]
        assert np.abs(np.array(got) - batch.loc[cid, ["p_low", "p_medium", "p_high"]].to_numpy(float)).max() <= 1e-12


# -- errors -------------------------------------------------------------------------------------
def test_api_key(client: TestClient, settings_override: Any) -> None:
    settings_override(api_key="s3cret-key")
    body = {"as_of": "2024-01-01", "customers": [one()]}
    assert client.post("/v1/score", json=body).status_code == 401
    r = client.post("/v1/score", json=body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    assert r.json()["detail"] == "missing or wrong API key."
    assert r.json()["request_id"] == r.headers["X-Request-ID"]
    assert client.get("/v1/model").status_code == 401
    assert client.post("/v1/score", json=body, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert client.get("/v1/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # liveness needs no key
    bad = client.post("/v1/score", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 401  # the key is checked before the body is read


def test_the_key_is_checked_before_a_streamed_body_is_read(small_body_client: TestClient,
                                                          trained: tuple[Path, Path]) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length, and larger than the limit
        yield b'{"as_of": "2024-01-01", "customers": ['
        for i in range(200):
            yield json.dumps(one(str(i))).encode() + b","
        yield b'{"customer_id": "last"}]}'

    settings = Settings(model_dir=trained[1], max_body_bytes=2048, api_key="k")
    small_body_client.app.dependency_overrides[get_settings] = lambda: settings
    try:
        r = small_body_client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 401 and "X-API-Key" in r.json()["fix"]
        r = small_body_client.post("/v1/score", content=chunks(),
                                   headers={"Content-Type": "application/json", "X-API-Key": "k"})
        assert r.status_code == 413 and r.headers["Connection"] == "close" and r.json()["fix"]
    finally:
        small_body_client.app.dependency_overrides.clear()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx"])
def test_a_body_declared_as_not_json_is_415(client: TestClient, content_type: str) -> None:
    body = json.dumps({"as_of": "2024-01-01", "customers": [one()]}).encode()
    r = client.post("/v1/score", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 415
    assert "not JSON" in r.json()["detail"] and "Content-Type: application/json" in r.json()["fix"]
    for accepted in ({"Content-Type": "application/json; charset=utf-8"}, {"Content-Type": "Application/JSON"}, {}):
        assert client.post("/v1/score", content=body, headers=accepted).status_code == 200, accepted


@pytest.mark.parametrize(("as_of", "customer", "where", "message"), [
    ("1899-12-31", one(), ["body", "as_of"], "dates are written YYYY-MM-DD, from 1900-01-01 to 2199-12-31"),
    ("2023-02-30", one(), ["body", "as_of"], "2023-02-30 is not a day of the calendar"),
    ("2024-01-01", one(transactions=[{"date": "2200-01-01", "amount": 1.0}]),
     ["body", "customers", 0, "transactions", 0, "date"],
     "dates are written YYYY-MM-DD, from 1900-01-01 to 2199-12-31"),
    ("2024-01-01", one(profile={"join_date": "2023-01-01T10:00:00"}),
     ["body", "customers", 0, "profile", "join_date"], "dates are written YYYY-MM-DD, from 1900-01-01 to 2199-12-31"),
    ("2024-01-01", one(" A1"), ["body", "customers", 0, "customer_id"],
     "ids have no control characters and no blank at the start or end"),
    ("2024-01-01", one(offers=[{"date": "2023-01-01", "response": "No", "promotion_type": " "}]),
     ["body", "customers", 0, "offers", 0, "promotion_type"],
     "must hold a character other than a blank, and no control characters"),
    ("2024-01-01", one(transactions=[{"date": "2023-01-01", "amount": 1.0, "category": "a\tb"}]),
     ["body", "customers", 0, "transactions", 0, "category"],
     "text has no control characters (tabs, line breaks and the like)"),
], ids=["as-of-before-1900", "as-of-no-such-day", "date-after-2199", "timestamp", "id-blank", "promotion-blank",
        "control-character"])
def test_field_rules_are_said_in_words(client: TestClient, as_of: str, customer: dict[str, Any],
                                       where: list[Any], message: str) -> None:
    r = post(client, [customer], as_of=as_of)
    assert r.status_code == 422
    assert {"loc": where, "msg": message} in [{k: d[k] for k in ("loc", "msg")} for d in r.json()["detail"]]
    assert "^" not in r.text  # no regular expression


def test_batch_over_the_limit_is_413(client: TestClient) -> None:
    customers = [{"customer_id": str(i)} for i in range(10_001)]
    r = post(client, customers)
    assert r.status_code == 413
    assert "10,001 customers" in r.json()["detail"]


def test_batch_limit_comes_from_settings(client: TestClient, settings_override: Any) -> None:
    settings_override(max_customers=2)
    assert post(client, [one("a"), one("b")]).status_code == 200
    r = post(client, [one("a"), one("b"), one("c")])
    assert r.status_code == 413 and "at most 2" in r.json()["fix"]


def test_records_per_customer_over_the_limit_is_413(client: TestClient, settings_override: Any) -> None:
    settings_override(max_records_per_customer=3)
    tx = {"date": "2023-01-01", "amount": 1.0}
    offer = {"date": "2023-01-01", "response": "No", "promotion_type": "Discount"}
    assert post(client, [one(transactions=[tx] * 2, offers=[offer])]).status_code == 200
    r = post(client, [one("ok"), one(transactions=[tx] * 2, offers=[offer] * 2)])
    assert r.status_code == 413
    assert r.json()["detail"].startswith("customers[1] has 4 transactions and offers")


@pytest.fixture(scope="module")
def small_body_client(trained: tuple[Path, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=trained[1], max_body_bytes=2048))) as c:
        yield c


def test_body_over_the_limit_is_413(small_body_client: TestClient) -> None:
    small = {"as_of": "2024-01-01", "customers": [one()]}
    assert small_body_client.post("/v1/score", json=small).status_code == 200
    big = {"as_of": "2024-01-01", "customers": [one(str(i)) for i in range(200)]}
    r = small_body_client.post("/v1/score", json=big)
    assert r.status_code == 413
    assert r.json()["request_id"] == r.headers["X-Request-ID"]


def test_streamed_body_over_the_limit_is_413(small_body_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known while reading
        yield b'{"as_of": "2024-01-01", "customers": ['
        for i in range(200):
            yield json.dumps(one(str(i))).encode() + b","
        yield b'{"customer_id": "last"}]}'

    r = small_body_client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_invalid_content_length_is_413(small_body_client: TestClient) -> None:
    r = small_body_client.post("/v1/score", content=b"{}", headers={"Content-Length": "12abc"})
    assert r.status_code == 413


BAD_PAYLOADS = {
    "amount-not-a-number": (
        {"as_of": "2024-01-01", "customers": [one(transactions=[{"date": "2023-01-01", "amount": "ten"}])]},
        ["body", "customers", 0, "transactions", 0, "amount"],
    ),
    "bad-date": (
        {"as_of": "2024-01-01", "customers": [one(transactions=[{"date": "2023-02-30", "amount": 1}])]},
        ["body", "customers", 0, "transactions", 0, "date"],
    ),
    "day-not-in-calendar": (
        {"as_of": "2024-01-01", "customers": [one(), one(
            profile={"join_date": "2023-04-31"}, transactions=[{"date": "2023-01-01", "amount": 1}],
            offers=[{"date": "2023-01-01", "response": "No", "promotion_type": "Discount"},
                    {"date": "2023-02-29", "response": "No", "promotion_type": "Discount"}])]},
        ["body", "customers", 1, "offers", 1, "date"],
    ),
    "transaction-date-as-timestamp-text": (
        {"as_of": "2024-01-01", "customers": [one(transactions=[{"date": "0", "amount": 1}])]},
        ["body", "customers", 0, "transactions", 0, "date"],
    ),
    "response-not-yes-no": (
        {"as_of": "2024-01-01",
         "customers": [one(offers=[{"date": "2023-01-01", "response": "Maybe", "promotion_type": "Discount"}])]},
        ["body", "customers", 0, "offers", 0, "response"],
    ),
    "as-of-missing": ({"customers": [one()]}, ["body", "as_of"]),
    "as-of-out-of-range": ({"as_of": "1066-10-14", "customers": [one()]}, ["body", "as_of"]),
    "no-customers": ({"as_of": "2024-01-01", "customers": []}, ["body", "customers"]),
    "unknown-field": ({"as_of": "2024-01-01", "customers": [one(colour="red")]}, ["body", "customers", 0, "colour"]),
    "id-with-spaces": ({"as_of": "2024-01-01", "customers": [one(" x")]}, ["body", "customers", 0, "customer_id"]),
    "control-characters": (
        {"as_of": "2024-01-01", "customers": [one(profile={"location": "a\x00b"})]},
        ["body", "customers", 0, "profile", "location"],
    ),
    "negative-count": (
        {"as_of": "2024-01-01",
         "customers": [one(engagement={"site_visits": -1, "emails_opened": 0, "clicks": 0})]},
        ["body", "customers", 0, "engagement", "site_visits"],
    ),
    "fractional-count": (
        {"as_of": "2024-01-01",
         "customers": [one(engagement={"site_visits": 1, "emails_opened": 5e-324, "clicks": 1})]},
        ["body", "customers", 0, "engagement", "emails_opened"],
    ),
    "date-as-number": (
        {"as_of": "2024-01-01", "customers": [one(transactions=[{"date": 0, "amount": 1}])]},
        ["body", "customers", 0, "transactions", 0, "date"],
    ),
    "date-as-timestamp-text": (
        {"as_of": "2024-01-01", "customers": [one(profile={"join_date": "0"})]},
        ["body", "customers", 0, "profile", "join_date"],
    ),
    "as-of-as-timestamp-text": ({"as_of": "1700000000", "customers": [one()]}, ["body", "as_of"]),
    "date-not-zero-padded": (
        {"as_of": "2024-01-01", "customers": [one(transactions=[{"date": "2023-1-5", "amount": 1}])]},
        ["body", "customers", 0, "transactions", 0, "date"],
    ),
    "date-not-in-calendar": ({"as_of": "2023-02-30", "customers": [one()]}, ["body", "as_of"]),
    "amount-as-string": (
        {"as_of": "2024-01-01", "customers": [one(transactions=[{"date": "2023-01-01", "amount": "1.5"}])]},
        ["body", "customers", 0, "transactions", 0, "amount"],
    ),
    "long-string": (
        {"as_of": "2024-01-01", "customers": [one(profile={"gender": "x" * 500})]},
        ["body", "customers", 0, "profile", "gender"],
    ),
}


@pytest.mark.parametrize("case", BAD_PAYLOADS, ids=list(BAD_PAYLOADS))
def test_bad_payload_is_422_with_field_path(client: TestClient, case: str) -> None:
    payload, loc = BAD_PAYLOADS[case]
    r = client.post("/v1/score", json=payload)
    assert r.status_code == 422, r.text
    body = r.json()
    assert loc in [issue["loc"] for issue in body["detail"]], body
    assert all(set(issue) == {"loc", "msg", "type"} for issue in body["detail"])  # input not echoed
    assert body["request_id"] == r.headers["X-Request-ID"]
    assert_no_leak(r)


MALFORMED = {
    "broken-json": b"{not json",
    "bare-nan": b"NaN",
    "nan-amount": b'{"as_of": "2024-01-01", "customers": [{"customer_id": "a", '
                  b'"transactions": [{"date": "2023-01-01", "amount": NaN}]}]}',
    "infinite-amount": b'{"as_of": "2024-01-01", "customers": [{"customer_id": "a", '
                       b'"transactions": [{"date": "2023-01-01", "amount": 1e999}]}]}',
}


@pytest.mark.parametrize("content", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_json_is_422(client: TestClient, content: bytes) -> None:
    r = client.post("/v1/score", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert_no_leak(r)


def test_every_impossible_date_is_reported_with_its_path(client: TestClient) -> None:
    payload, _ = BAD_PAYLOADS["day-not-in-calendar"]
    r = client.post("/v1/score", json=payload)
    assert r.status_code == 422, r.text
    assert [issue["loc"] for issue in r.json()["detail"]] == [
        ["body", "customers", 1, "profile", "join_date"], ["body", "customers", 1, "offers", 1, "date"]]


def test_impossible_dates_are_reported_with_the_other_problems(client: TestClient) -> None:
    r = post(client, [one(transactions=[{"date": "2024-02-30", "amount": "12"}]),
                      one(profile={"join_date": "2023-06-31"}, offers="none")])
    assert r.status_code == 422, r.text
    assert sorted(map(str, (issue["loc"] for issue in r.json()["detail"]))) == sorted(map(str, [
        ["body", "customers", 0, "transactions", 0, "amount"], ["body", "customers", 1, "offers"],
        ["body", "customers", 0, "transactions", 0, "date"], ["body", "customers", 1, "profile", "join_date"]]))


def test_large_bodies_get_the_same_answers_as_small_ones(client: TestClient) -> None:
    """Bodies read by Arrow first: a problem anywhere is reported as pydantic reports it, with its path."""
    many = [one(customer_id=f"C-{i}", transactions=[{"date": "2023-05-01", "amount": 10.5, "category": "Clothing"}],
                offers=[{"date": "2023-04-01", "response": "Yes", "promotion_type": "Discount"}]) for i in range(1000)]
    sent = json.dumps({"as_of": "2024-01-01", "customers": many}, separators=(",", ":")).encode()  # as posted
    assert len(sent) >= COLUMNAR_FROM and columnar(sent) is not None
    ok = post(client, many)
    assert ok.status_code == 200, ok.text
    assert [s["customer_id"] for s in ok.json()["scores"]] == [c["customer_id"] for c in many]
    alone, together = post(client, many[999:]).json()["scores"][0], ok.json()["scores"][999]
    assert (alone["tier"], [x["feature"] for x in alone["reasons"]]) == \
        (together["tier"], [x["feature"] for x in together["reasons"]])
    # the model's matrix products round differently for one row and for many (as in predict's tests)
    assert max(abs(alone["probabilities"][t] - together["probabilities"][t]) for t in TIERS) <= 1e-12
    for change, loc in ((lambda c: c["offers"][0].update(date="2023-02-30"), ["offers", 0, "date"]),
                        (lambda c: c["transactions"][0].update(amount="12"), ["transactions", 0, "amount"]),
                        (lambda c: c.update(extra=1), ["extra"]),
                        (lambda c: c["offers"][0].update(response="yes"), ["offers", 0, "response"])):
        bad = json.loads(json.dumps(many))
        change(bad[437])
        r = post(client, bad)
        assert r.status_code == 422, r.text
        assert [issue["loc"] for issue in r.json()["detail"]] == [["body", "customers", 437, *loc]]


def test_every_problem_reported_at_once(client: TestClient) -> None:
    r = post(client, [one(transactions=[{"date": "x", "amount": "y"}], offers=[{"date": "2023-01-01"}])])
    locs = [tuple(i["loc"]) for i in r.json()["detail"]]
    assert ("body", "customers", 0, "transactions", 0, "date") in locs
    assert ("body", "customers", 0, "transactions", 0, "amount") in locs
    assert ("body", "customers", 0, "offers", 0, "response") in locs


def test_spend_that_cancels_out_gives_shares_of_purchases(trained: tuple[Path, Path]) -> None:
    """Net spend of ~5e-324: the category shares are of purchases, within [0, 1], not 1e9 / 5e-324 or NaN."""
    from clvtier.serve.schemas import parse_score_request
    from clvtier.serve.scoring import Scorer

    cancelling = [{"date": "2023-01-01", "amount": 1e9, "category": "Electronics"},
                  {"date": "2023-01-01", "amount": -1e9, "category": "Clothing"},
                  {"date": "2023-01-02", "amount": 5e-324, "category": "Home Goods"}]
    body = json.dumps({"as_of": "2024-01-01", "customers": [one("odd", transactions=cancelling)]}).encode()
    batch = parse_score_request(body)
    frame = Scorer(load(trained[1])).features(batch.customers, batch.as_of)
    shares = frame.filter(like="share_").iloc[0]
    assert shares["share_electronics"] == 1.0 and shares["share_clothing"] == 0.0
    assert ((shares >= 0) & (shares <= 1)).all()
    assert frame["total_spend"].iloc[0] == 0.0  # summed exactly, to a hundredth of a cent


def test_features_the_model_cannot_take_are_422(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from clvtier.serve.scoring import Scorer

    real = Scorer.features

    def overflowing(self: Scorer, customers: Any, as_of: dt.date) -> pd.DataFrame:
        frame = real(self, customers, as_of)
        frame.loc[frame.index[-1], "total_spend"] = math.inf  # the last customer of the batch
        return frame

    cancelling = [{"date": "2023-01-01", "amount": 1e9, "category": "Electronics"},
                  {"date": "2023-01-01", "amount": -1e9, "category": "Clothing"},
                  {"date": "2023-01-02", "amount": 5e-324, "category": "Home Goods"}]
    assert post(client, [one("fine"), one("odd", transactions=cancelling)]).status_code == 200
    monkeypatch.setattr(Scorer, "features", overflowing)
    r = post(client, [one("fine"), one("odd")])
    assert r.status_code == 422
    assert r.json()["detail"].startswith("customers [1] cannot be scored")
    monkeypatch.undo()
    assert post(client, [one("fine")]).status_code == 200


@pytest.mark.parametrize(("method", "url"), [("post", "/v1/score?reason=false"), ("get", "/v1/model?x=1"),
                                             ("get", "/healthz?verbose=1")], ids=["score", "model", "healthz"])
def test_unknown_query_parameter_is_422(client: TestClient, method: str, url: str) -> None:
    kwargs = {"json": {"as_of": "2024-01-01", "customers": [one()]}} if method == "post" else {}
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][0] == "query"


def test_not_found_and_wrong_method(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found", "request_id": r.headers["X-Request-ID"]}
    assert client.get("/v1/score").status_code == 405


class _Broken:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def score(self, *args: Any) -> Any:
        raise self.exc


@pytest.mark.parametrize(("exc", "status"), [
    (RuntimeError("boom at /work/secret/path.py"), 500),
    (ModelError("feature 'x' missing in /work/run/model.skops", "retrain"), 500),
    (InputError("the features need the table(s) ['customers'].", "Send profiles."), 422),
], ids=["unexpected", "model-error", "input-error"])
def test_errors_are_mapped_without_internals(trained: tuple[Path, Path], exc: Exception, status: int) -> None:
    app = create_app(Settings(model_dir=trained[1]))
    with TestClient(app, raise_server_exceptions=False) as c:
        app.dependency_overrides[get_batcher] = lambda: _Broken(exc)
        r = post(c, [one()])
    assert r.status_code == status
    body = r.json()
    assert body["request_id"] == r.headers["X-Request-ID"]
    assert_no_leak(r)
    if status == 422:
        assert body == {"detail": exc.message, "fix": exc.fix, "request_id": body["request_id"]}  # type: ignore[attr-defined]
    else:
        assert "boom" not in r.text and "skops" not in r.text


def test_overload_is_503_with_retry_after(trained: tuple[Path, Path]) -> None:
    app = create_app(Settings(model_dir=trained[1]))
    with TestClient(app) as c:
        app.dependency_overrides[get_batcher] = lambda: _Broken(Overloaded("60,000 customers are waiting."))
        r = post(c, [one()])
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert "overloaded" in r.json()["detail"]


def test_batcher_merges_queued_requests_and_sheds_beyond_the_queue_limit() -> None:
    calls: list[int] = []

    class SlowScorer:
        def score(self, customers: Any, as_of: dt.date, with_reasons: bool) -> list[dict[str, Any]]:
            calls.append(len(customers))
            time.sleep(0.2)
            return [{"customer_id": i} for i in customers.field("customer_id").to_pylist()]

    def customers(*ids: str) -> Any:
        from clvtier.serve.schemas import Customer, to_arrow
        return to_arrow([Customer(customer_id=i) for i in ids])

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(SlowScorer(), workers=1, max_queued=3)  # type: ignore[arg-type]
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.score(customers("a"), dt.date(2024, 1, 1), False))
            await asyncio.sleep(0.05)  # "a" is being scored; the next two queue up and are merged
            queued = [asyncio.create_task(batcher.score(customers(x), dt.date(2024, 1, 1), False)) for x in "bc"]
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await batcher.score(customers("d", "e"), dt.date(2024, 1, 1), False)  # 2 waiting + 2 > 3
            return [await first, *[await t for t in queued]]
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert [[s["customer_id"] for s in r] for r in results] == [["a"], ["b"], ["c"]]
    assert calls == [1, 2]


def test_batcher_runs_a_second_call_only_next_to_large_ones() -> None:
    """Two workers: requests arriving during a small call wait and are merged into the next one;
    a request arriving during a large call is scored next to it and answered first."""
    calls: list[tuple[str, int]] = []

    class SlowScorer:
        def score(self, customers: Any, as_of: dt.date, with_reasons: bool) -> list[dict[str, Any]]:
            calls.append(("start", len(customers)))
            time.sleep(0.3 if len(customers) >= 4 else 0.15)
            calls.append(("end", len(customers)))
            return [{"customer_id": i} for i in customers.field("customer_id").to_pylist()]

    def customers(*ids: str) -> Any:
        from clvtier.serve.schemas import Customer, to_arrow
        return to_arrow([Customer(customer_id=i) for i in ids])

    async def scenario() -> None:
        batcher = MicroBatcher(SlowScorer(), workers=2, parallel_from=4)  # type: ignore[arg-type]
        await batcher.start()
        day = dt.date(2024, 1, 1)
        try:
            small = asyncio.create_task(batcher.score(customers("a"), day, False))
            await asyncio.sleep(0.05)
            merged = [asyncio.create_task(batcher.score(customers(x), day, False)) for x in "bc"]
            await asyncio.gather(small, *merged)
            assert calls == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
            calls.clear()
            large = asyncio.create_task(batcher.score(customers(*"defg"), day, False))
            await asyncio.sleep(0.05)
            beside = asyncio.create_task(batcher.score(customers("h"), day, False))
            assert [s["customer_id"] for s in await beside] == ["h"]
            assert not large.done()
            assert [s["customer_id"] for s in await large] == list("defg")
            assert calls == [("start", 4), ("start", 1), ("end", 1), ("end", 4)]
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_one_json_log_line_per_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="clvtier.serve"):
        r = client.get("/healthz", headers={"X-Request-ID": "log-me"})
    lines = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records if rec.getMessage() == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert r.status_code == 200
    assert {k: line[k] for k in ("request_id", "method", "path", "status")} == {
        "request_id": "log-me", "method": "GET", "path": "/healthz", "status": 200}
    assert line["duration_ms"] >= 0 and line["level"] == "info"
    assert line["pid"] == os.getpid()  # which server process answered, when there are several


def test_settings_from_env(tmp_path: Path) -> None:
    env = {"CLVTIER_MODEL": str(tmp_path), "CLVTIER_API_KEY": "k", "CLVTIER_MAX_CUSTOMERS": "5"}
    s = Settings.from_env(env)
    assert (s.model_dir, s.api_key, s.max_customers) == (tmp_path, "k", 5)
    assert "k" not in repr(s)
    assert Settings.from_env(env, {"api_key": "other", "max_customers": None}).api_key == "other"
    with pytest.raises(InputError, match="no model"):
        Settings.from_env({})
    with pytest.raises(InputError, match="max_customers"):
        Settings.from_env({**env, "CLVTIER_MAX_CUSTOMERS": "many"})


def test_serve_takes_the_model_from_clvtier_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clvtier.cli import app
    from clvtier.errors import EXIT_BAD_MODEL

    # Not a run directory: refused at start, after the option was read from the environment.
    res = CliRunner().invoke(app, ["serve"], env={"CLVTIER_MODEL": str(tmp_path)})
    assert res.exit_code == EXIT_BAD_MODEL, res.output
    assert f"{tmp_path} is not a clvtier model directory" in res.output
    assert "Missing option" in CliRunner().invoke(app, ["serve"], env={"CLVTIER_MODEL": ""}).output


def test_bad_model_fails_start_up(tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=tmp_path))
    with pytest.raises(ModelError), TestClient(app):
        pass
    assert isinstance(app.state.startup_error, ModelError)


def _unscorable_copy(run_dir: Path, target: Path) -> Path:
    """A copy of a run whose files are consistent but whose feature spec lacks a category the model needs."""
    import shutil

    from test_persist import reseal

    bad = Path(shutil.copytree(run_dir, target))
    reseal(bad, lambda m: m["feature_spec"]["categories"].pop())
    return bad


def test_a_model_that_cannot_score_fails_start_up(trained: tuple[Path, Path], tmp_path: Path) -> None:
    bad = _unscorable_copy(trained[1], tmp_path / "run")
    load(bad)  # its files pass the checks
    app = create_app(Settings(model_dir=bad))
    with pytest.raises(ModelError, match=r"the model cannot score the example request at start-up \(the data lack "
                                         r"1 feature\(s\) the model needs: \['share_"), TestClient(app):
        pass
    assert isinstance(app.state.startup_error, ModelError)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_clvtier_serve_refuses_a_model_that_cannot_score(trained: tuple[Path, Path], tmp_path: Path,
                                                         workers: str) -> None:
    import subprocess
    import sys

    from clvtier.errors import EXIT_BAD_MODEL
    from clvtier.serve.process import free_port

    bad = _unscorable_copy(trained[1], tmp_path / "run")
    cmd = [sys.executable, "-c", "from clvtier.cli import main; main()",
           "serve", "--model", str(bad), "--port", str(free_port()), "--workers", workers]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90,
                         env={k: v for k, v in os.environ.items() if not k.startswith("CLVTIER_")})
    assert res.returncode == EXIT_BAD_MODEL, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert "the model cannot score the example request at start-up" in res.stderr and "Fix:" in res.stderr


# -- OpenAPI ------------------------------------------------------------------------------------
def test_openapi_snapshot(client: TestClient) -> None:
    schema = client.app.openapi()
    schema["info"]["version"] = "SNAPSHOT"  # the package version may move without the API moving
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.is_file(), "no snapshot: run with UPDATE_SNAPSHOTS=1"
    assert json.loads(SNAPSHOT.read_text()) == json.loads(text), "OpenAPI changed: review, then UPDATE_SNAPSHOTS=1"


def test_openapi_documents_examples_and_errors(client: TestClient) -> None:
    schema = client.app.openapi()
    assert schema["components"]["schemas"]["ScoreRequest"]["examples"] == [EXAMPLE_REQUEST]
    responses = schema["paths"]["/v1/score"]["post"]["responses"]
    assert {"200", "401", "413", "422", "500"} <= set(responses)
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]


def test_serving_process_freezes_the_loaded_heap(trained: tuple[Path, Path]) -> None:
    import gc

    threshold = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    try:
        with TestClient(create_app(Settings(model_dir=trained[1]), freeze_gc=True)) as c:
            assert gc.get_freeze_count() > 10_000  # the model, pandas, scikit-learn, ...
            assert gc.get_threshold()[0] > threshold[0]
            assert post(c, [one()]).status_code == 200
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_embedded_application_leaves_the_collector_alone(client: TestClient) -> None:
    import gc

    from clvtier.serve.app import GC_THRESHOLD

    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] < GC_THRESHOLD


def test_request_tables_keep_every_record_and_no_more() -> None:
    from clvtier.serve.schemas import to_arrow
    from clvtier.serve.scoring import KNOWN_TABLE, request_tables

    customers: list[Any] = [
        {"customer_id": "a", "profile": {}, "transactions": [
            {"date": "2023-01-02", "amount": 5, "category": "  Toys "},
            {"date": "2023-01-03", "amount": -1.5, "category": " ", "id": "T9"}]},
        {"customer_id": "b", "profile": None, "engagement": {"site_visits": 3, "emails_opened": 2, "clicks": 1}},
        {"customer_id": "c", "profile": {"join_date": "2022-05-01", "age": 40, "gender": "F"},
         "transactions": [], "offers": [{"date": "2023-02-01", "response": "No", "promotion_type": "Discount"}]},
    ]
    t = {k: v.to_pydict() for k, v in request_tables(
        to_arrow(customers), ("transactions", "customers", "engagements", "marketing")).items()}
    assert t[KNOWN_TABLE] == {"customer_id": ["0", "1", "2"]}
    assert t["transactions"] == {
        "transaction_id": [None, "T9"], "customer_id": ["0", "0"],
        "transaction_date": [dt.date(2023, 1, 2), dt.date(2023, 1, 3)],
        "transaction_amount": [5.0, -1.5], "product_category": ["Toys", None]}
    assert t["customers"] == {
        "customer_id": ["0", "2"], "join_date": [None, dt.date(2022, 5, 1)], "last_purchase_date": [None, None],
        "age": [None, 40.0], "gender": [None, "F"], "location": [None, None]}
    assert t["engagements"] == {"customer_id": ["1"], "number_of_site_visits": [3.0],
                                "number_of_emails_opened": [2.0], "number_of_clicks": [1.0]}
    assert t["marketing"] == {"campaign_id": [None], "customer_id": ["2"], "response": ["No"],
                              "promotion_type": ["Discount"], "campaign_date": [dt.date(2023, 2, 1)]}
