"""Benchmark clvtier end to end on one machine: train on a sample, score every customer.

Usage::

    python benchmarks/scale.py --rows 10000000            # DuckDB (the default engine)
    python benchmarks/scale.py --rows 1000000 --engine spark

It generates (or reuses) ``benchmarks/data/ecomx_<rows>/``: the four EcomX tables as
Parquet from :func:`clvtier.generate.generate` with ``rows // 13`` customers (about
``rows`` transactions). Generation is not timed. Then, each in its own process, as a
user would run them:

train
    ``clvtier train DATA --out RUN --candidates hist_gb --backtests 0 --bootstrap 200``
    (validation, features, the stratified training sample when more than
    ``--max-train-customers`` customers are known, cross-validation, evaluation, report).
predict
    ``clvtier predict DATA --model RUN --out scores.parquet --no-reasons``: features of
    every customer to a temporary Parquet file, then scored and written in chunks.

With ``--engine spark`` the model still comes from the DuckDB ``train``; then
``clvtier features ... --engine spark`` and ``clvtier predict ... --engine spark`` run
in Spark local mode (``local[*]``).

Measured per step: wall time around the child process; peak memory as the larger of the
child's own ``ru_maxrss`` (``os.wait4``) and the peak summed resident memory of its whole
process tree polled every 0.1 s with psutil (Spark's JVM is a grandchild). Scoring
throughput is the chunked scoring loop alone (read features, score, write), as printed by
``clvtier predict --verbose``. The machine's load average is printed: the figures are only
comparable on an otherwise idle machine.

The last line is machine-readable::

    scale rows=<N> total_s=<train + predict> peak_mb=<max> score_customers_per_s=<n>
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TX_PER_CUSTOMER = 13  # the generator's transactions per customer, on average
TRAIN_ARGS = ["--candidates", "hist_gb", "--backtests", "0", "--bootstrap", "200"]


def data_dir(rows: int, base: Path) -> Path:
    """The generated data for ``rows`` transactions, written once and reused."""
    from clvtier.generate import generate

    out = base / f"ecomx_{rows}"
    if (out / "transactions_final.parquet").is_file():
        return out
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".ecomx_{rows}.", dir=base))
    t0 = time.perf_counter()
    try:
        result = generate(max(rows // TX_PER_CUSTOMER, 1), 42, tmp, fmt="parquet")
        tmp.rename(out)  # only complete data sets are reused
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"generated {result.n_customers:,} customers, {result.n_transactions:,} transactions "
          f"in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
    return out


class _TreeMemory(threading.Thread):
    """Peak of the summed resident memory of a process and its descendants."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            self.done.wait(0.1)


def run_step(name: str, args: list[str], log: Path) -> dict[str, Any]:
    """Run ``clvtier ARGS`` in a child process; wall time, peak memory and its output."""
    env = dict(os.environ, CLVTIER_PROGRESS="0")
    cmd = [sys.executable, "-m", "clvtier.cli", *args]
    print(f"$ clvtier {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w+", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, text=True)
        poller = _TreeMemory(proc.pid)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        poller.done.set()
        poller.join()
        fh.seek(0)
        output = fh.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {proc.returncode}:\n{output[-4000:]}")
    peak_mb = max(usage.ru_maxrss / 1024, poller.peak / 2**20)
    print(f"  {name}: {seconds:.1f} s, peak {peak_mb:,.0f} MB", flush=True)
    return {"seconds": seconds, "peak_mb": peak_mb, "output": output}


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1).replace(",", "")) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="transactions, about (default 1,000,000)")
    parser.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb")
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit for train and predict")
    parser.add_argument("--max-train-customers", type=int, default=None,
                        help="passed to clvtier train (its default when omitted: 200,000)")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="where generated data are kept")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="where runs, scores and logs go")
    args = parser.parse_args()

    load_before = os.getloadavg()
    data = data_dir(args.rows, args.data)
    work = args.out / f"scale_{args.rows}_{args.engine}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run_dir = work / "run"
    print(f"free disk under {work}: {shutil.disk_usage(work).free / 2**30:.0f} GiB; "
          f"load average {load_before[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    train_args = ["train", str(data), "--out", str(run_dir), *TRAIN_ARGS, "--memory-limit", args.memory_limit,
                  "--verbose"]
    if args.max_train_customers is not None:
        train_args += ["--max-train-customers", str(args.max_train_customers)]
    steps = {"train": run_step("train", train_args, work / "train.log")}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    sample = metrics.get("training_sample", {})

    if args.engine == "duckdb":
        scores = work / "scores.parquet"
        steps["predict"] = run_step("predict", ["predict", str(data), "--model", str(run_dir), "--out", str(scores),
                                                "--no-reasons", "--memory-limit", args.memory_limit, "--verbose"],
                                    work / "predict.log")
        text = steps["predict"]["output"]
        n_scored = _number(r"Scored ([\d,]+) customers", text)
        n_known = _number(r"known then: ([\d,]+)", text)
        if n_scored is None or n_scored != n_known or "in = out" not in text:
            raise SystemExit(f"predict did not score every known customer once:\n{text[-2000:]}")
        rate = _number(r"\(([\d,]+) customers/s\)", text)
        feature_s = _number(r"features ([\d.]+) s", text)
        scoring_s = _number(r"scoring ([\d.]+) s", text)
    else:
        cutoff = metrics["cutoff"]
        features_out = work / "features_spark"
        steps["features"] = run_step("features", ["features", str(data), "--cutoff", cutoff, "--out",
                                                  str(features_out), "--engine", "spark"], work / "features.log")
        scores = work / "scores_spark"
        steps["predict"] = run_step("predict", ["predict", str(data), "--model", str(run_dir), "--out", str(scores),
                                                "--engine", "spark"], work / "predict.log")
        n_scored = _number(r"Scored ([\d,]+) customers", steps["predict"]["output"])
        n_known = n_scored
        rate = n_scored / steps["predict"]["seconds"] if n_scored else None  # features + scoring + JVM start
        feature_s = scoring_s = None

    train_s = steps["train"]["seconds"]
    timings = {k: round(v, 1) for k, v in (metrics.get("timings_seconds") or {}).items()}
    total_s = sum(step["seconds"] for step in steps.values())
    peak_mb = max(step["peak_mb"] for step in steps.values())
    load_after = os.getloadavg()
    summary = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "engine": args.engine, "rows": args.rows,
        "transactions": json.loads((run_dir / "metadata.json").read_text())["data_summary"]["transactions"]["rows"],
        "customers_scored": n_scored, "customers_known": n_known,
        "train_sample": sample.get("size"), "train_population": sample.get("population"),
        "train_s": round(train_s, 1), "train_timings_s": timings,
        "steps": {k: {"seconds": round(v["seconds"], 1), "peak_mb": round(v["peak_mb"])} for k, v in steps.items()},
        "features_s": feature_s, "scoring_loop_s": scoring_s,
        "total_s": round(total_s, 1), "peak_mb": round(peak_mb), "score_customers_per_s": rate,
        "load_before": round(load_before[0], 1), "load_after": round(load_after[0], 1),
        "memory_limit": args.memory_limit,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    rate_text = "NA" if rate is None else f"{rate:.0f}"
    print(f"scale rows={args.rows} total_s={total_s:.1f} peak_mb={peak_mb:.0f} score_customers_per_s={rate_text}")


if __name__ == "__main__":
    main()
