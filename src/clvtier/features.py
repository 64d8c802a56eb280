"""Features: one row per customer known at a cutoff date, from events strictly before it.

The definition is written once as an Ibis expression over the contract tables and
a cutoff *parameter*, so the same expression runs on DuckDB (the default) and on
PySpark, and training and scoring differ only in the cutoff they bind.

Time units are days. Customers without activity get zeros, never NaN; only
profile fields that are genuinely unknown (age, gender, location) stay missing
for the model to impute.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd

from clvtier.errors import InputError

#: Spend windows (days before the cutoff).
SPEND_WINDOWS = (30, 90, 180, 365)
_MAX_LEVELS = 12

#: Amounts are summed as this decimal type, exactly, and only the sums become floats: a
#: float sum depends on the order the engine's threads add their partial sums in, and its
#: last bit differed between two runs on the same data, enough to change a fitted model
#: now and then. Amounts keep four decimals (a hundredth of a cent) and stay below 1e14
#: in absolute value (validation refuses larger ones).
MONEY = "decimal(18, 4)"
#: Amounts at or beyond this, in absolute value, do not fit :data:`MONEY` (18 digits, 4 of them decimals).
AMOUNT_LIMIT = 1e14


def money_sum(amount: ir.NumericColumn, where: ir.BooleanValue | None = None) -> ir.FloatingScalar:
    """The exact sum of amounts (see :data:`MONEY`) as a float; null when no row counts."""
    return amount.cast(MONEY).sum(where=where).cast("float64")


#: The BTYD purchase summary; these columns are only meaningful together (recency <= T).
BTYD_GROUP = ("btyd_frequency", "btyd_recency", "btyd_T", "btyd_monetary")


@dataclass(frozen=True)
class FeatureSpec:
    """What the feature definition depends on besides the cutoff.

    It is learned from the training data and saved with the model, so that
    scoring builds exactly the same columns.

    Attributes
    ----------
    categories : tuple of str
        Product categories that get their own spend-share column.
    promotion_types : tuple of str
        Promotion types that get their own response-count column.
    tables : tuple of str
        The optional tables (customers, engagements, marketing) the features use.
    """

    categories: tuple[str, ...] = ()
    promotion_types: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(**{k: tuple(v) for k, v in data.items()})


class _Described:
    """What a set of features is (cutoff, spec, columns), for :class:`FeatureSet` and :class:`FeatureFile`."""

    cutoff: dt.date
    spec: FeatureSpec
    columns: dict[str, dict[str, Any]]

    @property
    def n_customers(self) -> int:
        raise NotImplementedError

    @property
    def undated(self) -> list[str]:
        """Features computed from data that carry no dates (they may leak the future)."""
        return [c for c, m in self.columns.items() if not m["time_bounded"]]

    @property
    def categorical(self) -> list[str]:
        return [c for c, m in self.columns.items() if m["kind"] == "categorical"]

    @property
    def numeric(self) -> list[str]:
        return [c for c, m in self.columns.items() if m["kind"] == "numeric"]

    def metadata(self) -> dict[str, Any]:
        """The ``.meta.json`` sidecar written next to a features file."""
        return {
            "cutoff": self.cutoff.isoformat(),
            "spec": self.spec.to_dict(),
            "columns": self.columns,
            "not_time_bounded": self.undated,
            "n_customers": self.n_customers,
        }


@dataclass
class FeatureSet(_Described):
    """Features of every customer known at ``cutoff``.

    Attributes
    ----------
    frame : DataFrame
        ``customer_id`` (str) and one column per feature, sorted by customer_id.
    cutoff : date
        Events on or after this date were not used.
    spec : FeatureSpec
    columns : dict
        Feature name -> {"kind": "numeric" | "categorical", "time_bounded": bool}.
    """

    frame: pd.DataFrame
    cutoff: dt.date
    spec: FeatureSpec
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_customers(self) -> int:
        return len(self.frame)


def slug(value: str) -> str:
    """Column-name-safe lower-case form of a category value."""
    s = re.sub(r"[^0-9a-z]+", "_", str(value).strip().lower()).strip("_")
    return s or "blank"


def learn_spec(tables: Mapping[str, ir.Table], con: Any) -> FeatureSpec:
    """Learn the category and promotion levels from the data (most frequent first)."""
    categories: tuple[str, ...] = ()
    tx = tables["transactions"]
    if "product_category" in tx.columns:
        top = tx.filter(tx.product_category.notnull()).product_category.value_counts()
        top = top.order_by([ibis.desc(top.columns[1]), top.columns[0]]).limit(_MAX_LEVELS)
        categories = tuple(str(x) for x in con.execute(top).iloc[:, 0])
    promotions: tuple[str, ...] = ()
    if "marketing" in tables:
        mk = tables["marketing"]
        top = mk.filter(mk.promotion_type.notnull()).promotion_type.value_counts()
        top = top.order_by([ibis.desc(top.columns[1]), top.columns[0]]).limit(_MAX_LEVELS)
        promotions = tuple(str(x) for x in con.execute(top).iloc[:, 0])
    optional = tuple(t for t in ("customers", "engagements", "marketing") if t in tables)
    return FeatureSpec(categories, promotions, optional)


def feature_expr(tables: Mapping[str, ir.Table], spec: FeatureSpec,
                 known: ir.Table | None = None,
                 restrict_to: ir.Table | None = None) -> tuple[ir.Table, ir.Scalar]:
    """The feature definition as an Ibis expression with a cutoff parameter.

    Parameters
    ----------
    tables : mapping
        Typed contract tables (``transactions`` required).
    spec : FeatureSpec
    known : Table, optional
        ``customer_id`` of exactly the customers to give a row to, one each, whether or
        not they have events before the cutoff (the HTTP service scores every customer
        of a request, and every record of the request belongs to one of them).
    restrict_to : Table, optional
        ``customer_id`` of the only customers wanted (a training sample): every input
        table is semi-joined to it before aggregation, so the engine reads only their
        events and each of them gets exactly the row the full definition gives.

    Returns
    -------
    (expr, cutoff)
        The expression and the date parameter to bind when executing it.
    """
    missing = [t for t in spec.tables if t not in tables]
    if missing:
        raise InputError(
            f"the features need the table(s) {missing}, which the data lack.",
            "Score with the same tables the model was trained on.",
        )
    if restrict_to is not None:
        # Every feature is a function of one customer's rows, so restricting the inputs
        # restricts the output and nothing else.
        wanted = restrict_to.select("customer_id")
        tables = {name: t.semi_join(wanted, "customer_id") for name, t in tables.items()}
    cutoff = ibis.param("date")
    tx = tables["transactions"]
    tx = tx.filter(tx.transaction_date < cutoff)
    parts = [_transaction_features(tx, spec, cutoff)]
    if "customers" in spec.tables:
        parts.append(_profile_features(tables["customers"]))
    if "engagements" in spec.tables:
        parts.append(_engagement_features(tables["engagements"]))
    if "marketing" in spec.tables:
        parts.append(_marketing_features(tables["marketing"], spec, cutoff))
    if known is not None:
        base = known.select("customer_id")
    elif "customers" in spec.tables:
        base = _known_customers(tables, spec, tx, cutoff)
    else:  # every customer known at the cutoff has bought before it
        base, parts = parts[0], parts[1:]
    # One chain of joins on the base's customer and one projection: engines bind and
    # plan it in one step (a select after each join nests a subquery per table).
    joined = base
    for part in parts:
        joined = joined.left_join(part, base.customer_id == part.customer_id)
    columns = feature_columns(spec)
    values: dict[str, ir.Value] = {}
    for c, meta in columns.items():
        if c == "days_since_join":
            # A join date on or after the cutoff is not known yet: fall back to the first purchase.
            known_join = ibis.ifelse(joined.join_date < cutoff, joined.join_date, joined.first_purchase_day)
            value = ibis.ifelse(known_join.isnull(), 0, cutoff.delta(known_join, unit="day"))
        else:
            value = joined[c]
        if meta["kind"] == "numeric" and c != "age":
            value = value.fill_null(0)
        values[c] = value.cast(_dtype(meta))
    expr = joined.select(customer_id=base.customer_id, **values)
    return expr.order_by("customer_id"), cutoff


def spend_summary_expr(tables: Mapping[str, ir.Table], spec: FeatureSpec) -> tuple[ir.Table, ir.Scalar]:
    """``customer_id``, ``n_transactions``, ``total_spend`` and ``btyd_recency`` at a cutoff parameter.

    The same rows and values as those columns of :func:`feature_expr`, without the
    window functions that make the full definition costly: enough to compute every
    known customer's CLV value (:func:`clvtier.clv.values_for`) before drawing a
    training sample.
    """
    cutoff = ibis.param("date")
    tx = tables["transactions"]
    tx = tx.filter(tx.transaction_date < cutoff)
    day = tx.transaction_date
    g = tx.group_by("customer_id").aggregate(
        n_transactions=tx.count().cast("float64"),
        total_spend=money_sum(tx.transaction_amount),
        btyd_recency=day.max().delta(day.min(), unit="day").cast("float64"),
    )
    if "customers" in spec.tables:
        g = _join(_known_customers(tables, spec, tx, cutoff), g)
    cols = ("n_transactions", "total_spend", "btyd_recency")
    expr = g.select("customer_id", **{c: g[c].fill_null(0).cast("float64") for c in cols})
    return expr.order_by("customer_id"), cutoff


def feature_columns(spec: FeatureSpec) -> dict[str, dict[str, Any]]:
    """Every feature the definition produces for ``spec``, with its kind and time-boundedness."""
    num = {"kind": "numeric", "time_bounded": True}
    cols: dict[str, dict[str, Any]] = {}
    for name in (
        "n_transactions", "total_spend", "mean_spend", "max_spend", "first_purchase_value",
        "btyd_frequency", "btyd_recency", "btyd_T", "btyd_monetary",
        *(f"spend_{w}d" for w in SPEND_WINDOWS), "spend_trend",
        "ipt_mean", "ipt_std", "days_since_last_purchase", "n_categories",
        *(f"share_{slug(c)}" for c in spec.categories),
    ):
        cols[name] = dict(num)
    if "customers" in spec.tables:
        cols["age"] = {"kind": "numeric", "time_bounded": False}
        cols["gender"] = {"kind": "categorical", "time_bounded": True}
        cols["location"] = {"kind": "categorical", "time_bounded": True}
        cols["days_since_join"] = dict(num)
    if "engagements" in spec.tables:
        for name in ("eng_site_visits", "eng_emails_opened", "eng_clicks",
                     "eng_clicks_per_email", "eng_clicks_per_visit"):
            cols[name] = {"kind": "numeric", "time_bounded": False}
    if "marketing" in spec.tables:
        for name in ("offers_received", "offers_responded", "response_rate",
                     *(f"responded_{slug(p)}" for p in spec.promotion_types)):
            cols[name] = dict(num)
    return cols


def _dtype(meta: Mapping[str, Any]) -> str:
    return "float64" if meta["kind"] == "numeric" else "string"


def _join(left: ir.Table, right: ir.Table) -> ir.Table:
    return left.left_join(right, "customer_id").drop("customer_id_right")


def _known_customers(tables: Mapping[str, ir.Table], spec: FeatureSpec, tx: ir.Table,
                     cutoff: ir.Scalar) -> ir.Table:
    ids = tx.select("customer_id").distinct()
    if "customers" in spec.tables:
        cust = tables["customers"]
        joined = cust.filter(cust.join_date < cutoff).select("customer_id")
        ids = ids.union(joined, distinct=True)
    return ids


def _transaction_features(tx: ir.Table, spec: FeatureSpec, cutoff: ir.Scalar) -> ir.Table:
    amount = tx.transaction_amount
    day = tx.transaction_date
    # Same-day purchases are one purchase day (the BTYD convention). In day order, the gap
    # to the previous transaction is 0 within a day and the gap between purchase days at a
    # day's first transaction, so day-level statistics need no per-day table (grouping by
    # customer and day cost more than everything else together).
    w = ibis.window(group_by=tx.customer_id, order_by=day)
    tx = tx.mutate(
        gap=day.delta(day.lag().over(w), unit="day").cast("float64"),
        first_day=day.min().over(w),
        ago=cutoff.delta(day, unit="day"),
    )
    new_day = tx.gap > 0
    aggs: dict[str, ir.Value] = {
        "n_transactions": tx.count().cast("float64"),
        "total_spend": money_sum(amount),
        "max_spend": amount.max(),
        "n_days": tx.count(where=new_day) + 1,
        "first_purchase_day": day.min(),
        "last_day": day.max(),
        "first_purchase_value": money_sum(amount, where=day == tx.first_day),
        "gap_squares": (tx.gap * tx.gap).sum(where=new_day),
        "spend_prev_180d": money_sum(amount, where=(tx.ago > 180) & (tx.ago <= 360)),
    }
    for w_days in SPEND_WINDOWS:
        aggs[f"spend_{w_days}d"] = money_sum(amount, where=tx.ago <= w_days)
    # The category mix is over purchases (positive amounts): returns lower the total spend
    # but not a category's share, so shares stay within [0, 1] even when a customer's net
    # spend cancels out to (almost) nothing.
    bought = amount > 0
    aggs["purchases"] = money_sum(amount, where=bought)
    for c in spec.categories:
        s = slug(c)
        aggs[f"amt_{s}"] = money_sum(amount, where=bought & (tx.product_category == c))
    other = ~tx.product_category.isin(list(spec.categories)) & tx.product_category.notnull()
    aggs["n__other"] = (bought & (other if spec.categories else tx.product_category.notnull())).sum()
    g = tx.group_by("customer_id").aggregate(**aggs)
    freq = g.n_days - 1
    total = g.total_spend
    first_value = g.first_purchase_value.fill_null(0)
    n_categories = (g["n__other"] > 0).cast("int64")
    for c in spec.categories:
        # A category's purchases are null exactly when the customer has bought none of it.
        n_categories = n_categories + g[f"amt_{slug(c)}"].notnull().cast("int64")
    # The gaps between purchase days sum to the span from the first to the last one, so
    # their mean and spread need only the sum of their squares. All three are whole days,
    # and n * sum(g^2) - (sum g)^2 is computed exactly: the spread is exact, where a
    # running variance aggregate (also far costlier per row) rounds.
    span = g.last_day.delta(g.first_purchase_day, unit="day").cast("float64")
    n_gaps = freq.cast("float64")
    spread = ibis.greatest(n_gaps * g.gap_squares - span * span, 0.0).sqrt() / n_gaps
    derived: dict[str, ir.Value] = {
        "ipt_mean": ibis.ifelse(freq > 0, span / n_gaps, ibis.null("float64")),
        "ipt_std": ibis.ifelse(freq > 0, spread, ibis.null("float64")),
        "mean_spend": total / g.n_transactions,
        "btyd_frequency": n_gaps,
        "btyd_recency": span,
        "btyd_T": cutoff.delta(g.first_purchase_day, unit="day").cast("float64"),
        "btyd_monetary": ibis.ifelse(freq > 0, (total - first_value) / n_gaps, 0.0),
        "spend_trend": g.spend_180d.fill_null(0) - g.spend_prev_180d.fill_null(0),
        "days_since_last_purchase": cutoff.delta(g.last_day, unit="day").cast("float64"),
        "n_categories": n_categories.cast("float64"),
    }
    for c in spec.categories:
        s = slug(c)
        derived[f"share_{s}"] = ibis.ifelse(g.purchases > 0, g[f"amt_{s}"].fill_null(0) / g.purchases, 0.0)
    keep = ["customer_id", "n_transactions", "total_spend", "max_spend", "first_purchase_value",
            "first_purchase_day", *(f"spend_{w}d" for w in SPEND_WINDOWS)]
    return g.select(*keep, **derived)


def _profile_features(customers: ir.Table) -> ir.Table:
    return customers.select("customer_id", "age", "gender", "location", "join_date")


def _engagement_features(eng: ir.Table) -> ir.Table:
    visits = eng.number_of_site_visits
    emails = eng.number_of_emails_opened
    clicks = eng.number_of_clicks
    return eng.select(
        "customer_id",
        eng_site_visits=visits,
        eng_emails_opened=emails,
        eng_clicks=clicks,
        eng_clicks_per_email=ibis.ifelse(emails > 0, clicks / emails, 0.0),
        eng_clicks_per_visit=ibis.ifelse(visits > 0, clicks / visits, 0.0),
    )


def _marketing_features(mk: ir.Table, spec: FeatureSpec, cutoff: ir.Scalar) -> ir.Table:
    mk = mk.filter(mk.campaign_date < cutoff)
    yes = mk.response == "Yes"
    aggs: dict[str, ir.Value] = {
        "offers_received": mk.count().cast("float64"),
        "offers_responded": yes.sum().cast("float64"),
    }
    for p in spec.promotion_types:
        aggs[f"responded_{slug(p)}"] = (yes & (mk.promotion_type == p)).sum().cast("float64")
    g = mk.group_by("customer_id").aggregate(**aggs)
    return g.mutate(
        response_rate=ibis.ifelse(g.offers_received > 0, g.offers_responded / g.offers_received, 0.0)
    )


def as_date(value: dt.date | str) -> dt.date:
    """A date from a ``datetime.date`` (a datetime's date) or 'YYYY-MM-DD' text; InputError otherwise."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"'{value}' is not a date.", "Write dates as YYYY-MM-DD.") from None


def require_dataset(data: Any) -> None:
    """Refuse anything but validated data (a path, say, passed where the loaded data belong)."""
    if not (hasattr(data, "tables") and hasattr(data, "con")):
        raise InputError(f"expected validated data, got {type(data).__name__}.",
                         "Load the data first: data = clvtier.load('data/').")


def _checked_cutoff(data: Any, cutoff: dt.date | str) -> dt.date:
    """The cutoff as a date; refused when it would read events dated after the data's as-of date."""
    require_dataset(data)
    cutoff = as_date(cutoff)
    check_known(cutoff, getattr(data, "as_of", None))
    return cutoff


def check_known(cutoff: dt.date, as_of: dt.date | None) -> None:
    """Refuse a cutoff after the day after ``as_of``: the data cannot show the events before it."""
    if as_of is not None and cutoff > as_of + dt.timedelta(days=1):
        raise InputError(
            f"the cutoff {cutoff} is more than a day after the data's as-of date {as_of}: the features "
            "would read events dated after it, which are kept but never used.",
            f"Choose a cutoff on or before {as_of + dt.timedelta(days=1)} (the day after the as-of date: "
            "features use the events before the cutoff). The data's as-of date is the date they were "
            "exported: --as-of of validate, features and train, today by default.",
        )


#: Transactions per pass of the feature query: beyond it, the customers are split into
#: consecutive ranges of their ids, built one range at a time, so the engine's working set
#: (the per-customer window over the transactions) stays within its memory limit.
PASS_ROWS = 12_000_000


def id_ranges(data: Any, passes: int) -> list[tuple[str | None, str | None]]:
    """``passes`` consecutive ranges [lo, hi) of customer ids, cut at quantiles of a sample of them."""
    if passes <= 1:
        return [(None, None)]
    tx = data.tables["transactions"]
    ids = tx.select("customer_id").sample(min(1.0, 200_000 / max(1, transaction_rows(data))), seed=0)
    sample = sorted(set(data.con.execute(ids)["customer_id"].dropna().astype(str)))
    cuts = sorted({sample[len(sample) * k // passes] for k in range(1, passes)} - {sample[0]}) if sample else []
    bounds: list[str | None] = [None, *cuts, None]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def transaction_rows(data: Any) -> int:
    """Transactions in ``data``, as validation counted them (0 when unknown)."""
    return int(data.summary.get("transactions", {}).get("rows") or 0)


def pass_count(rows: float) -> int:
    """Passes for a feature build that reads about ``rows`` transactions: one per :data:`PASS_ROWS`."""
    return max(1, math.ceil(rows / PASS_ROWS))


def pass_ranges(data: Any) -> list[tuple[str | None, str | None]]:
    """The id ranges to build ``data``'s features in: one per :data:`PASS_ROWS` transactions."""
    return id_ranges(data, pass_count(transaction_rows(data)))


def in_range(tables: Mapping[str, ir.Table], lo: str | None, hi: str | None) -> dict[str, ir.Table]:
    """Every table restricted to the customers with ``lo <= customer_id < hi`` (None: unbounded)."""
    out = {}
    for name, t in tables.items():
        if lo is not None:
            t = t.filter(t.customer_id >= lo)
        if hi is not None:
            t = t.filter(t.customer_id < hi)
        out[name] = t
    return out


def build_features(data: Any, cutoff: dt.date | str, spec: FeatureSpec | None = None,
                   restrict_to: ir.Table | None = None, passes: int | None = None) -> FeatureSet:
    """Features of every customer known at ``cutoff``, from events strictly before it.

    Parameters
    ----------
    data : Dataset
        Validated tables (see :func:`clvtier.validate.load`).
    cutoff : date or str
        Events on or after the cutoff are ignored.
    spec : FeatureSpec, optional
        Saved with a model; learned from ``data`` when omitted.
    restrict_to : Table, optional
        Only these customers (a ``customer_id`` column); see :func:`feature_expr`.
    passes : int, optional
        Ranges of customer ids to build the features in, one query each. Default: one
        per :data:`PASS_ROWS` transactions of the data. A caller that restricts the
        customers to a small share of them passes fewer: every pass reads all rows.

    Returns
    -------
    FeatureSet

    Examples
    --------
    >>> from clvtier import load, build_features  # doctest: +SKIP
    >>> fs = build_features(load("data/"), "2024-01-01")  # doctest: +SKIP
    >>> fs.frame.columns[:3].tolist()  # doctest: +SKIP
    ['customer_id', 'n_transactions', 'total_spend']
    """
    cutoff = _checked_cutoff(data, cutoff)
    spec = spec or learn_spec(data.tables, data.con)
    parts = []
    ranges = pass_ranges(data) if passes is None else id_ranges(data, passes)
    for lo, hi in ranges:  # one pass unless the data are large (PASS_ROWS)
        expr, param = feature_expr(in_range(data.tables, lo, hi), spec, restrict_to=restrict_to)
        parts.append(data.con.execute(expr, params={param: cutoff}))
    frame = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    frame = frame.reset_index(drop=True)
    frame["customer_id"] = frame["customer_id"].astype(str)
    return FeatureSet(frame=frame, cutoff=cutoff, spec=spec, columns=feature_columns(spec))


def write_feature_parts(data: Any, spec: FeatureSpec, cutoff: dt.date, work: Path,
                        restrict_to: ir.Table | None = None) -> list[Path]:
    """The features of every customer known at ``cutoff`` as Parquet files in ``work``, in customer order.

    One file per range of customer ids (:func:`pass_ranges`), written by the engine
    itself: the rows never pass through Python, and DuckDB streams and spills under
    its memory limit.
    """
    cutoff = _checked_cutoff(data, cutoff)
    paths = []
    # The features are ordered by their own ORDER BY; not keeping the scan order lets
    # DuckDB stream and spill the large window and aggregate under its memory limit.
    data.con.raw_sql("SET preserve_insertion_order = false")
    try:
        for k, (lo, hi) in enumerate(pass_ranges(data)):
            expr, param = feature_expr(in_range(data.tables, lo, hi), spec, restrict_to=restrict_to)
            paths.append(work / f"features-{k:04d}.parquet")
            data.con.to_parquet(expr, paths[-1], params={param: cutoff})
    finally:
        data.con.raw_sql("RESET preserve_insertion_order")
    return paths


@dataclass
class FeatureFile(_Described):
    """Features written by :func:`write_features`: where, how many, and what they are (not the rows)."""

    path: Path
    count: int
    cutoff: dt.date
    spec: FeatureSpec
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_customers(self) -> int:
        return self.count


#: Rows per batch when the engine's files are copied into the output.
WRITE_BATCH_ROWS = 200_000


def write_features(data: Any, cutoff: dt.date | str, out: str | Path,
                   spec: FeatureSpec | None = None) -> FeatureFile:
    """Build features and write them (CSV or Parquet) with a ``.meta.json`` sidecar, atomically.

    The rows are those of :func:`build_features`, in the same order and types, but
    they are never all in memory: the engine writes them (see
    :func:`write_feature_parts`) and they are copied to ``out`` a batch at a time.
    """
    import tempfile

    import pyarrow.parquet as pq

    from clvtier.persist import atomic_path, check_not_input, safe_csv_frame

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InputError(f"{out}: unknown output format.", "Name the output file .csv or .parquet.")
    meta = out.with_name(out.name + ".meta.json")
    check_not_input(out, data)
    check_not_input(meta, data)
    cutoff = _checked_cutoff(data, cutoff)
    spec = spec or learn_spec(data.tables, data.con)
    n = 0
    with tempfile.TemporaryDirectory(prefix="clvtier-features-") as work, atomic_path(out) as tmp:
        parts = write_feature_parts(data, spec, cutoff, Path(work))
        writer: Any = None
        try:
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches(batch_size=WRITE_BATCH_ROWS):
                    if suffix == ".parquet":
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, batch.schema)
                        writer.write_batch(batch)
                    else:
                        frame = batch.to_pandas()
                        frame["customer_id"] = frame["customer_id"].astype(str)
                        safe_csv_frame(frame).to_csv(tmp, mode="a", header=n == 0, index=False)
                    n += batch.num_rows
            if n == 0:  # no customer: the columns only
                empty = pq.read_table(parts[0])
                if suffix == ".parquet":
                    pq.write_table(empty, tmp)
                else:
                    empty.to_pandas().to_csv(tmp, index=False)
        finally:
            if writer is not None:
                writer.close()
    result = FeatureFile(out, n, cutoff, spec, feature_columns(spec))
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps(result.metadata(), indent=2))
    return result
