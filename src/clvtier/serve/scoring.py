"""Scoring of request records with the batch feature definition, compiled to SQL once.

The features are :func:`clvtier.features.feature_expr`, the expression ``clvtier
predict`` runs. Compiling it costs far more than running it on one customer, so
:class:`FeatureQuery` compiles it once, at start-up, over placeholder tables with
the contract schemas, with the cutoff left as the bound parameter ``$cutoff``.
Each scoring call turns its records into Arrow tables of those names, runs the SQL
on them on its own DuckDB cursor, and scores the frame with
:func:`clvtier.predict.score_frame`, as ``clvtier predict`` does.
"""

from __future__ import annotations

import datetime as dt
import inspect
import string
import threading
from collections.abc import Sequence
from typing import Any

import duckdb
import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot.expressions as sge

from clvtier.errors import ModelError
from clvtier.features import FeatureSpec, feature_expr
from clvtier.predict import N_REASONS, Model, score_frame
from clvtier.schema import TABLES
from clvtier.serve.schemas import record_rows

#: The table of the request's customers: every one of them is scored.
KNOWN_TABLE = "request_customers"
_SENTINEL = dt.date(1, 2, 3)  # stands for the cutoff while compiling; replaced by $cutoff
_ARROW_TYPES = {"string": pa.string(), "date": pa.date32(), "float64": pa.float64()}
_KIND_TYPES = {"id": "string", "text": "string", "response": "string", "date": "date",
               "number": "float64", "count": "float64"}


def contract_schema(table: str) -> dict[str, str]:
    """Column -> Ibis type of a typed contract table (what :mod:`clvtier.validate` produces)."""
    return {c.name: _KIND_TYPES[c.kind] for c in TABLES[table].columns}


class FeatureQuery:
    """The model's feature definition as DuckDB SQL with a ``$cutoff`` parameter.

    Parameters
    ----------
    spec : FeatureSpec
        The feature spec saved with the model.

    Attributes
    ----------
    sql : str
    tables : tuple of str
        Contract tables the SQL reads (besides :data:`KNOWN_TABLE`).
    columns : list of str
        Output columns: ``customer_id`` then the features.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.tables = ("transactions", *(t for t in spec.tables if t != "transactions"))
        placeholders = {name: ibis.table(contract_schema(name), name=name) for name in self.tables}
        known = ibis.table({"customer_id": "string"}, name=KNOWN_TABLE)
        expr, cutoff = feature_expr(placeholders, spec, known=known)
        if not {KNOWN_TABLE, *self.tables} <= _EXECUTE_TABLES:
            raise ModelError(f"the service cannot pass the tables {sorted(self.tables)} to the feature query.",
                             "This is a bug; report it with the clvtier version.")
        self.columns = list(expr.columns)
        self.sql = _compile_with_parameter(expr, cutoff)

    def run(self, con: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table], cutoff: dt.date) -> pd.DataFrame:
        """Run on ``tables`` (Arrow, under their contract names; ``con`` must have no tables of those names)."""
        return _execute(con, self.sql, cutoff, **tables)


def _execute(con: duckdb.DuckDBPyConnection, sql: str, cutoff: dt.date, *, request_customers: pa.Table,
             transactions: pa.Table, customers: pa.Table | None = None, engagements: pa.Table | None = None,
             marketing: pa.Table | None = None) -> pd.DataFrame:
    """``sql`` on the Arrow tables passed by name.

    DuckDB reads a table name that its catalog lacks from the Python variable of that
    name in the frame that runs the query (its replacement scan, on by default; see
    :data:`DUCKDB_CONFIG`): these parameters. Registering each table instead writes a
    view to the catalog per table and call, about 7 % of a one-customer query's work.
    """
    return con.execute(sql, {"cutoff": cutoff}).df()


#: The tables :func:`_execute` can pass to DuckDB (its keyword parameters).
_EXECUTE_TABLES = frozenset(inspect.signature(_execute).parameters) - {"con", "sql", "cutoff"}

#: The scoring connection's table names resolve to the Python variables of :func:`_execute`
#: (only its own frame is searched).
DUCKDB_CONFIG = {"python_enable_replacements": True, "python_scan_all_frames": False}


def _compile_with_parameter(expr: Any, param: Any) -> str:
    from ibis.backends.sql.compilers import DuckDBCompiler

    compiler = DuckDBCompiler()
    # Ibis inlines parameter values; compile with a sentinel date and swap its literal
    # for a bound parameter, so no request value is ever formatted into the SQL.
    tree = compiler.to_sqlglot(expr, params={param: _SENTINEL})
    sentinel = compiler.to_sqlglot(ibis.literal(_SENTINEL).name("x")).expressions[0].this
    swapped = 0

    def swap(node: sge.Expression) -> sge.Expression:
        nonlocal swapped
        if type(node) is type(sentinel) and node == sentinel:
            swapped += 1
            return sge.Cast(this=sge.Placeholder(this="cutoff"), to=sge.DataType.build("DATE"))
        return node

    sql = tree.transform(swap).sql(dialect="duckdb")
    if not swapped or sentinel.sql(dialect="duckdb") in sql:
        raise ModelError("the feature definition could not be compiled for the service.",
                         "This is a bug; report it with the clvtier and Ibis versions.")
    return sql


#: Where each contract table's rows are in a request's customer: the field, whether it
#: holds a list of records (or one record), and the record key of each contract column
#: (``None``: never sent; ``customer_id`` is the customer's position).
_SOURCES: dict[str, tuple[str, bool, dict[str, str | None]]] = {
    "transactions": ("transactions", True, {
        "transaction_id": "id", "transaction_date": "date", "transaction_amount": "amount",
        "product_category": "category"}),
    "customers": ("profile", False, {
        "join_date": "join_date", "last_purchase_date": None, "age": "age", "gender": "gender",
        "location": "location"}),
    "engagements": ("engagement", False, {
        "number_of_site_visits": "site_visits", "number_of_emails_opened": "emails_opened",
        "number_of_clicks": "clicks"}),
    "marketing": ("offers", True, {
        "campaign_id": "id", "response": "response", "promotion_type": "promotion_type",
        "campaign_date": "date"}),
}


def request_tables(customers: pa.StructArray, tables: Sequence[str]) -> dict[str, pa.Table]:
    """The customers' records as typed contract tables (Arrow), plus the table of the customers to score.

    ``customers`` is a checked request's (:class:`clvtier.serve.schemas.ScoreBatch`).
    Customers are keyed by their position (``"0"``, ``"1"``, ...), not by their id:
    the features never depend on the key, and requests merged into one batch may
    share customer ids. Dates arrive as checked YYYY-MM-DD text and are cast here.
    """
    positions = pa.array(range(len(customers)), pa.int64())
    out = {KNOWN_TABLE: pa.table({"customer_id": positions.cast(pa.string())})}
    for name in tables:
        field, many, sources = _SOURCES[name]
        schema = contract_schema(name)
        rows, owner = record_rows(customers, field, many)
        columns = {"customer_id": owner.cast(pa.string())}
        for col, key in sources.items():
            kind = TABLES[name].column(col).kind
            if key is None:
                columns[col] = pa.nulls(len(rows), _ARROW_TYPES[schema[col]])
            elif kind == "date":
                columns[col] = rows.field(key).cast(pa.date32())
            elif kind == "text":
                columns[col] = _text(rows.field(key))
            else:
                columns[col] = rows.field(key).cast(_ARROW_TYPES[schema[col]])
        out[name] = pa.table({col: columns[col] for col in schema})
    return out


def _text(values: pa.Array) -> pa.Array:
    """Text as validation types it: stripped of ASCII whitespace; blank is missing."""
    trimmed = pc.utf8_trim(values, characters=string.whitespace)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


class Scorer:
    """Scores requests with one loaded model; safe to call from several threads.

    Parameters
    ----------
    model : Model
        Loaded with :func:`clvtier.predict.load`.
    threads : int
        DuckDB threads per query (requests run in parallel already).
    """

    def __init__(self, model: Model, threads: int = 1) -> None:
        self.model = model
        # Requests are scored side by side already, and a thread pool per prediction (the
        # random forest's n_jobs=-1) costs far more than it saves on a few customers.
        jobs = {k: 1 for k in model.pipeline.get_params(deep=True) if k.endswith("n_jobs")}
        if jobs:
            model.pipeline.set_params(**jobs)
        if model.plan is not None:  # laid out once, at start-up, not on the first request
            model.plan.set_threads(1)
            model.plan.prepare_reasons()
        self.query = FeatureQuery(model.spec)
        self._db = duckdb.connect(":memory:", config={**DUCKDB_CONFIG, "threads": threads})
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def features(self, customers: pa.StructArray, as_of: dt.date) -> pd.DataFrame:
        """Features of ``customers`` at ``as_of``; ``customer_id`` is the customer's position (str)."""
        tables = request_tables(customers, self.query.tables)
        with self._lock:  # creating a cursor touches the shared database instance
            con = self._db.cursor()
        try:
            frame = self.query.run(con, tables, as_of)
        finally:
            con.close()
        frame["customer_id"] = frame["customer_id"].astype(str)
        return frame

    def score(self, customers: pa.StructArray, as_of: dt.date,
              with_reasons: bool = True) -> list[dict[str, Any] | None]:
        """Tier, probabilities and top reasons of each customer, in the order given.

        ``customers`` is a checked request's (:class:`clvtier.serve.schemas.ScoreBatch`).

        ``None`` for a customer whose records give features the model cannot take:
        infinite values, such as the spend share of a total that cancels out to
        almost zero. The other customers are scored as usual.
        """
        frame = self.features(customers, as_of)
        if len(frame) != len(customers):
            raise ModelError(f"the features have {len(frame)} rows for {len(customers)} customers.",
                             "This is a bug; report it with the request's shape.")
        bad = np.isinf(frame.select_dtypes("number").to_numpy(dtype=np.float64)).any(axis=1)
        out: list[dict[str, Any] | None] = [None] * len(customers)
        if bad.all():
            return out
        scores = score_frame(self.model, frame[~bad] if bad.any() else frame, with_reasons=with_reasons)
        rows = scores["customer_id"].astype(int).tolist()
        tiers = scores["tier"].tolist()
        proba = scores[["p_low", "p_medium", "p_high"]].to_numpy(dtype=np.float64)
        finite = np.isfinite(proba).all(axis=1)
        reasons: list[list[dict[str, Any]]] = [[] for _ in rows]
        if with_reasons:
            for k in range(1, N_REASONS + 1):
                names = scores[f"reason_{k}"].tolist()
                effects = scores[f"reason_{k}_effect"].to_numpy(dtype=np.float64)
                finite &= np.isfinite(effects)
                for why, name, effect in zip(reasons, names, effects.tolist(), strict=True):
                    if name:
                        why.append({"feature": name, "effect": effect})
        ids = customers.field("customer_id").to_pylist()
        for row, tier, p, ok, why in zip(rows, tiers, proba.tolist(), finite.tolist(), reasons, strict=True):
            if ok:
                out[row] = {"customer_id": ids[row], "tier": tier,
                            "probabilities": {"Low": p[0], "Medium": p[1], "High": p[2]}, "reasons": why}
        return out
