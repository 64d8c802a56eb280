"""Benchmark clvtier's feature build against a DuckDB floor, a Polars lazy query and pandas.

Usage::

    python benchmarks/features.py --rows 10000000 [--skip-pandas]

It generates (or reuses) ``benchmarks/data/tx_<rows>/transactions.parquet``: ``rows``
transactions of ``rows / 12.5`` customers over four years (2020-2023), three product
categories, sorted by date as an order log is; ``customer_id`` is text (the contract),
``transaction_id`` an integer.

Each stage runs in its own fresh Python process, one after the other, so that

* wall time is measured inside the child around the work only (imports and interpreter
  start-up excluded), from reading the Parquet file to an in-memory result
  (Arrow table / Polars or pandas DataFrame) with one row per customer;
* CPU time (``time.process_time``: every thread of the child, same span) is reported
  next to it; on a shared machine it is steadier than wall time;
* peak memory is the child's peak resident set size, read with ``os.wait4`` (the
  kernel's ``ru_maxrss`` of that child alone; ``getrusage(RUSAGE_CHILDREN)`` would give
  the maximum over all children so far). It includes the interpreter and imports.

Stages:

clvtier
    ``clvtier.validate.load`` on the directory (ingest + every validation check) then the
    feature definition (``learn_spec`` + ``feature_expr``) executed to Arrow by Ibis.
clvtier-pandas
    The same through ``build_features``, which returns a pandas DataFrame, as the Python API does.
clvtier-file
    What ``clvtier features --out FILE.parquet --memory-limit 2GB`` does: validation and
    features on a DuckDB connection limited to 2 GB, one pass per range of customer ids
    (``features.PASS_ROWS``), written to Parquet by the engine and copied to the output
    in batches (``write_features``); the rows are never all in memory. The checksum is
    computed by DuckDB over the written file.
floor
    ``SELECT customer_id, count(*), sum(transaction_amount) FROM read_parquet(?) GROUP BY customer_id``
    on a bare DuckDB connection.
polars / pandas
    A straightforward query of the same transaction-side features.

Every stage returns a checksum (customers, total spend, sum of T, sum of frequency, ...) and the
run stops if the stages disagree. The last line printed is machine-readable::

    features rows=<N> clvtier_s=... floor_s=... polars_s=... pandas_s=... ratio_to_floor=... peak_mb=...
        file_s=... file_peak_mb=...

(one line; ``peak_mb`` is the ``clvtier`` stage's, ``file_*`` the ``clvtier-file`` stage's;
``NA`` for a stage not run, such as pandas with ``--skip-pandas``.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START = dt.date(2020, 1, 1)
DAYS = 4 * 365 + 1
CUTOFF = START + dt.timedelta(days=DAYS)  # the day after the last transaction: every row counts
CATEGORIES = ("Electronics", "Clothing", "Home Goods")
WINDOWS = (30, 90, 180, 365)
CHUNK = 2_000_000


# -- data ---------------------------------------------------------------------------------------
def generate(rows: int, path: Path, seed: int = 0) -> None:
    """Write ``rows`` transactions to ``path`` in chunks of bounded memory, vectorised with numpy."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_customers = max(1, round(rows / 12.5))
    # customers differ in how often they buy: draw buyers with a skewed weight
    weights = rng.gamma(2.0, 1.0, n_customers)
    cum = np.cumsum(weights / weights.sum())
    levels = rng.lognormal(6.2, 0.35, n_customers)  # ~ 600 mean spend per order, as in EcomX
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([
        ("transaction_id", pa.int64()),
        ("customer_id", pa.string()),
        ("transaction_date", pa.date32()),
        ("transaction_amount", pa.float64()),
        ("product_category", pa.string()),
    ])
    categories = np.array(CATEGORIES, dtype=object)
    with pq.ParquetWriter(tmp, schema) as writer:
        done = 0
        while done < rows:
            n = min(CHUNK, rows - done)
            # chunk k covers its own slice of the four years, so the file is sorted by date
            lo = DAYS * done // rows
            hi = max(lo + 1, DAYS * (done + n) // rows)
            day = np.sort(rng.integers(lo, hi, n)).astype("int32")
            customer = np.minimum(np.searchsorted(cum, rng.random(n)), n_customers - 1)
            amount = np.round(levels[customer] * rng.lognormal(0.0, 0.5, n), 2)
            table = pa.table(
                {
                    "transaction_id": np.arange(done + 1, done + n + 1, dtype="int64"),
                    "customer_id": pa.array(customer + 1).cast(pa.string()),
                    "transaction_date": pa.array(day + (START - dt.date(1970, 1, 1)).days, pa.int32()).cast(
                        pa.date32()
                    ),
                    "transaction_amount": amount,
                    "product_category": categories[rng.integers(0, 3, n)],
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=1 << 20)
            done += n
    tmp.replace(path)


# -- stages (each runs in a child process) --------------------------------------------------------
def stage_clvtier(path: Path) -> tuple[float, dict[str, Any], dict[str, float]]:
    from clvtier.features import feature_expr, learn_spec
    from clvtier.validate import load

    t0 = time.perf_counter()
    ds = load(path.parent, as_of=CUTOFF)
    t1 = time.perf_counter()
    spec = learn_spec(ds.tables, ds.con)
    expr, cutoff = feature_expr(ds.tables, spec)
    result = ds.con.to_pyarrow(expr, params={cutoff: CUTOFF})
    t2 = time.perf_counter()
    return t2 - t0, checksum(result.to_pandas()), {"validate_s": t1 - t0, "features_s": t2 - t1}


def stage_clvtier_pandas(path: Path) -> tuple[float, dict[str, Any], dict[str, float]]:
    from clvtier.features import build_features
    from clvtier.validate import load

    t0 = time.perf_counter()
    ds = load(path.parent, as_of=CUTOFF)
    t1 = time.perf_counter()
    frame = build_features(ds, CUTOFF).frame
    t2 = time.perf_counter()
    return t2 - t0, checksum(frame), {"validate_s": t1 - t0, "features_s": t2 - t1}


def stage_clvtier_file(path: Path) -> tuple[float, dict[str, Any], dict[str, float]]:
    import duckdb

    from clvtier.features import write_features
    from clvtier.ingest import connect
    from clvtier.validate import load

    with tempfile.TemporaryDirectory(prefix="clvtier-bench-") as work:
        out = Path(work) / "features.parquet"
        t0 = time.perf_counter()
        ds = load(path.parent, con=connect(memory_limit=FILE_MEMORY_LIMIT), as_of=CUTOFF)
        t1 = time.perf_counter()
        write_features(ds, CUTOFF, out)
        t2 = time.perf_counter()
        ds.con.disconnect()
        with duckdb.connect(config={"memory_limit": "512MB"}) as con:  # the checksum, without loading the file
            columns = {r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(out)]).fetchall()}
            sums = ", ".join(f'sum("{c}")::DOUBLE AS "{c}"' for c in CHECKED if c in columns)
            row = con.execute(f"SELECT count(*) AS customers, {sums} FROM read_parquet(?)", [str(out)]).df()
    check = {k: float(v) for k, v in row.iloc[0].items()}
    check["customers"] = int(check["customers"])
    return t2 - t0, check, {"validate_s": t1 - t0, "features_s": t2 - t1}


