"""The request and response bodies of the scoring service (pydantic types, with OpenAPI examples).

A scoring request carries each customer's raw records in the shape of the data
contract (:mod:`clvtier.schema`): profile (customers), transactions, engagement
totals (engagements) and offers (marketing). Values are checked here, at the
boundary: dates in a sane range, finite amounts, bounded strings without control
characters, responses Yes/No.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs this one below Python 3.12

MIN_DATE = dt.date(1900, 1, 1)
MAX_DATE = dt.date(2199, 12, 31)

#: YYYY-MM-DD from 1900 to 2199; the pattern is in the schema too, for clients and fuzzers.
DATE_PATTERN = r"^(19\d{2}|2[01]\d{2})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
_DATE_RE = re.compile(DATE_PATTERN)


#: What a value that breaks a pattern should look like, in the words of the API's docs.
PATTERN_MESSAGES = {
    DATE_PATTERN: "dates are written YYYY-MM-DD, from 1900-01-01 to 2199-12-31",
}


def error_message(error: Mapping[str, Any]) -> str:
    """pydantic's message for one problem; a broken pattern is said in words, not as the regex."""
    ctx = error.get("ctx")
    pattern = ctx.get("pattern") if isinstance(ctx, Mapping) else None
    if error.get("type") == "string_pattern_mismatch" and pattern in PATTERN_MESSAGES:
        return PATTERN_MESSAGES[str(pattern)]
    message = str(error.get("msg", "invalid"))
    # The service's own checks raise ValueError; pydantic prefixes their text with "Value error, ".
    return message.removeprefix("Value error, ") if error.get("type") == "value_error" else message


def _iso_date(value: object) -> object:
    """Only YYYY-MM-DD text is a date: pydantic alone also reads "0" or "1700000000" as timestamps."""
    if isinstance(value, str):
        if not _DATE_RE.match(value):
            raise ValueError(PATTERN_MESSAGES[DATE_PATTERN])
        try:
            return dt.date.fromisoformat(value)
        except ValueError:  # 2023-02-30
            raise ValueError(f"{value} is not a day of the calendar") from None
    return value


#: Strict: from JSON, only a YYYY-MM-DD string (not a number, not a timestamp) is a date.
Date = Annotated[
    dt.date, Field(strict=True, ge=MIN_DATE, le=MAX_DATE), BeforeValidator(_iso_date),
    WithJsonSchema({"type": "string", "format": "date", "pattern": DATE_PATTERN}),
]
#: The default limits (``Settings``); beyond them the service answers 413, not 422.
MAX_CUSTOMERS = 10_000
MAX_RECORDS = 5_000
# Patterns avoid ``\s``, whose meaning differs between regex engines: JSON Schema's, Rust's
# (pydantic-core), RE2's (Arrow) and Python's.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
ID_PATTERN = r"^[^ \x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^ \x00-\x1f\x7f])?$"
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^ \x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
TEXT_MAX, ID_MAX = 200, 128
AGE_MAX, AMOUNT_MAX, COUNT_MAX = 150, 1e9, 1_000_000_000
#: Free text: no control characters; blank means missing (as in the files).
Text = Annotated[str, Field(max_length=TEXT_MAX, pattern=TEXT_PATTERN)]
#: Identifiers: no control characters, no surrounding blanks.
Id = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
PATTERN_MESSAGES.update({
    TEXT_PATTERN: "text has no control characters (tabs, line breaks and the like)",
    ID_PATTERN: "ids have no control characters and no blank at the start or end",
    NAME_PATTERN: "must hold a character other than a blank, and no control characters",
})


def _whole_number(value: object) -> object:
    """JSON's 3.0 is the integer 3 (JSON Schema agrees); 3.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Numbers are JSON numbers (strict: no strings, no booleans), finite and bounded.
Count = Annotated[int, Field(strict=True, ge=0, le=COUNT_MAX), BeforeValidator(_whole_number)]
Amount = Annotated[float, Field(strict=True, ge=-AMOUNT_MAX, le=AMOUNT_MAX, allow_inf_nan=False)]

_STRICT = ConfigDict(extra="forbid")

#: A record's date as it travels: YYYY-MM-DD text from 1900 to 2199, checked against the
#: pattern by pydantic-core. :func:`parse_score_request` then checks that each is a day of
#: the calendar (not 2023-02-30) in one Arrow cast per request, and reports those that are
#: not with the other problems. The records themselves are plain dicts (``TypedDict``): a
#: request of 1,000 customers holds tens of thousands of them, and model instances and a
#: Python validator per date cost several times the JSON parsing.
DateText = Annotated[str, Field(strict=True, pattern=DATE_PATTERN), WithJsonSchema(
    {"type": "string", "format": "date", "pattern": DATE_PATTERN})]


@with_config(_STRICT)
class Profile(TypedDict, total=False):
    """The customer's row of the customers table; every field may be missing."""

    join_date: DateText | None
    age: Annotated[float, Field(strict=True, ge=0, le=AGE_MAX, allow_inf_nan=False)] | None
    gender: Text | None
    location: Text | None


