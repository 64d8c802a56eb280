"""Scoring of request records with the batch feature definition, compiled to SQL once.

The features are :func:`clvtier.features.feature_expr`, the expression ``clvtier
predict`` runs. Compiling it costs far more than running it on one customer, so
:class:`FeatureQuery` compiles it once, at start-up, over tables with the contract
schemas, with a placeholder for the cutoff. DuckDB's planning of that SQL still
costs more than running it on a few customers, so each :class:`_Session` (a DuckDB
connection, one per concurrent call) prepares it once per cutoff date over empty
temporary tables. A scoring call inserts its records into those tables inside a
transaction, executes the prepared statement and rolls back, then scores the frame
with :func:`clvtier.predict.score_frame`, as ``clvtier predict`` does.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import string
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import duckdb
import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot.expressions as sge

from clvtier.errors import ClvtierError, ModelError
from clvtier.features import FeatureSpec, feature_expr
from clvtier.predict import N_REASONS, Model, score_frame
from clvtier.schema import TABLES
from clvtier.serve.schemas import CUSTOMER_TYPE, EXAMPLE_REQUEST, parse_score_request, record_rows

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
    """The model's feature definition as DuckDB SQL at any cutoff.

    Parameters
    ----------
    spec : FeatureSpec
        The feature spec saved with the model.

    Attributes
    ----------
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
        self._tree = _compile_with_placeholder(expr, cutoff)

    def sql(self, cutoff: dt.date) -> str:
        """The SQL at ``cutoff``, which enters it as a date literal written from a :class:`datetime.date`."""
        literal = sge.Cast(this=sge.Literal.string(cutoff.isoformat()), to=sge.DataType.build("DATE"))

        def fill(node: sge.Expression) -> sge.Expression:
            return literal.copy() if isinstance(node, sge.Placeholder) else node

        return str(self._tree.transform(fill).sql(dialect="duckdb"))


def _compile_with_placeholder(expr: Any, param: Any) -> sge.Expression:
    """``expr`` as a SQL tree in which the parameter ``param`` is a placeholder (the only one)."""
    from ibis.backends.sql.compilers import DuckDBCompiler

    compiler = DuckDBCompiler()
    # Ibis inlines parameter values; compile with a sentinel date and swap its literal
    # for a placeholder, so that the SQL of any cutoff is the same tree.
    tree = compiler.to_sqlglot(expr, params={param: _SENTINEL})
    sentinel = compiler.to_sqlglot(ibis.literal(_SENTINEL).name("x")).expressions[0].this
    had_placeholders = any(isinstance(node, sge.Placeholder) for node in tree.walk())
    swapped = 0

    def swap(node: sge.Expression) -> sge.Expression:
        nonlocal swapped
        if type(node) is type(sentinel) and node == sentinel:
            swapped += 1
            return sge.Placeholder(this="cutoff")
        return node

    tree = tree.transform(swap)
    if had_placeholders or not swapped or sentinel.sql(dialect="duckdb") in tree.sql(dialect="duckdb"):
        raise ModelError("the feature definition could not be compiled for the service.",
                         "This is a bug; report it with the clvtier and Ibis versions.")
    return tree


