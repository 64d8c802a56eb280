"""CDNOW-78: clvtier against BTYD models, the original classifiers and naive rules on real data.

Usage::

    python benchmarks/cdnow.py [--data CDNOW_master.txt] [--cutoff 1997-10-01] [--horizon-days 273]
                               [--n-boot 1000] [--seed 42]

Without ``--data`` the CDNOW master file is fetched (``clvtier.datasets.fetch_cdnow``). It
goes through clvtier's own ingestion and validation with the mapping ``docs/cdnow.toml``,
as any user's data would.

Protocol CDNOW-78 (the defaults):

* features of every customer at the cutoff 1997-10-01 (39 weeks of calibration), values in
  the horizon 1997-10-01 .. 1998-06-30 (273 days);
* customers split 70/30 with seed 42 (16,499 / 7,071), stratified by the target-A tier
  (quartiles of all customers' 78-week spend) crossed with "bought in the horizon";
  every row of the table uses exactly this split;
* target A: three tiers of total spend (before the cutoff plus in the horizon), quartile
  thresholds fitted on the training customers (about $19.97 and $106.46);
  accuracy and macro-F1;
* target B: high future value, horizon spend >= the training customers' 75th percentile
  of horizon spend (about $18.98); ROC AUC of the score, F1 when the top 25 % by score
  are flagged, and the share of the test customers' horizon revenue those 25 % hold.
  (At cutoffs where fewer than a quarter of the customers buy in the horizon that
  percentile is 0; the threshold is then that of clvtier's zero rule, the median spend of
  the training customers who bought.)

Rows:

* ``majority``: the most frequent training tier / a constant score;
* ``carry-forward``: the spend so far: its target-A tier (the customer buys nothing more),
  and spend so far as the target-B score;
* ``BG/NBD + GG`` and ``Pareto/NBD + GG``: ``clvtier.btyd`` models fitted on the training
  customers' calibration summaries (weeks); expected horizon value = expected purchases x
  Gamma-Gamma expected spend; target A: tier of spend so far + expected value;
* ``logreg``, ``knn``, ``random_forest``, ``naive_bayes`` (the original four) and
  ``hist_gb``: scikit-learn defaults on 12 RFM-type features (standardised), fitted on the
  target-A tiers and on the target-B label;
* ``clvtier``: :func:`clvtier.train.train` as a user runs it (default candidates,
  selection by 5-fold cross-validation on the training customers by macro-F1), told to
  hold out exactly the protocol's test customers: ``--target total`` for target A, and
  the default future-tier target for target B, scored by P(High). On CDNOW the zero
  rule makes the future High tier exactly target B (checked at run time).

Every metric has a percentile bootstrap 95 % interval over the test customers; the last
row is clvtier minus the best anchor on that metric, with a paired bootstrap interval.
The last line printed is machine-readable::

    CDNOW-78 clvtier auc_b=... capture_b=... f1top25_b=... acc_a=... macro_f1_a=...
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clvtier import clv
from clvtier.btyd import BetaGeoModel, GammaGammaModel, ParetoNBDModel, rfm_summary
from clvtier.evaluate import bootstrap_ci, paired_bootstrap_diff
from clvtier.features import build_features
from clvtier.ingest import read_mapping
from clvtier.target import TIERS, TierBinner
from clvtier.train import TrainConfig, train
from clvtier.validate import Dataset, load

MAPPING = Path(__file__).resolve().parents[1] / "docs" / "cdnow.toml"
CUTOFF = dt.date(1997, 10, 1)
HORIZON_DAYS = 273
TEST_SIZE = 0.30
TOP = 0.25
#: The 12 RFM-type features of the classifier anchors (columns of clvtier's feature frame).
RFM12 = ("days_since_last_purchase", "btyd_T", "btyd_recency", "btyd_frequency", "n_transactions",
         "total_spend", "mean_spend", "max_spend", "first_purchase_value", "spend_30d", "spend_90d",
         "spend_180d")
ANCHOR_CLASSIFIERS = ("logreg", "knn", "random_forest", "naive_bayes", "hist_gb")
METRICS_A = ("acc_a", "macro_f1_a")
METRICS_B = ("auc_b", "f1top25_b", "capture_b")
LABELS = {"acc_a": "A accuracy", "macro_f1_a": "A macro-F1", "auc_b": "B ROC AUC",
          "f1top25_b": "B F1 top 25%", "capture_b": "B capture top 25%"}


# ----------------------------------------------------------------------------- data


def load_cdnow(path: str | Path) -> Dataset:
    """Ingest and validate a CDNOW master file through ``docs/cdnow.toml``."""
    sources = read_mapping(MAPPING)
    sources["transactions"] = dataclasses.replace(sources["transactions"], path=Path(path).resolve())
    return load(sources)


@dataclass
class Protocol:
    """The customers, values, split and targets of one run of the protocol."""

    cutoff: dt.date
    horizon_days: int
    customer_id: np.ndarray
    features: pd.DataFrame
    past: np.ndarray
    future: np.ndarray
    train: np.ndarray
    test: np.ndarray
    binner_a: TierBinner
    threshold_b: float
    tier_a: np.ndarray = field(init=False)
    high_b: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.tier_a = self.binner_a.transform(self.total)
        self.high_b = self.future >= self.threshold_b

    @property
    def total(self) -> np.ndarray:
        return self.past + self.future


def make_protocol(ds: Dataset, cutoff: dt.date = CUTOFF, horizon_days: int = HORIZON_DAYS,
                  test_size: float = TEST_SIZE, seed: int = 42) -> Protocol:
    """Features at the cutoff, horizon values, the stratified split and both targets."""
    clv.check_cutoff(ds, cutoff, horizon_days)
    fs = build_features(ds, cutoff)
    ids = fs.frame["customer_id"].astype(str).to_numpy()
    past = fs.frame["total_spend"].to_numpy(dtype="float64")
    future = clv.horizon_spend(ds, cutoff, horizon_days, pd.Index(ids)).to_numpy(dtype="float64")
    total = past + future
    strata = np.char.add(TierBinner().fit(total).transform(total).astype(str), (future > 0).astype(str))
    tr, te = train_test_split(np.arange(len(ids)), test_size=test_size, random_state=seed, stratify=strata)
    tr, te = np.sort(tr), np.sort(te)
    threshold_b = float(np.quantile(future[tr], 0.75))
    if threshold_b <= 0:
        # Fewer than a quarter bought in the horizon: ">= 0" would flag everybody. Use the
        # threshold of clvtier's zero rule instead (the median spend of those who bought).
        threshold_b = TierBinner().fit(future[tr]).high_cut_
    return Protocol(cutoff=cutoff, horizon_days=horizon_days, customer_id=ids, features=fs.frame,
                    past=past, future=future, train=tr, test=te,
                    binner_a=TierBinner().fit(total[tr]), threshold_b=threshold_b)


# -------------------------------------------------------------------------- anchors


@dataclass
class Row:
    """One method's test predictions: target-A tiers and a target-B score (None: not applicable)."""

    name: str
    tier_a: np.ndarray | None
    score_b: np.ndarray | None
    note: str = ""


