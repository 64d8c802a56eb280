"""Shared fixtures: a tiny EcomX data set small enough to check every number by hand.

``TINY`` holds the four tables as CSV text, exactly in the EcomX format. With the
cutoff ``TINY_CUTOFF`` (2024-01-01) the customers are:

* ``1`` joined 2023-01-01; five purchases before the cutoff, two of them on the same
  day (2023-03-01), one purchase after the cutoff; three categories.
* ``2`` joined 2023-06-01, age missing; two purchases (200 and 10) 180 days apart.
* ``3`` joined 2023-11-01 and never bought (zero transaction features), gender missing.
* ``4`` joins after the cutoff and buys after it: not known at the cutoff.
* ``5`` is an orphan: transactions and an offer, but no row in customers; one purchase
  before the cutoff and one exactly on it (excluded: events strictly before the cutoff).

Validation warnings of ``TINY`` (as of 2024-06-30): age missing (1 row), gender
missing (1), orphan transactions (2 rows of customer 5), orphan offer (1), responses
normalised (``yes``, ``1``), one customer without transactions (3).
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

TINY_CUTOFF = dt.date(2024, 1, 1)
TINY_AS_OF = dt.date(2024, 6, 30)

TINY: dict[str, str] = {
    "customers": (
        "customer_id,join_date,last_purchase_date,age,gender,location\n"
        "1,2023-01-01,2024-01-05,30.0,Female,Paris\n"
        "2,2023-06-01,2023-12-31,,Male,Lyon\n"
        "3,2023-11-01,2023-11-01,45.0,,Nice\n"
        "4,2024-02-01,2024-02-05,50.0,Female,Rome\n"
    ),
    "transactions": (
        "transaction_id,customer_id,transaction_date,transaction_amount,product_category\n"
        "1,1,2023-01-10,100.0,Electronics\n"
        "2,1,2023-03-01,50.0,Clothing\n"
        "3,1,2023-03-01,30.0,Electronics\n"
        "4,1,2023-09-15,40.0,Home Goods\n"
        "5,1,2023-12-20,60.0,Electronics\n"
        "6,1,2024-01-05,999.0,Electronics\n"
        "7,2,2023-07-04,200.0,Clothing\n"
        "8,2,2023-12-31,10.0,Clothing\n"
        "9,5,2023-12-01,25.0,Home Goods\n"
        "10,5,2024-01-01,70.0,Electronics\n"
        "11,4,2024-02-05,80.0,Clothing\n"
        "12,4,2024-02-05,20.0,Electronics\n"
    ),
    "engagements": (
        "customer_id,number_of_site_visits,number_of_emails_opened,number_of_clicks\n"
        "1,100,20,10\n"
        "2,0,0,0\n"
        "3,10,5,1\n"
        "4,1,1,1\n"
    ),
    "marketing": (
        "campaign_id,customer_id,response,promotion_type,campaign_date\n"
        "1,1,Yes,Discount,2023-05-01\n"
        "2,1,No,Free Shipping,2023-08-01\n"
        "3,1,Yes,Discount,2024-02-01\n"
        "4,2,yes,Buy One Get One,2023-10-10\n"
        "5,3,No,Discount,2023-12-31\n"
        "6,5,1,Free Shipping,2023-12-01\n"
    ),
}


def write_ecomx(
    directory: Path,
    tables: Mapping[str, str | bytes] | None = None,
    *,
    names: str = "final",
    ext: str = ".csv",
) -> Path:
    """Write tables into ``directory`` and return it.

    Parameters
    ----------
    directory : Path
        Created if missing.
    tables : mapping, optional
        Table name -> file content (CSV text, or raw bytes written as they are);
        ``TINY`` when omitted.
    names : {"final", "short"}
        ``customers_final.csv`` (the original EcomX names) or ``customers.csv``.
    ext : {".csv", ".csv.gz"}
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in (TINY if tables is None else tables).items():
        stem = f"{name}_final" if names == "final" else name
        data = content.encode("utf-8") if isinstance(content, str) else content
        if ext == ".csv.gz":
            data = gzip.compress(data)
        (directory / f"{stem}{ext}").write_bytes(data)
    return directory


def with_table(table: str, content: str | bytes) -> dict[str, str | bytes]:
    """``TINY`` with one table's content replaced."""
    out: dict[str, str | bytes] = dict(TINY)
    out[table] = content
    return out


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """The tiny EcomX data set under its original file names."""
    return write_ecomx(tmp_path / "ecomx")


def pytest_configure(config: pytest.Config) -> None:
    # Ibis 12 reads a pandas option that pandas 3 deprecates, thousands of times per run;
    # the warning is about Ibis, not about clvtier, and only drowns the report.
    config.addinivalue_line(
        "filterwarnings", "ignore:The 'future.infer_string' option is deprecated:DeprecationWarning:ibis.*"
    )


#: ``python -c SLOW_WRITER MARKER ARGS...`` runs ``clvtier ARGS`` whose CSV writer stops half-way:
#: it writes half the rows, names the file it writes in MARKER, and sleeps.
SLOW_WRITER = """
import sys, time
from pathlib import Path
import pandas as pd

marker = Path(sys.argv[1])
real_to_csv = pd.DataFrame.to_csv

def slow_to_csv(self, path=None, *args, **kwargs):  # path: a file name or an open file
    real_to_csv(self.iloc[: len(self) // 2], path, *args, **kwargs)  # half the rows are on disk
    if hasattr(path, "flush"):
        path.flush()
    marker.write_text(str(path.name if hasattr(path, "write") else path))  # an open file, or a path
    time.sleep(120)

pd.DataFrame.to_csv = slow_to_csv
from clvtier.cli import main
sys.argv = ["clvtier", *sys.argv[2:]]
main()
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_until_writing(args: list[str], tmp_path: Path, env: Mapping[str, str] | None = None,
                      timeout: float = 120) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``clvtier ARGS`` in a subprocess whose CSV writer stops half-way; wait until it is writing.

    Returns the process and the file it is writing.
    """
    marker = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(marker), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        # A private TMPDIR: a killed process leaves its temporary files behind.
        env={**os.environ, "CLVTIER_PROGRESS": "0", "TMPDIR": str(tmp_path), **(env or {})},
        # A test run started in the background inherits an ignored SIGINT, and Python then
        # installs no Ctrl-C handler: give the child the default, as a terminal would.
        preexec_fn=_default_sigint if sys.platform != "win32" else None,
    )
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never reached the writer: {proc.communicate()[0].decode()[-2000:]}")
        time.sleep(0.05)
    return proc, Path(marker.read_text())


def quick_run(data: Path, out: Path) -> Path:
    """A run directory of a small logistic-regression model on ``data``, trained in seconds."""
    import clvtier
    from clvtier.persist import write_run

    config = clvtier.TrainConfig(candidates=("logreg",), cv_folds=2, n_boot=10, backtests=0, horizon_days=180)
    return write_run(clvtier.train(clvtier.load(data), config), out)