def stage_floor(path: Path) -> tuple[float, dict[str, Any], dict[str, float]]:
    import duckdb

    t0 = time.perf_counter()
    with duckdb.connect() as con:
        result = con.execute(
            "SELECT customer_id, count(*) AS n_transactions, sum(transaction_amount) AS total_spend "
            "FROM read_parquet(?) GROUP BY customer_id",
            [str(path)],
        ).fetch_arrow_table()
    elapsed = time.perf_counter() - t0
    frame = result.to_pandas()
    return elapsed, {"customers": len(frame), "n_transactions": float(frame.n_transactions.sum()),
                     "total_spend": float(frame.total_spend.sum())}, {}


def stage_polars(path: Path) -> tuple[float, dict[str, Any], dict[str, float]]:
    import polars as pl

    t0 = time.perf_counter()
    cutoff = pl.lit(CUTOFF)
    tx = pl.scan_parquet(path).filter(pl.col("transaction_date") < cutoff)
    per_cat = [
        expr
        for i, c in enumerate(CATEGORIES)
        for expr in (
            pl.col("transaction_amount").filter(pl.col("product_category") == c).sum().alias(f"amt_{i}"),
            (pl.col("product_category") == c).sum().alias(f"n_{i}"),
        )
    ]
    daily = (
        tx.group_by("customer_id", "transaction_date")
        .agg(
            pl.col("transaction_amount").sum().alias("amount"),
            pl.len().alias("n"),
            pl.col("transaction_amount").max().alias("max_amount"),
            *per_cat,
        )
        .sort("customer_id", "transaction_date")
        .with_columns(
            gap=(pl.col("transaction_date") - pl.col("transaction_date").shift(1).over("customer_id")).dt.total_days(),
            ago=(cutoff - pl.col("transaction_date")).dt.total_days(),
        )
    )
    amount = pl.col("amount")
    ago = pl.col("ago")
    g = daily.group_by("customer_id").agg(
        pl.col("n").sum().cast(pl.Float64).alias("n_transactions"),
        amount.sum().alias("total_spend"),
        pl.col("max_amount").max().alias("max_spend"),
        pl.len().alias("n_days"),
        pl.col("transaction_date").min().alias("first_day"),
        pl.col("transaction_date").max().alias("last_day"),
        amount.first().alias("first_purchase_value"),
        pl.col("gap").mean().alias("ipt_mean"),
        pl.col("gap").std(ddof=0).alias("ipt_std"),
        amount.filter((ago > 180) & (ago <= 360)).sum().alias("spend_prev_180d"),
        *(amount.filter(ago <= w).sum().alias(f"spend_{w}d") for w in WINDOWS),
        *(pl.col(f"amt_{i}").sum() for i in range(len(CATEGORIES))),
        pl.sum_horizontal(*((pl.col(f"n_{i}").sum() > 0).cast(pl.Int64) for i in range(len(CATEGORIES))))
        .alias("n_categories"),
    )
    freq = pl.col("n_days") - 1
    total = pl.col("total_spend")
    result = g.select(
        "customer_id", "n_transactions", "total_spend", "max_spend", "first_purchase_value",
        (total / pl.col("n_transactions")).alias("mean_spend"),
        freq.cast(pl.Float64).alias("btyd_frequency"),
        (pl.col("last_day") - pl.col("first_day")).dt.total_days().cast(pl.Float64).alias("btyd_recency"),
        (cutoff - pl.col("first_day")).dt.total_days().cast(pl.Float64).alias("btyd_T"),
        pl.when(freq > 0).then((total - pl.col("first_purchase_value")) / freq).otherwise(0.0).alias("btyd_monetary"),
        *(pl.col(f"spend_{w}d") for w in WINDOWS),
        (pl.col("spend_180d") - pl.col("spend_prev_180d")).alias("spend_trend"),
        pl.col("ipt_mean").fill_null(0.0), pl.col("ipt_std").fill_null(0.0),
        (cutoff - pl.col("last_day")).dt.total_days().cast(pl.Float64).alias("days_since_last_purchase"),
        pl.col("n_categories").cast(pl.Float64),
        *(pl.when(total > 0).then(pl.col(f"amt_{i}") / total).otherwise(0.0).alias(f"share_{i}")
          for i in range(len(CATEGORIES))),
    ).collect()
    elapsed = time.perf_counter() - t0
    return elapsed, checksum(result.to_pandas()), {}


