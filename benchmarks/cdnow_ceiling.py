"""How high can any model go on CDNOW-78? An optimistic ceiling for the targets of ``cdnow.py``.

Usage::

    python benchmarks/cdnow_ceiling.py [--data CDNOW_master.txt]

Same customers, split and targets as ``benchmarks/cdnow.py``. Optimistic on purpose, so
that a target above what it reaches is out of reach for any honest model on these data:

* the inputs are clvtier's features plus each customer's *whole* calibration history:
  purchase days, CDs bought and dollars spent in each of the 39 weeks before the cutoff
  (117 columns) and the total CDs (a column of the file that the contract leaves out);
* a grid of gradient-boosting settings (learning rate, leaf size, L2, iterations) and
  L2-regularised logistic regressions on log features;
* the best figure of the grid is chosen *by its test metric*, which flatters it further.

It prints the best few settings per metric and, last, one machine-readable line::

    CDNOW-78 ceiling auc_b=... capture_b=... f1top25_b=... acc_a=...
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import cdnow
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

WEEKS = 39
HGB_GRID = {"learning_rate": (0.03, 0.1), "min_samples_leaf": (10, 40, 160), "l2_regularization": (0.0, 1.0),
            "max_iter": (100, 300)}
LOGREG_C = (0.01, 0.1, 1.0)


def weekly_history(path: Path, p: cdnow.Protocol) -> np.ndarray:
    """Purchase days, CDs and dollars per calibration week, and total CDs, of each protocol customer."""
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    raw["date"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    start = pd.Timestamp(p.cutoff) - pd.Timedelta(weeks=WEEKS)
    cal = raw[(raw["date"] < pd.Timestamp(p.cutoff)) & (raw["date"] >= start)].copy()
    cal["week"] = (cal["date"] - start).dt.days // 7
    cal["customer"] = cal["customer_id"].astype(int)
    ids = pd.Index(pd.Series(p.customer_id).astype(int))
    weeks = range(WEEKS)
    per_week = [
        cal.groupby(["customer", "week"])["date"].nunique(),
        cal.groupby(["customer", "week"])["number_of_cds"].sum(),
        cal.groupby(["customer", "week"])["dollar_value"].sum(),
    ]
    blocks = [s.unstack(fill_value=0).reindex(index=ids, columns=weeks, fill_value=0).to_numpy() for s in per_week]
    cds = cal.groupby("customer")["number_of_cds"].sum().reindex(ids, fill_value=0).to_numpy()[:, None]
    return np.hstack([*blocks, cds]).astype("float64")


def models() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for values in itertools.product(*HGB_GRID.values()):
        settings = dict(zip(HGB_GRID, values, strict=True))
        label = "hgb " + " ".join(f"{k}={v}" for k, v in settings.items())
        out.append((label, HistGradientBoostingClassifier(random_state=0, **settings)))  # type: ignore[arg-type]
    for c in LOGREG_C:
        out.append((f"logreg log1p C={c}", make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="CDNOW_master.txt (fetched when omitted)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.data is None:
        from clvtier.datasets import fetch_cdnow

        args.data = fetch_cdnow("master")
    p = cdnow.make_protocol(cdnow.load_cdnow(args.data))
    features = p.features.drop(columns=["customer_id"]).select_dtypes("number").to_numpy(dtype="float64")
    inputs = {"clvtier features": features,
              "+ weekly history and CDs": np.hstack([features, weekly_history(args.data, p)])}
    tr, te = p.train, p.test
    rows = []
    for input_name, X in inputs.items():
        logged = np.sign(X) * np.log1p(np.abs(X))
        for label, model in models():
            Xm = logged if label.startswith("logreg") else X
            score = model.fit(Xm[tr], p.high_b[tr]).predict_proba(Xm[te])[:, 1]  # type: ignore[attr-defined]
            row = {"inputs": input_name, "model": label, "auc_b": cdnow._auc(p.high_b[te], score),
                   "capture_b": cdnow._capture(p.future[te], score), "f1top25_b": cdnow._f1_top(p.high_b[te], score)}
            if label.startswith("hgb"):
                tiers = model.fit(Xm[tr], p.tier_a[tr]).predict(Xm[te])  # type: ignore[attr-defined]
                row["acc_a"] = float(np.mean(tiers == p.tier_a[te]))
            rows.append(row)
        print(f"{input_name}: {len(models())} models in {time.perf_counter() - t0:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        for metric in ("auc_b", "capture_b", "f1top25_b", "acc_a"):
            print(f"\nbest by test {metric}:")
            print(table.sort_values(metric, ascending=False).head(3).to_string(index=False, float_format="%.4f"))
    best = table[["auc_b", "capture_b", "f1top25_b", "acc_a"]].max()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    print("CDNOW-78 ceiling " + " ".join(f"{k}={v:.4f}" for k, v in best.items()))


if __name__ == "__main__":
    main()