def btyd_expected_value(ds: Dataset, p: Protocol, model: str) -> np.ndarray:
    """Expected horizon value of every customer: BG/NBD or Pareto/NBD purchases x Gamma-Gamma spend."""
    tx = ds.tables["transactions"].select("customer_id", "transaction_date", "transaction_amount").execute()
    rfm = rfm_summary(tx, p.cutoff, date_col="transaction_date", amount_col="transaction_amount",
                      time_unit_days=7.0)
    rfm.index = rfm.index.astype(str)
    rfm = rfm.reindex(p.customer_id)
    if rfm.isna().any().any():
        raise RuntimeError("some customers known at the cutoff have no calibration summary")
    x, t_x, T, m = (rfm[c].to_numpy(dtype="float64") for c in ("frequency", "recency", "T", "monetary_value"))
    tr = p.train
    counts = (BetaGeoModel() if model == "bgnbd" else ParetoNBDModel()).fit(x[tr], t_x[tr], T[tr])
    repeat = tr[(x[tr] > 0) & (m[tr] > 0)]
    gg = GammaGammaModel().fit(x[repeat], m[repeat])
    purchases = counts.expected_purchases(p.horizon_days / 7.0, x, t_x, T)
    return purchases * gg.expected_spend(x, np.maximum(m, 0.0))