def stage_pandas(path: Path) -> tuple[float, dict[str, Any], dict[str, float]]:
    import numpy as np
    import pandas as pd

    t0 = time.perf_counter()
    cutoff = pd.Timestamp(CUTOFF)
    tx = pd.read_parquet(path, columns=["customer_id", "transaction_date", "transaction_amount", "product_category"])
    tx["transaction_date"] = pd.to_datetime(tx["transaction_date"])
    tx = tx[tx["transaction_date"] < cutoff]
    for i, c in enumerate(CATEGORIES):
        tx[f"amt_{i}"] = tx["transaction_amount"].where(tx["product_category"] == c, 0.0)
    daily = tx.groupby(["customer_id", "transaction_date"], sort=True).agg(
        amount=("transaction_amount", "sum"), n=("transaction_amount", "size"),
        max_amount=("transaction_amount", "max"), **{f"amt_{i}": (f"amt_{i}", "sum") for i in range(3)},
    ).reset_index()
    daily["gap"] = daily.groupby("customer_id")["transaction_date"].diff().dt.days
    daily["ago"] = (cutoff - daily["transaction_date"]).dt.days
    daily["prev"] = daily["amount"].where((daily["ago"] > 180) & (daily["ago"] <= 360), 0.0)
    for w in WINDOWS:
        daily[f"w{w}"] = daily["amount"].where(daily["ago"] <= w, 0.0)
    by = daily.groupby("customer_id", sort=True)
    g = by.agg(
        n_transactions=("n", "sum"), total_spend=("amount", "sum"), max_spend=("max_amount", "max"),
        n_days=("amount", "size"), first_day=("transaction_date", "min"), last_day=("transaction_date", "max"),
        first_purchase_value=("amount", "first"), ipt_mean=("gap", "mean"),
        spend_prev_180d=("prev", "sum"), **{f"spend_{w}d": (f"w{w}", "sum") for w in WINDOWS},
        **{f"amt_{i}": (f"amt_{i}", "sum") for i in range(3)},
    )
    g["ipt_std"] = by["gap"].std(ddof=0)
    g["n_categories"] = tx.groupby("customer_id")["product_category"].nunique()
    freq = g["n_days"] - 1
    out = pd.DataFrame(index=g.index)
    out["n_transactions"] = g["n_transactions"].astype(float)
    out["total_spend"] = g["total_spend"]
    out["mean_spend"] = g["total_spend"] / g["n_transactions"]
    out["max_spend"] = g["max_spend"]
    out["first_purchase_value"] = g["first_purchase_value"]
    out["btyd_frequency"] = freq.astype(float)
    out["btyd_recency"] = (g["last_day"] - g["first_day"]).dt.days.astype(float)
    out["btyd_T"] = (cutoff - g["first_day"]).dt.days.astype(float)
    out["btyd_monetary"] = np.where(freq > 0, (g["total_spend"] - g["first_purchase_value"]) / freq.clip(lower=1), 0.0)
    for w in WINDOWS:
        out[f"spend_{w}d"] = g[f"spend_{w}d"]
    out["spend_trend"] = g["spend_180d"] - g["spend_prev_180d"]
    out["ipt_mean"] = g["ipt_mean"].fillna(0.0)
    out["ipt_std"] = g["ipt_std"].fillna(0.0)
    out["days_since_last_purchase"] = (cutoff - g["last_day"]).dt.days.astype(float)
    out["n_categories"] = g["n_categories"].astype(float)
    for i in range(3):
        out[f"share_{i}"] = np.where(g["total_spend"] > 0, g[f"amt_{i}"] / g["total_spend"], 0.0)
    out = out.reset_index()
    elapsed = time.perf_counter() - t0
    return elapsed, checksum(out), {}


