"""Train: features and tiers at a cutoff, candidates compared on identical folds, the best refitted.

The whole run is a function of the data and a :class:`TrainConfig`: seeds are
fixed, candidate order is fixed, and selection uses cross-validation on the
training customers only (the test customers are never used to choose).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import get_scorer
from sklearn.model_selection import StratifiedKFold, train_test_split

from clvtier import clv
from clvtier.errors import InputError
from clvtier.evaluate import (
    MajorityBaseline,
    carry_forward_tiers,
    classification_metrics,
    headline_with_ci,
)
from clvtier.features import (
    BTYD_GROUP,
    FeatureSet,
    FeatureSpec,
    as_date,
    build_features,
    learn_spec,
    pass_count,
    require_dataset,
    spend_summary_expr,
    transaction_rows,
)
from clvtier.models import DEFAULT_CANDIDATES, KNOWN_CANDIDATES, candidate_pipelines, make_pipeline, model_input
from clvtier.persist import frame_fingerprint
from clvtier.target import TIERS, TierBinner

METRICS = {"macro_f1": "f1_macro", "accuracy": "accuracy", "weighted_f1": "f1_weighted",
           "balanced_accuracy": "balanced_accuracy"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run besides the data.

    Attributes
    ----------
    mode : {"predictive", "snapshot"}
    target : str
        ``future`` or ``total`` (predictive), ``total_spend`` or ``formula`` (snapshot).
    cutoff : date, optional
        Predictive mode: last date minus the horizon when omitted.
    horizon_days : int
    metric : str
        Model-selection metric: one of :data:`METRICS`.
    cv_folds : int
    seed : int
    candidates : tuple of str
    tier_method : {"quartile", "quantiles", "amounts"}
    tier_cuts : tuple of two floats, optional
    test_size : float
        Share of customers held out for the test set.
    backtests : int
        Number of earlier cutoffs for the out-of-time backtest (predictive mode).
    drop_undated : bool
        Leave out features that are not time-bounded (engagement totals, age).
    n_boot : int
        Bootstrap resamples for the confidence intervals.
    max_train_customers : int or None
        When more customers are known at the cutoff, train and evaluate on a stratified
        sample of this many (see :func:`training_sample`); None never samples.
    """

    mode: str = "predictive"
    target: str = "future"
    cutoff: dt.date | None = None
    horizon_days: int = 365
    metric: str = "macro_f1"
    cv_folds: int = 5
    seed: int = 42
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    tier_method: str = "quartile"
    tier_cuts: tuple[float, float] | None = None
    test_size: float = 0.25
    backtests: int = 2
    drop_undated: bool = False
    n_boot: int = 500
    max_train_customers: int | None = 200_000

    def __post_init__(self) -> None:
        # Forgiving where the meaning is plain: a date written as text, candidates as one string.
        if isinstance(self.cutoff, str):
            object.__setattr__(self, "cutoff", as_date(self.cutoff))
        if isinstance(self.candidates, str):
            object.__setattr__(self, "candidates", tuple(c.strip() for c in self.candidates.split(",") if c.strip()))
        if self.cutoff is not None and not isinstance(self.cutoff, dt.date):
            raise InputError(f"cutoff {self.cutoff!r} is not a date.", "Pass a datetime.date or 'YYYY-MM-DD'.")
        if self.mode not in ("predictive", "snapshot"):
            raise InputError(f"unknown mode '{self.mode}'.", "Use predictive or snapshot.")
        allowed = clv.PREDICTIVE_TARGETS if self.mode == "predictive" else clv.SNAPSHOT_TARGETS
        if self.target not in allowed:
            raise InputError(
                f"target '{self.target}' does not exist in {self.mode} mode.",
                f"Use one of {', '.join(allowed)}.",
            )
        if self.metric not in METRICS:
            raise InputError(f"unknown metric '{self.metric}'.", f"Use one of {', '.join(METRICS)}.")
        if not 2 <= self.cv_folds <= 20:
            raise InputError(f"cv_folds={self.cv_folds} (--cv) is out of range.", "Use 2 to 20 folds.")
        if not 0.05 <= self.test_size <= 0.5:
            raise InputError(f"test_size={self.test_size} is out of range.", "Use 0.05 to 0.5.")
        if self.horizon_days < 7:
            raise InputError(f"horizon_days={self.horizon_days} (--horizon-days) is too short.", "Use at least 7 days.")
        if not self.candidates:
            raise InputError("no candidate models given.", f"Choose from {', '.join(DEFAULT_CANDIDATES)}.")
        if unknown := [c for c in self.candidates if c not in KNOWN_CANDIDATES]:
            raise InputError(f"unknown candidate model(s) {unknown}.", f"Choose from {', '.join(KNOWN_CANDIDATES)}.")
        if self.backtests < 0:
            raise InputError(f"backtests={self.backtests} (--backtests) is out of range.", "Use 0 (none) or more.")
        if self.tier_method in ("quantiles", "amounts") and self.tier_cuts is None:
            raise InputError(f"the {self.tier_method} tier method needs two cuts.",
                             f"Use --tiers {self.tier_method}:A,B (tier_cuts=(A, B) in Python), or --tiers quartile.")
        if not 1 <= self.n_boot <= 100_000:
            raise InputError(f"n_boot={self.n_boot} (--bootstrap) is out of range.",
                             "Use 1 to 100,000 resamples (the default is 500).")
        if not 0 <= self.seed < 2**32:
            raise InputError(f"seed={self.seed} (--seed) is out of range.",
                             "Use a whole number from 0 to 4,294,967,295.")
        if self.max_train_customers is not None and self.max_train_customers < 100:
            raise InputError(f"max_train_customers={self.max_train_customers} (--max-train-customers) is too small.",
                             "Use at least 100 (the default is 200,000).")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        d["candidates"] = list(self.candidates)
        d["tier_cuts"] = list(self.tier_cuts) if self.tier_cuts else None
        return d


