"""Predict: a tier, tier probabilities and the top reasons for every customer known at a date.

The CLI, the HTTP service and Spark all score through :func:`score_frame`, so a
customer gets the same answer whichever way it is scored.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd

from clvtier.clv import check_someone_known
from clvtier.errors import InputError, ModelError, Problem
from clvtier.features import BTYD_GROUP, FeatureSpec, as_date, build_features, require_dataset, write_feature_parts
from clvtier.models import model_input
from clvtier.persist import load_model, safe_csv_frame
from clvtier.target import TIERS

N_REASONS = 3
#: Customers scored at a time by :func:`score_to_file`.
CHUNK_SIZE = 250_000


@dataclass
class Model:
    """A loaded model bundle: the fitted pipeline and its metadata."""

    pipeline: Any
    metadata: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])

    @property
    def feature_dtypes(self) -> dict[str, str]:
        return dict(self.metadata["feature_dtypes"])

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.metadata["feature_spec"])

    @property
    def reference(self) -> dict[str, Any]:
        return dict(self.metadata["reference"])

    @functools.cached_property
    def plan(self) -> Any:
        """The pipeline laid out for column-wise scoring (:mod:`clvtier.occlusion`), or None."""
        from clvtier.occlusion import compile_plan

        return compile_plan(self.pipeline, self.feature_names, explanation_groups(self.feature_names),
                            self.reference)


def load(run_dir: str | Path) -> Model:
    """Load the model bundle written by ``clvtier train`` (checked; see :func:`persist.load_model`)."""
    if not isinstance(run_dir, str | os.PathLike):
        raise InputError(f"expected the path of a run directory, got {type(run_dir).__name__}.",
                         "Pass the directory 'clvtier train' wrote: clvtier.load_model('runs/1').")
    pipeline, meta = load_model(run_dir)
    return Model(pipeline, meta)


def _require_model(model: Any) -> None:
    if not isinstance(model, Model):
        raise InputError(f"expected a loaded model, got {type(model).__name__}.",
                         "Load the run directory first: model = clvtier.predict.load('runs/1').")


def _require_flag(with_reasons: Any) -> None:
    if not isinstance(with_reasons, bool | np.bool_):
        raise InputError(f"with_reasons must be True or False, got {with_reasons!r}.",
                         "Pass with_reasons=False to skip the reasons, True (the default) to compute them.")


def _empty_scores(with_reasons: bool) -> pd.DataFrame:
    """The scores of no customer: the columns only."""
    columns = ["customer_id", "tier", "p_low", "p_medium", "p_high"]
    if with_reasons:
        columns += [c for k in range(N_REASONS) for c in (f"reason_{k + 1}", f"reason_{k + 1}_effect")]
    return pd.DataFrame({c: pd.Series(dtype="float64" if c.startswith("p_") or c.endswith("_effect") else "object")
                         for c in columns})


def prepare(frame: pd.DataFrame, model: Model) -> pd.DataFrame:
    """The model's feature columns in training order and dtypes (shared by every scoring path)."""
    missing = [c for c in model.feature_names if c not in frame.columns]
    if missing:
        raise ModelError(
            f"the data lack {len(missing)} feature(s) the model needs: {missing[:8]}.",
            "Score data with the same tables (customers, engagements, marketing) the model was trained on.",
        )
    X = model_input(frame, model.feature_names)
    dtypes = X.dtypes
    infinite: dict[str, int] = {}
    not_text: dict[str, int] = {}
    for col, dtype in model.feature_dtypes.items():
        if dtype == "float64":
            if not pd.api.types.is_float_dtype(dtypes[col]):
                raise ModelError(f"feature '{col}' is not numeric in the data.", "Check the input tables' types.")
            if n := int(np.isinf(X[col].to_numpy()).sum()):
                infinite[col] = n
        else:
            values = X[col]
            # Numbers (model_input made them float64) or other objects; all missing is missing text.
            if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty") and \
                    (n := int((values.notna() & ~values.map(lambda v: isinstance(v, str)).astype(bool)).sum())):
                not_text[col] = n
    if infinite:
        raise InputError(f"the features hold infinite values: {_per_column(infinite)}.",
                         "Replace them with finite numbers; clvtier.build_features(data, cutoff, model.spec) "
                         "never gives infinite values.")
    if not_text:
        raise InputError(f"categorical features hold values that are not text: {_per_column(not_text)}.",
                         "Pass categories as text (str), with None or NaN where a value is missing, as "
                         "clvtier.build_features(data, cutoff, model.spec) gives them.")
    return X