def anchor_rows(ds: Dataset, p: Protocol, seed: int = 42) -> list[Row]:
    """Every anchor's test predictions, fitted on the training customers only."""
    tr, te = p.train, p.test
    rows = []
    majority = pd.Series(p.tier_a[tr]).value_counts().idxmax()
    rows.append(Row("majority", np.full(len(te), majority, dtype=object), None,
                    "constant score: AUC 0.5, ranking metrics undefined"))
    rows.append(Row("carry-forward", p.binner_a.transform(p.past[te]), p.past[te]))
    for model, label in (("bgnbd", "BG/NBD + GG"), ("pareto", "Pareto/NBD + GG")):
        value = btyd_expected_value(ds, p, model)
        rows.append(Row(label, p.binner_a.transform(p.past[te] + value[te]), value[te]))
    X = p.features[list(RFM12)].astype("float64")
    for name in ANCHOR_CLASSIFIERS:
        clf_a, clf_b = _anchor_classifier(name, seed), _anchor_classifier(name, seed)
        clf_a.fit(X.iloc[tr], p.tier_a[tr])
        clf_b.fit(X.iloc[tr], p.high_b[tr])
        rows.append(Row(name, clf_a.predict(X.iloc[te]), clf_b.predict_proba(X.iloc[te])[:, 1]))
    return rows


def _anchor_classifier(name: str, seed: int) -> Any:
    estimator = {
        "logreg": lambda: LogisticRegression(max_iter=1000),  # defaults; iterations raised to converge
        "knn": KNeighborsClassifier,
        "random_forest": lambda: RandomForestClassifier(random_state=seed, n_jobs=-1),
        "naive_bayes": GaussianNB,
        "hist_gb": lambda: HistGradientBoostingClassifier(random_state=seed),
    }[name]()
    return make_pipeline(StandardScaler(), estimator)


# -------------------------------------------------------------------------- clvtier


@dataclass
class ClvtierRun:
    """clvtier trained on the protocol's training customers for both targets."""

    row: Row
    total: Any
    future: Any
    seconds: dict[str, float]


def clvtier_row(ds: Dataset, p: Protocol, n_boot: int = 1000, seed: int = 42,
                candidates: Sequence[str] | None = None, cv_folds: int = 5) -> ClvtierRun:
    """Train clvtier as a user does, holding out exactly the protocol's test customers."""
    test_ids = p.customer_id[p.test]
    extra: dict[str, Any] = {"candidates": tuple(candidates)} if candidates else {}
    common = dict(cutoff=p.cutoff, horizon_days=p.horizon_days, seed=seed, cv_folds=cv_folds,
                  n_boot=n_boot, backtests=0, **extra)
    seconds = {}
    t0 = time.perf_counter()
    total = train(ds, TrainConfig(target="total", **common), test_customers=test_ids)
    seconds["total"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    future = train(ds, TrainConfig(target="future", **common), test_customers=test_ids)
    seconds["future"] = time.perf_counter() - t0
    th = total.binner
    if not (np.isclose(th.low_cut_, p.binner_a.low_cut_) and np.isclose(th.high_cut_, p.binner_a.high_cut_)):
        raise RuntimeError(f"clvtier's target-A thresholds {th.low_cut_}, {th.high_cut_} differ from the protocol's")
    pred_a = total.predictions.set_index("customer_id").reindex(test_ids)
    pred_b = future.predictions.set_index("customer_id").reindex(test_ids)
    same = np.array_equal(pred_b["actual_tier"].to_numpy() == "High", p.high_b[p.test])
    note = "" if same else "future High tier differs from target B"
    row = Row("clvtier", pred_a["predicted_tier"].to_numpy(dtype=object),
              pred_b["p_high"].to_numpy(dtype="float64"), note)
    return ClvtierRun(row, total, future, seconds)


# -------------------------------------------------------------------------- metrics


def _top_count(n: int) -> int:
    return int(np.floor(TOP * n + 0.5 + 1e-9))


def metric_fns(row: Row, p: Protocol) -> dict[str, Callable[[np.ndarray], float]]:
    """Each metric of a row as a function of test-row indices (for the bootstrap)."""
    te = p.test
    fns: dict[str, Callable[[np.ndarray], float]] = {}
    if row.tier_a is not None:
        codes = {t: i for i, t in enumerate(TIERS)}
        truth = np.array([codes[t] for t in p.tier_a[te]])
        pred = np.array([codes[t] for t in row.tier_a])
        fns["acc_a"] = lambda i: float(np.mean(truth[i] == pred[i]))
        fns["macro_f1_a"] = lambda i: _macro_f1(truth[i], pred[i])
    if row.score_b is not None:
        score, high, value = row.score_b, p.high_b[te], p.future[te]
        fns["auc_b"] = lambda i: _auc(high[i], score[i])
        fns["f1top25_b"] = lambda i: _f1_top(high[i], score[i])
        fns["capture_b"] = lambda i: _capture(value[i], score[i])
    elif row.name == "majority":
        fns["auc_b"] = lambda i: 0.5
    return fns


def _macro_f1(t: np.ndarray, q: np.ndarray) -> float:
    cm = np.bincount(3 * t + q, minlength=9).reshape(3, 3)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(3), where=present)
    return float(f1[present].mean())


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _flag_top(s: np.ndarray) -> np.ndarray:
    flag = np.zeros(len(s), dtype=bool)
    flag[np.argsort(-s, kind="stable")[:_top_count(len(s))]] = True
    return flag