@with_config(_STRICT)
class Transaction(TypedDict):
    """One purchase (negative amounts are returns, netted into spend)."""

    date: DateText
    amount: Amount
    category: NotRequired[Text | None]
    id: NotRequired[Id | None]


@with_config(_STRICT)
class Engagement(TypedDict):
    """The customer's engagement totals (not dated)."""

    site_visits: Count
    emails_opened: Count
    clicks: Count


@with_config(_STRICT)
class Offer(TypedDict):
    """One marketing offer and the customer's response."""

    date: DateText
    response: Literal["Yes", "No"]
    promotion_type: Annotated[str, Field(min_length=1, max_length=TEXT_MAX, pattern=NAME_PATTERN)]
    id: NotRequired[Id | None]


@with_config(_STRICT)
class Customer(TypedDict):
    """One customer and all its raw records (events on or after ``as_of`` are ignored)."""

    customer_id: Id
    profile: NotRequired[Profile | None]
    transactions: NotRequired[Annotated[
        Annotated[list[Transaction], Field(json_schema_extra={"maxItems": MAX_RECORDS})] | None,
        Field(description="Transactions and offers together: at most max_records_per_customer (5,000 by "
                          "default). Missing or null: none."),
    ]]
    engagement: NotRequired[Engagement | None]
    offers: NotRequired[Annotated[
        Annotated[list[Offer], Field(json_schema_extra={"maxItems": MAX_RECORDS})] | None,
        Field(description="Missing or null: none."),
    ]]