def _per_column(counts: dict[str, int]) -> str:
    """'col (3 rows), other (1 row)'."""
    return ", ".join(f"{col} ({n:,} row{'s' if n != 1 else ''})" for col, n in counts.items())


def proba_in_tier_order(pipeline: Any, X: Any, proba: np.ndarray | None = None) -> np.ndarray:
    """P(Low), P(Medium), P(High) per row of ``X``.

    From ``proba`` (``pipeline.classes_`` order) when given, else from ``pipeline.predict_proba(X)``.
    """
    proba = pipeline.predict_proba(X) if proba is None else proba
    classes = list(pipeline.classes_)
    out = np.zeros((len(X), len(TIERS)))
    for j, tier in enumerate(TIERS):
        if tier in classes:
            out[:, j] = proba[:, classes.index(tier)]
    return out


def _predicted_class(pipeline: Any, proba: np.ndarray) -> np.ndarray:
    """Column of ``pipeline.classes_`` holding each row's predicted tier (the most probable, in tier order)."""
    pred = np.argmax(proba_in_tier_order(pipeline, proba, proba), axis=1)
    classes = list(pipeline.classes_)
    column = np.array([classes.index(t) if t in classes else 0 for t in TIERS])
    return column[pred]


#: Rows per prediction call when occluded copies are predicted (bounds the memory they take).
OCCLUSION_BATCH_ROWS = 100_000


def occlusion_effects(pipeline: Any, X: pd.DataFrame, proba: np.ndarray, reference: dict[str, Any],
                      groups: list[tuple[str, list[str]]]) -> np.ndarray:
    """Occlusion effect of each group on each customer (customers x groups), by prediction.

    ``proba`` is in tier order. Only customers whose group differs from the
    reference are predicted again (for the others the effect is exactly 0), and the
    occluded copies of every group are predicted together, up to
    :data:`OCCLUSION_BATCH_ROWS` rows per call: a model's fixed cost per call (thread
    pools, input validation) is paid once per batch, not once per group.
    """
    n = len(X)
    pred = np.argmax(proba, axis=1)
    base = proba[np.arange(n), pred]
    effects = np.zeros((n, len(groups)))
    pending: list[tuple[int, np.ndarray, pd.DataFrame]] = []

    def flush() -> None:
        if not pending:
            return
        batch = pd.concat([b for _, _, b in pending], ignore_index=True) if len(pending) > 1 else pending[0][2]
        p = proba_in_tier_order(pipeline, batch)
        start = 0
        for j, rows, _ in pending:
            part = p[start:start + len(rows)]
            effects[rows, j] = base[rows] - part[np.arange(len(rows)), pred[rows]]
            start += len(rows)
        pending.clear()

    for j, (_label, members) in enumerate(groups):
        moved = np.zeros(n, dtype=bool)
        for col in members:
            ref = reference.get(col)
            values = X[col]
            same = values.isna().to_numpy() if ref is None or (isinstance(ref, float) and np.isnan(ref)) \
                else (values == ref).to_numpy(dtype=bool)
            moved |= ~same
        rows = np.flatnonzero(moved)
        if not len(rows):
            continue
        batch = X.iloc[rows].reset_index(drop=True)
        for col in members:
            ref = reference.get(col)
            batch[col] = pd.Series([np.nan if ref is None else ref] * len(rows), dtype=batch[col].dtype) \
                if pd.api.types.is_float_dtype(batch[col]) else pd.Series([np.nan if ref is None else ref]
                                                                          * len(rows), dtype=object)
        pending.append((j, rows, batch))
        if sum(len(r) for _, r, _ in pending) >= OCCLUSION_BATCH_ROWS:
            flush()
    flush()
    return effects


def reasons(pipeline: Any, X: pd.DataFrame, proba: np.ndarray, reference: dict[str, Any],
            n: int = N_REASONS) -> list[list[tuple[str, float]]]:
    """Top features behind each customer's predicted tier.

    A feature's contribution is how much the probability of the predicted tier drops
    when that feature alone is set to its typical training value (median or mode):
    a model-agnostic occlusion explanation that works for every candidate pipeline.
    A feature already at its typical value contributes exactly 0. :func:`score_frame`
    gets the same contributions column by column (:mod:`clvtier.occlusion`) for the
    pipelines that allow it.
    """
    if len(X) == 0:
        return []
    groups = explanation_groups(list(X.columns))
    names, effects = top_reasons(occlusion_effects(pipeline, X, proba, reference, groups),
                                 [g[0] for g in groups], n)
    return [[(str(a), float(b)) for a, b in zip(nr, er, strict=True)] for nr, er in zip(names, effects, strict=True)]