#: The columns summed by :func:`checksum`.
CHECKED = ("n_transactions", "total_spend", "btyd_frequency", "btyd_recency", "btyd_T", "btyd_monetary",
           "spend_365d", "spend_trend", "ipt_mean", "ipt_std", "n_categories", "first_purchase_value")
#: DuckDB's memory limit in the ``clvtier-file`` stage (what ``clvtier features --memory-limit`` sets).
FILE_MEMORY_LIMIT = "2GB"


def checksum(frame: Any) -> dict[str, Any]:
    """A few sums that every implementation of the features must agree on."""
    out: dict[str, Any] = {"customers": len(frame)}
    for name in CHECKED:
        if name in frame.columns:
            out[name] = float(frame[name].astype(float).sum())
    return out


STAGES = {
    "clvtier": stage_clvtier,
    "clvtier-pandas": stage_clvtier_pandas,
    "clvtier-file": stage_clvtier_file,
    "floor": stage_floor,
    "polars": stage_polars,
    "pandas": stage_pandas,
}


def _child(stage: str, path: Path) -> None:
    import pyarrow  # noqa: F401 - every stage uses it; importing it is not part of the work timed

    cpu = time.process_time()
    elapsed, check, extra = STAGES[stage](path)
    cpu = time.process_time() - cpu  # all threads; includes the (small) checksum
    print(json.dumps({"seconds": elapsed, "cpu_s": cpu, "checksum": check, "extra": extra}))