class _Session:
    """A DuckDB connection with the request tables and the feature query prepared per cutoff.

    The request tables are empty temporary tables (they belong to this connection).
    :meth:`run` inserts a call's records inside a transaction and rolls it back at
    the end, so they are empty again for the next call. The feature query is planned
    once per cutoff date (planning costs more than running it on a few customers), on
    the first call's records; the plan holds for any records because the optimizers
    that would build on those records' statistics are off (:data:`DUCKDB_CONFIG`).
    Used by one thread at a time.
    """

    #: Cutoff dates whose prepared statements are kept (requests rarely vary their date).
    KEEP = 8

    def __init__(self, con: duckdb.DuckDBPyConnection, query: FeatureQuery) -> None:
        self.con = con
        self.query = query
        self.tables = (KNOWN_TABLE, *query.tables)
        # Each table takes the columns and types of what :meth:`run` inserts: the tables of no customer.
        empty = request_tables(pa.array([], CUSTOMER_TYPE), query.tables)
        for name in self.tables:
            source = empty[name].__arrow_c_stream__()  # noqa: F841  (read by name, as in run)
            con.execute(f"CREATE TEMPORARY TABLE {name} AS SELECT * FROM source")
        self._prepared: OrderedDict[dt.date, str] = OrderedDict()
        self._statements = 0

    def run(self, tables: dict[str, pa.Table], cutoff: dt.date) -> pd.DataFrame:
        """The features of ``tables`` (Arrow, under their contract names) at ``cutoff``."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            for name in self.tables:
                if not tables[name].num_rows:  # the table is empty already
                    continue
                # DuckDB reads the name ``source`` from this variable (its replacement scan,
                # this frame only: DUCKDB_CONFIG); an Arrow stream is the quickest to set up.
                source = tables[name].__arrow_c_stream__()  # noqa: F841
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM source")
            return con.execute(f"EXECUTE {self._statement(cutoff)}").df()
        finally:
            con.execute("ROLLBACK")

    def _statement(self, cutoff: dt.date) -> str:
        name = self._prepared.get(cutoff)
        if name is not None:
            self._prepared.move_to_end(cutoff)
            return name
        if len(self._prepared) >= self.KEEP:
            _, oldest = self._prepared.popitem(last=False)
            self.con.execute(f"DEALLOCATE {oldest}")
        self._statements += 1
        name = f"features_{self._statements}"
        self.con.execute(f"PREPARE {name} AS {self.query.sql(cutoff)}")
        self._prepared[cutoff] = name
        return name

    def close(self) -> None:
        self.con.close()


#: The scoring database's settings.
#:
#: - Names in the request-table inserts resolve to the Python variables of
#:   :meth:`_Session.run` (only its own frame is searched).
#: - A prepared plan must hold for any records, so the optimizers that build on the
#:   statistics of the data seen at planning are off: statistics propagation (which
#:   would drop filters those data always pass, and choose perfect-hash operators for
#:   their value ranges) and compressed materialization (which would pack strings as
#:   short as those data's into small integers: ids longer than that would then collide).
DUCKDB_CONFIG: dict[str, str | bool] = {"python_enable_replacements": True, "python_scan_all_frames": False,
                                         "disabled_optimizers": "statistics_propagation,compressed_materialization"}


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
        self._sessions: queue.SimpleQueue[_Session] = queue.SimpleQueue()
        self._sessions.put(self._session())  # the first session fails here, not on the first request
        self._warm_up()

    def _warm_up(self) -> None:
        """Score the documented example request: a model that cannot score stops the service at start-up.

        :func:`clvtier.persist.load_model` checks the model's files; this checks that the model,
        its metadata and this version's feature definition work together, as every request needs.
        """
        batch = parse_score_request(json.dumps(EXAMPLE_REQUEST).encode())
        try:
            scores = self.score(batch.customers, batch.as_of)
        except Exception as exc:
            reason = exc.message if isinstance(exc, ClvtierError) else f"{type(exc).__name__}: {exc}"
        else:
            reason = "" if all(s is not None for s in scores) else "its probabilities are not finite"
        if reason:
            self.close()
            raise ModelError(f"the model cannot score the example request at start-up ({reason.rstrip('.')}).",
                             "Serve a run directory exactly as 'clvtier train' wrote it, or train the model again.")

    def close(self) -> None:
        while True:
            try:
                self._sessions.get_nowait().close()
            except queue.Empty:
                break
        self._db.close()

    def _session(self) -> _Session:
        """An idle session, or a new one when all are in use."""
        try:
            return self._sessions.get_nowait()
        except queue.Empty:
            pass
        with self._lock:  # creating a cursor touches the shared database instance
            con = self._db.cursor()
        try:
            return _Session(con, self.query)
        except BaseException:
            con.close()
            raise

    def features(self, customers: pa.StructArray, as_of: dt.date) -> pd.DataFrame:
        """Features of ``customers`` at ``as_of``; ``customer_id`` is the customer's position (str)."""
        tables = request_tables(customers, self.query.tables)
        session = self._session()
        try:
            frame = session.run(tables, as_of)
        except BaseException:
            session.close()  # in an unknown state: not reused
            raise
        self._sessions.put(session)
        frame["customer_id"] = frame["customer_id"].astype(str)
        return frame

    def score(self, customers: pa.StructArray, as_of: dt.date,
              with_reasons: bool = True) -> list[dict[str, Any] | None]:
        """Tier, probabilities and top reasons of each customer, in the order given.

        ``customers`` is a checked request's (:class:`clvtier.serve.schemas.ScoreBatch`).

        ``None`` for a customer whose records give features the model cannot take:
        values too large to be finite (a guard: the request's limits on amounts and
        records keep every feature finite). The other customers are scored as usual.
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