@dataclass
class TrainResult:
    """A trained model and the evidence about it."""

    pipeline: Any
    binner: TierBinner
    spec: FeatureSpec
    feature_names: list[str]
    feature_dtypes: dict[str, str]
    config: TrainConfig
    cutoff: dt.date
    chosen: str
    cv: pd.DataFrame
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    reference: dict[str, Any]
    undated: list[str]
    data_summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    values: pd.DataFrame | None = None
    data_fingerprint: str = ""


def _ordered_proba(pipeline: Any, X: pd.DataFrame) -> np.ndarray:
    """Class probabilities in TIERS order, whatever order the classifier learned."""
    proba = pipeline.predict_proba(X)
    classes = list(pipeline.classes_)
    out = np.zeros((len(X), len(TIERS)))
    for j, tier in enumerate(TIERS):
        if tier in classes:
            out[:, j] = proba[:, classes.index(tier)]
    return out


def tiers_from_proba(proba: np.ndarray) -> np.ndarray:
    """The most probable tier per row (ties go to the lower tier)."""
    return np.asarray(TIERS, dtype=object)[np.argmax(proba, axis=1)]


def rank_tiers(score_train: np.ndarray, score: np.ndarray, shares: dict[str, float]) -> np.ndarray:
    """Tiers from a continuous score, with cut points that reproduce the training class shares."""
    lo = np.quantile(score_train, shares["Low"])
    hi = np.quantile(score_train, 1.0 - shares["High"])
    out = np.full(len(score), "Medium", dtype=object)
    out[score < lo] = "Low"
    out[score >= hi] = "High"
    if lo == hi:  # many tied scores: rank within the ties instead
        order = np.argsort(-score, kind="stable")
        n_high = int(round(shares["High"] * len(score)))
        n_low = int(round(shares["Low"] * len(score)))
        out[:] = "Medium"
        out[order[:n_high]] = "High"
        if n_low:
            out[order[len(score) - n_low:]] = "Low"
    return out


def _model_features(fs: FeatureSet, drop_undated: bool) -> list[str]:
    cols = list(fs.columns)
    if drop_undated:
        cols = [c for c in cols if fs.columns[c]["time_bounded"]]
    return cols


def _dataset(data: Any, cfg: TrainConfig, cutoff: dt.date, spec: FeatureSpec | None,
             binner: TierBinner | None = None, sample: TrainingSample | None = None) -> tuple[FeatureSet, pd.Series]:
    if sample is None:
        fs = build_features(data, cutoff, spec)
    else:
        fs = build_features(data, cutoff, spec, restrict_to=sample.table(), passes=sample.passes(data))
    customers = pd.Index(fs.frame["customer_id"])
    values = clv.values_for(customers, fs.frame, data, cfg.mode, cfg.target, cutoff, cfg.horizon_days)  # type: ignore[arg-type]
    return fs, values


def resolve_cutoff(data: Any, cfg: TrainConfig) -> dt.date:
    """The cutoff a run uses: the configured one, or the default for its mode."""
    if cfg.mode == "snapshot":
        return data.last_date + dt.timedelta(days=1)
    cutoff = cfg.cutoff or clv.default_cutoff(data, cfg.horizon_days)
    clv.check_cutoff(data, cutoff, cfg.horizon_days)
    return cutoff