def run_stage(stage: str, path: Path) -> dict[str, Any]:
    """Run one stage in a fresh interpreter; return its timing, checksum and peak RSS (MB)."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", stage, "--path", str(path)],
            stdout=subprocess.PIPE, stderr=errors, text=True,
        )
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        # wait4 gives the rusage of this child alone (ru_maxrss in KiB on Linux)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"stage {stage} failed ({proc.returncode}):\n{errors.read()}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024
    return result


def _agree(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    bad = []
    for key in set(a) & set(b):
        x, y = a[key], b[key]
        if abs(x - y) > 1e-6 * max(1.0, abs(x), abs(y)):
            bad.append(f"{key}: {x} != {y}")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="transactions in the log")
    parser.add_argument("--skip-pandas", action="store_true", help="skip the pandas stage (slow at 10M+ rows)")
    parser.add_argument("--stages", default="", help="comma-separated subset of " + ",".join(STAGES))
    parser.add_argument("--data", type=Path, default=HERE / "data", help="where generated logs are kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.path)
        return

    path = args.data / f"tx_{args.rows}" / "transactions.parquet"
    if not path.is_file():
        t0 = time.perf_counter()
        generate(args.rows, path)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    stages = [s for s in (args.stages.split(",") if args.stages else STAGES) if s]
    if args.skip_pandas:
        stages = [s for s in stages if s != "pandas"]
    results: dict[str, dict[str, Any]] = {}
    for stage in stages:
        results[stage] = run_stage(stage, path)
        r = results[stage]
        extra = "  ".join(f"{k}={v:.2f}" for k, v in r["extra"].items())
        line = f"{stage:<15} {r['seconds']:8.2f} s  cpu {r['cpu_s']:7.2f} s  {r['peak_mb']:8.0f} MB  {extra}"
        print(line, flush=True)

    reference = results.get("clvtier", results.get("clvtier-pandas"))
    for stage, r in results.items():
        problems = _agree(reference["checksum"], r["checksum"]) if reference else []
        if problems:
            raise SystemExit(f"{stage} disagrees with clvtier: {problems}")

    floor = results.get("floor", {}).get("seconds")
    print()
    floor_cpu = results.get("floor", {}).get("cpu_s")
    print(f"{'stage':<15} {'wall s':>8} {'x floor':>8} {'cpu s':>8} {'x floor':>8} {'peak MB':>8}")
    for stage, r in results.items():
        ratio = f"{r['seconds'] / floor:8.2f}" if floor else "      NA"
        cpu_ratio = f"{r['cpu_s'] / floor_cpu:8.2f}" if floor_cpu else "      NA"
        print(f"{stage:<15} {r['seconds']:8.2f} {ratio} {r['cpu_s']:8.2f} {cpu_ratio} {r['peak_mb']:8.0f}")
    print(f"(load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")

    def fmt(stage: str) -> str:
        return f"{results[stage]['seconds']:.2f}" if stage in results else "NA"

    clv = results.get("clvtier")
    ratio = f"{clv['seconds'] / floor:.2f}" if clv and floor else "NA"
    peak = f"{clv['peak_mb']:.0f}" if clv else "NA"
    file_peak = f"{results['clvtier-file']['peak_mb']:.0f}" if "clvtier-file" in results else "NA"
    print(
        f"features rows={args.rows} clvtier_s={fmt('clvtier')} floor_s={fmt('floor')} polars_s={fmt('polars')} "
        f"pandas_s={fmt('pandas')} ratio_to_floor={ratio} peak_mb={peak} file_s={fmt('clvtier-file')} "
        f"file_peak_mb={file_peak}"
    )


if __name__ == "__main__":
    main()
