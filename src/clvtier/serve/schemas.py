"""The request and response bodies of the scoring service (pydantic models, with OpenAPI examples).

A scoring request carries each customer's raw records in the shape of the data
contract (:mod:`clvtier.schema`): profile (customers), transactions, engagement
totals (engagements) and offers (marketing). Values are checked here, at the
boundary: dates in a sane range, finite amounts, bounded strings without control
characters, responses Yes/No.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MIN_DATE = dt.date(1900, 1, 1)
MAX_DATE = dt.date(2199, 12, 31)

Date = Annotated[dt.date, Field(ge=MIN_DATE, le=MAX_DATE)]
#: Free text: no control characters; blank means missing (as in the files).
Text = Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
#: Identifiers: no control characters, no surrounding whitespace.
Id = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$")
]
Count = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
Amount = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]

_STRICT = ConfigDict(extra="forbid")


class Profile(BaseModel):
    """The customer's row of the customers table; every field may be missing."""

    model_config = _STRICT

    join_date: Date | None = None
    age: Annotated[float, Field(ge=0, le=150, allow_inf_nan=False)] | None = None
    gender: Text | None = None
    location: Text | None = None


class Transaction(BaseModel):
    """One purchase (negative amounts are returns, netted into spend)."""

    model_config = _STRICT

    date: Date
    amount: Amount
    category: Text | None = None
    id: Id | None = None


class Engagement(BaseModel):
    """The customer's engagement totals (not dated)."""

    model_config = _STRICT

    site_visits: Count
    emails_opened: Count
    clicks: Count


class Offer(BaseModel):
    """One marketing offer and the customer's response."""

    model_config = _STRICT

    date: Date
    response: Literal["Yes", "No"]
    promotion_type: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$")]
    id: Id | None = None


class Customer(BaseModel):
    """One customer and all its raw records (events on or after ``as_of`` are ignored)."""

    model_config = _STRICT

    customer_id: Id
    profile: Profile | None = None
    transactions: list[Transaction] = Field(default_factory=list)
    engagement: Engagement | None = None
    offers: list[Offer] = Field(default_factory=list)


def _unique_ids(customers: list[Customer]) -> list[Customer]:
    seen: set[str] = set()
    for c in customers:
        if c.customer_id in seen:
            raise ValueError(f"customer_id {c.customer_id[:40]!r} appears more than once; send each customer once")
        seen.add(c.customer_id)
    return customers


EXAMPLE_REQUEST: dict[str, Any] = {
    "as_of": "2024-06-01",
    "customers": [
        {
            "customer_id": "C-1001",
            "profile": {"join_date": "2022-03-14", "age": 34, "gender": "Female", "location": "Lyon"},
            "transactions": [
                {"date": "2023-11-02", "amount": 120.5, "category": "Electronics", "id": "T-1"},
                {"date": "2024-02-17", "amount": 42.0, "category": "Clothing"},
            ],
            "engagement": {"site_visits": 31, "emails_opened": 12, "clicks": 5},
            "offers": [{"date": "2024-01-10", "response": "Yes", "promotion_type": "Discount"}],
        },
        {"customer_id": "C-1002", "profile": {"join_date": "2024-05-20"}},
    ],
}


class ScoreRequest(BaseModel):
    """Customers to score at a date: features use their events strictly before ``as_of``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    as_of: Date
    customers: Annotated[list[Customer], Field(min_length=1), AfterValidator(_unique_ids)] = Field(
        description="1 to max_customers (10,000 by default) customers, each customer_id once; "
        "more are answered with 413."
    )


class Probabilities(BaseModel):
    """P(tier) for each tier; they sum to 1."""

    Low: float
    Medium: float
    High: float


class Reason(BaseModel):
    """A feature (or feature group) behind the tier and how much it raised P(predicted tier)."""

    feature: str
    effect: float


class Score(BaseModel):
    customer_id: str
    tier: Literal["Low", "Medium", "High"]
    probabilities: Probabilities
    reasons: list[Reason] = Field(description="Top three reasons; empty when reasons=false.")


EXAMPLE_RESPONSE: dict[str, Any] = {
    "model": "hist_gb",
    "as_of": "2024-06-01",
    "scores": [
        {
            "customer_id": "C-1001",
            "tier": "High",
            "probabilities": {"Low": 0.05, "Medium": 0.25, "High": 0.7},
            "reasons": [
                {"feature": "purchase_history_rfm", "effect": 0.21},
                {"feature": "spend_365d", "effect": 0.08},
                {"feature": "eng_clicks", "effect": 0.02},
            ],
        },
        {
            "customer_id": "C-1002",
            "tier": "Low",
            "probabilities": {"Low": 0.81, "Medium": 0.15, "High": 0.04},
            "reasons": [
                {"feature": "purchase_history_rfm", "effect": 0.3},
                {"feature": "days_since_join", "effect": 0.05},
                {"feature": "age", "effect": 0.01},
            ],
        },
    ],
}


class ScoreResponse(BaseModel):
    """One score per customer, in request order."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_RESPONSE]})

    model: str = Field(description="The chosen candidate model.")
    as_of: dt.date
    scores: list[Score]


class ModelInfo(BaseModel):
    """What the served model is, how it was trained and how good it was on held-out data."""

    model_config = ConfigDict(protected_namespaces=())

    chosen_model: str
    mode: str
    target: str
    cutoff: str
    horizon_days: int
    created: str | None = None
    thresholds: dict[str, Any]
    headline: dict[str, Any] = Field(description="Headline test metrics.")
    feature_names: list[str]
    feature_spec: dict[str, list[str]]
    not_time_bounded: list[str]
    versions: dict[str, str]
    tiers: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    model: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error: what went wrong, and the request id to quote when reporting it."""

    detail: str | list[ValidationIssue]
    fix: str | None = None
    request_id: str
