"""Models: the candidate pipelines, each one scikit-learn Pipeline from raw features to tiers.

Every pipeline adds the BTYD features (BG/NBD and Gamma-Gamma fitted on the
training customers), imputes, scales numerics and one-hot encodes categoricals
with infrequent levels grouped (``location`` may have thousands of values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from clvtier.btyd import BTYDFeatures
from clvtier.errors import InputError

#: The candidates compared by default: the original four, then the stronger ones.
DEFAULT_CANDIDATES = ("logreg", "knn", "random_forest", "naive_bayes", "hist_gb")
ORIGINAL_FOUR = ("logreg", "knn", "random_forest", "naive_bayes")


def _estimator(name: str, seed: int):  # type: ignore[no-untyped-def]
    if name == "logreg":
        return LogisticRegression(max_iter=2000, class_weight="balanced", C=1.0)
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=25, weights="distance")
    if name == "random_forest":
        return RandomForestClassifier(
            n_estimators=150, min_samples_leaf=3, class_weight="balanced_subsample",
            n_jobs=-1, random_state=seed,
        )
    if name == "naive_bayes":
        return GaussianNB()
    if name == "hist_gb":
        return HistGradientBoostingClassifier(
            learning_rate=0.1, max_iter=120, max_leaf_nodes=15, min_samples_leaf=40,
            l2_regularization=1.0, class_weight="balanced", early_stopping=False,
            random_state=seed,
        )
    raise InputError(
        f"unknown candidate model '{name}'.", f"Choose from {', '.join(DEFAULT_CANDIDATES)}."
    )


def _preprocess(dense: bool) -> ColumnTransformer:
    numeric = Pipeline(
        [("impute", SimpleImputer(strategy="median", add_indicator=True)), ("scale", StandardScaler())]
    )
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
            (
                "onehot",
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist", min_frequency=20, max_categories=15,
                    sparse_output=not dense,
                ),
            ),
        ]
    )
    return ColumnTransformer(
        [
            ("num", numeric, make_column_selector(dtype_include="number")),
            ("cat", categorical, make_column_selector(dtype_exclude="number")),
        ],
        sparse_threshold=0.0,
        verbose_feature_names_out=False,
    )


def make_pipeline(name: str, horizon_days: int, seed: int = 42, btyd: bool = True) -> Pipeline:
    """One candidate pipeline: BTYD features -> preprocessing -> classifier.

    Parameters
    ----------
    name : str
        One of :data:`DEFAULT_CANDIDATES`.
    horizon_days : int
        Horizon of the BTYD expectations.
    seed : int
    btyd : bool
        Add the BTYD features (needs the ``btyd_*`` columns).
    """
    steps = []
    if btyd:
        steps.append(("btyd", BTYDFeatures(horizon_days=float(horizon_days))))
    steps += [("prep", _preprocess(dense=True)), ("model", _estimator(name, seed))]
    return Pipeline(steps)


def candidate_pipelines(names: Sequence[str], horizon_days: int, seed: int,
                        btyd: bool = True) -> dict[str, Pipeline]:
    """The named candidate pipelines, in order."""
    return {n: make_pipeline(n, horizon_days, seed, btyd) for n in names}


def model_input(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The shared dtype preparation of every training and scoring path.

    Numeric features become float64; categorical ones become object columns with
    NaN for missing, whatever engine (DuckDB, Spark, JSON) produced the frame.
    """
    X = pd.DataFrame(index=range(len(frame)))
    for col in columns:
        s = frame[col].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            X[col] = s.astype("float64")
        else:
            obj = s.astype("object")
            X[col] = obj.where(s.notna(), np.nan)
    return X