def _f1_top(y: np.ndarray, s: np.ndarray) -> float:
    flag = _flag_top(s)
    tp = float(np.sum(flag & y))
    den = float(flag.sum() + y.sum())
    return 2 * tp / den if den else float("nan")


def _capture(v: np.ndarray, s: np.ndarray) -> float:
    total = float(v.sum())
    return float(v[_flag_top(s)].sum()) / total if total > 0 else float("nan")


@dataclass
class Table:
    """Point estimates, intervals and the paired differences of clvtier to the best anchors."""

    cells: dict[str, dict[str, tuple[float, float, float]]]
    diffs: dict[str, dict[str, Any]]


def score_rows(rows: Sequence[Row], p: Protocol, n_boot: int = 1000, seed: int = 42) -> Table:
    """Every metric of every row with a bootstrap interval; clvtier's paired difference to the best anchor."""
    n = len(p.test)
    fns = {r.name: metric_fns(r, p) for r in rows}
    cells: dict[str, dict[str, tuple[float, float, float]]] = {}
    for r in rows:
        cells[r.name] = {}
        for metric, fn in fns[r.name].items():
            point = fn(np.arange(n))
            lo, hi = bootstrap_ci(fn, n, n_boot=n_boot, seed=seed) if r.name != "majority" or metric != "auc_b" \
                else (0.5, 0.5)
            cells[r.name][metric] = (point, lo, hi)
    diffs: dict[str, dict[str, Any]] = {}
    if "clvtier" in fns:
        for metric in (*METRICS_A, *METRICS_B):
            anchors = {name: c[metric][0] for name, c in cells.items()
                       if name != "clvtier" and metric in c and name != "majority"}
            if metric not in fns["clvtier"] or not anchors:
                continue
            best = max(anchors, key=lambda k: anchors[k])
            d = paired_bootstrap_diff(fns["clvtier"][metric], fns[best][metric], n, n_boot=n_boot, seed=seed)
            diffs[metric] = {"anchor": best, **d}
    return Table(cells, diffs)


# ---------------------------------------------------------------------------- output


def format_table(table: Table) -> str:
    metrics = (*METRICS_A, *METRICS_B)
    head = f"{'method':<17}" + "".join(f"{LABELS[m]:>24}" for m in metrics)
    lines = [head, "-" * len(head)]
    for name, cells in table.cells.items():
        out = f"{name:<17}"
        for m in metrics:
            if m in cells:
                v, lo, hi = cells[m]
                out += f"{f'{v:.3f} [{lo:.3f}, {hi:.3f}]':>24}"
            else:
                out += f"{'-':>24}"
        lines.append(out)
    if table.diffs:
        lines.append("-" * len(head))
        vs = f"{'best anchor':<17}" + "".join(
            f"{table.diffs[m]['anchor'] if m in table.diffs else '-':>24}" for m in metrics)
        out = f"{'clvtier - best':<17}"
        for m in metrics:
            d = table.diffs.get(m)
            text = f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else "-"
            out += f"{text:>24}"
        lines += [vs, out]
    return "\n".join(lines)