def top_reasons(effects: np.ndarray, labels: Sequence[str], n: int = N_REASONS) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` largest effects per customer and their labels (ties in group order)."""
    order = np.argsort(-effects, axis=1, kind="stable")[:, :n]
    return np.asarray(labels, dtype=object)[order], np.take_along_axis(effects, order, axis=1)


def explanation_groups(columns: list[str]) -> list[tuple[str, list[str]]]:
    """Features explained one by one, except the BTYD summary, which moves as one (recency <= T)."""
    group = [c for c in BTYD_GROUP if c in columns]
    out: list[tuple[str, list[str]]] = [(c, [c]) for c in columns if c not in group]
    if group:
        out.insert(0, ("purchase_history_rfm", group))
    return out


def score_frame(model: Model, features: pd.DataFrame, with_reasons: bool = True) -> pd.DataFrame:
    """Score a features frame (one row per customer): tier, probabilities and top reasons.

    Parameters
    ----------
    model : Model
    features : DataFrame
        ``customer_id`` plus the model's feature columns.
    with_reasons : bool
        Compute the top three contributions (occlusion; see :func:`reasons` and
        :mod:`clvtier.occlusion`).
    """
    _require_model(model)
    _require_flag(with_reasons)
    if not isinstance(features, pd.DataFrame) or "customer_id" not in features.columns:
        raise InputError("the features must be a DataFrame with a customer_id column and the model's features.",
                         "Build them with clvtier.build_features(data, cutoff, model.spec).frame.")
    X = prepare(features, model)
    if not len(X):
        return _empty_scores(with_reasons)
    plan = model.plan
    effects = None
    if plan is not None:
        raw, effects = plan.scores(X, lambda p: _predicted_class(model.pipeline, p)) if with_reasons \
            else (plan.predict_proba(X), None)
        proba = proba_in_tier_order(model.pipeline, X, raw)
    else:
        proba = proba_in_tier_order(model.pipeline, X)
    ids = features["customer_id"].astype(str).array
    # Tiers taken from an array of the ids' string type: no per-row conversion of Python strings.
    columns: dict[str, Any] = {
        "customer_id": ids,
        "tier": pd.array(list(TIERS), dtype=ids.dtype).take(np.argmax(proba, axis=1)),
        "p_low": proba[:, 0], "p_medium": proba[:, 1], "p_high": proba[:, 2],
    }
    if with_reasons:
        groups = explanation_groups(list(X.columns))
        if effects is None:
            effects = occlusion_effects(model.pipeline, X, proba, model.reference, groups)
        names, top = top_reasons(effects, [g[0] for g in groups], N_REASONS)
        n = len(X)
        for k in range(N_REASONS):
            columns[f"reason_{k + 1}"] = names[:, k] if k < names.shape[1] else np.full(n, "", dtype=object)
            columns[f"reason_{k + 1}_effect"] = top[:, k] if k < top.shape[1] else np.zeros(n)
    # One frame from all columns: inserting columns one by one costs more than the data for
    # the few customers of a service request.
    return pd.DataFrame(columns)


def predict(model: Model, data: Any, as_of: dt.date | None = None, with_reasons: bool = True) -> pd.DataFrame:
    """Score every customer known at ``as_of`` (default: the day after the last transaction).

    Product categories and promotion types the model has no feature for are reported
    with an :class:`UnseenLevelWarning` (see :func:`unseen_levels`).

    Returns
    -------
    DataFrame
        customer_id, tier, p_low, p_medium, p_high, reason_1..3 and their effects;
        exactly one row per customer known at ``as_of``.

    Raises
    ------
    InputError
        When no customer is known before ``as_of`` (as ``clvtier predict --as-of`` does).
    """
    _require_model(model)
    require_dataset(data)
    _require_flag(with_reasons)
    as_of = scoring_date(data, as_of)
    for problem in unseen_levels(model, data, as_of):
        warnings.warn(problem.describe(), UnseenLevelWarning, stacklevel=2)
    fs = build_features(data, as_of, model.spec)
    scores = score_frame(model, fs.frame, with_reasons=with_reasons)
    if len(scores) != len(fs.frame) or scores["customer_id"].duplicated().any():
        raise InputError(
            f"scoring produced {len(scores)} rows for {len(fs.frame)} customers.",
            "This is a bug; report it with the data's shape.",
        )
    return scores


def scoring_date(data: Any, as_of: dt.date | str | None) -> dt.date:
    """The date to score at: ``as_of``, or the day after the last transaction; refused before the data start."""
    if as_of is None:
        return data.last_date + dt.timedelta(days=1)
    as_of = as_date(as_of)
    check_someone_known(data.summary, as_of, "the scoring date")
    return as_of


class UnseenLevelWarning(UserWarning):
    """The data hold product categories or promotion types the model has no feature for."""


#: Unseen values a warning names (the largest first); the others are counted.
NAMED_LEVELS = 10


def unseen_levels(model: Model, data: Any, as_of: dt.date) -> list[Problem]:
    """Warnings about product categories and promotion types the model has no feature for.

    The model's :class:`~clvtier.features.FeatureSpec` fixes both at training. Purchases
    in another category count in no category's spend share, and offers of another
    promotion type count as received but never as responded to, so tiers shift without
    an error: a re-export that spells ``Clothing`` as ``CLOTHING``, or a new category.
    Only events before ``as_of`` count, as in the features.

    Returns
    -------
    list of Problem
        Warnings (at most one per table) naming the unseen values, their share of
        purchase spend (categories) or of offers (promotion types), and the known value
        each one equals ignoring case and surrounding spaces.
    """
    _require_model(model)
    require_dataset(data)
    spec = model.spec
    when = ibis.param("date")
    # (table, column, what, known values, per-value weight and rows before the date, message, code)
    checks = []
    tx = data.tables["transactions"]
    if spec.categories and "product_category" in tx.columns:
        bought = tx.filter((tx.transaction_date < when) & (tx.transaction_amount > 0))
        checks.append((
            "transactions", "product_category", "categories", spec.categories,
            bought.group_by(level=bought.product_category).aggregate(
                weight=bought.transaction_amount.sum(), rows=bought.count()),
            "{share} of purchase spend before {as_of} is in product categories the model has no feature for, "
            "so it counts in no category's share and shifts tiers", "unseen_category"))
    mk = data.tables.get("marketing")
    if spec.promotion_types and "marketing" in spec.tables and mk is not None and "promotion_type" in mk.columns:
        offers = mk.filter(mk.campaign_date < when)
        checks.append((
            "marketing", "promotion_type", "promotion types", spec.promotion_types,
            offers.group_by(level=offers.promotion_type).aggregate(weight=offers.count(), rows=offers.count()),
            "{share} of offers before {as_of} are of promotion types the model has no feature for, "
            "so responses to them count for no promotion type and shift tiers", "unseen_promotion_type"))
    problems = []
    for table, column, what, known, levels, message, code in checks:
        found = _unseen(data.con.execute(levels, params={when: as_of}), known)
        if found is not None:
            share, listed, rows, alike = found
            problems.append(Problem(
                "warning", table, message.format(share=share, as_of=as_of) + f": {listed}",
                _level_fix(what, known, alike), file=_source_file(data, table), column=column, count=rows,
                code=code))
    return problems


def _unseen(levels: pd.DataFrame, known: Sequence[str]) -> tuple[str, str, int, bool] | None:
    """From ``level, weight, rows`` (one row per value): the unseen values' share of the weight,
    the values described (largest first), their rows, and whether one differs from a known value
    only in case or surrounding spaces; None when every value is known."""
    total = float(levels["weight"].sum())
    unseen = levels[levels["level"].notna() & ~levels["level"].isin(list(known))]
    if unseen.empty:
        return None
    unseen = unseen.assign(level=unseen["level"].astype(str)).sort_values(
        ["weight", "level"], ascending=[False, True])
    folded = {str(k).strip().casefold(): str(k) for k in known}
    described, alike = [], []
    for level, weight in zip(unseen["level"].head(NAMED_LEVELS), unseen["weight"].head(NAMED_LEVELS), strict=True):
        described.append(f"{level!r} ({_percent(weight / total)})")
        if (match := folded.get(level.strip().casefold())) is not None:
            alike.append(f"{level!r} looks like {match!r}")
    if len(unseen) > NAMED_LEVELS:
        described.append(f"and {len(unseen) - NAMED_LEVELS:,} more")
    text = ", ".join(described) + ("; " + ", ".join(alike) if alike else "")
    return _percent(float(unseen["weight"].sum()) / total), text, int(unseen["rows"].sum()), bool(alike)


def _percent(share: float) -> str:
    return "< 0.1 %" if 0 < share < 0.0005 else f"{100 * share:.1f} %"


def _level_fix(what: str, known: Sequence[str], alike: bool) -> str:
    spelling = ", ".join(known)
    if alike:
        return (f"Use the spelling the model was trained with ({spelling}): re-export the data or map the "
                f"values to it. If these are new {what}, retrain the model on data that hold them.")
    return f"Retrain the model on data that hold these {what}, or map them to those it was trained with ({spelling})."


def _source_file(data: Any, table: str) -> str | None:
    path = getattr(data.sources.get(table), "path", None)
    return None if path is None else str(path)


def _label_columns(scores: pd.DataFrame) -> list[str]:
    """The columns of a scores frame that hold a few labels (tiers, reasons), dictionary-encoded in
    Parquet; ids and probabilities are not (trying costs more than half of writing them)."""
    return [c for c in scores.columns if c == "tier" or (c.startswith("reason_") and not c.endswith("_effect"))]


def write_scores(scores: pd.DataFrame, out: str | Path) -> Path:
    """Write scores atomically as CSV (text fields guarded against spreadsheet formulas) or Parquet."""
    from clvtier.persist import atomic_path

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InputError(f"{out}: unknown output format.", "Name the output file .csv or .parquet.")
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            scores.to_parquet(tmp, index=False, use_dictionary=_label_columns(scores))
        else:
            safe_csv_frame(scores).to_csv(tmp, index=False)
    return out


def _background(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``fn(*args)`` in a daemon thread: a pending call never keeps the process from exiting."""
    future: Future[Any] = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def _chunks(sources: Sequence[Any], size: int) -> Iterator[Any]:
    """Arrow tables of ``size`` rows (the last one shorter) read in order across the Parquet files ``sources``.

    A chunk may span two files (the features of consecutive ranges of customer ids), so every
    chunk but the last is full and large enough to be scored in parts side by side.
    """
    import pyarrow as pa

    pending: list[Any] = []
    rows = 0
    for src in sources:
        for batch in src.iter_batches(batch_size=size):
            pending.append(batch)
            rows += batch.num_rows
            while rows >= size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, size)
                rest = table.slice(size)
                pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


@dataclass
class ScoreSummary:
    """What :func:`score_to_file` wrote.

    Attributes
    ----------
    path : Path
    as_of : date
        The date scored at (given, or the day after the last transaction).
    n_in : int
        Customers known at the as-of date (rows of the features).
    n_out : int
        Rows written; equal to ``n_in``, or nothing is written.
    tiers : dict
        Customers per predicted tier.
    feature_seconds : float
        Building the features of every customer (the engine, to a temporary Parquet file).
    scoring_seconds : float
        The chunked loop alone: read a chunk of features, score it, write it.
    """

    path: Path
    as_of: dt.date
    n_in: int
    n_out: int
    tiers: dict[str, int] = field(default_factory=dict)
    feature_seconds: float = 0.0
    scoring_seconds: float = 0.0

    @property
    def customers_per_second(self) -> float:
        return self.n_out / self.scoring_seconds if self.scoring_seconds > 0 else float("nan")


def score_to_file(model: Model, data: Any, out: str | Path, as_of: dt.date | None = None,
                  with_reasons: bool = True, chunk_size: int = CHUNK_SIZE,
                  progress: Callable[[int, int], None] | None = None) -> ScoreSummary:
    """Score every customer known at ``as_of`` into a file, in bounded memory.

    The engine writes the features of every customer to temporary Parquet files
    (DuckDB spills to disk beyond its memory limit; beyond
    :data:`clvtier.features.PASS_ROWS` transactions, one file per range of customer
    ids); they are read back ``chunk_size`` customers at a time (a chunk may span two
    files), scored with :func:`score_frame` and appended to ``out`` (Parquet row groups,
    or CSV with one header and the same formula guard as :func:`write_scores`). The
    next chunk is read and the last one written in their own threads while a chunk is
    scored. The file appears at ``out`` only when
    every customer was scored exactly once. Rows, tiers and reasons are those of
    :func:`predict` followed by :func:`write_scores`; probabilities agree to about
    1e-16 (linear algebra rounds the last bit differently in batches of other sizes)
    and bit for bit when everything fits in one chunk.

    Parameters
    ----------
    model : Model
    data : Dataset
    out : str or Path
        ``.csv`` or ``.parquet``.
    as_of : date, optional
        Default: the day after the last transaction.
    with_reasons : bool
    chunk_size : int
        Customers per chunk; memory grows with it.
    progress : callable, optional
        Called after each chunk with (customers scored so far, customers in total).

    Returns
    -------
    ScoreSummary
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from clvtier.persist import atomic_path, check_not_input

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InputError(f"{out}: unknown output format.", "Name the output file .csv or .parquet.")
    if chunk_size < 1:
        raise InputError(f"chunk size {chunk_size} is out of range.", "Use a positive number of customers.")
    _require_flag(with_reasons)
    check_not_input(out, data)  # before the work, not after it
    as_of = scoring_date(data, as_of)
    with tempfile.TemporaryDirectory(prefix="clvtier-score-") as work:
        t0 = time.perf_counter()
        paths = write_feature_parts(data, model.spec, as_of, Path(work))
        feature_seconds = time.perf_counter() - t0
        sources = [pq.ParquetFile(p) for p in paths]
        n_in = sum(src.metadata.num_rows for src in sources)
        if n_in == 0:
            raise InputError(f"no customer is known at {as_of}.", "Score as of a later date (--as-of).")
        tiers = dict.fromkeys(TIERS, 0)
        n_out = 0
        previous: str | None = None
        t1 = time.perf_counter()
        with atomic_path(out) as tmp:
            writer: Any = None
            csv_file = open(tmp, "w", encoding="utf-8", newline="") if suffix == ".csv" else None  # noqa: SIM115

            def read(chunks: Any) -> tuple[pd.DataFrame, str, str, bool] | None:
                """The next chunk, its first and last customer, and whether a customer follows itself."""
                chunk = next(chunks, None)
                if chunk is None:
                    return None
                ids = pc.cast(chunk.column("customer_id"), pa.string())
                repeated = len(ids) > 1 and pc.any(pc.equal(ids[1:], ids[:-1])).as_py()
                frame = chunk.set_column(chunk.schema.get_field_index("customer_id"), "customer_id", ids).to_pandas()
                return frame, ids[0].as_py(), ids[-1].as_py(), bool(repeated)

            def write(scores: pd.DataFrame, first: bool) -> None:
                nonlocal writer
                if csv_file is not None:
                    safe_csv_frame(scores).to_csv(csv_file, header=first, index=False)
                    return
                table = pa.Table.from_pandas(scores, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, use_dictionary=_label_columns(scores))
                writer.write_table(table.cast(writer.schema))

            # The next chunk is read and the last one written in their own threads while this one
            # is scored (Arrow decodes and encodes outside the interpreter lock); one of each at a time.
            chunks = _chunks(sources, chunk_size)
            upcoming: Future[Any] = _background(read, chunks)
            written: Future[None] | None = None
            interrupted = False
            try:
                while (got := upcoming.result()) is not None:
                    upcoming = _background(read, chunks)
                    frame, first, last, repeated = got
                    # The features are sorted by customer (and the passes are consecutive ranges of
                    # ids): a repeated customer would sit next to itself.
                    if repeated or first == previous:
                        raise InputError("the features hold a customer twice.",
                                         "This is a bug; report it with the data's shape.")
                    previous = last
                    scores = score_frame(model, frame, with_reasons=with_reasons)
                    if written is not None:
                        written.result()
                    written = _background(write, scores, n_out == 0)
                    n_out += len(scores)
                    for tier, count in scores["tier"].value_counts().items():
                        tiers[str(tier)] += int(count)
                    if progress is not None:
                        progress(n_out, n_in)
                if written is not None:
                    written.result()
            except KeyboardInterrupt:
                # Ctrl-C does not wait for a read or write under way: their threads end with the
                # process, and the temporary file is removed unfinished.
                interrupted = True
                raise
            finally:
                if not interrupted:
                    for pending in (upcoming, written):
                        if pending is not None:
                            pending.exception()  # wait; an error of its own is not the one raised
                    if writer is not None:
                        writer.close()
                    if csv_file is not None:
                        csv_file.close()
            if n_out != n_in:
                raise InputError(f"scoring wrote {n_out:,} rows for {n_in:,} customers.",
                                 "This is a bug; report it with the data's shape.")
        scoring_seconds = time.perf_counter() - t1
    return ScoreSummary(out, as_of, n_in, n_out, tiers, feature_seconds, scoring_seconds)