#: A customer as Arrow stores it, field for field as :class:`Customer` (a test keeps the two alike).
#: Dates stay YYYY-MM-DD text here; engagement counts are whole numbers.
CUSTOMER_TYPE = pa.struct([
    ("customer_id", pa.string()),
    ("profile", pa.struct([("join_date", pa.string()), ("age", pa.float64()), ("gender", pa.string()),
                           ("location", pa.string())])),
    ("transactions", pa.list_(pa.struct([("date", pa.string()), ("amount", pa.float64()),
                                         ("category", pa.string()), ("id", pa.string())]))),
    ("engagement", pa.struct([("site_visits", pa.int64()), ("emails_opened", pa.int64()),
                              ("clicks", pa.int64())])),
    ("offers", pa.list_(pa.struct([("date", pa.string()), ("response", pa.string()),
                                   ("promotion_type", pa.string()), ("id", pa.string())]))),
])


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
    """Customers to score at a date: features use their events strictly before ``as_of``.

    Validate request bodies with :func:`parse_score_request` (from JSON bytes): dates
    are strict, so a Python dict with date strings does not validate.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    as_of: Date
    customers: list[Customer] = Field(
        min_length=1, json_schema_extra={"maxItems": MAX_CUSTOMERS},
        description="1 to max_customers (10,000 by default) customers, answered in this order; more are "
        "answered with 413. Each entry is scored from its own records, even when an id repeats.",
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


@dataclass(frozen=True)
class ScoreBatch:
    """A validated scoring request: its date and its customers as one Arrow array.

    ``customers`` has the type :data:`CUSTOMER_TYPE`, one element per customer in
    request order; :func:`to_arrow` builds it from :class:`Customer` dicts.
    """

    as_of: dt.date
    customers: pa.StructArray

    def __len__(self) -> int:
        return len(self.customers)


def to_arrow(customers: Sequence[Customer]) -> pa.StructArray:
    """Checked customer dicts as one Arrow array of :data:`CUSTOMER_TYPE` (converted by Arrow, not in Python)."""
    return pa.array(customers, CUSTOMER_TYPE)


#: Bodies from this size (bytes; about 100 customers) are read by Arrow first.
COLUMNAR_FROM = 128 * 1024


def parse_score_request(raw: bytes) -> ScoreBatch:
    """Parse and validate a request body, then check its dates.

    Arrow's JSON reader parses a large body straight into columns, without a Python
    object per record, and vectorised checks hold it to the rules of :class:`ScoreRequest`
    (:func:`columnar`). A body that any of them rejects is parsed again by pydantic-core,
    which decides and names every problem: the quick path only ever accepts bodies that
    pydantic accepts, with the same values (tested). Small bodies go to pydantic at once:
    the checks cost about a millisecond, whatever the size.

    Raises
    ------
    RequestValidationError
        Listing every problem with its path from ``body``, as FastAPI reports them.
    """
    from fastapi.exceptions import RequestValidationError
    from pydantic_core import from_json

    quick = columnar(raw) if len(raw) >= COLUMNAR_FROM else None
    if quick is not None:
        return quick
    try:
        request = ScoreRequest.model_validate_json(raw)
    except ValidationError as exc:
        problems = [
            {"loc": ("body", *e["loc"]), "msg": error_message(e), "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        try:  # impossible days too, so that one answer lists every problem
            customers = from_json(raw).get("customers")
        except (ValueError, AttributeError):
            customers = None
        raise RequestValidationError(problems + _date_problems(_impossible(_dated(customers)))) from None
    batch = ScoreBatch(request.as_of, to_arrow(request.customers))
    if _valid_days(batch.customers):
        return batch
    raise RequestValidationError(_date_problems(_impossible(_dated(request.customers))))


def record_rows(customers: pa.StructArray, field: str, many: bool) -> tuple[pa.StructArray, pa.Array]:
    """The records in ``field`` of every customer, and each record's customer position.

    ``many``: the field holds a list of records (transactions, offers), else one record
    or none (profile, engagement).
    """
    values = customers.field(field)
    if many:
        return values.flatten(), pc.list_parent_indices(values)
    return values.drop_null(), pc.indices_nonzero(values.is_valid())


#: Where the record dates are: the field, whether it holds a list of records, the date's key.
_DATES = (("transactions", True, "date"), ("offers", True, "date"), ("profile", False, "join_date"))


def _valid_days(customers: pa.StructArray) -> bool:
    """Whether every record date (checked YYYY-MM-DD text) is a day of the calendar (one Arrow cast each)."""
    try:
        for field, many, key in _DATES:
            record_rows(customers, field, many)[0].field(key).cast(pa.date32())
    except pa.ArrowInvalid:
        return False
    return True


_PARSE_OPTIONS = pj.ParseOptions(
    explicit_schema=pa.schema([("as_of", pa.string()), ("customers", pa.list_(CUSTOMER_TYPE))]),
    unexpected_field_behavior="error", newlines_in_values=True)
_RESPONSES = pa.array(["Yes", "No"])
#: The body must open a JSON object: this also turns away a byte order mark, which Arrow skips
#: and pydantic refuses.
_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")


def columnar(raw: bytes) -> ScoreBatch | None:
    """The request, if Arrow's JSON reader and the checks below accept it; else ``None``.

    Each check is at least as strict as its pydantic rule: no missing required field
    (Arrow reads a missing field as null), no null record, every text within its length
    and pattern (RE2's ``\\d`` is ASCII-only, stricter than Rust's), every number finite and
    within its bounds, whole-number counts (JSON ``3.0`` is left to pydantic), dates that
    are days of the calendar. Arrow refuses a repeated key, an unexpected field and a value
    of the wrong JSON type itself.
    """
    if not _OBJECT_START.match(raw):  # a body of only ``null`` crashes Arrow's reader (apache/arrow#47409)
        return None
    try:
        table = pj.read_json(pa.py_buffer(raw), parse_options=_PARSE_OPTIONS,
                             read_options=pj.ReadOptions(use_threads=False, block_size=max(len(raw) + 1, 1 << 16)))
        if table.num_rows != 1:  # several JSON values, or none
            return None
        as_of, lists = table.column("as_of").combine_chunks(), table.column("customers").combine_chunks()
        if lists.null_count or not _dates_ok(as_of, required=True):
            return None
        customers = lists.flatten()
        customers.validate(full=True)  # offsets and lengths agree: nothing below reads out of bounds
        if not len(customers) or customers.null_count or not (_customers_ok(customers) and _valid_days(customers)):
            return None
        day = as_of.cast(pa.date32())[0].as_py()  # raises ArrowInvalid for a day not in the calendar
    except (pa.ArrowException, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return ScoreBatch(day, customers)


def _customers_ok(customers: pa.StructArray) -> bool:
    if not _text_ok(customers.field("customer_id"), ID_PATTERN, 1, ID_MAX, required=True):
        return False
    profile = customers.field("profile").drop_null()
    if not (_dates_ok(profile.field("join_date"), required=False)
            and _numbers_ok(profile.field("age"), 0, AGE_MAX, required=False)
            and all(_text_ok(profile.field(k), TEXT_PATTERN, 0, TEXT_MAX, required=False)
                    for k in ("gender", "location"))):
        return False
    engagement = customers.field("engagement").drop_null()
    if not all(_numbers_ok(engagement.field(k), 0, COUNT_MAX, required=True)
               for k in ("site_visits", "emails_opened", "clicks")):
        return False
    transactions = customers.field("transactions").flatten()
    if transactions.null_count or not (
            _dates_ok(transactions.field("date"), required=True)
            and _numbers_ok(transactions.field("amount"), -AMOUNT_MAX, AMOUNT_MAX, required=True)
            and _text_ok(transactions.field("category"), TEXT_PATTERN, 0, TEXT_MAX, required=False)
            and _text_ok(transactions.field("id"), ID_PATTERN, 1, ID_MAX, required=False)):
        return False
    offers = customers.field("offers").flatten()
    return not offers.null_count and (
        _dates_ok(offers.field("date"), required=True)
        and _all(pc.is_in(offers.field("response"), _RESPONSES))
        and _text_ok(offers.field("promotion_type"), NAME_PATTERN, 1, TEXT_MAX, required=True)
        and _text_ok(offers.field("id"), ID_PATTERN, 1, ID_MAX, required=False))


def _all(mask: pa.Array) -> bool:
    """True when every element is true (a null counts as false)."""
    return mask.null_count == 0 and pc.all(mask).as_py() is not False


def _text_ok(values: pa.Array, pattern: str, min_length: int = 0, max_length: int | None = None, *,
             required: bool) -> bool:
    if required and values.null_count:
        return False
    present = values.drop_null()
    if min_length or max_length is not None:
        length = pc.utf8_length(present)
        if not (_all(pc.greater_equal(length, min_length))
                and (max_length is None or _all(pc.less_equal(length, max_length)))):
            return False
    return _all(pc.match_substring_regex(present, pattern))


def _numbers_ok(values: pa.Array, low: float, high: float, *, required: bool) -> bool:
    if required and values.null_count:
        return False
    present = values.drop_null()
    if pa.types.is_floating(present.type) and not _all(pc.is_finite(present)):
        return False
    return _all(pc.greater_equal(present, low)) and _all(pc.less_equal(present, high))


def _dates_ok(values: pa.Array, *, required: bool) -> bool:
    """YYYY-MM-DD text from 1900 to 2199 (whether it is a day of the calendar: :func:`_valid_days`)."""
    return _text_ok(values, DATE_PATTERN, required=required)  # the pattern fixes the length


def _dated(customers: Any) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) of every record date, from validated customers or the raw JSON of any shape."""
    if not isinstance(customers, list):
        return
    for i, c in enumerate(customers):
        if not isinstance(c, dict):
            continue
        if isinstance(profile := c.get("profile"), dict):
            yield (i, "profile", "join_date"), profile.get("join_date")
        for kind in ("transactions", "offers"):
            if isinstance(records := c.get(kind), list):
                for j, record in enumerate(records):
                    if isinstance(record, dict):
                        yield (i, kind, j, "date"), record.get("date")


def _impossible(dated: Iterable[tuple[tuple[Any, ...], Any]]) -> list[tuple[tuple[Any, ...], str]]:
    """The dates written YYYY-MM-DD (1900-2199) that are no day of the calendar, such as 2023-02-30."""
    bad = []
    for loc, value in dated:
        if isinstance(value, str) and _DATE_RE.match(value):
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                bad.append((loc, value))
    return bad


def _date_problems(bad: list[tuple[tuple[Any, ...], str]]) -> list[dict[str, Any]]:
    return [{"loc": ("body", "customers", *loc), "msg": f"{value} is not a day of the calendar",
             "type": "value_error"} for loc, value in bad]