def format_future_tiers(run: ClvtierRun) -> str:
    """clvtier's own default target (three future-value tiers) and its built-in baselines."""
    m = run.future.metrics
    rule = m["thresholds"]["rule"]
    lines = [f"clvtier default target (future tiers): {rule}",
             f"chosen by CV: {m['chosen']}; CV macro-F1 of the candidates: "
             + ", ".join(f"{r['model']} {r['mean']:.3f}" for r in m["cv"])]
    h = m["headline"]
    lines.append("  clvtier        accuracy {a:.3f} [{al:.3f}, {ah:.3f}]  macro-F1 {f:.3f} [{fl:.3f}, {fh:.3f}]".format(
        a=h["accuracy"]["value"], al=h["accuracy"]["lo"], ah=h["accuracy"]["hi"],
        f=h["macro_f1"]["value"], fl=h["macro_f1"]["lo"], fh=h["macro_f1"]["hi"]))
    for name, hb in m["headline_baselines"].items():
        lines.append(f"  {name.removeprefix('baseline_'):<14} accuracy {hb['accuracy']['value']:.3f} "
                     f"[{hb['accuracy']['lo']:.3f}, {hb['accuracy']['hi']:.3f}]  macro-F1 "
                     f"{hb['macro_f1']['value']:.3f} [{hb['macro_f1']['lo']:.3f}, {hb['macro_f1']['hi']:.3f}]")
    mt = run.total.metrics
    lines.append(f"target A run: chosen by CV: {mt['chosen']}; CV macro-F1: "
                 + ", ".join(f"{r['model']} {r['mean']:.3f}" for r in mt["cv"]))
    return "\n".join(lines)


def summary_line(table: Table) -> str:
    c = table.cells["clvtier"]
    return ("CDNOW-78 clvtier " + " ".join(
        f"{k}={c[k][0]:.4f}" for k in ("auc_b", "capture_b", "f1top25_b", "acc_a", "macro_f1_a")))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="CDNOW_master.txt (fetched when omitted)")
    parser.add_argument("--cutoff", type=dt.date.fromisoformat, default=CUTOFF)
    parser.add_argument("--horizon-days", type=int, default=HORIZON_DAYS)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    if args.data is None:
        from clvtier.datasets import fetch_cdnow

        args.data = fetch_cdnow("master")
    ds = load_cdnow(args.data)
    p = make_protocol(ds, args.cutoff, args.horizon_days, seed=args.seed)
    print(f"CDNOW-78 on {args.data} ({ds.summary['transactions']['rows']:,} rows, "
          f"{ds.summary['transactions']['customers']:,} customers); "
          f"{dt.date.today()} on {platform.node() or 'host'}: {platform.platform()}, "
          f"{platform.python_version()}, {_cores()} cores")
    print(f"cutoff {p.cutoff}, horizon {p.horizon_days} days; train {len(p.train):,} / test {len(p.test):,} "
          f"customers (seed {args.seed})")
    print(f"target A thresholds (train): Low < {p.binner_a.low_cut_:.2f} <= Medium < "
          f"{p.binner_a.high_cut_:.2f} <= High; target B: horizon spend >= {p.threshold_b:.2f} "
          f"({p.high_b[p.test].mean():.1%} of test customers)")
    t0 = time.perf_counter()
    rows = anchor_rows(ds, p, seed=args.seed)
    t_anchors = time.perf_counter() - t0
    run = clvtier_row(ds, p, n_boot=args.n_boot, seed=args.seed)
    rows.append(run.row)
    for r in rows:
        if r.note and r.name == "clvtier":
            print(f"note: {r.note}")
    table = score_rows(rows, p, n_boot=args.n_boot, seed=args.seed)
    print()
    print(format_table(table))
    print(f"(bootstrap 95 % intervals, {args.n_boot} resamples of the {len(p.test):,} test customers; "
          "majority has a constant score)")
    print()
    print(format_future_tiers(run))
    print(f"timings: anchors {t_anchors:.0f} s, clvtier train target A {run.seconds['total']:.0f} s, "
          f"future tiers {run.seconds['future']:.0f} s, total {time.perf_counter() - t_start:.0f} s")
    print(summary_line(table))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    main()
