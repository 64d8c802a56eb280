"""Predict: a tier, tier probabilities and the top reasons for every customer known at a date.

The CLI, the HTTP service and Spark all score through :func:`score_frame`, so a
customer gets the same answer whichever way it is scored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clvtier.errors import InputError, ModelError
from clvtier.features import BTYD_GROUP, FeatureSpec, build_features
from clvtier.models import model_input
from clvtier.persist import load_model
from clvtier.target import TIERS

N_REASONS = 3


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


def load(run_dir: str | Path) -> Model:
    """Load the model bundle written by ``clvtier train`` (checked; see :func:`persist.load_model`)."""
    pipeline, meta = load_model(run_dir)
    return Model(pipeline, meta)


def prepare(frame: pd.DataFrame, model: Model) -> pd.DataFrame:
    """The model's feature columns in training order and dtypes (shared by every scoring path)."""
    missing = [c for c in model.feature_names if c not in frame.columns]
    if missing:
        raise ModelError(
            f"the data lack {len(missing)} feature(s) the model needs: {missing[:8]}.",
            "Score data with the same tables (customers, engagements, marketing) the model was trained on.",
        )
    X = model_input(frame, model.feature_names)
    for col, dtype in model.feature_dtypes.items():
        if dtype == "float64" and not pd.api.types.is_float_dtype(X[col]):
            raise ModelError(f"feature '{col}' is not numeric in the data.", "Check the input tables' types.")
    return X


def proba_in_tier_order(pipeline: Any, X: pd.DataFrame) -> np.ndarray:
    """P(Low), P(Medium), P(High) per row."""
    proba = pipeline.predict_proba(X)
    classes = list(pipeline.classes_)
    out = np.zeros((len(X), len(TIERS)))
    for j, tier in enumerate(TIERS):
        if tier in classes:
            out[:, j] = proba[:, classes.index(tier)]
    return out


def reasons(pipeline: Any, X: pd.DataFrame, proba: np.ndarray, reference: dict[str, Any],
            n: int = N_REASONS) -> list[list[tuple[str, float]]]:
    """Top features behind each customer's predicted tier.

    A feature's contribution is how much the probability of the predicted tier drops
    when that feature alone is set to its typical training value (median or mode):
    a model-agnostic occlusion explanation that works for every candidate pipeline.
    """
    if len(X) == 0:
        return []
    pred = np.argmax(proba, axis=1)
    base = proba[np.arange(len(X)), pred]
    groups = explanation_groups(list(X.columns))
    batch = pd.concat([X] * len(groups), ignore_index=True)
    for j, (_label, members) in enumerate(groups):
        sl = slice(j * len(X), (j + 1) * len(X))
        for col in members:
            ref = reference.get(col)
            batch.iloc[sl, batch.columns.get_loc(col)] = np.nan if ref is None else ref
    perturbed = proba_in_tier_order(pipeline, batch)
    contrib = np.zeros((len(X), len(groups)))
    for j in range(len(groups)):
        p = perturbed[j * len(X):(j + 1) * len(X)]
        contrib[:, j] = base - p[np.arange(len(X)), pred]
    out = []
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :n]
    for i in range(len(X)):
        out.append([(groups[k][0], float(contrib[i, k])) for k in order[i]])
    return out


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
        Compute the top three contributions (costs one prediction per feature).
    """
    X = prepare(features, model)
    proba = proba_in_tier_order(model.pipeline, X)
    out = pd.DataFrame({
        "customer_id": features["customer_id"].astype(str).to_numpy(),
        "tier": np.asarray(TIERS, dtype=object)[np.argmax(proba, axis=1)],
        "p_low": proba[:, 0], "p_medium": proba[:, 1], "p_high": proba[:, 2],
    })
    if with_reasons:
        top = reasons(model.pipeline, X, proba, model.reference)
        for k in range(N_REASONS):
            out[f"reason_{k + 1}"] = [r[k][0] if len(r) > k else "" for r in top]
            out[f"reason_{k + 1}_effect"] = [r[k][1] if len(r) > k else 0.0 for r in top]
    return out


def predict(model: Model, data: Any, as_of: dt.date | None = None, with_reasons: bool = True) -> pd.DataFrame:
    """Score every customer known at ``as_of`` (default: the day after the last transaction).

    Returns
    -------
    DataFrame
        customer_id, tier, p_low, p_medium, p_high, reason_1..3 and their effects;
        exactly one row per customer known at ``as_of``.
    """
    as_of = as_of or data.last_date + dt.timedelta(days=1)
    fs = build_features(data, as_of, model.spec)
    scores = score_frame(model, fs.frame, with_reasons=with_reasons)
    if len(scores) != len(fs.frame) or scores["customer_id"].duplicated().any():
        raise InputError(
            f"scoring produced {len(scores)} rows for {len(fs.frame)} customers.",
            "This is a bug; report it with the data's shape.",
        )
    return scores


def write_scores(scores: pd.DataFrame, out: str | Path) -> Path:
    """Write scores atomically as CSV (text fields guarded against spreadsheet formulas) or Parquet."""
    from clvtier.persist import atomic_path

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InputError(f"{out}: unknown output format.", "Name the output file .csv or .parquet.")
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            scores.to_parquet(tmp, index=False)
        else:
            safe_csv_frame(scores).to_csv(tmp, index=False)
    return out


def safe_csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix text cells that a spreadsheet would run as a formula (=, +, -, @) with a quote."""
    out = frame.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            s = out[col].astype("object")
            risky = s.map(lambda v: isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"))
            out[col] = s.where(~risky, "'" + s.astype(str))
    return out