def train(data: Any, config: TrainConfig | None = None, progress: Progress | None = None,
          test_customers: Collection[str] | None = None) -> TrainResult:
    """Train and evaluate CLV-tier models on validated data.

    Parameters
    ----------
    data : Dataset
        From :func:`clvtier.validate.load`.
    config : TrainConfig, optional
    progress : callable, optional
        Called with the name of each step as it starts.
    test_customers : collection of str, optional
        Hold out exactly these customers as the test set (a fixed benchmark split)
        instead of the stratified random split of ``config.test_size``. Model
        selection still uses cross-validation on the other customers only.

    Returns
    -------
    TrainResult
    """
    require_dataset(data)
    cfg = config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise InputError(f"expected a TrainConfig, got {type(cfg).__name__}.", "Pass clvtier.TrainConfig(...).")
    say = progress or (lambda _step: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    say("Building features")
    cutoff = resolve_cutoff(data, cfg)
    spec = learn_spec(data.tables, data.con)
    # A fixed benchmark test set is small and must be kept whole: it is never sampled.
    sample = training_sample(data, cfg, cutoff, spec) if test_customers is None else None
    if sample is not None:
        say(f"Building features of a stratified sample of {len(sample.customer_ids):,} "
            f"of {sample.population:,} customers")
    fs, values = _dataset(data, cfg, cutoff, spec, sample=sample)
    feature_names = _model_features(fs, cfg.drop_undated)
    X = model_input(fs.frame, feature_names)
    ids = fs.frame["customer_id"].to_numpy()
    y_value = values.to_numpy(dtype="float64")
    if len(X) < 4 * cfg.cv_folds:
        raise InputError(
            f"only {len(X)} customers are known at the cutoff {cutoff}; too few to train.",
            "Use more data or an earlier/later --cutoff.",
        )
    timings["features"] = time.perf_counter() - t0

    say("Splitting customers")
    strata = _strata(y_value)
    idx = np.arange(len(X))
    if test_customers is None:
        tr, te = train_test_split(idx, test_size=cfg.test_size, random_state=cfg.seed, stratify=strata)
    else:
        held = np.isin(ids.astype(str), np.asarray([str(c) for c in test_customers], dtype=object))
        tr, te = idx[~held], idx[held]
        if not len(tr) or not len(te):
            raise InputError(f"test_customers holds {len(te)} of the {len(idx)} customers known at {cutoff}.",
                             "Hold out some, but not all, of the customers.")
    tr, te = np.sort(tr), np.sort(te)
    binner = TierBinner(method=cfg.tier_method, cuts=cfg.tier_cuts).fit(y_value[tr])  # type: ignore[arg-type]
    y = binner.transform(y_value)
    _check_classes(y[tr], cfg.cv_folds)

    say(f"Cross-validating {', '.join(cfg.candidates)} ({cfg.cv_folds} folds), then fitting on every training customer")
    t1 = time.perf_counter()
    pipes = candidate_pipelines(cfg.candidates, cfg.horizon_days, cfg.seed, btyd=_has_btyd(feature_names),
                                metric=cfg.metric)
    folds = list(StratifiedKFold(cfg.cv_folds, shuffle=True, random_state=cfg.seed).split(tr, y[tr]))
    # Each candidate's fold fits and its final fit on all the training customers are
    # independent: one batch, in parallel processes on large data (see _jobs).
    tasks = [(name, fold) for name in pipes for fold in [*folds, None]]
    done = _fit_all([(pipes[name], fold) for name, fold in tasks], X.iloc[tr], y[tr],
                    get_scorer(METRICS[cfg.metric]), _jobs(len(tr), len(tasks)))
    cv_rows = []
    fitted: dict[str, Any] = {}
    for name in pipes:
        runs = [r for (n, fold), r in zip(tasks, done, strict=True) if n == name and fold is not None]
        cv_rows.append({"model": name, "metric": cfg.metric, "mean": float(np.mean([r[1] for r in runs])),
                        "std": float(np.std([r[1] for r in runs])), "folds": [float(r[1]) for r in runs],
                        "fit_seconds": float(np.mean([r[2] for r in runs]))})
        fitted[name] = done[tasks.index((name, None))][0]
    cv = pd.DataFrame(cv_rows)
    chosen = str(cv.sort_values(["mean", "std"], ascending=[False, True], kind="stable").iloc[0]["model"])
    timings["cross_validation"] = time.perf_counter() - t1

    # Evaluation, explanation, the audit and the backtests fit and predict too: on as few
    # threads as the fits (see ONE_THREAD_ROWS).
    with _few_threads(len(tr)):
        say("Evaluating on held-out customers")
        t2 = time.perf_counter()
        test_metrics: dict[str, Any] = {}
        probas: dict[str, np.ndarray] = {}
        for name, model in fitted.items():
            proba = _ordered_proba(model, X.iloc[te])
            probas[name] = proba
            test_metrics[name] = classification_metrics(y[te], tiers_from_proba(proba), proba, y_value[te])
        baselines, baseline_scores = _baselines(fs, X, fitted[chosen], tr, te, y, y_value, cfg)
        test_metrics.update(baselines)
        chosen_proba = probas[chosen]
        chosen_pred = tiers_from_proba(chosen_proba)
        headline = headline_with_ci(y[te], chosen_pred, chosen_proba, y_value[te], n_boot=cfg.n_boot, seed=cfg.seed)
        headline_baselines = {
            name: headline_with_ci(y[te], pred, None if score is None else _score_as_proba(score),
                                   y_value[te], n_boot=cfg.n_boot, seed=cfg.seed)
            for name, (pred, score) in baseline_scores.items()
        }
        timings["evaluation"] = time.perf_counter() - t2

        say("Explaining the chosen model")
        t_explain = time.perf_counter()
        reference = _reference(X.iloc[tr])
        importance = _permutation_importance(fitted[chosen], X.iloc[te], y[te], cfg, reference)
        examples = _examples(fitted[chosen], X.iloc[te], chosen_proba, ids[te], y[te], y_value[te], reference)
        timings["explanation"] = time.perf_counter() - t_explain

        say("Leakage audit")
        t_audit = time.perf_counter()
        audit = _leakage_audit(fs, pipes[chosen], X, y, y_value, tr, te, cfg, test_metrics[chosen])
        timings["leakage_audit"] = time.perf_counter() - t_audit

        say("Backtesting at earlier cutoffs")
        t3 = time.perf_counter()
        backtest = (_backtest(data, cfg, cutoff, fs.spec, chosen, feature_names, sample=sample)
                    if cfg.mode == "predictive" else [])
        timings["backtest"] = time.perf_counter() - t3

    pipeline = fitted[chosen]
    predictions = pd.DataFrame({
        "customer_id": ids[te], "actual_value": y_value[te], "actual_tier": y[te],
        "predicted_tier": chosen_pred, "p_low": chosen_proba[:, 0], "p_medium": chosen_proba[:, 1],
        "p_high": chosen_proba[:, 2],
    })
    for name, (pred, score) in baseline_scores.items():
        predictions[f"{name}_tier"] = pred
        if score is not None:
            predictions[f"{name}_score"] = score
    shares = {
        "train": _shares(y[tr]), "test": _shares(y[te]),
    }
    metrics = {
        "mode": cfg.mode,
        "describes_past_only": cfg.mode == "snapshot",
        "target": cfg.target,
        "cutoff": cutoff.isoformat(),
        "horizon_days": cfg.horizon_days if cfg.mode == "predictive" else None,
        "n_customers": int(len(X)), "n_train": int(len(tr)), "n_test": int(len(te)),
        "thresholds": binner.describe(),
        "class_shares": shares,
        "selection_metric": cfg.metric,
        "chosen": chosen,
        "cv": cv_rows,
        "test": test_metrics,
        "headline": headline,
        "headline_baselines": headline_baselines,
        "leakage_audit": audit,
        "backtest": backtest,
        "value_summary": _value_summary(y_value),
        "importance": importance,
        "examples": examples,
        "training_sample": (sample.describe(cfg.seed) if sample is not None
                            else {"used": False, "size": int(len(X)), "population": int(len(X))}),
    }
    reference = _reference(X.iloc[tr])
    timings["total"] = time.perf_counter() - t0
    values_frame = pd.DataFrame({"customer_id": ids, "value": y_value, "tier": y,
                                 "split": np.where(np.isin(idx, te), "test", "train"),
                                 "past_value": fs.frame["total_spend"].to_numpy()})
    return TrainResult(
        pipeline=pipeline, binner=binner, spec=fs.spec, feature_names=feature_names,
        feature_dtypes={c: str(X[c].dtype) for c in feature_names}, config=cfg, cutoff=cutoff,
        chosen=chosen, cv=cv, metrics=metrics, predictions=predictions, reference=reference,
        undated=[c for c in fs.undated if c in feature_names],
        data_summary=_jsonable(data.summary), warnings=[p.to_dict() for p in data.warnings],
        timings=timings, values=values_frame, data_fingerprint=frame_fingerprint(fs.frame),
    )


@dataclass(frozen=True)
class TrainingSample:
    """The customers a run trains and evaluates on when more are known than the limit.

    Attributes
    ----------
    customer_ids : ndarray of str
        The sampled customers, sorted.
    population : int
        Customers known at the cutoff.
    strata : list of dict
        Per stratum of :func:`_strata`: its number, customers in the population and in the sample.
    """

    customer_ids: np.ndarray
    population: int
    strata: list[dict[str, int]]

    def table(self) -> Any:
        """The sampled ``customer_id`` as an in-memory Ibis table (any backend can join it)."""
        import ibis
        import pyarrow as pa

        return ibis.memtable(pa.table({"customer_id": pa.array(self.customer_ids, type=pa.string())}))

    def passes(self, data: Any) -> int:
        """Passes over ranges of ids for the sample's features: one per PASS_ROWS of its expected share of rows.

        Every pass reads all the transactions, so a sample of a few percent of the
        customers is built in one pass, not in as many as the whole data would need.
        """
        return pass_count(transaction_rows(data) * len(self.customer_ids) / max(self.population, 1))

    def describe(self, seed: int) -> dict[str, Any]:
        return {
            "used": True, "size": int(len(self.customer_ids)), "population": int(self.population),
            "method": SAMPLE_METHOD, "seed": seed, "strata": self.strata,
        }


SAMPLE_METHOD = ("stratified random sample with proportional allocation (scikit-learn StratifiedShuffleSplit); "
                 "strata: CLV value zero, then the quartiles of the positive values (stratum 0 = zero, 1-4 = "
                 "quartiles; a median split when a stratum would hold fewer than two customers)")


def training_sample(data: Any, cfg: TrainConfig, cutoff: dt.date, spec: FeatureSpec) -> TrainingSample | None:
    """Draw the training customers when more than ``cfg.max_train_customers`` are known at the cutoff.

    The CLV value of every known customer is computed by the engine from a spend
    summary (:func:`clvtier.features.spend_summary_expr`) and the horizon spend, at a
    fraction of the cost of the full features. The customers are grouped into the
    strata of the train/test split (:func:`_strata`: zero value, then the quartiles of
    the positive values) and ``max_train_customers`` are drawn with proportional
    allocation and the run's seed, so the tier shares of the sample match the
    population's. Features are then built for the sampled customers only.

    Returns
    -------
    TrainingSample or None
        None when every known customer fits (or ``max_train_customers`` is None).
    """
    limit = cfg.max_train_customers
    if limit is None:
        return None
    expr, param = spend_summary_expr(data.tables, spec)
    frame = data.con.execute(expr, params={param: cutoff})
    population = len(frame)
    if population <= limit:
        return None
    customers = pd.Index(frame["customer_id"].astype(str).to_numpy())
    values = clv.values_for(customers, frame.reset_index(drop=True), data, cfg.mode, cfg.target,  # type: ignore[arg-type]
                            cutoff, cfg.horizon_days).to_numpy(dtype="float64")
    strata = _strata(values)
    picked, _ = train_test_split(np.arange(population), train_size=limit, random_state=cfg.seed, stratify=strata)
    per_stratum = [
        {"stratum": int(k), "population": int((strata == k).sum()), "sample": int((strata[picked] == k).sum())}
        for k in np.unique(strata)
    ]
    ids = np.sort(customers.to_numpy()[picked].astype(str))
    return TrainingSample(customer_ids=ids, population=population, strata=per_stratum)


#: Training customers from which independent fits (cross-validation folds, the final
#: candidates) run in parallel processes with one thread each. scikit-learn's gradient
#: boosting gains little from a second thread (120,000 customers: 15.6 s on two threads,
#: 18.7 s on one), so two fits side by side finish sooner; below this size starting the
#: processes costs more than it saves. Every fit gives the same model either way.
PARALLEL_FIT_ROWS = 20_000
#: Below this many training customers, fits run on one thread (OpenMP and BLAS), as they
#: do from it on in parallel processes. A second thread gains little at that size (a
#: gradient-boosting fit on 2,000 rows: 0.33 s on one thread or two; two threads are faster
#: on an idle machine only from about 13,000 rows on), and while other programs keep the
#: cores busy the threads wait for each other at every step: 0.77 s on two threads against
#: 0.33 s on one, and a demo training of 5,847 customers took 657 s against 36 s.
ONE_THREAD_ROWS = PARALLEL_FIT_ROWS


def _few_threads(n_rows: int) -> contextlib.AbstractContextManager[Any]:
    """One thread (OpenMP and BLAS) for fits and predictions on fewer than :data:`ONE_THREAD_ROWS` customers."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1) if n_rows < ONE_THREAD_ROWS else contextlib.nullcontext()


def _jobs(n_rows: int, n_fits: int) -> int:
    """Processes for ``n_fits`` independent fits on ``n_rows`` customers (see :data:`PARALLEL_FIT_ROWS`)."""
    if n_rows < PARALLEL_FIT_ROWS:
        return 1
    from joblib import cpu_count

    return max(1, min(n_fits, cpu_count()))


def _fit_all(fits: list[tuple[Any, tuple[np.ndarray, np.ndarray] | None]], X: pd.DataFrame, y: np.ndarray,
             scorer: Any, n_jobs: int) -> list[tuple[Any, float, float]]:
    """(model, score, fit seconds) of each (pipeline, fold) on ``X``, ``y``, in order, in ``n_jobs`` processes.

    A fit with a fold (train rows, test rows) is fitted on the one and scored on the
    other, as ``cross_validate`` does; a fit without one is fitted on all rows (score NaN).
    """
    if n_jobs <= 1:
        with _few_threads(len(X)):
            return [_fit_one(pipe, X, y, fold, scorer) for pipe, fold in fits]
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=n_jobs)(delayed(_fit_one)(pipe, X, y, fold, scorer) for pipe, fold in fits))


def _fit_one(pipe: Any, X: pd.DataFrame, y: np.ndarray, fold: tuple[np.ndarray, np.ndarray] | None,
             scorer: Any) -> tuple[Any, float, float]:
    model = clone(pipe)
    t0 = time.perf_counter()
    if fold is None:
        return model.fit(X, y), float("nan"), time.perf_counter() - t0
    train_rows, test_rows = fold
    model.fit(X.iloc[train_rows], y[train_rows])
    seconds = time.perf_counter() - t0
    # Only the score travels back from a process: the fold's model is not needed.
    return None, float(scorer(model, X.iloc[test_rows], y[test_rows])), seconds


def _has_btyd(features: Sequence[str]) -> bool:
    return all(c in features for c in ("btyd_frequency", "btyd_recency", "btyd_T", "btyd_monetary"))


def _strata(values: np.ndarray) -> np.ndarray:
    """Coarse value groups for a stratified split: zero, then quartiles of the positive values."""
    out = np.zeros(len(values), dtype=int)
    pos = values > 0
    if pos.sum() >= 8:
        qs = np.quantile(values[pos], [0.25, 0.5, 0.75])
        out[pos] = 1 + np.searchsorted(qs, values[pos], side="right")
    counts = np.bincount(out)
    if (counts[counts > 0] < 2).any():
        return (values > np.median(values)).astype(int) if len(np.unique(values)) > 1 else np.zeros(len(values), int)
    return out


def _check_classes(y_train: np.ndarray, folds: int) -> None:
    counts = pd.Series(y_train).value_counts()
    small = counts[counts < folds]
    if len(counts) < 3 or len(small):
        raise InputError(
            f"too few training customers in some tiers for {folds}-fold cross-validation "
            f"(counts: {counts.to_dict()}).",
            "Use more data, fewer --cv folds, or custom tier cuts.",
        )


def _shares(y: np.ndarray) -> dict[str, float]:
    s = pd.Series(y).value_counts(normalize=True)
    return {t: float(s.get(t, 0.0)) for t in TIERS}


def _score_as_proba(score: np.ndarray) -> np.ndarray:
    """A one-column score placed as P(High) so that ranking metrics can use it."""
    out = np.zeros((len(score), 3))
    ranks = pd.Series(score).rank(pct=True).to_numpy()
    out[:, 2] = ranks
    out[:, 0] = 1 - ranks
    return out


def _baselines(fs: FeatureSet, X: pd.DataFrame, chosen_model: Any, tr: np.ndarray, te: np.ndarray,
               y: np.ndarray, y_value: np.ndarray, cfg: TrainConfig
               ) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray | None]]]:
    """Naive rules on the same test customers: majority class, carry-forward, BG/NBD + Gamma-Gamma."""
    out: dict[str, Any] = {}
    scores: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    maj = MajorityBaseline().fit(np.zeros((len(tr), 1)), y[tr])
    pred = maj.predict(np.zeros((len(te), 1)))
    out["baseline_majority"] = classification_metrics(y[te], pred, None, y_value[te])
    scores["baseline_majority"] = (pred, None)
    past = fs.frame["total_spend"].to_numpy(dtype="float64")
    try:
        past_binner = TierBinner(method=cfg.tier_method, cuts=cfg.tier_cuts).fit(past[tr])  # type: ignore[arg-type]
        pred = carry_forward_tiers(past[te], past_binner)
    except InputError:
        pred = rank_tiers(past[tr], past[te], _shares(y[tr]))
    out["baseline_carry_forward"] = classification_metrics(y[te], pred, _score_as_proba(past[te]), y_value[te])
    scores["baseline_carry_forward"] = (pred, past[te])
    expected = _bgnbd_value(chosen_model, X, past, cfg)
    if expected is not None:
        pred = rank_tiers(expected[tr], expected[te], _shares(y[tr]))
        out["baseline_bgnbd_gg"] = classification_metrics(y[te], pred, _score_as_proba(expected[te]), y_value[te])
        scores["baseline_bgnbd_gg"] = (pred, expected[te])
    return out, scores


def _bgnbd_value(model: Any, X: pd.DataFrame, past: np.ndarray, cfg: TrainConfig) -> np.ndarray | None:
    """The BG/NBD + Gamma-Gamma baseline's value per row of ``X``, from the fitted model's BTYD step.

    None when the model has no BTYD step or its fit degenerated. With a total target the
    spend so far is added, as the label adds it.
    """
    btyd = model.named_steps.get("btyd") if hasattr(model, "named_steps") else None
    if btyd is None or getattr(btyd, "degenerate_", False):
        return None
    expected = btyd.transform(X)["bgnbd_expected_value"].to_numpy(dtype="float64")
    return expected + past if cfg.target == "total" or cfg.mode == "snapshot" else expected


#: The metrics the leakage audit and the backtests record for each method. Lift in the top
#: 25 % compares the same number of customers for every method; the revenue held by
#: predicted High depends on how many each puts in High.
COMPARED = ("accuracy", "macro_f1", "high_recall", "high_precision", "revenue_capture_high", "lift_top25",
            "roc_auc_high")


def _leakage_audit(fs: FeatureSet, pipe: Any, X: pd.DataFrame, y: np.ndarray, y_value: np.ndarray,
                   tr: np.ndarray, te: np.ndarray, cfg: TrainConfig, with_all: dict[str, Any]) -> dict[str, Any]:
    undated = [c for c in fs.undated if c in X.columns]
    audit: dict[str, Any] = {"undated_features": undated, "mode": cfg.mode}
    if cfg.mode == "snapshot":
        audit["note"] = ("Snapshot mode: the label is computed from the same spend that the features "
                         "contain; these scores describe the past and are not evidence of prediction.")
    if not undated:
        audit["note"] = audit.get("note", "All features are time-bounded; nothing to audit.")
        return audit
    keep = [c for c in X.columns if c not in undated]
    model = clone(pipe).fit(X.iloc[tr][keep], y[tr])
    proba = _ordered_proba(model, X.iloc[te][keep])
    without = classification_metrics(y[te], tiers_from_proba(proba), proba, y_value[te])
    keys = COMPARED
    audit["with_undated"] = {k: with_all.get(k) for k in keys}
    audit["without_undated"] = {k: without.get(k) for k in keys}
    delta = (with_all.get("macro_f1") or 0) - (without.get("macro_f1") or 0)
    audit["macro_f1_gain_from_undated"] = delta
    return audit


def _backtest(data: Any, cfg: TrainConfig, cutoff: dt.date, spec: FeatureSpec, chosen: str,
              feature_names: list[str], sample: TrainingSample | None = None) -> list[dict[str, Any]]:
    """Out of time: train at c - H (labels in [c - H, c)), test every customer at c (labels in [c, c + H)).

    With a training sample, both cutoffs use the sampled customers only.
    """
    step = max(30, cfg.horizon_days // 4)
    rows: list[dict[str, Any]] = []
    for k in range(1, cfg.backtests + 1):
        test_cut = cutoff - dt.timedelta(days=step * k)
        train_cut = test_cut - dt.timedelta(days=cfg.horizon_days)
        try:
            clv.check_cutoff(data, train_cut, cfg.horizon_days)
            clv.check_cutoff(data, test_cut, cfg.horizon_days)
        except InputError as exc:
            rows.append({"cutoff": test_cut.isoformat(), "skipped": exc.message})
            continue
        fs_tr, v_tr = _dataset(data, cfg, train_cut, spec, sample=sample)
        fs_te, v_te = _dataset(data, cfg, test_cut, spec, sample=sample)
        try:
            binner = TierBinner(method=cfg.tier_method, cuts=cfg.tier_cuts).fit(v_tr.to_numpy())  # type: ignore[arg-type]
        except InputError as exc:
            rows.append({"cutoff": test_cut.isoformat(), "skipped": exc.message})
            continue
        y_tr = binner.transform(v_tr.to_numpy())
        y_te = binner.transform(v_te.to_numpy())
        model = make_pipeline(chosen, cfg.horizon_days, cfg.seed, btyd=_has_btyd(feature_names), metric=cfg.metric)
        X_tr, X_te = model_input(fs_tr.frame, feature_names), model_input(fs_te.frame, feature_names)
        model.fit(X_tr, y_tr)
        proba = _ordered_proba(model, X_te)
        m = classification_metrics(y_te, tiers_from_proba(proba), proba, v_te.to_numpy())
        past_tr = fs_tr.frame["total_spend"].to_numpy()
        past_te = fs_te.frame["total_spend"].to_numpy()
        try:
            cf = carry_forward_tiers(past_te, TierBinner(method=cfg.tier_method, cuts=cfg.tier_cuts).fit(past_tr))  # type: ignore[arg-type]
        except InputError:
            cf = rank_tiers(past_tr, past_te, _shares(y_tr))
        b = classification_metrics(y_te, cf, _score_as_proba(past_te), v_te.to_numpy())
        keys = COMPARED
        row = {
            "cutoff": test_cut.isoformat(), "train_cutoff": train_cut.isoformat(),
            "n_customers": int(len(fs_te.frame)), "model": {k: m.get(k) for k in keys},
            "carry_forward": {k: b.get(k) for k in keys},
        }
        value_tr, value_te = _bgnbd_value(model, X_tr, past_tr, cfg), _bgnbd_value(model, X_te, past_te, cfg)
        if value_tr is not None and value_te is not None:
            bg = rank_tiers(value_tr, value_te, _shares(y_tr))
            g = classification_metrics(y_te, bg, _score_as_proba(value_te), v_te.to_numpy())
            row["bgnbd_gg"] = {k: g.get(k) for k in keys}
        rows.append(row)
    return rows


#: Test customers used for permutation importance at most (a random subset beyond).
IMPORTANCE_MAX_ROWS = 20_000


def _shuffler(pipeline: Any, X: pd.DataFrame, reference: dict[str, Any]) -> Any:
    """A :class:`clvtier.occlusion.Shuffler` of ``X`` for the pipeline's compiled plan, or None.

    The plan reproduces ``predict_proba`` bit for bit and skips the pipeline's per-call
    data-frame handling, which dominated the many predictions of permutation importance.
    None when the pipeline has no plan, or when the plan's predictions differ from the
    pipeline's on ``X``: the caller then predicts through the pipeline.
    """
    from clvtier.occlusion import Shuffler, compile_plan
    from clvtier.predict import explanation_groups

    columns = list(X.columns)
    plan = compile_plan(pipeline, columns, explanation_groups(columns), reference)
    if plan is None:
        return None
    shuffler = Shuffler(plan, X)
    same = np.array_equal(np.asarray(pipeline.classes_)[np.argmax(shuffler.base, axis=1)], pipeline.predict(X))
    return shuffler if same else None


def _sorted_unique(values: np.ndarray) -> bool:
    try:
        return bool(len(values)) and all(a < b for a, b in zip(values[:-1], values[1:], strict=True))
    except TypeError:  # labels that do not compare
        return False


class _Fixed(ClassifierMixin, BaseEstimator):
    """Probabilities computed already, for a scikit-learn scorer (which asks a classifier for them)."""

    def __init__(self, classes: Any = None, proba: Any = None) -> None:
        self.classes = classes
        self.proba = proba

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.classes)

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(self.proba)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _permutation_importance(model: Any, X: pd.DataFrame, y: np.ndarray, cfg: TrainConfig,
                            reference: dict[str, Any], n_repeats: int = 5) -> list[dict[str, Any]]:
    """Drop in the selection metric when a feature is shuffled across the test customers.

    The BTYD summary columns are shuffled together (with one permutation) so every
    shuffled row is still a possible customer (recency <= T). Beyond
    :data:`IMPORTANCE_MAX_ROWS` test customers, a seeded random subset of that many
    is used: the ranking is stable long before, and the cost grows with rows x features.
    """
    from clvtier.predict import explanation_groups

    scorer = get_scorer(METRICS[cfg.metric])
    rng = np.random.default_rng(cfg.seed)
    if len(X) > IMPORTANCE_MAX_ROWS:
        keep = np.sort(rng.choice(len(X), IMPORTANCE_MAX_ROWS, replace=False))
        X, y = X.iloc[keep], y[keep]
    shuffler = _shuffler(model, X, reference)
    classes = np.asarray(model.classes_)
    if shuffler is None:
        base = scorer(model, X, y)
    else:
        if _sorted_unique(classes) and np.isin(y, classes).all():
            # Metrics on tier codes in the sorted order of the tier names: the same labels in
            # the same order, so the same values, without sorting strings on every call.
            y = np.searchsorted(classes, y)
            classes = np.arange(len(classes))
        base = scorer(_Fixed(classes, shuffler.base), X, y)
    rows = []
    for g, (label, members) in enumerate(explanation_groups(list(X.columns))):
        drops = []
        for _ in range(n_repeats):
            perm = rng.permutation(len(X))
            if shuffler is not None:  # the same predictions, recomputing only what the shuffle moves
                score = scorer(_Fixed(classes, shuffler.proba(g, perm)), X, y)
            else:
                Xp = X.copy()
                for col in members:
                    Xp[col] = X[col].to_numpy()[perm]
                score = scorer(model, Xp, y)
            drops.append(base - score)
        rows.append({"feature": label, "mean": float(np.mean(drops)), "std": float(np.std(drops))})
    return sorted(rows, key=lambda r: -r["mean"])


def _examples(model: Any, X: pd.DataFrame, proba: np.ndarray, ids: np.ndarray, y: np.ndarray,
              value: np.ndarray, reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Worked explanations: a typical test customer per predicted tier (median confidence)."""
    from clvtier.predict import explanation_groups, reasons

    pred = np.argmax(proba, axis=1)
    picks = []
    for j in range(len(TIERS)):
        rows = np.flatnonzero(pred == j)
        if len(rows):
            conf = proba[rows, j]
            picks.append(int(rows[np.argsort(conf, kind="stable")[len(rows) // 2]]))
    if not picks:
        return []
    why = reasons(model, X.iloc[picks], proba[picks], reference)
    members = dict(explanation_groups(list(X.columns)))

    def shown(i: int, f: str) -> Any:
        """A feature's value; a group's (the BTYD summary) as a mapping of its members' values."""
        cols = members.get(f, [f])
        if cols == [f]:
            return _plain(X.iloc[i][f]) if f in X.columns else None
        return {c: _plain(X.iloc[i][c]) for c in cols}

    out = []
    for k, i in enumerate(picks):
        out.append({
            "customer_id": str(ids[i]), "predicted_tier": TIERS[int(pred[i])], "actual_tier": str(y[i]),
            "actual_value": float(value[i]), "p": [float(v) for v in proba[i]],
            "reasons": [{"feature": f, "effect": e, "value": shown(i, f)} for f, e in why[k]],
        })
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if np.isnan(v) else float(v)
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def _reference(X: pd.DataFrame) -> dict[str, Any]:
    """Typical values of each feature on the training customers: the baseline for explanations.

    Columns that must stay consistent with each other (the BTYD summary: recency <= T)
    take their values together from one real training customer, the one closest to
    the medians, rather than from independent medians.
    """
    ref: dict[str, Any] = {}
    for c in X.columns:
        if pd.api.types.is_numeric_dtype(X[c]):
            v = X[c].median()
            ref[c] = None if pd.isna(v) else float(v)
        else:
            mode = X[c].dropna().mode()
            ref[c] = str(mode.iloc[0]) if len(mode) else None
    group = [c for c in BTYD_GROUP if c in X.columns]
    if group:
        G = X[group].astype("float64")
        scale = (G.quantile(0.75) - G.quantile(0.25)).replace(0, 1.0)
        dist = ((G - G.median()) / scale).abs().sum(axis=1)
        row = G.iloc[int(np.argmin(dist.to_numpy()))]
        ref.update({c: float(row[c]) for c in group})
    return ref


def _value_summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "zero_share": float(np.mean(values <= 0)),
            **{f"q{int(q * 100)}": float(np.quantile(values, q)) for q in (0.25, 0.5, 0.75, 0.9, 0.99)},
            "max": float(np.max(values)), "total": float(np.sum(values))}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj
