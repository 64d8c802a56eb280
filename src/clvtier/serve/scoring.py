"""Scoring of request records with the batch feature definition, compiled to SQL once.

The features are :func:`clvtier.features.feature_expr`, the expression ``clvtier
predict`` runs. Compiling it costs far more than running it on one customer, so
:class:`FeatureQuery` compiles it once, at start-up, over placeholder tables with
the contract schemas, with the cutoff left as the bound parameter ``$cutoff``.
Each scoring call registers its records as Arrow tables of those names on its own
DuckDB cursor, runs the SQL, and scores the frame with
:func:`clvtier.predict.score_frame`, as ``clvtier predict`` does.
"""

from __future__ import annotations

import datetime as dt
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
from clvtier.serve.schemas import Customer

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
        self.columns = list(expr.columns)
        self.sql = _compile_with_parameter(expr, cutoff)

    def run(self, con: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table], cutoff: dt.date) -> pd.DataFrame:
        """Run on ``tables`` (registered on ``con`` under their contract names)."""
        for name, table in tables.items():
            con.register(name, table)
        return con.execute(self.sql, {"cutoff": cutoff}).df()


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


def _text(values: list[str | None]) -> pa.Array:
    """Text as validation types it: stripped of ASCII whitespace; blank is missing."""
    trimmed = pc.utf8_trim(pa.array(values, pa.string()), characters=string.whitespace)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def request_tables(customers: Sequence[Customer], tables: Sequence[str]) -> dict[str, pa.Table]:
    """The customers' records as typed contract tables (Arrow), plus the table of the customers to score.

    Customers are keyed by their position (``"0"``, ``"1"``, ...), not by their id:
    the features never depend on the key, and requests merged into one batch may
    share customer ids. Dates arrive as checked YYYY-MM-DD text and are cast in Arrow.
    """
    keys = [str(i) for i in range(len(customers))]
    out = {KNOWN_TABLE: _arrow({"customer_id": "string"}, {"customer_id": keys})}
    tx = [(k, t) for k, c in zip(keys, customers, strict=True) for t in c.get("transactions", ())]
    out["transactions"] = _arrow(contract_schema("transactions"), {
        "transaction_id": [t.get("id") for _, t in tx],
        "customer_id": [k for k, _ in tx],
        "transaction_date": [t["date"] for _, t in tx],
        "transaction_amount": [t["amount"] for _, t in tx],
        "product_category": _text([t.get("category") for _, t in tx]),
    })
    if "customers" in tables:
        rows = [(k, p) for k, c in zip(keys, customers, strict=True) if (p := c.get("profile")) is not None]
        out["customers"] = _arrow(contract_schema("customers"), {
            "customer_id": [k for k, _ in rows],
            "join_date": [p.get("join_date") for _, p in rows],
            "last_purchase_date": [None] * len(rows),
            "age": [p.get("age") for _, p in rows],
            "gender": _text([p.get("gender") for _, p in rows]),
            "location": _text([p.get("location") for _, p in rows]),
        })
    if "engagements" in tables:
        eng = [(k, e) for k, c in zip(keys, customers, strict=True) if (e := c.get("engagement")) is not None]
        out["engagements"] = _arrow(contract_schema("engagements"), {
            "customer_id": [k for k, _ in eng],
            "number_of_site_visits": [e["site_visits"] for _, e in eng],
            "number_of_emails_opened": [e["emails_opened"] for _, e in eng],
            "number_of_clicks": [e["clicks"] for _, e in eng],
        })
    if "marketing" in tables:
        offers = [(k, o) for k, c in zip(keys, customers, strict=True) for o in c.get("offers", ())]
        out["marketing"] = _arrow(contract_schema("marketing"), {
            "campaign_id": [o.get("id") for _, o in offers],
            "customer_id": [k for k, _ in offers],
            "response": [o["response"] for _, o in offers],
            "promotion_type": _text([o["promotion_type"] for _, o in offers]),
            "campaign_date": [o["date"] for _, o in offers],
        })
    return out


def _arrow(schema: dict[str, str], columns: dict[str, Any]) -> pa.Table:
    def array(values: Any, kind: str) -> pa.Array:
        if isinstance(values, pa.Array):
            return values
        if kind == "date":  # YYYY-MM-DD text, checked by the request schema
            return pa.array(values, pa.string()).cast(pa.date32())
        return pa.array(values, _ARROW_TYPES[kind])

    return pa.table({name: array(columns[name], kind) for name, kind in schema.items()})


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
        self._db = duckdb.connect(":memory:", config={"threads": threads})
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def features(self, customers: Sequence[Customer], as_of: dt.date) -> pd.DataFrame:
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

    def score(self, customers: Sequence[Customer], as_of: dt.date,
              with_reasons: bool = True) -> list[dict[str, Any] | None]:
        """Tier, probabilities and top reasons of each customer, in the order given.

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
        for row, tier, p, ok, why in zip(rows, tiers, proba.tolist(), finite.tolist(), reasons, strict=True):
            if ok:
                out[row] = {"customer_id": customers[row]["customer_id"], "tier": tier,
                            "probabilities": {"Low": p[0], "Medium": p[1], "High": p[2]}, "reasons": why}
        return out
