"""CLV values per customer: the quantity the tiers are cut from.

* ``predictive`` mode (default): features as known at the cutoff T; the value is
  spend in the horizon [T, T + H) (``future``) or spend before T plus spend in the
  horizon (``total``, historic plus future).
* ``snapshot`` mode (the original analysis): features and value from all data.
  The value is total spend (``total_spend``) or average order value x purchase
  frequency x lifespan in years (``formula``). Total spend is then both a feature
  and the label: snapshot scores describe the past, they are not evidence of
  prediction.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import ibis
import numpy as np
import pandas as pd

from clvtier.errors import InputError
from clvtier.features import money_sum

Mode = Literal["predictive", "snapshot"]
PREDICTIVE_TARGETS = ("future", "total")
SNAPSHOT_TARGETS = ("total_spend", "formula")


def horizon_spend(data: Any, start: dt.date, horizon_days: int, customers: pd.Index | None = None) -> pd.Series:
    """Net spend per customer in ``[start, start + horizon_days)``, indexed by customer_id.

    With ``customers`` (unique ids), the result is aligned to them, 0 for those who bought
    nothing in the horizon. The engine does the alignment: a pandas reindex of millions of
    text ids costs more than the query.
    """
    tx = data.tables["transactions"]
    begin = ibis.param("date")
    end = ibis.param("date")
    window = tx.filter((tx.transaction_date >= begin) & (tx.transaction_date < end))
    expr = window.group_by("customer_id").aggregate(value=money_sum(window.transaction_amount))
    params = {begin: start, end: start + dt.timedelta(days=horizon_days)}
    if customers is None:
        frame = data.con.execute(expr, params=params)
        return pd.Series(
            frame["value"].to_numpy(dtype="float64"),
            index=frame["customer_id"].astype(str).to_numpy(),
            name="value",
        )
    import pyarrow as pa

    keys = ibis.memtable(pa.table({
        "customer_id": pa.array(np.asarray(customers, dtype=object), type=pa.string()),
        "__position": pa.array(np.arange(len(customers), dtype=np.int64)),
    }))
    aligned = keys.left_join(expr, "customer_id")
    aligned = aligned.select("__position", value=aligned.value.fill_null(0.0)).order_by("__position")
    values = data.con.to_pyarrow(aligned, params=params).column("value").to_numpy()
    return pd.Series(np.asarray(values, dtype="float64"), index=customers, name="value")


def default_cutoff(data: Any, horizon_days: int) -> dt.date:
    """The last date of the data plus one day, minus the horizon."""
    return data.last_date + dt.timedelta(days=1) - dt.timedelta(days=horizon_days)


def check_someone_known(summary: dict[str, dict[str, Any]], date: dt.date, what: str = "the cutoff") -> None:
    """Refuse a date no customer is known before, from validation's summary of the tables."""
    starts = [t["first_date"] for name, t in summary.items()
              if name in ("transactions", "customers") and t.get("first_date")]
    if starts and date <= min(starts):
        raise InputError(f"no customer is known before {what} {date}: the data start on {min(starts)}.",
                         f"Choose a date after {min(starts)} (the features use events strictly before it).")


def check_cutoff(data: Any, cutoff: dt.date, horizon_days: int, min_history_days: int = 30) -> None:
    """Refuse a cutoff that leaves no history before it or no horizon after it."""
    first, last = data.first_date, data.last_date
    # Data.last_date stops at the as-of date when transactions are dated after it.
    as_of = getattr(data, "as_of", None)
    end = "the as-of date" if as_of is not None and as_of == last else "the last transaction"
    if cutoff <= first + dt.timedelta(days=min_history_days):
        raise InputError(
            f"cutoff {cutoff} leaves less than {min_history_days} days of history "
            f"(transactions start {first}).",
            "Choose a later --cutoff or a shorter --horizon-days.",
        )
    if cutoff > last:
        raise InputError(
            f"cutoff {cutoff} is after {end} ({last}): the horizon is empty.",
            "Choose an earlier --cutoff, or use predict to score the present.",
        )
    stop = cutoff + dt.timedelta(days=horizon_days)
    if stop > last + dt.timedelta(days=1):
        raise InputError(
            f"the horizon {cutoff}..{stop} runs past {end} ({last}); "
            "customers would look inactive only because the data stop.",
            f"Choose --cutoff {last + dt.timedelta(days=1) - dt.timedelta(days=horizon_days)} "
            "or earlier, or a shorter --horizon-days.",
        )


def values_for(customers: pd.Index, features: pd.DataFrame, data: Any, mode: Mode, target: str,
               cutoff: dt.date, horizon_days: int) -> pd.Series:
    """The CLV value of every customer in ``customers`` (aligned to that order)."""
    past = pd.Series(features["total_spend"].to_numpy(), index=customers)
    if mode == "predictive":
        future = horizon_spend(data, cutoff, horizon_days, customers)
        if target == "future":
            return future
        if target == "total":
            return past + future
        raise InputError(f"unknown target '{target}' for predictive mode.", f"Use one of {PREDICTIVE_TARGETS}.")
    if target == "total_spend":
        return past
    if target == "formula":
        n = features["n_transactions"].to_numpy()
        aov = past.to_numpy() / pd.Series(n).where(n > 0).to_numpy()
        lifespan_years = (features["btyd_recency"].to_numpy() + 1.0) / 365.25
        value = pd.Series(aov * n * lifespan_years, index=customers).fillna(0.0)
        return value
    raise InputError(f"unknown target '{target}' for snapshot mode.", f"Use one of {SNAPSHOT_TARGETS}.")
